//! Rescue media: a hybrid ISO 9660 image that boots the rescue kernel and initramfs on UEFI and on
//! legacy BIOS, from a (virtual) CD and written raw to a USB stick or disk.
//!
//! It is GRUB's `grub-mkrescue` (GRUB for BIOS and x86_64 EFI, xorriso, mtools) over a small tree:
//! `boot/vmlinuz`, `boot/initrd-N.img` and a `grub.cfg` that boots them at once on the serial
//! console and the screen. The base pieces (kernel and base initramfs) are inputs, so a per-node
//! or per-repair image (another kernel command line, an appended cpio with that node's part; the
//! kernel reads concatenated archives) is assembled in about a second without rebuilding them.
//!
//! Reproducible: the same inputs give the same bytes. xorriso takes fixed volume dates and UUID
//! (`-volume_date`, `-alter_date_r`), and the EFI system partition image that mtools formats gets
//! a fixed volume serial (`mformat -N`, through a wrapper found first on PATH), the one field that
//! otherwise differed between two builds (checked with `cmp -l`). No root is needed: nothing is
//! mounted and no loop device is used.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools the ISO needs, and the Debian packages that have them.
pub const TOOLS: &[(&str, &str)] = &[
    ("grub-mkrescue", "grub-common"),
    ("xorriso", "xorriso"),
    ("mformat", "mtools"),
];
/// GRUB's platform directories grub-mkrescue puts on the image, and their packages.
const PLATFORMS: &[(&str, &str)] = &[
    ("/usr/lib/grub/i386-pc", "grub-pc-bin"),
    ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
];
/// The kernel command line when none is given: the serial console and the screen, no reboot on
/// panic (the agent as PID 1 never exits; a panic is shown, not hidden by a reboot loop).
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=0";
/// The FAT volume serial of the embedded EFI system partition ("LZRS").
const EFI_SERIAL: &str = "4c5a5253";
/// Every date on the image: 2020-01-01 00:00:00 UTC.
const VOLUME_DATE: &str = "2020010100000000";
const FILE_DATE: &str = "Jan 1 00:00:00 2020";

/// What goes on the medium.
#[derive(Debug, Clone)]
pub struct IsoOptions {
    /// The rescue kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// Initramfs archives, loaded in this order and concatenated by GRUB: the base image first,
    /// then per-node or per-repair parts.
    pub initrds: Vec<PathBuf>,
    /// The kernel command line (`console=…`, `lazarus.ip=…`, `lazarus.controller=…`).
    pub cmdline: String,
    pub output: PathBuf,
}

/// Why no image was written.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("{tool} is not installed (apt-get install {package})")]
    MissingTool { tool: String, package: String },
    #[error("no initramfs given: the medium needs at least the base image")]
    NoInitrd,
    #[error("the kernel command line must be one line of printable characters without quotes, backslashes or '$'")]
    Cmdline,
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("grub-mkrescue failed: {0}")]
    Mkrescue(String),
}

