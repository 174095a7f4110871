//! Running an operator's command (a health check, a boot provider step, the promotion hook) with
//! a timeout: its exit status decides, its last line of stderr explains a failure.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `argv` with extra environment `env`; fails on a non-zero exit or after `timeout`.
pub fn run(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
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
            let why = err.lines().last().unwrap_or("").trim();
            return Err(format!(
                "{program}: {status}{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{program}: no answer within {}s",
                timeout.as_secs_f32()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
