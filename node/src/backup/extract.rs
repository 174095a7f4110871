//! Safe extraction of a backup archive into a restored filesystem.
//!
//! Nothing may be written outside the target root, whatever the archive holds and whatever the
//! restored filesystem already holds, and a refused restore writes nothing. So a restore reads
//! the archive twice (from the one verified copy in memory, never from the share again):
//!
//! 1. [`check_archive`] writes nothing. It checks every member: paths that are absolute, hold
//!    `..`, or run through a symlink or file of the archive are refused; a hard link must name
//!    a regular file the same restore writes earlier (so never a file already on the disk, nor
//!    one outside the selected paths); devices, fifos and other kinds that are not restored are
//!    listed, and refused if the plan makes them fatal. It also checks the disk's side of every
//!    path ([`super::disk::DiskView`]): a symlink or file on the way, or a directory where a
//!    file goes, refuses the restore before its first entry is written.
//! 2. [`extract_archive`] writes, making the same decisions in the same order. Every directory
//!    on the way is still opened with `O_NOFOLLOW | O_DIRECTORY` and files are created with
//!    `O_CREAT | O_EXCL | O_NOFOLLOW`, so even a disk that changed in between cannot redirect a
//!    write.
//!
//! Modes (setuid and setgid stripped from files unless the plan allows them), owners (numeric),
//! symlinks, hard links and mtimes are kept. Directory metadata is applied last, deepest first,
//! since creating children changes a directory's mtime.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use lazarus_proto::Unrestorable;
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tar::EntryType;

use super::disk::{make_dir, restore_err, walk, Components, DiskView};
use super::members::{for_each_member, Member};
use super::BackupError;

/// How many unrestored entries a report names (the rest are counted).
pub const MAX_LISTED: usize = 16;
const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;
/// The most path bytes the checks remember (every restored path, once): 128 MiB, about a
/// million paths of a hundred bytes. An archive naming more is refused rather than letting a
/// small, well-compressed archive of many long names exhaust PID 1's memory.
const MAX_REMEMBERED: usize = 128 << 20;

/// What a restore may do beyond the safe default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractOptions<'a> {
    /// Paths within the backup to restore; empty restores everything.
    pub paths: &'a [String],
    /// Keep setuid and setgid bits on files (stripped otherwise).
    pub allow_setid: bool,
    /// What an entry that is not restored (device, fifo, ...) does to the restore.
    pub unrestorable: Unrestorable,
}

/// What an extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Entries outside the selected paths.
    pub skipped: u64,
    /// Entries within the selected paths that are not restored (devices, fifos, ...).
    pub unrestored_count: u64,
    /// The first [`MAX_LISTED`] of them, as `path (kind)`.
    pub unrestored: Vec<String>,
    /// Files whose setuid or setgid bit was dropped.
    pub setid_stripped: u64,
}

impl ExtractReport {
    /// The unrestored entries in one line: `3 entries not restored: dev/sda (block device), ...`
    /// (`1 entry` for one).
    pub fn unrestored_line(&self) -> Option<String> {
        if self.unrestored_count == 0 {
            return None;
        }
        let more = self.unrestored_count - self.unrestored.len() as u64;
        let mut line = format!(
            "{} {} not restored: {}",
            self.unrestored_count,
            if self.unrestored_count == 1 {
                "entry"
            } else {
                "entries"
            },
            self.unrestored.join(", ")
        );
        if more > 0 {
            line.push_str(&format!(" and {more} more"));
        }
        Some(line)
    }

    fn note_unrestored(&mut self, shown: String, kind: &str) {
        self.unrestored_count += 1;
        if self.unrestored.len() < MAX_LISTED {
            self.unrestored.push(format!("{shown} ({kind})"));
        }
    }
}

