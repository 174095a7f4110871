//! `lazarus-mkinitramfs --kernel-dir DIR --agent BIN --controller-pub FILE [--config agent.toml]
//! -o OUT [--agent-key FILE --part PART] [--iso FILE [--cmdline TEXT]]`

use std::path::PathBuf;
use std::process::ExitCode;

use lazarus_initramfs::{build, BuildOptions};

/// Builds the Lazarus rescue initramfs: the static agent as /init, the kernel modules it needs,
/// the controller's public key and the agent config (a public image); reproducible, no root
/// needed. With --agent-key, also a node's part holding that agent key.
#[derive(clap::Parser)]
#[command(name = "lazarus-mkinitramfs", version)]
struct Cli {
    /// An unpacked kernel package (boot/config-*, lib/modules/*).
    #[arg(long)]
    kernel_dir: PathBuf,
    /// The static agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// The controller's public key file (`lazarus keygen --controller`).
    #[arg(long)]
    controller_pub: PathBuf,
    /// A node's agent key (mode 0600): write its part to --part, and add it to the --iso.
    #[arg(long, requires = "part")]
    agent_key: Option<PathBuf>,
    /// Where to write the node's part (an uncompressed cpio, mode 0600).
    #[arg(long, requires = "agent_key")]
    part: Option<PathBuf>,
    /// agent.toml to bake in (defaults otherwise).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to write the gzip newc archive.
    #[arg(short, long)]
    output: PathBuf,
    /// Also write a hybrid rescue ISO (UEFI and BIOS, CD and USB disk) with the kernel and it.
    #[arg(long)]
    iso: Option<PathBuf>,
    /// The kernel command line of the ISO.
    #[arg(long, default_value = lazarus_initramfs::iso::DEFAULT_CMDLINE, requires = "iso")]
    cmdline: String,
}

fn main() -> ExitCode {
    let cli: Cli = match lazarus_initramfs::cli::parse("lazarus-mkinitramfs") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let opts = BuildOptions {
        kernel_dir: cli.kernel_dir.clone(),
        agent: cli.agent.clone(),
        controller_pub: cli.controller_pub.clone(),
        config: cli.config.clone(),
        output: cli.output.clone(),
    };
    match build(&opts).map_err(|e| e.to_string()).and_then(|r| {
        let mut initrds = vec![opts.output.clone()];
        if let (Some(key), Some(part)) = (&cli.agent_key, &cli.part) {
            lazarus_initramfs::write_agent_part(key, part).map_err(|e| e.to_string())?;
            println!("wrote {} (the node's part: its agent key)", part.display());
            initrds.push(part.clone());
        }
        let Some(iso) = &cli.iso else {
            return Ok(r);
        };
        let kernel = opts.kernel_dir.join(format!("boot/vmlinuz-{}", r.release));
        let made = lazarus_initramfs::iso::build_iso(&lazarus_initramfs::iso::IsoOptions {
            kernel,
            initrds,
            cmdline: cli.cmdline.clone(),
            output: iso.clone(),
        })
        .map_err(|e| e.to_string())?;
        println!("wrote {} ({} bytes)", iso.display(), made.bytes);
        Ok(r)
    }) {
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
