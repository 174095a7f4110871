//! Business-file backups: the on-NFS format, writing one (on the running node) and choosing and
//! restoring one (in the rescue agent).
//!
//! Layout: `<backups>/<node>/<YYYYMMDDTHHMMSSZ>/` holding `manifest.toml`, `manifest.sig` and
//! `files.tar.zst`. The signature is the node's backup key's (Ed25519) over
//! `"LZRBAK1\n" || the manifest's bytes`; the manifest names the node, the time (which must be the
//! directory's name) and the archive's size and SHA-256. Given the node's public key, the agent
//! skips every backup whose signature does not verify, so a backup planted in a node's folder by
//! another node, or by anyone who can write the share, is never restored; and a genuine old
//! backup renamed to look newer no longer matches its signed time.
//! A backup is written under a dot-name, flushed, and renamed into place, so a directory with a
//! timestamp name is complete; dot-names are never read. Files are created 0600 and directories
//! 0700 (the share is writable by every node; nobody else needs to read a node's files).
//!
//! A restore reads the archive from the share exactly once, into memory ([`read_archive`], at
//! most the plan's size cap), hashing it while it reads; the copy is checked against the
//! manifest's size and SHA-256 ([`ArchiveCopy::verify`]) and only the checked copy
//! ([`VerifiedArchive`]) is extracted, so a file swapped on the share after the check is never
//! read. A check of the node's signature slots in between the two, on the same copy.

mod create;
mod disk;
mod extract;
mod members;
pub mod time;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use lazarus_proto::{NodeName, Sha256};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use create::{create_backup, BackupRequest};
pub use disk::open_root;
pub use extract::{check_archive, extract_archive, ExtractOptions, ExtractReport, MAX_LISTED};
pub use members::MAX_EXTENSION;

/// Name of the manifest file in a backup directory.
pub const MANIFEST: &str = "manifest.toml";
/// Name of the manifest's signature file in a backup directory.
pub const SIGNATURE: &str = "manifest.sig";
/// What a backup signature covers, before the manifest's bytes.
const SIGNATURE_DOMAIN: &[u8] = b"LZRBAK1\n";
const SIGNATURE_LABEL: &str = "lazarus-backup-signature:";

/// The contents of `manifest.sig` for `manifest` (its exact bytes) signed with `key`.
pub fn signature_text(key: &lazarus_proto::SigningKey, manifest: &[u8]) -> String {
    let sig = key.sign(&[SIGNATURE_DOMAIN, manifest].concat());
    format!("{SIGNATURE_LABEL}{}\n", lazarus_proto::hex::encode(&sig))
}

