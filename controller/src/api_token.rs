//! The API's bearer token: one secret in a file that only its owner can read, loaded once by the
//! daemon (its TCP listener) and by the CLI (`--token-file`), and compared in constant time.
//!
//! The file holds one line of at least [`MIN_LEN`] visible ASCII characters (it travels in an
//! `Authorization` header), for example `umask 077; openssl rand -hex 32 > api.token`. A file that
//! its group or others may read, or write, is refused: a token that many can read is no secret.
//! The token is never logged or shown (`Debug` is redacted).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted.
pub const MIN_LEN: usize = 32;

/// The longest token file read.
const MAX_FILE: u64 = 4096;

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("API token file {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("API token file {0}: not a regular file")]
    NotFile(PathBuf),
    #[error(
        "API token file {0}: mode {1:04o} lets its group or others read or write it; \
         chmod 600 it"
    )]
    Mode(PathBuf, u32),
    #[error(
        "API token file {0}: the token must be one line of at least {MIN_LEN} visible ASCII \
         characters"
    )]
    Format(PathBuf),
}

/// A bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// Reads the token of `path`, refusing a file its group or others can read.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let open = |e| TokenError::Open(path.to_owned(), e);
        // O_NOFOLLOW: the mode checked is the file's own, not a link's target chosen later.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(open)?;
        let meta = file.metadata().map_err(open)?;
        if !meta.is_file() {
            return Err(TokenError::NotFile(path.to_owned()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Mode(path.to_owned(), mode));
        }
        let mut text = String::new();
        file.take(MAX_FILE)
            .read_to_string(&mut text)
            .map_err(|_| TokenError::Format(path.to_owned()))?;
        Self::parse(&text).ok_or_else(|| TokenError::Format(path.to_owned()))
    }

    /// The token in `text` (one line; surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let token = text.trim();
        (token.len() >= MIN_LEN && token.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| Self(token.to_string()))
    }

    /// Whether `presented` is this token. Both are hashed first, so the comparison takes the
    /// same time whatever their lengths and contents.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let want = Sha256::digest(self.0.as_bytes());
        let got = Sha256::digest(presented);
        want.ct_eq(&got).into()
    }

    /// The `Authorization` header's value that presents this token.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn file(mode: u32, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_private_token_file_loads_and_matches_only_its_token() {
        let (_dir, path) = file(0o600, &format!("{TOKEN}\n"));
        let t = ApiToken::load(&path).unwrap();
        assert!(t.matches(TOKEN.as_bytes()));
        assert!(!t.matches(b""));
        assert!(!t.matches(&TOKEN.as_bytes()[1..]));
        assert!(!t.matches(format!("{TOKEN}x").as_bytes()));
        assert_eq!(t.bearer(), format!("Bearer {TOKEN}"));
        assert!(!format!("{t:?}").contains(TOKEN));
    }

    #[test]
    fn token_files_others_may_read_or_write_are_refused() {
        for mode in [0o640, 0o604, 0o660, 0o602] {
            let (_dir, path) = file(mode, TOKEN);
            let e = ApiToken::load(&path).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
        }
        let (_dir, path) = file(0o400, TOKEN);
        assert!(ApiToken::load(&path).is_ok());
    }

    #[test]
    fn short_multi_line_or_missing_tokens_are_refused() {
        for text in [
            "short",
            "",
            &format!("{TOKEN} {TOKEN}"),
            "é".repeat(40).as_str(),
        ] {
            let (_dir, path) = file(0o600, text);
            assert!(
                matches!(ApiToken::load(&path), Err(TokenError::Format(_))),
                "{text:?}"
            );
        }
        let e = ApiToken::load(Path::new("/nonexistent/api.token")).unwrap_err();
        assert!(matches!(e, TokenError::Open(..)), "{e}");
    }
}
