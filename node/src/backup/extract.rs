//! Safe extraction of a backup archive into a restored filesystem.
//!
//! Nothing may be written outside the target root, whatever the archive holds and whatever the
//! restored filesystem already holds:
//!
//! - entry paths that are absolute or contain `..` are refused, as are entries whose path runs
//!   through a symlink the archive itself created; a first pass ([`scan_archive`]) checks every
//!   entry before anything is written;
//! - while writing, every directory on the way is opened relative to the root with
//!   `O_NOFOLLOW | O_DIRECTORY`, and files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so a
//!   symlink already on the disk cannot redirect a write either.
//!
//! Modes, owners (numeric), symlinks, hard links and mtimes are kept. Directory metadata is
//! applied last, deepest first, since creating children changes a directory's mtime.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::BackupError;

/// What an extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Entries of other kinds (devices, fifos) or outside the selected paths.
    pub skipped: u64,
}

type Components = Vec<OsString>;

/// Splits an entry path into plain components, refusing absolute paths and `..`.
fn clean(path: &Path, entry: &str) -> Result<Components, BackupError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(BackupError::UnsafeEntry {
                    entry: entry.into(),
                    reason: "path contains `..`",
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(BackupError::UnsafeEntry {
                    entry: entry.into(),
                    reason: "absolute path",
                })
            }
        }
    }
    Ok(out)
}

fn selected(comps: &[OsString], only: &[Components]) -> bool {
    only.is_empty() || only.iter().any(|o| comps.starts_with(o))
}

/// One checked entry: its components and kind.
struct Checked {
    comps: Components,
    link: Option<Components>,
}

/// Checks one entry against the rules; `symlinks` collects the archive's symlinks so far.
fn check_entry(
    entry: &tar::Entry<impl Read>,
    symlinks: &mut HashSet<Components>,
) -> Result<Option<Checked>, BackupError> {
    let raw = entry
        .path()
        .map_err(|e| BackupError::Corrupt(e.to_string()))?;
    let name = raw.to_string_lossy().into_owned();
    let comps = clean(&raw, &name)?;
    if comps.is_empty() {
        return Ok(None);
    }
    for n in 1..comps.len() {
        if symlinks.contains(&comps[..n]) {
            return Err(BackupError::UnsafeEntry {
                entry: name,
                reason: "path runs through a symlink in the archive",
            });
        }
    }
    let kind = entry.header().entry_type();
    let link = if kind.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(|e| BackupError::Corrupt(e.to_string()))?
            .ok_or_else(|| BackupError::Corrupt(format!("hard link {name} has no target")))?;
        let t = clean(&target, &name)?;
        if t.is_empty() || (1..=t.len()).any(|n| symlinks.contains(&t[..n])) {
            return Err(BackupError::UnsafeEntry {
                entry: name,
                reason: "hard link target leaves the archive's files",
            });
        }
        Some(t)
    } else {
        None
    };
    if kind.is_symlink() {
        symlinks.insert(comps.clone());
    }
    Ok(Some(Checked { comps, link }))
}

/// First pass: checks every entry of a `tar` stream; returns the number of entries.
pub fn scan_archive(tar_stream: impl Read) -> Result<u64, BackupError> {
    let mut archive = tar::Archive::new(tar_stream);
    let mut symlinks = HashSet::new();
    let mut count = 0;
    for entry in archive
        .entries()
        .map_err(|e| BackupError::Corrupt(e.to_string()))?
    {
        let entry = entry.map_err(|e| BackupError::Corrupt(e.to_string()))?;
        check_entry(&entry, &mut symlinks)?;
        count += 1;
    }
    Ok(count)
}

