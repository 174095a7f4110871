//! Running an operator's command (a health check, a boot provider step, the promotion hook) with
//! a timeout: its exit status decides, its last line of stderr explains a failure.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why an operator's command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("empty command")]
    Empty,
    #[error("{program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program}: waiting: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    /// Exited non-zero; `why` is the last line of its stderr.
    #[error("{program}: {status}{}", if why.is_empty() { String::new() } else { format!(": {why}") })]
    Failed {
        program: String,
        status: ExitStatus,
        why: String,
    },
    #[error("{program}: no answer within {}s", timeout.as_secs_f32())]
    Timeout { program: String, timeout: Duration },
}

/// How long a command that has exited may keep its stderr open (a child it left in the
/// background holds it) before the explanation is taken as it is.
const STDERR_GRACE: Duration = Duration::from_millis(200);
/// The most of a command's stderr kept (its last line explains a failure).
const STDERR_KEEP: usize = 8 << 10;

/// Runs `argv` with extra environment `env`; fails on a non-zero exit or after `timeout`. The
/// command leads a process group of its own: at the deadline the whole group is killed (a child
/// it started goes too), and its stderr is read on a thread of its own, so a background child
/// that keeps the pipe open never holds the caller past the deadline. A child left running by a
/// command that succeeded is left alone (a `command` provider may start things on purpose).
pub fn run(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<(), CommandError> {
    use std::os::unix::process::CommandExt;
    let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    if let Some(mut pipe) = child.stderr.take() {
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                let mut kept = sink.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&buf[..n]);
                let extra = kept.len().saturating_sub(STDERR_KEEP);
                kept.drain(..extra);
            }
            let _ = done_tx.send(());
        });
    }
    let deadline = Instant::now() + timeout;
    loop {
        let exited = child.try_wait().map_err(|source| CommandError::Wait {
            program: program.clone(),
            source,
        })?;
        if let Some(status) = exited {
            if status.success() {
                return Ok(());
            }
            let _ = done_rx.recv_timeout(STDERR_GRACE);
            let err = String::from_utf8_lossy(&stderr.lock().unwrap_or_else(|p| p.into_inner()))
                .into_owned();
            return Err(CommandError::Failed {
                program: program.clone(),
                status,
                why: err.lines().last().unwrap_or("").trim().to_string(),
            });
        }
        if Instant::now() > deadline {
            kill_group(&child);
            let _ = child.kill();
            let _ = child.wait();
            return Err(CommandError::Timeout {
                program: program.clone(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kill(-pgid, SIGKILL): the command and everything it started in its group.
fn kill_group(child: &std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn alive(pid: &str) -> bool {
        std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .unwrap_or_default()
                .contains(") Z ")
    }

    #[test]
    fn a_failing_command_that_leaves_a_child_holding_stderr_returns_at_once() {
        let started = Instant::now();
        let err = run(
            &sh("sleep 30 & echo 'power off failed' >&2; exit 3"),
            &[],
            Duration::from_secs(20),
        )
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "held {:?} by the background child",
            started.elapsed()
        );
        assert!(
            matches!(&err, CommandError::Failed { why, .. } if why == "power off failed"),
            "{err}"
        );
    }

    #[test]
    fn a_command_past_its_deadline_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let started = Instant::now();
        let err = run(
            &sh(&format!(
                "sleep 1000 & echo $! > {}; wait",
                pid_file.display()
            )),
            &[],
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let gone = Instant::now() + Duration::from_secs(5);
        while alive(&pid) && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !alive(&pid),
            "the command's child {pid} outlived its deadline"
        );
    }

    #[test]
    fn a_successful_command_may_leave_what_it_started_running() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("agent.pid");
        run(
            &sh(&format!(
                "sleep 30 > /dev/null 2>&1 & echo $! > {}",
                pid_file.display()
            )),
            &[],
            Duration::from_secs(5),
        )
        .unwrap();
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(alive(&pid), "a started service was killed");
        if let Some(p) = rustix::process::Pid::from_raw(pid.trim().parse().unwrap()) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}
