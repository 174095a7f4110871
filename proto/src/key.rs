//! The keys of the protocol (see `docs/protocol.md`, "Trust"):
//!
//! - [`SigningKey`]: an Ed25519 signing key. The controller's never leaves the control node;
//!   every command to an agent and every acknowledgement of a `Ready` is signed with it. A
//!   node's backup key signs the manifests of the backups `lazarus backup` writes on that node.
//! - [`PublicKey`]: a public half. The controller's is the only key in the base rescue image (an
//!   agent obeys only what it verifies); a node's backup public key is in the cluster file and
//!   travels in the plan (the agent restores only a backup it verifies).
//! - [`AgentKey`]: 32 secret bytes shared by the controller and one node's rescue media (a
//!   per-node key) or one repair's image (a per-repair key, revoked when the repair ends). The
//!   agent authenticates its `Ready` and its replies with it (HMAC-SHA256).
//!
//! On disk an agent key is 64 hex characters (one optional trailing newline); the controller's
//! and backup keys carry a label before their 64 hex characters (`lazarus-signing-key:` and
//! `lazarus-public-key:`), so one can never be taken for another (a signing key handed to the
//! image builder as the public key is refused, not baked into a public image). Secret keys are
//! never printed: their `Debug` shows only that they are redacted.

use std::fmt;

/// Length of a key (an agent key, a signing seed, a public key) in bytes.
pub const KEY_LEN: usize = 32;

/// Errors from parsing a key file's contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key must be 64 hex characters, found {0} characters")]
    Length(usize),
    #[error("key has a non-hex character at position {0}")]
    NotHex(usize),
    #[error("not a {0} (its file starts with `{0}:`)")]
    Label(&'static str),
    #[error("not a valid Ed25519 public key")]
    BadPublicKey,
}

/// The 32-byte HMAC key of one node's or one repair's rescue agent.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey([u8; KEY_LEN]);

impl AgentKey {
    /// A key from raw bytes (for example, fresh from the kernel's random generator).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the contents of a key file: 64 hex characters and at most one trailing newline.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        parse_hex(text).map(Self)
    }

    /// The key file contents: 64 lowercase hex characters and a newline.
    pub fn to_hex(&self) -> String {
        format!("{}\n", hex(&self.0))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentKey(<redacted>)")
    }
}

const SIGNING_LABEL: &str = "lazarus-signing-key";
const PUBLIC_LABEL: &str = "lazarus-public-key";
const BACKUP_LABEL: &str = "lazarus-backup-key";
const BACKUP_PUBLIC_LABEL: &str = "lazarus-backup-public-key";

/// What a signing key is for: its file says so, and a key made for one role is refused in the
/// other (a node's backup public key handed to the image builder as the controller's would let
/// a key kept on a worker command agents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The controller's: commands to agents.
    Controller,
    /// A node's: its backups.
    Backup,
}

impl Role {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::Controller => (SIGNING_LABEL, PUBLIC_LABEL),
            Self::Backup => (BACKUP_LABEL, BACKUP_PUBLIC_LABEL),
        }
    }
}

fn unlabel<'t>(text: &'t str, label: &'static str) -> Result<&'t str, KeyError> {
    text.strip_prefix(label)
        .and_then(|t| t.strip_prefix(':'))
        .ok_or(KeyError::Label(label))
}

