//! What the crate's binaries (`lazarus-mkinitramfs`, `lazarus-mkrescue`) share at their edge.

use std::process::ExitCode;

/// Parses the command line: `--help` and `--version` print and exit 0; an error is one line on
/// stderr, `NAME: message`, and exit status 2.
pub fn parse<T: clap::Parser>(name: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{name}: {}", line.trim_start_matches("error: "));
            Err(ExitCode::from(2))
        }
    }
}
