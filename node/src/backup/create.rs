//! Writing a backup atomically: `lazarus backup` on the running node.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use lazarus_proto::NodeName;

use super::{
    time, BackupError, FoundBackup, HashingWriter, Manifest, ARCHIVE, FORMAT, MANIFEST, SIGNATURE,
};

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupRequest<'a> {
    pub node: &'a NodeName,
    /// The backups directory (on NFS in production).
    pub to: &'a Path,
    /// The filesystem root the paths are relative to (`/` on a node).
    pub root: &'a Path,
    pub paths: &'a [PathBuf],
    /// Unix seconds; names the backup.
    pub now: u64,
    /// The node's backup key: signs the manifest (`manifest.sig`). `None` writes an unsigned
    /// backup, which an agent given the node's backup public key never restores.
    pub signing: Option<&'a lazarus_proto::SigningKey>,
    /// Files never put in the archive, however the paths name them: the backup key's file (a
    /// backup is readable by whoever can read the share; the key must not travel with it).
    pub exclude: &'a [PathBuf],
}

/// Writes `<to>/<node>/<UTC now>/` with the archive and manifest, atomically: under a dot-name
/// first, flushed, then renamed into place.
pub fn create_backup(req: &BackupRequest) -> Result<FoundBackup, BackupError> {
    if req.paths.is_empty() {
        return Err(BackupError::NothingToBackUp("no paths given".into()));
    }
    let rels = req
        .paths
        .iter()
        .map(|p| relative_to_root(req.root, p))
        .collect::<Result<Vec<_>, _>>()?;
    for rel in &rels {
        let full = req.root.join(rel);
        fs::symlink_metadata(&full).map_err(|e| BackupError::Read(full.clone(), e))?;
    }
    let named_dir = req.to.join(req.node);
    fs::create_dir_all(req.to).map_err(|e| BackupError::Write(req.to.to_owned(), e))?;
    // Everything below goes through the folder as opened (never through its name again): the
    // share is writable by other nodes, which could swap the name for a symlink meanwhile.
    let dir_fd = private_dir(&named_dir)?;
    let node_dir = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir_fd)
    ));
    let name = time::format_utc(req.now);
    let final_dir = node_dir.join(&name);
    if final_dir.exists() {
        return Err(BackupError::Write(
            final_dir,
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    let tmp = node_dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let result = write_into(&tmp, req, &rels).and_then(|manifest| {
        fsync_dir(&tmp)?;
        fs::rename(&tmp, &final_dir).map_err(|e| BackupError::Write(final_dir.clone(), e))?;
        fsync_dir(&node_dir)?;
        Ok(manifest)
    });
    match result {
        Ok(manifest) => Ok(FoundBackup {
            dir: named_dir.join(&name),
            manifest,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(tmp: &Path, req: &BackupRequest, rels: &[PathBuf]) -> Result<Manifest, BackupError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(tmp)
        .map_err(|e| BackupError::Write(tmp.to_owned(), e))?;
    let archive_path = tmp.join(ARCHIVE);
    let file = private_file(&archive_path)?;
    let (pipe_rx, pipe_tx) = io::pipe().map_err(|e| BackupError::Write(archive_path.clone(), e))?;
    let root = req.root.to_owned();
    let tar_rels = rels.to_vec();
    let excluded: Vec<(u64, u64)> = req
        .exclude
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        })
        .collect();
    // The signing key's secret, to leave out any copy of it (a snapshot's, say) by its contents.
    let secret = req.signing.map(|k| {
        let text = k.to_text();
        text.trim_end()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string()
    });
    let tar_thread = std::thread::spawn(move || -> Result<(), BackupError> {
        let mut builder = tar::Builder::new(pipe_tx);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        let mut seen = std::collections::HashMap::new();
        // Excluded files count as already seen, under no name: skipped below.
        for id in excluded {
            seen.insert(id, PathBuf::new());
        }
        for rel in &tar_rels {
            append_tree(&mut builder, &root, rel, &mut seen, secret.as_deref())?;
        }
        builder
            .finish()
            .map_err(|e| BackupError::Read(root.clone(), e))?;
        Ok(())
    });
    // ruzstd's encoder unwraps I/O results; the latches turn errors into a clean end of stream
    // and keep the error for us to report.
    let mut source = Latch::new(pipe_rx);
    let mut sink = Latch::new(HashingWriter::new(file));
    ruzstd::encoding::compress(
        &mut source,
        &mut sink,
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    drop(source);
    let tarred = tar_thread
        .join()
        .unwrap_or_else(|_| Err(BackupError::Corrupt("archive thread panicked".into())));
    tarred?;
    let (hashing, error) = sink.into_parts();
    if let Some(e) = error {
        return Err(BackupError::Write(archive_path, e));
    }
    let (file, archive_size, archive_sha256) = hashing.finish();
    file.sync_all()
        .map_err(|e| BackupError::Write(archive_path.clone(), e))?;
    let manifest = Manifest {
        format: FORMAT,
        node: req.node.clone(),
        created: req.now,
        archive: ARCHIVE.to_string(),
        archive_size,
        archive_sha256,
        paths: rels
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
    };
    let text = toml::to_string(&manifest)
        .map_err(|e| BackupError::Manifest(tmp.join(MANIFEST), e.to_string()))?;
    let manifest_path = tmp.join(MANIFEST);
    let mut f = private_file(&manifest_path)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| BackupError::Write(manifest_path, e))?;
    if let Some(key) = req.signing {
        let sig_path = tmp.join(SIGNATURE);
        let mut f = private_file(&sig_path)?;
        f.write_all(super::signature_text(key, text.as_bytes()).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| BackupError::Write(sig_path, e))?;
    }
    Ok(manifest)
}

/// Appends `root/rel` and, for a directory, everything below it (sorted, symlinks not followed).
/// Files with several links become one file and hard-link entries, keyed by (device, inode).
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    seen: &mut std::collections::HashMap<(u64, u64), PathBuf>,
    secret: Option<&str>,
) -> Result<(), BackupError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let full = root.join(rel);
    let read_err = |e: io::Error| BackupError::Read(full.clone(), e);
    let meta = fs::symlink_metadata(&full).map_err(read_err)?;
    if meta.is_file()
        && seen
            .get(&(meta.dev(), meta.ino()))
            .is_some_and(|p| p.as_os_str().is_empty())
    {
        log::info!("{}: the backup key is never backed up", full.display());
        return Ok(());
    }
    // A small file holding the signing key's secret is a copy of the key: left out too.
    if let Some(secret) = secret.filter(|_| meta.is_file() && meta.len() <= 4096) {
        if fs::read(&full).is_ok_and(|b| String::from_utf8_lossy(&b).contains(secret)) {
            log::info!(
                "{}: a copy of the backup key is never backed up",
                full.display()
            );
            return Ok(());
        }
    }
    if meta.is_file() && meta.nlink() > 1 {
        if let Some(first) = seen.get(&(meta.dev(), meta.ino())) {
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            return builder
                .append_link(&mut header, rel, first)
                .map_err(read_err);
        }
        seen.insert((meta.dev(), meta.ino()), rel.to_owned());
    }
    let kind = meta.file_type();
    if kind.is_socket() {
        // A socket is made by its server at run time; tar has no type for it (GNU tar skips it).
        log::warn!("{}: a socket is not backed up", full.display());
        return Ok(());
    }
    if kind.is_fifo() || kind.is_block_device() || kind.is_char_device() {
        // Not `append_path_with_name`: tar 0.4.46 names special files by their source path,
        // which is absolute, and refuses them.
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_entry_type(if kind.is_fifo() {
            tar::EntryType::Fifo
        } else if kind.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Char
        });
        header.set_size(0);
        let dev = meta.rdev();
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
        header.set_device_major(major as u32).map_err(read_err)?;
        header.set_device_minor(minor as u32).map_err(read_err)?;
        return builder
            .append_data(&mut header, rel, io::empty())
            .map_err(read_err);
    }
    builder
        .append_path_with_name(&full, rel)
        .map_err(read_err)?;
    if meta.is_dir() {
        let mut children: Vec<_> = fs::read_dir(&full)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        children.sort();
        for child in children {
            append_tree(builder, root, &rel.join(child), seen, secret)?;
        }
    }
    Ok(())
}