/// Whether `text` (a `manifest.sig`) is `key`'s signature over `manifest`.
pub fn signature_verifies(key: &lazarus_proto::PublicKey, manifest: &[u8], text: &str) -> bool {
    let Some(hex) = text.trim_end().strip_prefix(SIGNATURE_LABEL) else {
        return false;
    };
    let Ok(sig) = lazarus_proto::hex::decode::<64>(hex) else {
        return false;
    };
    key.verifies(&[SIGNATURE_DOMAIN, manifest].concat(), &sig)
}

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
    #[error(
        "archive {path} is {size} bytes, over the limit of {max} (the plan's max_backup_bytes)"
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("archive {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("archive entry {entry:?} refused: {reason}")]
    UnsafeEntry { entry: String, reason: &'static str },
    #[error("archive holds a {kind} header of {size} bytes (at most {max} are read); refused before reading it")]
    HeaderTooLarge {
        kind: &'static str,
        size: u64,
        max: u64,
    },
    #[error("{path:?} on the restored filesystem refused: {reason}; nothing was written")]
    UnsafeTarget { path: String, reason: &'static str },
    #[error("{0}, and the plan makes them fatal (unrestorable = \"fatal\"); nothing was written")]
    Unrestorable(String),
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    #[error("restoring {path}: {source}")]
    Restore { path: String, source: io::Error },
    #[error("nothing to back up: {0}")]
    NothingToBackUp(String),
    #[error("the plan's backup key is not a valid Ed25519 public key")]
    BadKey,
}

/// The largest zstd window a backup may use: 8 MiB (what `zstd -19` uses; `lazarus backup`
/// writes 128 KiB windows), so decompressing never reserves more than that in PID 1.
pub const MAX_WINDOW: u64 = 8 << 20;

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
/// seconds). Directories with other names, and ones whose manifest does not parse, names
/// another node or time, or (given `key`) is not signed by `key`, are skipped with a warning.
/// The manifest is read once: the signature is checked over the bytes that are then parsed.
pub fn choose_backup(
    backups: &Path,
    node: &NodeName,
    before: u64,
    key: Option<&lazarus_proto::PublicKey>,
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
        match read_signed_manifest(&path, key) {
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

/// Reads `<dir>/manifest.toml` once and, given `key`, checks `<dir>/manifest.sig` over those
/// bytes before parsing them.
pub fn read_signed_manifest(
    dir: &Path,
    key: Option<&lazarus_proto::PublicKey>,
) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let bytes = read_small(&path)?;
    if let Some(key) = key {
        let sig_path = dir.join(SIGNATURE);
        let sig = read_small(&sig_path)?;
        if !signature_verifies(key, &bytes, &String::from_utf8_lossy(&sig)) {
            return Err(BackupError::Manifest(
                path,
                "not signed by the node's backup key".into(),
            ));
        }
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| BackupError::Manifest(path.clone(), "not UTF-8".into()))?;
    parse_manifest(&path, &text)
}

/// Reads a small regular file (a manifest or signature, at most 1 MiB), refusing anything else:
/// opened without following a symlink and without blocking (a fifo swapped in must not hang the
/// agent), then checked on the open descriptor, and read from it.
fn read_small(path: &Path) -> Result<Vec<u8>, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    const MAX: u64 = 1 << 20;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| BackupError::Read(path.to_owned(), e))?;
    let meta = file
        .metadata()
        .map_err(|e| BackupError::Read(path.to_owned(), e))?;
    if !meta.is_file() || meta.len() > MAX {
        return Err(BackupError::Manifest(
            path.to_owned(),
            "not a regular file of at most 1 MiB".into(),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| BackupError::Read(path.to_owned(), e))?;
    Ok(bytes)
}

/// Reads and parses `<dir>/manifest.toml` (not checking a signature).
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    read_signed_manifest(dir, None)
}

fn parse_manifest(path: &Path, text: &str) -> Result<Manifest, BackupError> {
    let path = path.to_owned();
    let m: Manifest = toml::from_str(text)
        .map_err(|e| BackupError::Manifest(path.clone(), e.message().to_string()))?;
    if m.format != FORMAT {
        return Err(BackupError::Manifest(
            path,
            format!("unknown format {}", m.format),
        ));
    }
    Ok(m)
}

/// The archive as read once from the share, with the digest taken while reading; not yet
/// checked.
pub struct ArchiveCopy {
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: Sha256,
}

/// An archive copy whose size and SHA-256 are the manifest's: the only thing ever extracted.
pub struct VerifiedArchive {
    bytes: Vec<u8>,
}

impl VerifiedArchive {
    /// The decompressed tar stream of the verified copy; frames with a window over
    /// [`MAX_WINDOW`] are refused.
    pub fn tar_stream(&self) -> impl Read + '_ {
        crate::zstd::ZstdFrames::with_max_window(&self.bytes[..], MAX_WINDOW)
    }
}

/// Reads the backup's archive once into memory, hashing it as it reads. The manifest's size is
/// checked against `max` before anything is read, and at most one byte more than the manifest
/// says is read; the file is opened without following a symlink and must be a regular file.
/// A failed allocation is an error, never an abort.
pub fn read_archive(found: &FoundBackup, max: u64) -> Result<ArchiveCopy, BackupError> {
    use rustix::fs::{Mode, OFlags};
    let path = found.archive_path();
    let expected = found.manifest.archive_size;
    if expected > max {
        return Err(BackupError::TooLarge {
            path,
            size: expected,
            max,
        });
    }
    // O_NONBLOCK: a fifo planted in the archive's place must not hang the open (it is then
    // refused as not a regular file).
    let fd = rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| BackupError::Read(path.clone(), e.into()))?;
    let file = fs::File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| BackupError::Read(path.clone(), e))?;
    if !meta.is_file() {
        return Err(BackupError::NotAFile { path });
    }
    let mut bytes = Vec::new();
    let size = usize::try_from(expected).map_err(|_| BackupError::TooLarge {
        path: path.clone(),
        size: expected,
        max,
    })?;
    bytes
        .try_reserve_exact(size.saturating_add(1))
        .map_err(|e| {
            BackupError::Read(path.clone(), io::Error::new(io::ErrorKind::OutOfMemory, e))
        })?;
    let mut hashing = HashingReader::new(file.take(expected.saturating_add(1)));
    hashing
        .read_to_end(&mut bytes)
        .map_err(|e| BackupError::Read(path.clone(), e))?;
    Ok(ArchiveCopy {
        path,
        bytes,
        sha256: hashing.digest(),
    })
}