/// An Ed25519 signing key (its 32-byte seed).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// The key of a 32-byte seed (fresh from the kernel's random generator).
    pub fn from_seed(seed: [u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Parses a controller key file: `lazarus-signing-key:` and 64 hex characters.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        Self::from_text_as(text, Role::Controller)
    }

    /// Parses a key file of `role` (its label, then 64 hex characters).
    pub fn from_text_as(text: &str, role: Role) -> Result<Self, KeyError> {
        parse_hex(unlabel(text, role.labels().0)?).map(Self::from_seed)
    }

    /// The controller key file's contents.
    pub fn to_text(&self) -> String {
        self.to_text_as(Role::Controller)
    }

    /// The key file's contents for `role`.
    pub fn to_text_as(&self, role: Role) -> String {
        format!("{}:{}\n", role.labels().0, hex(self.0.as_bytes()))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`. Callers put a domain label of their own first (frames and backup
    /// manifests use distinct ones), so no signature counts for another purpose.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 public key: the controller's (what an agent verifies commands with) or a node's
/// backup key (what an agent verifies a backup's manifest with).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Parses the controller's public key: `lazarus-public-key:` and 64 hex characters.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        Self::from_text_as(text, Role::Controller)
    }

    /// Parses a public key of `role` (its label, then 64 hex characters).
    pub fn from_text_as(text: &str, role: Role) -> Result<Self, KeyError> {
        let bytes = parse_hex(unlabel(text, role.labels().1)?)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyError::BadPublicKey)
    }

    /// The controller's public key file contents.
    pub fn to_text(&self) -> String {
        self.to_text_as(Role::Controller)
    }

    /// The public key file's contents for `role`.
    pub fn to_text_as(&self, role: Role) -> String {
        format!("{}:{}\n", role.labels().1, hex(self.0.as_bytes()))
    }

    /// The 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// The key of 32 bytes (from a plan), if they are a valid point.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::BadPublicKey)
    }

    /// Whether `signature` is this key's over `message` (strict verification: no malleable or
    /// small-order forms).
    pub fn verifies(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex(self.0.as_bytes()))
    }
}

/// 64 hex characters and at most one trailing newline (or CR LF).
fn parse_hex(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    crate::hex::decode(text).map_err(|e| match e {
        crate::hex::HexError::Length { found, .. } => KeyError::Length(found),
        crate::hex::HexError::NotHex(at) => KeyError::NotHex(at),
    })
}

fn hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_debug_is_redacted() {
        let key = AgentKey::from_bytes(core::array::from_fn(|i| i as u8 * 7));
        let text = key.to_hex();
        assert_eq!(text.len(), 65);
        assert_eq!(AgentKey::from_hex(&text).unwrap(), key);
        assert_eq!(format!("{key:?}"), "AgentKey(<redacted>)");
    }

    #[test]
    fn malformed_key_files_are_rejected_with_their_reason() {
        assert_eq!(AgentKey::from_hex(""), Err(KeyError::Length(0)));
        assert_eq!(
            AgentKey::from_hex(&"a".repeat(63)),
            Err(KeyError::Length(63))
        );
        let mut bad = "0".repeat(64);
        bad.replace_range(10..11, "g");
        assert_eq!(AgentKey::from_hex(&bad), Err(KeyError::NotHex(10)));
        assert_eq!(
            AgentKey::from_hex(&"é".repeat(32)),
            Err(KeyError::NotHex(0))
        );
    }
}

#[cfg(test)]
mod controller_key_tests {
    use super::*;

    #[test]
    fn controller_keys_round_trip_and_are_never_taken_for_one_another() {
        let key = SigningKey::from_seed([7; KEY_LEN]);
        let text = key.to_text();
        assert!(text.starts_with("lazarus-signing-key:"), "{text}");
        let again = SigningKey::from_text(&text).unwrap();
        assert_eq!(again.public(), key.public());
        let public = key.public().to_text();
        assert_eq!(PublicKey::from_text(&public).unwrap(), key.public());
        // A signing key is not a public key, nor is an agent key, and the other way round.
        assert_eq!(
            PublicKey::from_text(&text),
            Err(KeyError::Label("lazarus-public-key"))
        );
        let agent = AgentKey::from_bytes([9; KEY_LEN]).to_hex();
        assert_eq!(
            PublicKey::from_text(&agent),
            Err(KeyError::Label("lazarus-public-key"))
        );
        assert!(SigningKey::from_text(&public).is_err());
        assert!(AgentKey::from_hex(&text).is_err());
        assert!(AgentKey::from_hex(&public).is_err());
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
        // A backup key is never taken for the controller's, nor the other way round.
        let backup = key.to_text_as(Role::Backup);
        let backup_public = key.public().to_text_as(Role::Backup);
        assert!(backup.starts_with("lazarus-backup-key:"), "{backup}");
        assert!(PublicKey::from_text(&backup_public).is_err());
        assert!(SigningKey::from_text(&backup).is_err());
        assert!(PublicKey::from_text_as(&public, Role::Backup).is_err());
        assert_eq!(
            PublicKey::from_text_as(&backup_public, Role::Backup).unwrap(),
            key.public()
        );
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let key = SigningKey::from_seed([1; KEY_LEN]);
        let other = SigningKey::from_seed([2; KEY_LEN]);
        let sig = key.sign(b"recover");
        assert!(key.public().verifies(b"recover", &sig));
        assert!(!key.public().verifies(b"recovers", &sig));
        assert!(!other.public().verifies(b"recover", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!key.public().verifies(b"recover", &bad));
    }
}
