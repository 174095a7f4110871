//! The lab's way to run a command on a running guest: the QEMU guest agent's JSON protocol over
//! its virtio-serial channel (a data centre would use ssh).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A connection to a QEMU guest agent: JSON commands, one answer per line.
pub struct Qga {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qga {
    /// Connects and synchronises (`guest-sync` with a fresh id, skipping stale answers),
    /// retrying until the guest's agent answers or `deadline` passes.
    pub fn connect(socket: &Path, deadline: Instant) -> anyhow::Result<Self> {
        let mut last = anyhow::anyhow!("no attempt");
        let mut id = 0u64;
        loop {
            id += 1;
            if Instant::now() >= deadline {
                return Err(last.context("the guest agent did not answer"));
            }
            let attempt = || -> anyhow::Result<Self> {
                let stream = std::os::unix::net::UnixStream::connect(socket)
                    .with_context(|| format!("connecting to {}", socket.display()))?;
                let mut qga = Self {
                    reader: std::io::BufReader::new(stream.try_clone()?),
                    writer: stream,
                };
                let sync = 0x4c5a_0000 + id;
                let answer = qga.call(
                    "guest-sync",
                    serde_json::json!({ "id": sync }),
                    Instant::now() + Duration::from_secs(5),
                )?;
                if answer.as_u64() != Some(sync) {
                    bail!("guest-sync answered {answer}");
                }
                Ok(qga)
            };
            match attempt() {
                Ok(qga) => return Ok(qga),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Sends one command and returns its `return` value (answers to earlier syncs are skipped).
    pub fn call(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
        deadline: Instant,
    ) -> anyhow::Result<serde_json::Value> {
        use std::io::{BufRead, Write};
        let request = serde_json::json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "{command}: no answer from the guest agent");
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("{command}: the guest agent closed the connection");
            }
            let answer: serde_json::Value = match serde_json::from_str(line.trim()) {
                Ok(v) => v,
                Err(_) => continue, // a partial answer to an earlier, abandoned command
            };
            if let Some(error) = answer.get("error") {
                bail!("{command}: {error}");
            }
            let value = answer.get("return").cloned().unwrap_or_default();
            if command == "guest-sync" && value != arguments["id"] {
                continue;
            }
            return Ok(value);
        }
    }

    /// `guest-exec`: the new process's pid.
    pub fn exec(&mut self, argv: &[&str], capture: bool) -> anyhow::Result<i64> {
        let answer = self.call(
            "guest-exec",
            serde_json::json!({
                "path": argv[0],
                "arg": &argv[1..],
                "capture-output": capture,
            }),
            Instant::now() + Duration::from_secs(10),
        )?;
        answer["pid"]
            .as_i64()
            .with_context(|| format!("guest-exec answered {answer}"))
    }
}
