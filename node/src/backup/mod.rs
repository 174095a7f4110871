//! Business-file backups: the on-NFS format, writing one (on the running node) and choosing and
//! restoring one (in the rescue agent).
//!
//! Layout: `<backups>/<node>/<YYYYMMDDTHHMMSSZ>/` holding `manifest.toml` and `files.tar.zst`.
//! A backup is written under a dot-name, flushed, and renamed into place, so a directory with a
//! timestamp name is complete; dot-names are never read. The manifest records the archive's size
//! and SHA-256, which the restore checks before it writes anything.

mod create;
mod extract;
pub mod time;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use lazarus_proto::{NodeName, Sha256};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use create::{create_backup, BackupRequest};
pub use extract::{extract_archive, scan_archive, ExtractReport};

/// Name of the manifest file in a backup directory.
pub const MANIFEST: &str = "manifest.toml";
/// Name of the archive file in a backup directory.
pub const ARCHIVE: &str = "files.tar.zst";
const FORMAT: u32 = 1;

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub node: NodeName,
    /// Unix seconds; the directory is named for it in UTC.
    pub created: u64,
    pub archive: String,
    pub archive_size: u64,
    pub archive_sha256: Sha256,
    /// The paths backed up, relative to the backed-up root.
    pub paths: Vec<String>,
}

/// Errors of backup and restore, one per failing step, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("listing backups in {0}: {1}")]
    List(PathBuf, io::Error),
    #[error("no complete backup of node {node} older than {before} in {dir}")]
    NoneBefore {
        node: NodeName,
        before: String,
        dir: PathBuf,
    },
    #[error("manifest {0}: {1}")]
    Manifest(PathBuf, String),
    #[error("reading {0}: {1}")]
    Read(PathBuf, io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, io::Error),
    #[error("archive {path} digest mismatch: manifest says {expected}, file has {got}")]
    Digest {
        path: PathBuf,
        expected: Sha256,
        got: Sha256,
    },
    #[error("archive {path} is {got} bytes, manifest says {expected}")]
    Size {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("archive entry {entry:?} refused: {reason}")]
    UnsafeEntry { entry: String, reason: &'static str },
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    #[error("restoring {path}: {source}")]
    Restore { path: String, source: io::Error },
    #[error("nothing to back up: {0}")]
    NothingToBackUp(String),
}

/// A complete backup found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundBackup {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl FoundBackup {
    pub fn archive_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.archive)
    }
}

/// The newest complete backup of `node` in `backups` taken strictly before `before` (unix
/// seconds). Directories with other names, and ones whose manifest does not parse or names
/// another node, are skipped with a warning.
pub fn choose_backup(
    backups: &Path,
    node: &NodeName,
    before: u64,
) -> Result<FoundBackup, BackupError> {
    let dir = backups.join(node);
    let entries = fs::read_dir(&dir).map_err(|e| BackupError::List(dir.clone(), e))?;
    let mut candidates: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let secs = time::parse_utc(&name)?;
            (secs < before && e.file_type().ok()?.is_dir()).then(|| (secs, e.path()))
        })
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (secs, path) in candidates {
        match read_manifest(&path) {
            Ok(m) if m.node == *node && m.created == secs && check_archive_name(&m.archive) => {
                return Ok(FoundBackup {
                    dir: path,
                    manifest: m,
                })
            }
            Ok(_) => log::warn!(
                "skipping backup {}: manifest does not match its directory",
                path.display()
            ),
            Err(e) => log::warn!("skipping backup {}: {e}", path.display()),
        }
    }
    Err(BackupError::NoneBefore {
        node: node.clone(),
        before: time::format_utc(before),
        dir,
    })
}

fn check_archive_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.')
}

/// Reads and parses `<dir>/manifest.toml`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| BackupError::Read(path.clone(), e))?;
    let m: Manifest = toml::from_str(&text)
        .map_err(|e| BackupError::Manifest(path.clone(), e.message().to_string()))?;
    if m.format != FORMAT {
        return Err(BackupError::Manifest(
            path,
            format!("unknown format {}", m.format),
        ));
    }
    Ok(m)
}

/// Hashes the archive and checks size and SHA-256 against the manifest.
pub fn verify_archive(found: &FoundBackup) -> Result<(), BackupError> {
    let path = found.archive_path();
    let file = fs::File::open(&path).map_err(|e| BackupError::Read(path.clone(), e))?;
    let mut hashing = HashingReader::new(file);
    let size =
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| BackupError::Read(path.clone(), e))?;
    if size != found.manifest.archive_size {
        return Err(BackupError::Size {
            path,
            expected: found.manifest.archive_size,
            got: size,
        });
    }
    let got = hashing.digest();
    if got != found.manifest.archive_sha256 {
        return Err(BackupError::Digest {
            path,
            expected: found.manifest.archive_sha256,
            got,
        });
    }
    Ok(())
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    sha: sha2::Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            sha: sha2::Sha256::new(),
        }
    }

    pub fn digest(self) -> Sha256 {
        Sha256(self.sha.finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    sha: sha2::Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            sha: sha2::Sha256::new(),
            len: 0,
        }
    }

    pub fn finish(self) -> (W, u64, Sha256) {
        (self.inner, self.len, Sha256(self.sha.finalize().into()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Restores the newest complete backup of `node` older than `failure_time` into `dest`:
/// chooses it, checks the archive's size and digest, checks every entry, then extracts.
pub fn restore_backup(
    backups: &Path,
    node: &NodeName,
    failure_time: u64,
    dest: &Path,
    only: &[String],
) -> Result<(FoundBackup, ExtractReport), BackupError> {
    let found = choose_backup(backups, node, failure_time)?;
    verify_archive(&found)?;
    let open = || -> Result<crate::zstd::ZstdFrames<io::BufReader<fs::File>>, BackupError> {
        let path = found.archive_path();
        let file = fs::File::open(&path).map_err(|e| BackupError::Read(path, e))?;
        Ok(crate::zstd::ZstdFrames::new(io::BufReader::with_capacity(
            1 << 20,
            file,
        )))
    };
    scan_archive(open()?)?;
    let report = extract_archive(open()?, dest, only)?;
    Ok((found, report))
}
