//! The cluster key file: 32 random bytes as 64 hex characters, mode 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lazarus_proto::key::KEY_LEN;
use lazarus_proto::{AgentKey, KeyError};

/// Errors reading or writing a key file, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0} already exists; refusing to overwrite a cluster key")]
    Exists(PathBuf),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, KeyError),
    #[error("{0} is readable by group or others (mode {1:o}); chmod 600 it")]
    Permissions(PathBuf, u32),
    #[error("drawing random bytes: {0}")]
    Random(std::io::Error),
}

/// Writes a fresh key to `path` with mode 0600. Never replaces an existing file: the key is
/// written to a temporary name, flushed, and linked into place only if `path` does not exist.
pub fn generate(path: &Path) -> Result<(), KeyFileError> {
    let mut bytes = [0u8; KEY_LEN];
    fill_random(&mut bytes)?;
    let key = AgentKey::from_bytes(bytes);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or("key".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let write = |tmp: &Path| -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        file.write_all(key.to_hex().as_bytes())?;
        file.sync_all()
    };
    write(&tmp).map_err(|e| KeyFileError::Write(path.to_owned(), e))?;
    // link(2) fails with EEXIST instead of replacing: an existing key is never lost.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(KeyFileError::Exists(path.to_owned()))
        }
        Err(e) => Err(KeyFileError::Write(path.to_owned(), e)),
    }
}

/// Reads a key file, refusing one that group or others can read.
pub fn load(path: &Path) -> Result<AgentKey, KeyFileError> {
    let meta = fs::metadata(path).map_err(|e| KeyFileError::Read(path.to_owned(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions(path.to_owned(), mode));
    }
    let text = fs::read_to_string(path).map_err(|e| KeyFileError::Read(path.to_owned(), e))?;
    AgentKey::from_hex(&text).map_err(|e| KeyFileError::Parse(path.to_owned(), e))
}

fn fill_random(buf: &mut [u8]) -> Result<(), KeyFileError> {
    crate::random::fill(buf).map_err(KeyFileError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_private_loadable_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        let key = load(&path).unwrap();
        assert!(matches!(generate(&path), Err(KeyFileError::Exists(_))));
        assert_eq!(load(&path).unwrap(), key, "existing key changed");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
        let other = dir.path().join("other.key");
        generate(&other).unwrap();
        assert_ne!(load(&other).unwrap(), key, "two keys are equal");
    }

    #[test]
    fn world_readable_or_malformed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "00".repeat(32)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(&path),
            Err(KeyFileError::Permissions(_, 0o644))
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path).is_ok());
        fs::write(&path, "zz").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Parse(..))));
    }
}