/// Splits an entry path into plain components, refusing absolute paths and `..`.
/// Also refuses what no Linux filesystem can hold: a path over `PATH_MAX` (4096 bytes) or a
/// component over `NAME_MAX` (255), which bounds the depth of a path and what the checks keep.
pub(super) fn clean(path: &Path, entry: &str) -> Result<Components, BackupError> {
    if path.as_os_str().len() > PATH_MAX {
        return Err(BackupError::UnsafeEntry {
            entry: entry.chars().take(64).collect::<String>() + "...",
            reason: "path longer than PATH_MAX (4096 bytes)",
        });
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) if n.len() > NAME_MAX => {
                return Err(BackupError::UnsafeEntry {
                    entry: entry.into(),
                    reason: "name longer than NAME_MAX (255 bytes)",
                })
            }
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

/// What the restore makes at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(Components),
}

/// One entry to restore.
struct Op {
    comps: Components,
    shown: String,
    what: What,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// What to do with one member.
enum Decision {
    /// The archive's root (`.`): nothing to do.
    Nothing,
    /// Outside the selected paths.
    Unselected,
    /// Within them, of a kind that is not restored.
    Unrestorable {
        shown: String,
        kind: &'static str,
    },
    Restore {
        op: Op,
        setid_stripped: bool,
    },
}

/// What the restore has made at a path so far (in archive order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Dir,
    File,
    Other,
}

/// The archive-side rules, applied identically by both passes.
struct Checker {
    only: Vec<Components>,
    allow_setid: bool,
    /// Every symlink of the archive so far, selected or not.
    symlinks: HashSet<Components>,
    made: HashMap<Components, Made>,
    /// Path bytes held in `symlinks` and `made` (see [`MAX_REMEMBERED`]).
    remembered: usize,
}

fn unsafe_entry(entry: &str, reason: &'static str) -> BackupError {
    BackupError::UnsafeEntry {
        entry: entry.into(),
        reason,
    }
}