/// Second pass: extracts a `tar` stream under `dest`, restoring only entries under `only` (all
/// when empty). Call [`scan_archive`] on the same bytes first.
pub fn extract_archive(
    tar_stream: impl Read,
    dest: &Path,
    only: &[String],
) -> Result<ExtractReport, BackupError> {
    let only: Vec<Components> = only
        .iter()
        .map(|o| clean(Path::new(o.trim_start_matches('/')), o))
        .collect::<Result<_, _>>()?;
    let root = rustix::fs::open(
        dest,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| restore_err(&dest.to_string_lossy(), e))?;
    let is_root = rustix::process::geteuid().is_root();
    let mut archive = tar::Archive::new(tar_stream);
    let mut symlinks = HashSet::new();
    let mut report = ExtractReport::default();
    let mut dirs: Vec<(Components, u32, u32, u32, u64)> = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| BackupError::Corrupt(e.to_string()))?
    {
        let mut entry = entry.map_err(|e| BackupError::Corrupt(e.to_string()))?;
        let Some(Checked { comps, link }) = check_entry(&entry, &mut symlinks)? else {
            continue;
        };
        if !selected(&comps, &only) {
            report.skipped += 1;
            continue;
        }
        let shown = PathBuf::from_iter(&comps).to_string_lossy().into_owned();
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| BackupError::Corrupt(e.to_string()))?
            & 0o7777;
        let uid = header
            .uid()
            .map_err(|e| BackupError::Corrupt(e.to_string()))? as u32;
        let gid = header
            .gid()
            .map_err(|e| BackupError::Corrupt(e.to_string()))? as u32;
        let mtime = header
            .mtime()
            .map_err(|e| BackupError::Corrupt(e.to_string()))?;
        let kind = header.entry_type();
        let (parent, leaf) = comps.split_at(comps.len() - 1);
        let leaf = &leaf[0];
        let dir = walk(&root, parent, true).map_err(|e| restore_err(&shown, e))?;
        let owner = |r: Result<(), Errno>| match r {
            Err(Errno::PERM) if !is_root => Ok(()), // host-mode tests without root keep our uid
            other => other,
        };
        if kind.is_dir() {
            make_dir(&dir, leaf).map_err(|e| restore_err(&shown, e))?;
            dirs.push((comps.clone(), mode, uid, gid, mtime));
            report.dirs += 1;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            remove_non_dir(&dir, leaf).map_err(|e| restore_err(&shown, e))?;
            let fd = rustix::fs::openat(
                &dir,
                leaf,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| restore_err(&shown, e))?;
            let mut file = File::from(fd);
            report.bytes +=
                io::copy(&mut entry, &mut file).map_err(|source| BackupError::Restore {
                    path: shown.clone(),
                    source,
                })?;
            owner(rustix::fs::fchown(
                &file,
                Some(uid_of(uid)),
                Some(gid_of(gid)),
            ))
            .map_err(|e| restore_err(&shown, e))?;
            rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                .map_err(|e| restore_err(&shown, e))?;
            rustix::fs::futimens(&file, &times(mtime)).map_err(|e| restore_err(&shown, e))?;
            report.files += 1;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| BackupError::Corrupt(e.to_string()))?
                .ok_or_else(|| BackupError::Corrupt(format!("symlink {shown} has no target")))?;
            remove_non_dir(&dir, leaf).map_err(|e| restore_err(&shown, e))?;
            rustix::fs::symlinkat(target.as_ref(), &dir, leaf)
                .map_err(|e| restore_err(&shown, e))?;
            owner(rustix::fs::chownat(
                &dir,
                leaf,
                Some(uid_of(uid)),
                Some(gid_of(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ))
            .map_err(|e| restore_err(&shown, e))?;
            rustix::fs::utimensat(&dir, leaf, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| restore_err(&shown, e))?;
            report.symlinks += 1;
        } else if let (true, Some(target)) = (kind.is_hard_link(), link) {
            let (tparent, tleaf) = target.split_at(target.len() - 1);
            let tdir = walk(&root, tparent, false).map_err(|e| restore_err(&shown, e))?;
            remove_non_dir(&dir, leaf).map_err(|e| restore_err(&shown, e))?;
            rustix::fs::linkat(&tdir, &tleaf[0], &dir, leaf, AtFlags::empty())
                .map_err(|e| restore_err(&shown, e))?;
            report.hardlinks += 1;
        } else {
            log::warn!("restore: skipping {shown}: entry type {kind:?} is not restored");
            report.skipped += 1;
        }
    }
    // Directory metadata last, deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    for (comps, mode, uid, gid, mtime) in dirs {
        let shown = PathBuf::from_iter(&comps).to_string_lossy().into_owned();
        let fd = walk(&root, &comps, false).map_err(|e| restore_err(&shown, e))?;
        match rustix::fs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(gid))) {
            Err(Errno::PERM) if !is_root => {}
            other => other.map_err(|e| restore_err(&shown, e))?,
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| restore_err(&shown, e))?;
        rustix::fs::futimens(&fd, &times(mtime)).map_err(|e| restore_err(&shown, e))?;
    }
    Ok(report)
}

fn restore_err(path: &str, e: Errno) -> BackupError {
    let source = io::Error::from(e);
    let source = if e == Errno::LOOP || e == Errno::NOTDIR {
        io::Error::new(
            source.kind(),
            format!("{source} (a symlink or file on the way; refusing to follow it)"),
        )
    } else {
        source
    };
    BackupError::Restore {
        path: path.to_string(),
        source,
    }
}

/// Opens the directory `comps` under `root` without following any symlink; creates missing
/// directories (mode 0755) when `create`.
fn walk(root: &OwnedFd, comps: &[OsString], create: bool) -> Result<OwnedFd, Errno> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(root, ".", flags, Mode::empty())?;
    for c in comps {
        dir = match rustix::fs::openat(&dir, c, flags, Mode::empty()) {
            Err(Errno::NOENT) if create => {
                make_dir(&dir, c)?;
                rustix::fs::openat(&dir, c, flags, Mode::empty())?
            }
            other => other?,
        };
    }
    Ok(dir)
}

/// Creates directory `name`, replacing a symlink or file of that name (never following it).
fn make_dir(dir: &impl AsFd, name: &OsString) -> Result<(), Errno> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
                return Ok(());
            }
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
        }
        other => other,
    }
}

/// Removes a non-directory `name` so a new entry can take its place; a directory is an error.
fn remove_non_dir(dir: &impl AsFd, name: &OsString) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => Err(Errno::ISDIR),
        Err(e) => Err(e),
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid_of(uid: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(gid)
}
