//! Disk images for the lab, built without root: an ext4 filesystem from a folder
//! (`mkfs.ext4 -d`), a GPT (`sfdisk` on a file), and the flag partition.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub const MIB: u64 = 1 << 20;
/// Size of a lab node's disk.
pub const DISK_MIB: u64 = 64;
/// The system image covers the first 48 MiB of the disk.
pub const IMAGE_MIB: u64 = 48;
/// Partition 1 (root, ext4) starts at 1 MiB and is 44 MiB long.
pub const ROOT_MIB: u64 = 44;
/// Partition 2 (`lazarus-flag`, 1 MiB) lies at 60 MiB: past the image, so a recovered disk's
/// first 48 MiB equal the image byte for byte, and the flag survives the copy.
pub const FLAG_OFFSET: u64 = 60 * MIB;

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The lab's known-good system image, on an NFS export laid out as the controller expects.
pub struct WorkerImage {
    /// The export's root (`images/`, `backups/` below it).
    pub export: PathBuf,
    /// The files of the image's root filesystem.
    pub sysroot: PathBuf,
    /// `export/images/worker.img`.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Builds `dir/export/images/worker.img` (IMAGE_MIB long) from a small root filesystem
/// (`dir/sysroot`, an `/etc/os-release` naming the lab worker).
pub fn worker_image(dir: &Path) -> anyhow::Result<WorkerImage> {
    let export = dir.join("export");
    std::fs::create_dir_all(export.join("images"))?;
    let sysroot = dir.join("sysroot");
    std::fs::create_dir_all(sysroot.join("etc"))?;
    std::fs::write(sysroot.join("etc/os-release"), "NAME=lazarus-worker\n")?;
    let path = export.join("images/worker.img");
    build(&path, &sysroot, IMAGE_MIB)?;
    let bytes = std::fs::read(&path)?;
    Ok(WorkerImage {
        export,
        sysroot,
        path,
        bytes,
    })
}

/// Writes a disk image: GPT for a 64 MiB disk, partition 1 `root` (ext4 holding `files`),
/// partition 2 `lazarus-flag`; the file is cut to `len_mib` (48 for a system image).
pub fn build(out: &Path, files: &Path, len_mib: u64) -> anyhow::Result<()> {
    let part = out.with_extension("ext4");
    let _ = std::fs::remove_file(&part);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(files)
        .arg(&part)
        .arg(format!("{ROOT_MIB}M")))?;
    let _ = std::fs::remove_file(out);
    std::fs::File::create(out)?.set_len(DISK_MIB * MIB)?;
    let script = format!(
        "label: gpt\nstart=2048, size={}, type=L, name=root\nstart={}, size=2048, type=L, name=lazarus-flag\n",
        ROOT_MIB * 2048,
        FLAG_OFFSET / 512
    );
    let mut sf = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("sfdisk")?;
    sf.stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(script.as_bytes())?;
    let status = sf.wait()?;
    if !status.success() {
        bail!("sfdisk failed on {}", out.display());
    }
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc", "status=none"]))?;
    std::fs::remove_file(&part)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)?
        .set_len(len_mib * MIB)?;
    Ok(())
}