/// `path` relative to `root`, refusing anything that leaves it.
fn relative_to_root(root: &Path, path: &Path) -> Result<PathBuf, BackupError> {
    let rel = if path.is_absolute() {
        path.strip_prefix(root).map_err(|_| {
            BackupError::NothingToBackUp(format!(
                "{} is not under {}",
                path.display(),
                root.display()
            ))
        })?
    } else {
        path
    };
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(BackupError::NothingToBackUp(format!(
                    "{} leaves the backup root",
                    path.display()
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(BackupError::NothingToBackUp(format!(
            "{} is the whole root; name the directories to back up",
            path.display()
        )));
    }
    Ok(out)
}

/// Creates `path` as a new file, mode 0600 (never following a symlink or reusing a file).
fn private_file(path: &Path) -> Result<File, BackupError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BackupError::Write(path.to_owned(), e))
}

/// Creates the node's folder mode 0700, or narrows an existing one (made by an older version)
/// to 0700; it must be a directory, not a symlink.
/// Makes `dir` (mode 0700) or opens the one there, never through a symlink, and narrows its
/// mode on the open descriptor (a name swapped for a symlink after the check is never chmodded).
fn private_dir(dir: &Path) -> Result<std::os::fd::OwnedFd, BackupError> {
    use rustix::fs::{Mode, OFlags};
    let err = |e| BackupError::Write(dir.to_owned(), e);
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(io::Error::from(e)))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| err(io::Error::from(e)))?;
    if st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(|e| err(io::Error::from(e)))?;
    }
    Ok(fd)
}

fn fsync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackupError::Write(dir.to_owned(), e))
}

/// Remembers the first I/O error and then behaves as end of stream (reads) or a sink (writes).
struct Latch<T> {
    inner: T,
    error: Option<io::Error>,
}

impl<T> Latch<T> {
    fn new(inner: T) -> Self {
        Self { inner, error: None }
    }

    fn into_parts(self) -> (T, Option<io::Error>) {
        (self.inner, self.error)
    }
}

impl<R: Read> Read for Latch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Ok(0);
        }
        loop {
            match self.inner.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    return Ok(0);
                }
            }
        }
    }
}

impl<W: Write> Write for Latch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_none() {
            if let Err(e) = self.inner.write_all(buf) {
                self.error = Some(e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.error.is_none() {
            if let Err(e) = self.inner.flush() {
                self.error = Some(e);
            }
        }
        Ok(())
    }
}
