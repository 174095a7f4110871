//! The agent's logger: every line to stderr (the console), into a ring the protocol's `GetLogs`
//! reads from, and in PID 1 mode to `/dev/kmsg`.
//!
//! Each line leaves in one write(2): `/dev/kmsg` makes a kernel log record of every write, so a
//! line written in pieces (`<6>`, `lazarus: `, the phase, the message) would arrive as several
//! records, and console lines from two threads would interleave.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use lazarus_proto::{LogLine, Logs};

/// Lines kept for `GetLogs`.
const KEEP: usize = 2000;
/// Bytes of log text one `Logs` reply carries at most (well under the 64 KiB frame limit).
const REPLY_BUDGET: usize = 48 << 10;

/// The ring of recent log lines.
pub struct LogRing {
    start: Instant,
    lines: Mutex<(u64, VecDeque<LogLine>)>,
    echo: bool,
    /// `/dev/kmsg`, in PID 1 mode: the kernel's log keeps our lines beside its own.
    kmsg: Mutex<Option<std::fs::File>>,
    /// The agent's phase (and step), shown on every console line.
    phase: Mutex<String>,
}

static RING: OnceLock<LogRing> = OnceLock::new();

impl LogRing {
    /// Installs the ring as the `log` backend (once per process); `echo` also writes stderr.
    pub fn install(echo: bool, level: log::LevelFilter) -> &'static LogRing {
        let ring = RING.get_or_init(|| LogRing {
            start: Instant::now(),
            lines: Mutex::new((0, VecDeque::with_capacity(KEEP))),
            echo,
            kmsg: Mutex::new(None),
            phase: Mutex::new("booting".into()),
        });
        if log::set_logger(ring).is_ok() {
            log::set_max_level(level);
        }
        ring
    }

    /// Sets the phase shown on console lines (`ready`, `recovering/copy_image`, …), if the ring
    /// is installed.
    pub fn set_phase(phase: &str) {
        if let Some(ring) = RING.get() {
            *ring.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_string();
        }
    }

    /// Also writes every line to `kmsg` (`/dev/kmsg`).
    pub fn log_to_kmsg(&self, kmsg: std::fs::File) {
        *self.kmsg.lock().unwrap_or_else(|p| p.into_inner()) = Some(kmsg);
    }

    /// Lines with sequence number `since` or later, within one reply's budget.
    pub fn since(&self, since: u64) -> Logs {
        let guard = match self.lines.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut out = Vec::new();
        let mut budget = REPLY_BUDGET;
        let mut next = since.max(guard.1.front().map_or(guard.0, |l| l.seq));
        for line in guard.1.iter().filter(|l| l.seq >= since) {
            let cost = line.message.len() + 16;
            if cost > budget {
                break;
            }
            budget -= cost;
            next = line.seq + 1;
            out.push(line.clone());
        }
        Logs { lines: out, next }
    }
}

impl log::Log for LogRing {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let time_ms = self.start.elapsed().as_millis() as u64;
        let mut message = record.args().to_string();
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if self.echo {
            let line = format!(
                "[{:>6}.{:03}] {:<5} {phase}: {message}\n",
                time_ms / 1000,
                time_ms % 1000,
                record.level(),
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        if let Some(kmsg) = self.kmsg.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            write_kmsg(kmsg, record.level(), &phase, &message);
        }
        let mut guard = match self.lines.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let seq = guard.0;
        guard.0 += 1;
        if guard.1.len() == KEEP {
            guard.1.pop_front();
        }
        guard.1.push_back(LogLine {
            seq,
            time_ms,
            level: record.level() as u8,
            message,
        });
    }

    fn flush(&self) {}
}

/// The longest record written to `/dev/kmsg`, newline included. The kernel refuses a longer
/// write with EINVAL (`devkmsg_write` checks it against `LOG_LINE_MAX`, 992 bytes before Linux
/// 5.10 and 1024 since), so a long message is cut rather than lost.
pub const KMSG_RECORD_MAX: usize = 976;

/// Writes one kernel log record `<PRIO>lazarus: PHASE: MESSAGE\n` with a single write(2); its
/// result is ignored, since a logger has nowhere to report its own failure.
pub fn write_kmsg(kmsg: &mut impl Write, level: log::Level, phase: &str, message: &str) {
    let prio = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    let mut record = format!("<{prio}>lazarus: {phase}: {message}");
    if record.len() > KMSG_RECORD_MAX - 1 {
        let mut cut = KMSG_RECORD_MAX - 1;
        while !record.is_char_boundary(cut) {
            cut -= 1;
        }
        record.truncate(cut);
    }
    record.push('\n');
    // One write, not write_all: a second write would be a second record.
    let _ = kmsg.write(record.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that keeps each write(2) apart.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_kmsg_line_is_one_write() {
        let mut sink = Writes::default();
        write_kmsg(
            &mut sink,
            log::Level::Info,
            "ready",
            "listening on 0.0.0.0:7460",
        );
        write_kmsg(&mut sink, log::Level::Error, "failed", "plan p1 failed");
        assert_eq!(
            sink.0,
            vec![
                b"<6>lazarus: ready: listening on 0.0.0.0:7460\n".to_vec(),
                b"<3>lazarus: failed: plan p1 failed\n".to_vec(),
            ]
        );
    }

    #[test]
    fn a_long_kmsg_line_is_cut_to_one_record_on_a_char_boundary() {
        let mut sink = Writes::default();
        let message = "é".repeat(2000);
        write_kmsg(
            &mut sink,
            log::Level::Warn,
            "recovering/copy_image",
            &message,
        );
        assert_eq!(sink.0.len(), 1);
        let record = std::str::from_utf8(&sink.0[0]).expect("still UTF-8");
        assert!(record.len() <= KMSG_RECORD_MAX, "{}", record.len());
        assert!(record.starts_with("<4>lazarus: recovering/copy_image: é"));
        assert!(record.ends_with("é\n"));
    }
}
