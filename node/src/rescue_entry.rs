//! The seed's rescue entry: the rescue kernel and initramfs as a boot entry on the node's own EFI
//! system partition, and a way to boot it once.
//!
//! - [`install`] copies the kernel and initramfs to `ESP/EFI/lazarus/` and writes the Boot Loader
//!   Specification entry `ESP/loader/entries/lazarus-rescue.conf` (systemd-boot reads it). Each
//!   file is written to a temporary name, synced and renamed, so a power cut leaves the old entry
//!   or the new one, never half of one. It refuses an ESP whose `loader.conf` could pick the
//!   rescue entry as the default boot (no `default`, `@saved`, or a glob that matches it): a node
//!   that boots its rescue kernel every time is worse than one without a rescue entry.
//! - [`boot_once`] sets systemd-boot's `LoaderEntryOneShot` EFI variable: the next boot, and only
//!   that one, starts the rescue entry (systemd-boot deletes the variable as it reads it). It
//!   first checks the entry is on the ESP and that systemd-boot booted this system (its
//!   `LoaderInfo` variable): otherwise the variable would be ignored and the node would come back
//!   into its broken system while the operator waits for a rescue agent.
//!
//! Both take their roots (the ESP's mount point, the efivarfs folder) as arguments, so the same
//! code builds a golden image's ESP offline and arms a running node.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The entry's file name under `loader/entries/` (its id for systemd-boot).
pub const ENTRY_ID: &str = "lazarus-rescue.conf";
/// Where the kernel and initramfs go, relative to the ESP.
pub const DIR: &str = "EFI/lazarus";
/// The efivarfs folder of a running Linux system.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// The vendor GUID of systemd-boot's variables (the Boot Loader Interface).
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const VAR_ATTRIBUTES: u32 = 0x7;

/// Why the rescue entry could not be installed or armed.
#[derive(Debug, thiserror::Error)]
pub enum RescueError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no loader/ folder, so not an ESP set up for systemd-boot")]
    NotSystemdBoot(PathBuf),
    #[error("{0} names no default entry, so systemd-boot could pick the rescue entry on every boot: set `default` to the system's entry first")]
    NoDefault(PathBuf),
    #[error("{path}: `default {pattern}` could select the rescue entry on every boot")]
    DefaultMatchesRescue { path: PathBuf, pattern: String },
    #[error("the command line contains a line break")]
    BadCmdline,
    #[error("no rescue entry on {0} (run `lazarus rescue install` first)")]
    NotInstalled(PathBuf),
    #[error("systemd-boot did not boot this system (no LoaderInfo variable in {0}), so it would ignore a one-time entry")]
    NotBootedBySystemdBoot(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RescueError + '_ {
    move |source| RescueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to install.
pub struct Install<'a> {
    /// The ESP's mount point (or a folder that becomes one).
    pub esp: &'a Path,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    /// The kernel command line (the agent reads `lazarus.*` options from it).
    pub cmdline: &'a str,
}

