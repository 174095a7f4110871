//! `lazarus-mkinitramfs --kernel-dir DIR --agent BIN --key-file FILE [--config agent.toml] -o OUT`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use lazarus_initramfs::{build, BuildOptions};

const USAGE: &str =
    "usage: lazarus-mkinitramfs --kernel-dir DIR --agent BIN --key-file FILE [--config agent.toml] -o OUT";

fn parse(args: &[String]) -> anyhow::Result<BuildOptions> {
    let (mut kernel_dir, mut agent, mut key_file, mut config, mut output) =
        (None, None, None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--kernel-dir" => kernel_dir = Some(value()?),
            "--agent" => agent = Some(value()?),
            "--key-file" => key_file = Some(value()?),
            "--config" => config = Some(value()?),
            "-o" | "--output" => output = Some(value()?),
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(BuildOptions {
        kernel_dir: kernel_dir.context("--kernel-dir is required")?,
        agent: agent.context("--agent is required")?,
        key_file: key_file.context("--key-file is required")?,
        config,
        output: output.context("-o is required")?,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(|o| Ok((build(&o)?, o))) {
        Ok((r, o)) => {
            println!(
                "wrote {} for kernel {}: {} bytes ({} uncompressed), {} modules{}",
                o.output.display(),
                r.release,
                r.compressed_bytes,
                r.cpio_bytes,
                r.modules.len(),
                if r.skipped_hardware.is_empty() {
                    String::new()
                } else {
                    format!(" (not in this kernel: {})", r.skipped_hardware.join(", "))
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "lazarus-mkinitramfs: {}",
                format!("{e:#}").replace('\n', " ")
            );
            ExitCode::from(2)
        }
    }
}
