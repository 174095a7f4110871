//! The cluster key: 32 secret bytes shared by the controller and every rescue initramfs.
//!
//! On disk it is 64 lowercase or uppercase hex characters, optionally followed by one newline.
//! The key is never printed: its `Debug` shows only that it is redacted.

use std::fmt;

/// Length of the cluster key in bytes.
pub const KEY_LEN: usize = 32;

/// Errors from parsing a cluster key file's contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cluster key must be 64 hex characters, found {0} characters")]
    Length(usize),
    #[error("cluster key has a non-hex character at position {0}")]
    NotHex(usize),
}

/// The 32-byte HMAC key of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl ClusterKey {
    /// A key from raw bytes (for example, fresh from the kernel's random generator).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the contents of a key file: 64 hex characters and at most one trailing newline.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.len() != KEY_LEN * 2 {
            return Err(KeyError::Length(text.chars().count()));
        }
        let mut out = [0u8; KEY_LEN];
        let bytes = text.as_bytes();
        for (i, slot) in out.iter_mut().enumerate() {
            let hi = hex_value(bytes[2 * i]).ok_or(KeyError::NotHex(2 * i))?;
            let lo = hex_value(bytes[2 * i + 1]).ok_or(KeyError::NotHex(2 * i + 1))?;
            *slot = hi << 4 | lo;
        }
        Ok(Self(out))
    }

    /// The key file contents: 64 lowercase hex characters and a newline.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(KEY_LEN * 2 + 1);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        s.push('\n');
        s
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_debug_is_redacted() {
        let key = ClusterKey::from_bytes(core::array::from_fn(|i| i as u8 * 7));
        let text = key.to_hex();
        assert_eq!(text.len(), 65);
        assert_eq!(ClusterKey::from_hex(&text).unwrap(), key);
        assert_eq!(format!("{key:?}"), "ClusterKey(<redacted>)");
    }

    #[test]
    fn malformed_key_files_are_rejected_with_their_reason() {
        assert_eq!(ClusterKey::from_hex(""), Err(KeyError::Length(0)));
        assert_eq!(
            ClusterKey::from_hex(&"a".repeat(63)),
            Err(KeyError::Length(63))
        );
        let mut bad = "0".repeat(64);
        bad.replace_range(10..11, "g");
        assert_eq!(ClusterKey::from_hex(&bad), Err(KeyError::NotHex(10)));
        assert_eq!(
            ClusterKey::from_hex(&"é".repeat(32)),
            Err(KeyError::NotHex(0))
        );
    }
}