/// Checks the tools are there; the error names the missing one and its package.
pub fn check_tools() -> Result<(), IsoError> {
    for (tool, package) in TOOLS {
        if find_on_path(tool).is_none() {
            return Err(IsoError::MissingTool {
                tool: (*tool).into(),
                package: (*package).into(),
            });
        }
    }
    for (dir, package) in PLATFORMS {
        if !Path::new(dir).is_dir() {
            return Err(IsoError::MissingTool {
                tool: format!("GRUB for {}", dir.rsplit('/').next().unwrap_or(dir)),
                package: (*package).into(),
            });
        }
    }
    Ok(())
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The `grub.cfg` that boots the rescue system at once, on the serial console and the screen.
pub fn grub_cfg(initrd_count: usize, cmdline: &str) -> String {
    let initrds: Vec<String> = (0..initrd_count)
        .map(|i| format!("/boot/initrd-{i}.img"))
        .collect();
    format!(
        "# Lazarus rescue medium (lazarus-mkrescue)\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=1\n\
         set default=0\n\
         menuentry \"Lazarus rescue\" {{\n\
         \x20 linux /boot/vmlinuz {cmdline}\n\
         \x20 initrd {}\n\
         }}\n",
        initrds.join(" ")
    )
}

fn check_cmdline(cmdline: &str) -> Result<(), IsoError> {
    let ok = cmdline
        .chars()
        .all(|c| (' '..='~').contains(&c) && !matches!(c, '"' | '\'' | '\\' | '$' | '`'));
    ok.then_some(()).ok_or(IsoError::Cmdline)
}

/// What an ISO build produced.
#[derive(Debug, Clone)]
pub struct IsoReport {
    pub bytes: u64,
}

/// Writes the hybrid image to `opts.output` (atomically: a temporary name, then rename).
pub fn build_iso(opts: &IsoOptions) -> Result<IsoReport, IsoError> {
    if opts.initrds.is_empty() {
        return Err(IsoError::NoInitrd);
    }
    check_cmdline(&opts.cmdline)?;
    check_tools()?;
    let work = tempdir(&opts.output)?;
    let result = assemble(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// A fresh private folder beside the output (same filesystem, so the rename is atomic).
fn tempdir(output: &Path) -> Result<PathBuf, IsoError> {
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = output
        .file_name()
        .map_or("rescue.iso".into(), |n| n.to_string_lossy());
    for attempt in 0..100u32 {
        let dir = parent.join(format!(".{name}.work-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(IsoError::Write(dir, e)),
        }
    }
    Err(IsoError::Write(
        parent.to_owned(),
        std::io::Error::other("no free temporary name"),
    ))
}

fn assemble(opts: &IsoOptions, work: &Path) -> Result<IsoReport, IsoError> {
    let tree = work.join("tree");
    let boot = tree.join("boot");
    let grub = boot.join("grub");
    std::fs::create_dir_all(&grub).map_err(|e| IsoError::Write(grub.clone(), e))?;
    let copy = |from: &Path, to: PathBuf| -> Result<(), IsoError> {
        std::fs::copy(from, &to)
            .map(drop)
            .map_err(|e| IsoError::Read(from.to_owned(), e))
    };
    copy(&opts.kernel, boot.join("vmlinuz"))?;
    for (i, initrd) in opts.initrds.iter().enumerate() {
        copy(initrd, boot.join(format!("initrd-{i}.img")))?;
    }
    let cfg = grub.join("grub.cfg");
    std::fs::write(&cfg, grub_cfg(opts.initrds.len(), &opts.cmdline))
        .map_err(|e| IsoError::Write(cfg.clone(), e))?;

    // mformat draws the EFI image's volume serial at random: a wrapper first on PATH fixes it.
    let wrap = work.join("bin");
    std::fs::create_dir(&wrap).map_err(|e| IsoError::Write(wrap.clone(), e))?;
    let mformat = find_on_path("mformat").ok_or(IsoError::MissingTool {
        tool: "mformat".into(),
        package: "mtools".into(),
    })?;
    let wrapper = wrap.join("mformat");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' -N {EFI_SERIAL} \"$@\"\n",
            mformat.display()
        ),
    )
    .map_err(|e| IsoError::Write(wrapper.clone(), e))?;
    set_mode(&wrapper, 0o755)?;
    let path = std::env::join_paths(
        std::iter::once(wrap.clone()).chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths),
        ),
    )
    .map_err(|e| IsoError::Write(wrap.clone(), std::io::Error::other(e)))?;

    let tmp = work.join("rescue.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&tmp)
        .arg(&tree)
        .arg("--")
        .args(["-volume_date", "uuid", VOLUME_DATE])
        .args(["-volume_date", "all_file_dates", "set_to_mtime"])
        .args(["-alter_date_r", "b", FILE_DATE, "/", "--"])
        .env("PATH", path)
        .env("SOURCE_DATE_EPOCH", "1577836800")
        .env("TZ", "UTC")
        .output()
        .map_err(|e| IsoError::Mkrescue(format!("running it: {e}")))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(IsoError::Mkrescue(last.trim().to_string()));
    }
    let bytes = std::fs::metadata(&tmp)
        .map_err(|e| IsoError::Read(tmp.clone(), e))?
        .len();
    // No more readable than its least readable input: a node's part (its agent key, 0600)
    // makes a medium only its owner may read.
    let private = opts.initrds.iter().any(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o044 == 0
        })
    });
    set_mode(&tmp, if private { 0o600 } else { 0o644 })?;
    std::fs::rename(&tmp, &opts.output).map_err(|e| IsoError::Write(opts.output.clone(), e))?;
    Ok(IsoReport { bytes })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), IsoError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| IsoError::Write(path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_boots_every_initrd_in_order_on_serial_and_screen() {
        let cfg = grub_cfg(2, "console=ttyS0 lazarus.ip=10.0.0.5/24");
        assert!(cfg.contains("linux /boot/vmlinuz console=ttyS0 lazarus.ip=10.0.0.5/24\n"));
        assert!(cfg.contains("initrd /boot/initrd-0.img /boot/initrd-1.img\n"));
        assert!(cfg.contains("terminal_output console serial"));
        assert!(cfg.contains("set timeout=1"));
    }

    #[test]
    fn a_command_line_that_could_escape_grub_cfg_is_refused() {
        for bad in [
            "a\nmenuentry",
            "a\" b",
            "a'b",
            "$(x)",
            "a\\b",
            "`x`",
            "é",
            "a\tb",
        ] {
            assert!(
                matches!(check_cmdline(bad), Err(IsoError::Cmdline)),
                "{bad:?}"
            );
        }
        assert!(check_cmdline("console=ttyS0,115200 lazarus.ip=10.0.0.5/24,10.0.0.1").is_ok());
    }

    #[test]
    fn no_initrd_is_refused_before_anything_runs() {
        let err = build_iso(&IsoOptions {
            kernel: "/nonexistent".into(),
            initrds: vec![],
            cmdline: String::new(),
            output: "/nonexistent/out.iso".into(),
        })
        .unwrap_err();
        assert!(matches!(err, IsoError::NoInitrd), "{err}");
    }
}
