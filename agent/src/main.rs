//! `lazarus-agent`: the rescue agent binary. Not built yet beyond `--version`: the recovery
//! engine and host mode arrive with the recovery-engine work, PID 1 mode with the rescue boot.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("lazarus-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "lazarus-agent: not built yet; the recovery engine arrives with the recovery-engine work"
    );
    ExitCode::from(2)
}
