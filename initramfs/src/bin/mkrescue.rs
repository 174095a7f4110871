//! `lazarus-mkrescue --kernel VMLINUZ --initrd BASE [--initrd PART]... [--agent-key FILE]
//! [--cmdline TEXT] -o OUT.iso`:
//! rescue media from an already built kernel and initramfs, so a per-node or per-repair medium
//! (its own command line, an appended cpio) needs no rebuild of the base.

use std::path::PathBuf;
use std::process::ExitCode;

use lazarus_initramfs::iso::{build_iso, IsoOptions, DEFAULT_CMDLINE};

/// Writes a hybrid rescue ISO: boots on UEFI and legacy BIOS, as a CD and as a USB disk.
#[derive(clap::Parser)]
#[command(name = "lazarus-mkrescue", version)]
struct Cli {
    /// The rescue kernel.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs archives in load order: the base image first, then per-node parts.
    #[arg(long, required = true)]
    initrd: Vec<PathBuf>,
    /// A node's agent key: its part goes after the other archives (a node's medium).
    #[arg(long)]
    agent_key: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Where to write the image.
    #[arg(short, long)]
    output: PathBuf,
}

fn main() -> ExitCode {
    let cli: Cli = match lazarus_initramfs::cli::parse("lazarus-mkrescue") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let mut initrds = cli.initrd;
    // The part lives next to the output only while the image is made.
    let part = cli.output.with_extension("part.tmp");
    if let Some(key) = &cli.agent_key {
        if let Err(e) = lazarus_initramfs::write_agent_part(key, &part) {
            eprintln!("lazarus-mkrescue: {e}");
            return ExitCode::from(2);
        }
        initrds.push(part.clone());
    }
    let made = build_iso(&IsoOptions {
        kernel: cli.kernel,
        initrds,
        cmdline: cli.cmdline,
        output: cli.output.clone(),
    });
    let _ = std::fs::remove_file(&part);
    match made {
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
