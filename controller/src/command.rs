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

/// Runs `argv` with extra environment `env`; fails on a non-zero exit or after `timeout`.
pub fn run(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<(), CommandError> {
    let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
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
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(CommandError::Failed {
                program: program.clone(),
                status,
                why: err.lines().last().unwrap_or("").trim().to_string(),
            });
        }
        if Instant::now() > deadline {
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