impl ArchiveCopy {
    /// Checks the copy's size and SHA-256 against the manifest.
    pub fn verify(self, manifest: &Manifest) -> Result<VerifiedArchive, BackupError> {
        let got = self.bytes.len() as u64;
        if got != manifest.archive_size {
            return Err(BackupError::Size {
                path: self.path,
                expected: manifest.archive_size,
                got,
            });
        }
        if self.sha256 != manifest.archive_sha256 {
            return Err(BackupError::Digest {
                path: self.path,
                expected: manifest.archive_sha256,
                got: self.sha256,
            });
        }
        Ok(VerifiedArchive { bytes: self.bytes })
    }
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

/// A restore: which backup, where to, and what it may do.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRequest<'a> {
    /// The backups directory (on NFS in production).
    pub backups: &'a Path,
    pub node: &'a NodeName,
    /// Unix seconds: the newest complete backup strictly older than this is restored.
    pub failure_time: u64,
    /// The mounted filesystem (the caller's own mount point).
    pub mount: &'a Path,
    /// The directory inside it that archive paths are relative to (`/`); opened without
    /// following symlinks.
    pub root: &'a str,
    /// The largest archive read (bytes).
    pub max_archive_bytes: u64,
    /// The node's backup public key: only a backup it signed is restored.
    pub backup_key: Option<&'a lazarus_proto::PublicKey>,
    pub options: ExtractOptions<'a>,
}

/// Restores the newest complete backup of `node` older than `failure_time`: chooses it, reads
/// it once into memory and checks its size and digest there, opens the restore root without
/// following symlinks, checks every entry and the disk's side of every path, and only then
/// extracts, from the same copy.
pub fn restore_backup(req: &RestoreRequest) -> Result<(FoundBackup, ExtractReport), BackupError> {
    let found = choose_backup(req.backups, req.node, req.failure_time, req.backup_key)?;
    let verified = read_archive(&found, req.max_archive_bytes)?.verify(&found.manifest)?;
    let root = open_root(req.mount, req.root)?;
    let report = extract_verified(&verified, &root, &req.options)?;
    Ok((found, report))
}

/// Checks, then extracts, a verified archive under `root`: a refused archive writes nothing.
pub fn extract_verified(
    archive: &VerifiedArchive,
    root: &std::os::fd::OwnedFd,
    options: &ExtractOptions,
) -> Result<ExtractReport, BackupError> {
    check_archive(archive.tar_stream(), root, options)?;
    extract_archive(archive.tar_stream(), root, options)
}