impl Checker {
    fn new(opts: &ExtractOptions) -> Result<Self, BackupError> {
        let only = opts
            .paths
            .iter()
            .map(|o| clean(Path::new(o.trim_start_matches('/')), o))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            only,
            allow_setid: opts.allow_setid,
            symlinks: HashSet::new(),
            made: HashMap::new(),
            remembered: 0,
        })
    }

    fn selected(&self, comps: &[std::ffi::OsString]) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| comps.starts_with(o))
    }

    /// Decides what `m` does. Only the archive's symlinks are recorded here; what a restored
    /// entry makes is recorded by [`Checker::commit`], after the disk check of the first pass.
    fn decide(&mut self, m: &Member) -> Result<Decision, BackupError> {
        let name = m.path.to_string_lossy().into_owned();
        let comps = clean(&m.path, &name)?;
        if comps.is_empty() {
            return Ok(Decision::Nothing);
        }
        if (1..comps.len()).any(|n| self.symlinks.contains(&comps[..n])) {
            return Err(unsafe_entry(
                &name,
                "path runs through a symlink in the archive",
            ));
        }
        let target = || -> Result<PathBuf, BackupError> {
            m.link
                .clone()
                .ok_or_else(|| BackupError::Corrupt(format!("link {name} has no target")))
        };
        let what = match m.kind {
            EntryType::Directory => What::Dir,
            EntryType::Regular | EntryType::Continuous => What::File,
            EntryType::Symlink => What::Symlink(target()?),
            EntryType::Link => What::HardLink(clean(&target()?, &name)?),
            other => {
                if !self.selected(&comps) {
                    return Ok(Decision::Unselected);
                }
                return Ok(Decision::Unrestorable {
                    shown: PathBuf::from_iter(&comps).to_string_lossy().into_owned(),
                    kind: kind_name(other),
                });
            }
        };
        if matches!(what, What::Symlink(_)) && self.symlinks.insert(comps.clone()) {
            self.remember(&comps)?;
        }
        if !self.selected(&comps) {
            return Ok(Decision::Unselected);
        }
        if (1..comps.len()).any(|n| self.made.get(&comps[..n]).is_some_and(|k| *k != Made::Dir)) {
            return Err(unsafe_entry(
                &name,
                "path runs through a non-directory of the archive",
            ));
        }
        if self.made.get(&comps) == Some(&Made::Dir) && what != What::Dir {
            return Err(unsafe_entry(
                &name,
                "a non-directory replaces a directory of the archive",
            ));
        }
        if let What::HardLink(t) = &what {
            if *t == comps || self.made.get(t) != Some(&Made::File) {
                return Err(unsafe_entry(
                    &name,
                    "hard link target is not a file this restore writes before it",
                ));
            }
        }
        let mut mode = m.mode & 0o7777;
        let setid_stripped = what == What::File && !self.allow_setid && mode & 0o6000 != 0;
        if setid_stripped {
            mode &= !0o6000;
        }
        let num = |n: u64, field: &str| {
            u32::try_from(n).map_err(|_| BackupError::Corrupt(format!("{name}: {field} {n}")))
        };
        let op = Op {
            shown: PathBuf::from_iter(&comps).to_string_lossy().into_owned(),
            what,
            mode,
            uid: num(m.uid, "uid")?,
            gid: num(m.gid, "gid")?,
            mtime: m.mtime,
            comps,
        };
        Ok(Decision::Restore { op, setid_stripped })
    }

    /// Records what `op` makes (its missing parents become directories).
    fn commit(&mut self, op: &Op) -> Result<(), BackupError> {
        for n in 1..op.comps.len() {
            if !self.made.contains_key(&op.comps[..n]) {
                self.made.insert(op.comps[..n].to_vec(), Made::Dir);
                self.remember(&op.comps[..n])?;
            }
        }
        let made = match op.what {
            What::Dir => Made::Dir,
            What::File | What::HardLink(_) => Made::File,
            What::Symlink(_) => Made::Other,
        };
        if self.made.insert(op.comps.clone(), made).is_none() {
            self.remember(&op.comps)?;
        }
        Ok(())
    }

    /// Counts a path the checks now hold against [`MAX_REMEMBERED`].
    fn remember(&mut self, comps: &[std::ffi::OsString]) -> Result<(), BackupError> {
        // Each component also costs its allocation; 32 bytes is a fair floor.
        self.remembered += comps.iter().map(|c| c.len() + 32).sum::<usize>();
        if self.remembered > MAX_REMEMBERED {
            return Err(BackupError::Corrupt(format!(
                "the archive names more paths than a restore keeps track of ({} MiB of names)",
                MAX_REMEMBERED >> 20
            )));
        }
        Ok(())
    }
}

fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Block => "block device",
        EntryType::Char => "character device",
        EntryType::Fifo => "fifo",
        EntryType::GNUSparse => "sparse file",
        _ => "unsupported entry type",
    }
}

/// First pass: checks every member of a `tar` stream, and the disk under `root`, writing
/// nothing. Returns what the extraction will skip; refuses unrestorable entries when the
/// options make them fatal.
pub fn check_archive(
    tar_stream: impl Read,
    root: &OwnedFd,
    opts: &ExtractOptions,
) -> Result<ExtractReport, BackupError> {
    let mut checker = Checker::new(opts)?;
    let mut disk = DiskView::new(root);
    let mut report = ExtractReport::default();
    for_each_member(tar_stream, |m, _| {
        match checker.decide(m)? {
            Decision::Nothing => {}
            Decision::Unselected => report.skipped += 1,
            Decision::Unrestorable { shown, kind } => report.note_unrestored(shown, kind),
            Decision::Restore { op, setid_stripped } => {
                let made = &checker.made;
                disk.check(&op.comps, op.what == What::Dir, |p| {
                    made.get(p) == Some(&Made::Dir)
                })?;
                report.setid_stripped += u64::from(setid_stripped);
                checker.commit(&op)?;
            }
        }
        Ok(())
    })?;
    if opts.unrestorable == Unrestorable::Fatal {
        if let Some(line) = report.unrestored_line() {
            return Err(BackupError::Unrestorable(line));
        }
    }
    Ok(report)
}