/// Installs (or replaces) the rescue entry; returns the entry's path.
pub fn install(spec: &Install) -> Result<PathBuf, RescueError> {
    if spec.cmdline.contains(['\n', '\r']) {
        return Err(RescueError::BadCmdline);
    }
    let loader = spec.esp.join("loader");
    if !loader.is_dir() {
        return Err(RescueError::NotSystemdBoot(spec.esp.to_path_buf()));
    }
    check_default(&loader.join("loader.conf"))?;
    let dir = spec.esp.join(DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let entries = loader.join("entries");
    std::fs::create_dir_all(&entries).map_err(io(&entries))?;
    for (from, name) in [(spec.kernel, "vmlinuz"), (spec.initramfs, "initramfs.img")] {
        let bytes = std::fs::read(from).map_err(io(from))?;
        replace(&dir.join(name), &bytes)?;
    }
    let entry = entries.join(ENTRY_ID);
    replace(&entry, entry_text(spec.cmdline).as_bytes())?;
    Ok(entry)
}

/// The entry file: no `sort-key` and no `version`, so it sorts after the system's own entries.
pub fn entry_text(cmdline: &str) -> String {
    format!(
        "title Lazarus rescue\nlinux /{DIR}/vmlinuz\ninitrd /{DIR}/initramfs.img\noptions {cmdline}\n"
    )
}

/// Removes the entry and its files; true if there was one.
pub fn remove(esp: &Path) -> Result<bool, RescueError> {
    let entry = esp.join("loader/entries").join(ENTRY_ID);
    let found = entry.exists();
    for path in [
        entry,
        esp.join(DIR).join("vmlinuz"),
        esp.join(DIR).join("initramfs.img"),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    let _ = std::fs::remove_dir(esp.join(DIR));
    sync_dir(&esp.join("loader/entries"))?;
    Ok(found)
}

/// Arms the next boot, once, to start the rescue entry (see the module docs).
pub fn boot_once(esp: &Path, efivars: &Path) -> Result<(), RescueError> {
    if !esp.join("loader/entries").join(ENTRY_ID).is_file() {
        return Err(RescueError::NotInstalled(esp.to_path_buf()));
    }
    if !efivars.join(var_name("LoaderInfo")).exists() {
        return Err(RescueError::NotBootedBySystemdBoot(efivars.to_path_buf()));
    }
    write_var(&efivars.join(var_name("LoaderEntryOneShot")), ENTRY_ID)
}

/// The entry armed for the next boot, if any.
pub fn armed(efivars: &Path) -> Result<Option<String>, RescueError> {
    let path = efivars.join(var_name("LoaderEntryOneShot"));
    match std::fs::read(&path) {
        Ok(bytes) => Ok(decode_var(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

fn var_name(name: &str) -> String {
    format!("{name}-{LOADER_GUID}")
}

/// An efivarfs file's bytes: the attributes, then the value as NUL-terminated UTF-16LE.
pub fn encode_var(value: &str) -> Vec<u8> {
    let mut out = VAR_ATTRIBUTES.to_le_bytes().to_vec();
    for unit in value.encode_utf16().chain([0]) {
        out.extend(unit.to_le_bytes());
    }
    out
}

/// The string in an efivarfs file's bytes, or `None` if they are not one.
pub fn decode_var(bytes: &[u8]) -> Option<String> {
    let units: Vec<u16> = bytes
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Writes an EFI variable through efivarfs: one write(2) (efivarfs takes nothing else), after
/// clearing the immutable flag the kernel puts on variables it did not create itself.
fn write_var(path: &Path, value: &str) -> Result<(), RescueError> {
    if let Ok(file) = File::open(path) {
        if let Ok(flags) = rustix::fs::ioctl_getflags(&file) {
            if flags.contains(rustix::fs::IFlags::IMMUTABLE) {
                rustix::fs::ioctl_setflags(&file, flags - rustix::fs::IFlags::IMMUTABLE)
                    .map_err(|e| io(path)(e.into()))?;
            }
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false) // efivarfs replaces the whole variable on each write; it cannot truncate
        .mode(0o644)
        .open(path)
        .map_err(io(path))?;
    let bytes = encode_var(value);
    let n = file.write(&bytes).map_err(io(path))?;
    if n != bytes.len() {
        return Err(io(path)(std::io::Error::other("short write")));
    }
    Ok(())
}

/// Refuses a `loader.conf` that could let systemd-boot choose the rescue entry by default.
fn check_default(conf: &Path) -> Result<(), RescueError> {
    let text = match std::fs::read_to_string(conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(conf)(e)),
    };
    let pattern = text.lines().rev().find_map(|l| {
        let mut words = l.trim().splitn(2, char::is_whitespace);
        (words.next() == Some("default")).then(|| words.next().unwrap_or("").trim().to_string())
    });
    match pattern {
        None => Err(RescueError::NoDefault(conf.to_path_buf())),
        Some(p)
            if p.is_empty()
                || p.starts_with('@')
                || glob_matches(&p, ENTRY_ID)
                || glob_matches(&p, ENTRY_ID.trim_end_matches(".conf")) =>
        {
            Err(RescueError::DefaultMatchesRescue {
                path: conf.to_path_buf(),
                pattern: p,
            })
        }
        Some(_) => Ok(()),
    }
}

/// Shell-style glob match with `*` and `?`; a `[` class is taken to match any one character, so
/// a pattern is only ever judged to match more names than it does (the safe side here).
fn glob_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('[') => {
                let end = p.iter().position(|&c| c == ']').unwrap_or(p.len() - 1);
                !n.is_empty() && go(&p[end + 1..], &n[1..])
            }
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

/// Writes `path` whole or not at all: a temporary file, synced, renamed over it, the folder synced.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), RescueError> {
    let tmp = path.with_extension("lazarus-tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

fn sync_dir(dir: &Path) -> Result<(), RescueError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp(loader_conf: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("loader/entries")).unwrap();
        if let Some(text) = loader_conf {
            std::fs::write(dir.path().join("loader/loader.conf"), text).unwrap();
        }
        dir
    }

    /// A kernel and an initramfs to install.
    struct Files {
        _dir: tempfile::TempDir,
        kernel: PathBuf,
        initramfs: PathBuf,
    }

    fn spec<'a>(esp: &'a Path, files: &'a Files) -> Install<'a> {
        Install {
            esp,
            kernel: &files.kernel,
            initramfs: &files.initramfs,
            cmdline: "console=ttyS0 lazarus.controller=10.0.0.1:7461",
        }
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, initramfs) = (dir.path().join("k"), dir.path().join("i"));
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        std::fs::write(&initramfs, b"initramfs bytes").unwrap();
        Files {
            _dir: dir,
            kernel,
            initramfs,
        }
    }

    #[test]
    fn install_writes_the_files_and_an_entry_naming_them() {
        let (esp, files) = (esp(Some("default debian.conf\ntimeout 0\n")), files());
        let entry = install(&spec(esp.path(), &files)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&entry).unwrap(),
            "title Lazarus rescue\nlinux /EFI/lazarus/vmlinuz\ninitrd /EFI/lazarus/initramfs.img\n\
             options console=ttyS0 lazarus.controller=10.0.0.1:7461\n"
        );
        assert_eq!(
            std::fs::read(esp.path().join("EFI/lazarus/vmlinuz")).unwrap(),
            b"kernel bytes"
        );
        assert_eq!(
            std::fs::read(esp.path().join("EFI/lazarus/initramfs.img")).unwrap(),
            b"initramfs bytes"
        );
        let names: Vec<_> = std::fs::read_dir(esp.path().join("EFI/lazarus"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        // Installing again replaces it; removing takes everything away.
        install(&spec(esp.path(), &files)).unwrap();
        assert!(remove(esp.path()).unwrap());
        assert!(!entry.exists() && !esp.path().join(DIR).exists());
        assert!(!remove(esp.path()).unwrap());
    }

    #[test]
    fn install_refuses_a_loader_that_could_boot_the_rescue_entry_by_default() {
        let files = files();
        for conf in [
            None,
            Some("timeout 3\n"),
            Some("default @saved\n"),
            Some("default *\n"),
            Some("default lazarus*\n"),
            Some("default debian.conf\ndefault l?zarus-rescue\n"),
            Some("default [a-z]azarus-rescue.conf\n"),
            Some("default\n"),
        ] {
            let esp = esp(conf);
            let err = install(&spec(esp.path(), &files)).unwrap_err();
            assert!(
                matches!(
                    err,
                    RescueError::NoDefault(_) | RescueError::DefaultMatchesRescue { .. }
                ),
                "{conf:?}: {err}"
            );
            assert!(!esp.path().join(DIR).exists(), "{conf:?}: nothing written");
        }
        for conf in ["default debian.conf\n", "default *-6.1.*\n", "default d*\n"] {
            let esp = esp(Some(conf));
            install(&spec(esp.path(), &files)).unwrap();
        }
    }

    #[test]
    fn install_refuses_an_esp_without_systemd_boot_and_a_multi_line_cmdline() {
        let (dir, files) = (tempfile::tempdir().unwrap(), files());
        let err = install(&spec(dir.path(), &files)).unwrap_err();
        assert!(matches!(err, RescueError::NotSystemdBoot(_)), "{err}");
        let esp = esp(Some("default debian.conf\n"));
        let mut s = spec(esp.path(), &files);
        s.cmdline = "quiet\ninitrd /evil";
        assert!(matches!(install(&s), Err(RescueError::BadCmdline)));
    }

    #[test]
    fn efi_variables_are_attributes_then_nul_terminated_utf16le() {
        let bytes = encode_var("ab.c");
        assert_eq!(
            bytes,
            [7, 0, 0, 0, b'a', 0, b'b', 0, b'.', 0, b'c', 0, 0, 0]
        );
        assert_eq!(decode_var(&bytes).as_deref(), Some("ab.c"));
        assert_eq!(decode_var(&[7, 0, 0, 0]).as_deref(), Some(""));
        assert_eq!(decode_var(&[7, 0]), None);
    }

    #[test]
    fn boot_once_arms_the_entry_only_where_systemd_boot_will_read_it() {
        let (esp, files, vars) = (
            esp(Some("default debian.conf\n")),
            files(),
            tempfile::tempdir().unwrap(),
        );
        let err = boot_once(esp.path(), vars.path()).unwrap_err();
        assert!(matches!(err, RescueError::NotInstalled(_)), "{err}");
        install(&spec(esp.path(), &files)).unwrap();
        let err = boot_once(esp.path(), vars.path()).unwrap_err();
        assert!(
            matches!(err, RescueError::NotBootedBySystemdBoot(_)),
            "{err}"
        );
        assert_eq!(armed(vars.path()).unwrap(), None);
        std::fs::write(vars.path().join(var_name("LoaderInfo")), encode_var("sd")).unwrap();
        boot_once(esp.path(), vars.path()).unwrap();
        assert_eq!(armed(vars.path()).unwrap().as_deref(), Some(ENTRY_ID));
    }
}
