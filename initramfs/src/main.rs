//! `lazarus-mkinitramfs --kernel-dir DIR --agent BIN --key-file FILE [--config agent.toml] -o OUT`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lazarus_initramfs::{build, BuildOptions};

/// Builds the Lazarus rescue initramfs: the static agent as /init, the kernel modules it needs,
/// the cluster key and the agent config; reproducible, no root needed.
#[derive(Parser)]
#[command(name = "lazarus-mkinitramfs", version)]
struct Cli {
    /// An unpacked kernel package (boot/config-*, lib/modules/*).
    #[arg(long)]
    kernel_dir: PathBuf,
    /// The static agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// The cluster key file (mode 0600).
    #[arg(long)]
    key_file: PathBuf,
    /// agent.toml to bake in (defaults otherwise).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to write the gzip newc archive.
    #[arg(short, long)]
    output: PathBuf,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "lazarus-mkinitramfs: {}",
                line.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let opts = BuildOptions {
        kernel_dir: cli.kernel_dir,
        agent: cli.agent,
        key_file: cli.key_file,
        config: cli.config,
        output: cli.output,
    };
    match build(&opts) {
        Ok(r) => {
            println!(
                "wrote {} for kernel {}: {} bytes ({} uncompressed), {} modules{}",
                opts.output.display(),
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
            eprintln!("lazarus-mkinitramfs: {e}");
            ExitCode::from(2)
        }
    }
}
