//! The restored filesystem's side of a restore: opening its root without following symlinks,
//! walking and creating directories beneath it, and checking, before anything is written,
//! that every path the archive writes meets only directories (or nothing) on the disk.
//!
//! It never follows a symlink: the root is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (or `O_NOFOLLOW` one component at a time where `openat2` is missing),
//! and every directory beneath it with `O_NOFOLLOW | O_DIRECTORY`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::BackupError;

pub(super) type Components = Vec<OsString>;

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

/// Opens the restore root: the directory `root` (relative; `/` or empty for the filesystem's
/// own root) inside the mounted filesystem `mount`, without following any symlink on the way.
/// `mount` is the caller's own mount point; only its last component is opened `O_NOFOLLOW`.
pub fn open_root(mount: &Path, root: &str) -> Result<OwnedFd, BackupError> {
    let shown = mount.join(root.trim_start_matches('/'));
    let fail = |e: Errno| restore_err(&shown.to_string_lossy(), e);
    let base = rustix::fs::open(mount, DIR_FLAGS, Mode::empty()).map_err(fail)?;
    let rel = Path::new(root.trim_matches('/'));
    let comps: Components = super::extract::clean(rel, root)?;
    if comps.is_empty() {
        return Ok(base);
    }
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let rel = PathBuf::from_iter(&comps);
    let opened = match rustix::fs::openat2(&base, &rel, DIR_FLAGS, Mode::empty(), resolve) {
        // No openat2 (Linux < 5.6, or a seccomp filter): the same, one component at a time.
        Err(Errno::NOSYS) | Err(Errno::PERM) => walk(&base, &comps, false),
        other => other,
    };
    match opened {
        Err(Errno::LOOP) | Err(Errno::XDEV) | Err(Errno::NOTDIR) => {
            Err(BackupError::UnsafeTarget {
                path: root.to_string(),
                reason: "the restore root is reached through a symlink or non-directory",
            })
        }
        other => other.map_err(fail),
    }
}

/// Opens the directory `comps` under `root` without following any symlink; creates missing
/// directories (mode 0755) when `create`.
pub(super) fn walk(root: &OwnedFd, comps: &[OsString], create: bool) -> Result<OwnedFd, Errno> {
    let mut dir = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty())?;
    for c in comps {
        dir = match rustix::fs::openat(&dir, c, DIR_FLAGS, Mode::empty()) {
            Err(Errno::NOENT) if create => {
                make_dir(&dir, c)?;
                rustix::fs::openat(&dir, c, DIR_FLAGS, Mode::empty())?
            }
            other => other?,
        };
    }
    Ok(dir)
}

/// Creates directory `name`, replacing a symlink or file of that name (never following it).
pub(super) fn make_dir(dir: &impl AsFd, name: &OsString) -> Result<(), Errno> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                return Ok(());
            }
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
        }
        other => other,
    }
}

pub(super) fn restore_err(path: &str, e: Errno) -> BackupError {
    let source = io::Error::from(e);
    let source = if e == Errno::LOOP || e == Errno::NOTDIR || e == Errno::XDEV {
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

/// What the disk holds at a path before the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    Missing,
    Dir,
    Symlink,
    Other,
}

/// The disk as it is before the restore, looked up path by path (its directories remembered);
/// nothing is ever written through it.
pub(super) struct DiskView<'r> {
    root: &'r OwnedFd,
    seen: HashMap<Components, OnDisk>,
}

impl<'r> DiskView<'r> {
    pub(super) fn new(root: &'r OwnedFd) -> Self {
        Self {
            root,
            seen: HashMap::new(),
        }
    }

    /// Checks that writing `comps` (a directory when `is_dir`) meets only directories or
    /// nothing on its way, and no directory where a non-directory goes. `replaced(prefix)` says
    /// whether a directory entry of the archive, earlier, replaced what the disk holds there
    /// (it does so without following it: see [`make_dir`]).
    pub(super) fn check(
        &mut self,
        comps: &[OsString],
        is_dir: bool,
        replaced: impl Fn(&[OsString]) -> bool,
    ) -> Result<(), BackupError> {
        for n in 1..=comps.len() {
            let prefix = &comps[..n];
            let shown = || PathBuf::from_iter(prefix).to_string_lossy().into_owned();
            let on_disk = self.lookup(prefix)?;
            if n == comps.len() {
                if on_disk == OnDisk::Dir && !is_dir {
                    return Err(BackupError::UnsafeTarget {
                        path: shown(),
                        reason: "a directory on the disk is where the archive puts a non-directory",
                    });
                }
                return Ok(());
            }
            match on_disk {
                OnDisk::Dir => {}
                // Created by the restore, so nothing beneath it exists yet.
                OnDisk::Missing => return Ok(()),
                _ if replaced(prefix) => return Ok(()),
                OnDisk::Symlink => {
                    return Err(BackupError::UnsafeTarget {
                        path: shown(),
                        reason: "a symlink on the disk is on the way (never followed)",
                    })
                }
                OnDisk::Other => {
                    return Err(BackupError::UnsafeTarget {
                        path: shown(),
                        reason: "a non-directory on the disk is on the way",
                    })
                }
            }
        }
        Ok(())
    }

    /// What the disk holds at `comps`, whose parent is known to be a directory or missing.
    fn lookup(&mut self, comps: &[OsString]) -> Result<OnDisk, BackupError> {
        if let Some(&k) = self.seen.get(comps) {
            return Ok(k);
        }
        let (parent, leaf) = comps.split_at(comps.len() - 1);
        let shown = PathBuf::from_iter(comps).to_string_lossy().into_owned();
        let kind = match walk(self.root, parent, false) {
            Err(Errno::NOENT) => OnDisk::Missing,
            Err(e) => return Err(restore_err(&shown, e)),
            Ok(dir) => match rustix::fs::statat(&dir, &leaf[0], AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => OnDisk::Missing,
                Err(e) => return Err(restore_err(&shown, e)),
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => OnDisk::Dir,
                    FileType::Symlink => OnDisk::Symlink,
                    _ => OnDisk::Other,
                },
            },
        };
        // Only directories are remembered: they are bounded by what the disk already holds,
        // whereas an archive can name any number of missing paths.
        if kind == OnDisk::Dir {
            self.seen.insert(comps.to_vec(), kind);
        }
        Ok(kind)
    }
}
