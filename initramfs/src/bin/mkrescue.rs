//! `lazarus-mkrescue --kernel VMLINUZ --initrd BASE [--initrd PART]... [--cmdline TEXT] -o OUT.iso`:
//! rescue media from an already built kernel and initramfs, so a per-node or per-repair medium
//! (its own command line, an appended cpio) needs no rebuild of the base.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lazarus_initramfs::iso::{build_iso, IsoOptions, DEFAULT_CMDLINE};

/// Writes a hybrid rescue ISO: boots on UEFI and legacy BIOS, as a CD and as a USB disk.
#[derive(Parser)]
#[command(name = "lazarus-mkrescue", version)]
struct Cli {
    /// The rescue kernel.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs archives in load order: the base image first, then per-node parts.
    #[arg(long, required = true)]
    initrd: Vec<PathBuf>,
    /// The kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Where to write the image.
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
            eprintln!("lazarus-mkrescue: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match build_iso(&IsoOptions {
        kernel: cli.kernel,
        initrds: cli.initrd,
        cmdline: cli.cmdline,
        output: cli.output.clone(),
    }) {
        Ok(r) => {
            println!("wrote {} ({} bytes)", cli.output.display(), r.bytes);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lazarus-mkrescue: {e}");
            ExitCode::from(2)
        }
    }
}
