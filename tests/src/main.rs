//! `lazarus-lab up|down`: the lab network (namespace `lazarus-lab`, tap0 at 10.77.0.1/24) and
//! nfs-ganesha exporting `target/lab/export`, for trying the rescue boot by hand.

use std::process::ExitCode;

use lazarus_e2e::{Netns, Nfs};

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let result = match cmd.as_str() {
        "up" => up(),
        "down" => down(),
        _ => Err(anyhow::anyhow!("usage: lazarus-lab up|down")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazarus-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Stops the NFS server `up` started, by the pid it wrote (checked to still be ganesha), and
/// removes the namespace.
fn down() -> anyhow::Result<()> {
    let pid_file = lazarus_e2e::workspace().join("target/lab/up/ganesha.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file) {
        let pid: i32 = text.trim().parse()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("ganesha.nfsd") {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
            }
        }
        let _ = std::fs::remove_file(&pid_file);
    }
    drop(Netns {
        name: "lazarus-lab".into(),
    });
    println!("lab down");
    Ok(())
}

fn up() -> anyhow::Result<()> {
    let dir = lazarus_e2e::workspace().join("target/lab/up");
    let export = lazarus_e2e::workspace().join("target/lab/export");
    std::fs::create_dir_all(export.join("images"))?;
    std::fs::create_dir_all(export.join("backups"))?;
    std::fs::create_dir_all(&dir)?;
    let art = lazarus_e2e::artifacts(&dir)?;
    let ns = Netns::create("lazarus-lab")?;
    let nfs = Nfs::start(&ns, &dir, &export)?;
    println!(
        "lab up: namespace lazarus-lab, host 10.77.0.1 on tap0, NFS {}:/export = {}",
        lazarus_e2e::HOST_IP,
        export.display()
    );
    println!(
        "kernel {} initramfs {} (base {} bytes, then the node's part) signing key {} agent key {}",
        art.vmlinuz.display(),
        art.initramfs.display(),
        art.initramfs_bytes,
        art.signing_path.display(),
        art.key_path.display()
    );
    println!("boot a node: ip netns exec lazarus-lab qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \\");
    println!(
        "  -kernel {} -initrd {} -append 'console=ttyS0 panic=-1 lazarus.ip=10.77.0.2/24' \\",
        art.vmlinuz.display(),
        art.initramfs.display()
    );
    println!("  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0 -drive file=DISK,format=raw,if=virtio");
    // Keep the namespace and server when this process ends: `lazarus-lab down` removes them.
    std::mem::forget(nfs);
    std::mem::forget(ns);
    Ok(())
}
