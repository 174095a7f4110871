//! Key files (see `lazarus_proto::key`): agent keys (64 hex characters, mode 0600), the
//! controller's signing key (labelled, mode 0600) and its public key (labelled, mode 0644).
//! Secret key files readable by group or others are refused; no key file is ever overwritten.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lazarus_proto::key::{Role, KEY_LEN};
use lazarus_proto::{AgentKey, KeyError, PublicKey, SigningKey};

/// Errors reading or writing a key file, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0} already exists; refusing to overwrite a key")]
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

/// Writes a fresh agent key (a node's or a repair's) to `path` with mode 0600, never replacing
/// an existing file.
pub fn generate(path: &Path) -> Result<(), KeyFileError> {
    let mut bytes = [0u8; KEY_LEN];
    fill_random(&mut bytes)?;
    write_new(path, &AgentKey::from_bytes(bytes).to_hex(), 0o600)
}

/// Writes a fresh controller signing key to `path` (mode 0600) and its public half to `public`
/// (mode 0644: it goes into every rescue image). Neither existing file is replaced.
pub fn generate_controller(path: &Path, public: &Path) -> Result<PublicKey, KeyFileError> {
    generate_signing(path, public, Role::Controller)
}

/// Writes a fresh backup key of a node to `path` (mode 0600) and its public half to `public`
/// (mode 0644: it goes into the cluster file). Neither existing file is replaced.
pub fn generate_backup(path: &Path, public: &Path) -> Result<PublicKey, KeyFileError> {
    generate_signing(path, public, Role::Backup)
}

fn generate_signing(path: &Path, public: &Path, role: Role) -> Result<PublicKey, KeyFileError> {
    let mut seed = [0u8; KEY_LEN];
    fill_random(&mut seed)?;
    let key = SigningKey::from_seed(seed);
    if public.exists() {
        return Err(KeyFileError::Exists(public.to_owned()));
    }
    write_new(path, &key.to_text_as(role), 0o600)?;
    write_new(public, &key.public().to_text_as(role), 0o644)?;
    Ok(key.public())
}

/// Writes `text` to `path` with `mode`, durably, only if `path` does not exist: the text goes to
/// a temporary name, is flushed, and is linked into place (link(2) never replaces a file).
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyFileError> {
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
            .mode(mode)
            .open(tmp)?;
        // The umask may have narrowed the mode; a public key must stay readable.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write(&tmp).map_err(|e| KeyFileError::Write(path.to_owned(), e))?;
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

/// Reads an agent key file, refusing one that group or others can read.
pub fn load(path: &Path) -> Result<AgentKey, KeyFileError> {
    let text = read_secret(path)?;
    AgentKey::from_hex(&text).map_err(|e| KeyFileError::Parse(path.to_owned(), e))
}

/// Reads the controller's signing key file, refusing one that group or others can read.
pub fn load_controller(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = read_secret(path)?;
    SigningKey::from_text(&text).map_err(|e| KeyFileError::Parse(path.to_owned(), e))
}

/// Reads a node's backup key file, refusing one that group or others can read.
pub fn load_backup(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = read_secret(path)?;
    SigningKey::from_text_as(&text, Role::Backup)
        .map_err(|e| KeyFileError::Parse(path.to_owned(), e))
}

/// Reads the controller's public key file.
pub fn load_public(path: &Path) -> Result<PublicKey, KeyFileError> {
    let text = fs::read_to_string(path).map_err(|e| KeyFileError::Read(path.to_owned(), e))?;
    PublicKey::from_text(&text).map_err(|e| KeyFileError::Parse(path.to_owned(), e))
}

fn read_secret(path: &Path) -> Result<String, KeyFileError> {
    let meta = fs::metadata(path).map_err(|e| KeyFileError::Read(path.to_owned(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions(path.to_owned(), mode));
    }
    fs::read_to_string(path).map_err(|e| KeyFileError::Read(path.to_owned(), e))
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

    #[test]
    fn controller_keys_are_a_private_signing_key_and_a_public_key_never_confused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = (
            dir.path().join("controller.key"),
            dir.path().join("controller.pub"),
        );
        let made = generate_controller(&key, &public).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&key), mode(&public)), (0o600, 0o644));
        assert_eq!(load_controller(&key).unwrap().public(), made);
        assert_eq!(load_public(&public).unwrap(), made);
        // Each loader refuses the others' files: a signing key never passes for a public key.
        assert!(matches!(load_public(&key), Err(KeyFileError::Parse(..))));
        assert!(matches!(load(&key), Err(KeyFileError::Parse(..))));
        assert!(matches!(
            load_controller(&public),
            Err(KeyFileError::Permissions(..))
        ));
        assert!(matches!(
            generate_controller(&key, &dir.path().join("new.pub")),
            Err(KeyFileError::Exists(_))
        ));
        assert!(matches!(
            generate_controller(&dir.path().join("new.key"), &public),
            Err(KeyFileError::Exists(_))
        ));
        assert!(!dir.path().join("new.key").exists());
    }
}