/// Second pass: extracts a `tar` stream under `root`. Call [`check_archive`] on the same bytes
/// first: this pass makes the same decisions but does not look at the disk beforehand.
pub fn extract_archive(
    tar_stream: impl Read,
    root: &OwnedFd,
    opts: &ExtractOptions,
) -> Result<ExtractReport, BackupError> {
    let mut checker = Checker::new(opts)?;
    let is_root = rustix::process::geteuid().is_root();
    let mut report = ExtractReport::default();
    let mut dirs: Vec<(Components, u32, u32, u32, u64)> = Vec::new();
    for_each_member(tar_stream, |m, data| {
        let (op, setid_stripped) = match checker.decide(m)? {
            Decision::Nothing => return Ok(()),
            Decision::Unselected => {
                report.skipped += 1;
                return Ok(());
            }
            Decision::Unrestorable { shown, kind } => {
                if report.unrestored_count < MAX_LISTED as u64 {
                    log::warn!("restore: {shown} is a {kind}: not restored");
                }
                report.note_unrestored(shown, kind);
                return Ok(());
            }
            Decision::Restore { op, setid_stripped } => (op, setid_stripped),
        };
        checker.commit(&op)?;
        if setid_stripped && report.setid_stripped < MAX_LISTED as u64 {
            log::warn!(
                "restore: {}: setuid/setgid dropped (mode {:o} restored as {:o})",
                op.shown,
                m.mode & 0o7777,
                op.mode
            );
        }
        report.setid_stripped += u64::from(setid_stripped);
        write_op(root, &op, data, is_root, &mut report)?;
        if op.what == What::Dir {
            dirs.push((op.comps, op.mode, op.uid, op.gid, op.mtime));
        }
        Ok(())
    })?;
    // Directory metadata last, deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    for (comps, mode, uid, gid, mtime) in dirs {
        let shown = PathBuf::from_iter(&comps).to_string_lossy().into_owned();
        let fd = walk(root, &comps, false).map_err(|e| restore_err(&shown, e))?;
        match rustix::fs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(gid))) {
            Err(Errno::PERM) if !is_root => {}
            other => other.map_err(|e| restore_err(&shown, e))?,
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| restore_err(&shown, e))?;
        rustix::fs::futimens(&fd, &times(mtime)).map_err(|e| restore_err(&shown, e))?;
    }
    Ok(report)
}

