//! Boot providers: how the controller powers a node off, makes it boot the rescue kernel once,
//! and takes the rescue media away again.
//!
//! - `command`: the operator's commands (ipmitool, a PDU, a QEMU monitor), with `{node}`,
//!   `{mac}` and `{rescue_ip}` replaced, each run with a timeout;
//! - `manual`: the controller alerts a person to do it;
//! - `redfish`: virtual media and a one-time boot override through the BMC (to come; a cluster
//!   file naming it is refused by `lazarus serve` until then).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{BootProvider, Node};

/// What a provider is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    PowerOff,
    Attach,
    Detach,
}

/// Carries out `op` for `node`. `Ok(Some(message))` asks a human to act (manual provider).
pub fn run(node: &Node, op: Op, timeout: Duration) -> Result<Option<String>, String> {
    match &node.boot {
        BootProvider::Command {
            attach,
            detach,
            power_off,
            ..
        } => {
            let argv = match op {
                Op::Attach => attach,
                Op::Detach => detach,
                Op::PowerOff => power_off.as_ref().ok_or("no power_off command")?,
            };
            run_command(&template(argv, node), timeout).map(|()| None)
        }
        BootProvider::Manual => Ok(Some(match op {
            Op::Attach => format!(
                "attach the rescue media to {} and boot it from it",
                node.name
            ),
            Op::Detach => format!("remove the rescue media from {}", node.name),
            Op::PowerOff => format!("power {} off", node.name),
        })),
        BootProvider::Redfish { .. } => Err("the redfish boot provider is not built yet".into()),
    }
}

fn template(argv: &[String], node: &Node) -> Vec<String> {
    let mac = node.macs.first().cloned().unwrap_or_default();
    argv.iter()
        .map(|a| {
            a.replace("{node}", &node.name)
                .replace("{mac}", &mac)
                .replace("{rescue_ip}", &node.rescue.address.to_string())
        })
        .collect()
}

/// Runs a command with a timeout; its exit status decides.
pub fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{program}: {e}"))? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!(
                "{program}: {status}: {}",
                err.lines().last().unwrap_or("").trim()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{program}: no answer within {}s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