/// Writes one checked entry.
fn write_op(
    root: &OwnedFd,
    op: &Op,
    data: &mut dyn Read,
    is_root: bool,
    report: &mut ExtractReport,
) -> Result<(), BackupError> {
    let shown = &op.shown;
    let fail = |e: Errno| restore_err(shown, e);
    let (parent, leaf) = op.comps.split_at(op.comps.len() - 1);
    let leaf = &leaf[0];
    let dir = walk(root, parent, true).map_err(fail)?;
    let owner = |r: Result<(), Errno>| match r {
        Err(Errno::PERM) if !is_root => Ok(()), // host-mode tests without root keep our uid
        other => other,
    };
    match &op.what {
        What::Dir => {
            make_dir(&dir, leaf).map_err(fail)?;
            report.dirs += 1;
        }
        What::File => {
            remove_non_dir(&dir, leaf).map_err(fail)?;
            let fd = rustix::fs::openat(
                &dir,
                leaf,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(fail)?;
            let mut file = File::from(fd);
            report.bytes += io::copy(data, &mut file).map_err(|source| BackupError::Restore {
                path: shown.clone(),
                source,
            })?;
            // Owner before mode: chown clears setuid/setgid bits.
            owner(rustix::fs::fchown(
                &file,
                Some(uid_of(op.uid)),
                Some(gid_of(op.gid)),
            ))
            .map_err(fail)?;
            rustix::fs::fchmod(&file, Mode::from_raw_mode(op.mode)).map_err(fail)?;
            rustix::fs::futimens(&file, &times(op.mtime)).map_err(fail)?;
            report.files += 1;
        }
        What::Symlink(target) => {
            remove_non_dir(&dir, leaf).map_err(fail)?;
            rustix::fs::symlinkat(target.as_path(), &dir, leaf).map_err(fail)?;
            owner(rustix::fs::chownat(
                &dir,
                leaf,
                Some(uid_of(op.uid)),
                Some(gid_of(op.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ))
            .map_err(fail)?;
            rustix::fs::utimensat(&dir, leaf, &times(op.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(fail)?;
            report.symlinks += 1;
        }
        What::HardLink(target) => {
            let (tparent, tleaf) = target.split_at(target.len() - 1);
            let tdir = walk(root, tparent, false).map_err(fail)?;
            remove_non_dir(&dir, leaf).map_err(fail)?;
            rustix::fs::linkat(&tdir, &tleaf[0], &dir, leaf, AtFlags::empty()).map_err(fail)?;
            report.hardlinks += 1;
        }
    }
    Ok(())
}

/// Removes a non-directory `name` so a new entry can take its place; a directory is an error.
fn remove_non_dir(dir: &OwnedFd, name: &std::ffi::OsString) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &str, kind: EntryType, link: Option<&str>) -> Member {
        Member {
            path: PathBuf::from(path),
            link: link.map(PathBuf::from),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
        }
    }

    fn checker() -> Checker {
        Checker::new(&ExtractOptions {
            paths: &[],
            allow_setid: false,
            unrestorable: Unrestorable::Warn,
        })
        .unwrap()
    }

    /// Decides and commits, as both passes do.
    fn decide(c: &mut Checker, m: &Member) -> Result<(), BackupError> {
        if let Decision::Restore { op, .. } = c.decide(m)? {
            c.commit(&op)?;
        }
        Ok(())
    }

    #[test]
    fn names_no_filesystem_can_hold_are_refused() {
        let mut c = checker();
        let deep = "a/".repeat(2049) + "f";
        let long = "n".repeat(256);
        for path in [deep.as_str(), long.as_str()] {
            let err = decide(&mut c, &member(path, EntryType::Regular, None)).unwrap_err();
            assert!(matches!(err, BackupError::UnsafeEntry { .. }), "{err}");
        }
        decide(&mut c, &member(&"n".repeat(255), EntryType::Regular, None)).unwrap();
    }

    #[test]
    fn a_hard_link_to_itself_or_through_a_file_of_the_archive_is_refused() {
        let mut c = checker();
        decide(&mut c, &member("a", EntryType::Regular, None)).unwrap();
        let err = decide(&mut c, &member("a", EntryType::Link, Some("a"))).unwrap_err();
        assert!(matches!(err, BackupError::UnsafeEntry { .. }), "{err}");
        let err = decide(&mut c, &member("a/b", EntryType::Regular, None)).unwrap_err();
        assert!(matches!(err, BackupError::UnsafeEntry { .. }), "{err}");
        decide(&mut c, &member("d", EntryType::Directory, None)).unwrap();
        let err = decide(&mut c, &member("d", EntryType::Regular, None)).unwrap_err();
        assert!(matches!(err, BackupError::UnsafeEntry { .. }), "{err}");
    }

    #[test]
    fn an_archive_naming_too_many_paths_is_refused_not_remembered() {
        let mut c = checker();
        let name = "x".repeat(200);
        let mut refused = None;
        for i in 0..1_000_000u32 {
            let path = format!("{name}/{name}/{name}/{i}");
            if let Err(e) = decide(&mut c, &member(&path, EntryType::Regular, None)) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, err) = refused.expect("never refused");
        assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
        assert!(i > 100_000, "refused early, at {i}");
        assert!(c.remembered <= MAX_REMEMBERED + 4 * (PATH_MAX + 32));
    }
}
