//! Small value types shared by every part, each validated where it is parsed, so two parts can
//! never disagree about what is valid: digests and boot ids ([`Sha256`], [`BootId`]), MAC
//! addresses ([`MacAddr`]) and node names ([`NodeName`]).
//!
//! On the wire each has the bytes its plain form had (`[u8; N]`, `String`); humans (TOML, JSON)
//! see hex, `aa:bb:cc:dd:ee:ff` and the name.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

/// Fixed-size byte strings shown as hex to humans (TOML, JSON) and as raw bytes on the wire.
macro_rules! hex_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                crate::hex::encode(&self.0)
            }

            /// Parses exactly `2 * len` hex characters.
            pub fn from_hex(s: &str) -> Option<Self> {
                crate::hex::decode(s).ok().map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    Self::from_hex(&s).ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "expected {} hex characters, found {:?}",
                            2 * $len,
                            s
                        ))
                    })
                } else {
                    <[u8; $len]>::deserialize(d).map(Self)
                }
            }
        }
    };
}

hex_bytes!(
    /// A SHA-256 digest.
    Sha256,
    32
);
hex_bytes!(
    /// A random id the agent draws at every boot; requests are bound to it.
    BootId,
    16
);
hex_bytes!(
    /// The 32 bytes of a node's backup public key (64 hex characters in a plan file): the agent
    /// restores only a backup whose manifest this key's owner signed.
    BackupKey,
    32
);

/// An Ethernet MAC address: six bytes on the wire, `aa:bb:cc:dd:ee:ff` for humans.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address or node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    #[error(
        "{0:?} is not a node name (1-253 characters of a-z, A-Z, 0-9, '-', '_', '.', not starting with '.')"
    )]
    Node(String),
}

impl MacAddr {
    /// The all-zero address loopback interfaces report.
    pub const ZERO: MacAddr = MacAddr([0; 6]);
}

impl FromStr for MacAddr {
    type Err = NameError;

    /// Parses `aa:bb:cc:dd:ee:ff`, either case, exactly six two-digit groups.
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::Mac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(MacAddr(out)),
            Some(_) => Err(bad()),
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 6]>::deserialize(d).map(MacAddr)
        }
    }
}

/// A node's name as the cluster file gives it: one plain path component (backups live under
/// `<backups>/<node>/`), so it can never name a parent or hidden directory.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Longest name accepted (a DNS name's limit).
    pub const MAX_LEN: usize = 253;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok {
            Ok(NodeName(s))
        } else {
            Err(NameError::Node(s))
        }
    }
}

impl FromStr for NodeName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::try_from(s.to_string())
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for NodeName {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl core::ops::Deref for NodeName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_in_either_case_and_print_lowercase() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "zz:54:00:12:34:56",
            "+1:54:00:12:34:56",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(NameError::Mac(bad.into())));
        }
    }

    #[test]
    fn node_names_are_one_plain_path_component() {
        for good in ["w1", "rack-2.node_07", "a", &"x".repeat(253)] {
            assert_eq!(good.parse::<NodeName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            ".x",
            "a/b",
            "../w1",
            "w 1",
            "w1\n",
            "é",
            &"x".repeat(254),
        ] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_node_name_is_refused_when_decoded_too() {
        let bytes = postcard::to_allocvec("..").unwrap();
        assert!(postcard::from_bytes::<NodeName>(&bytes).is_err());
        let good: NodeName = "w1".parse().unwrap();
        assert_eq!(
            postcard::to_allocvec(&good).unwrap(),
            postcard::to_allocvec("w1").unwrap(),
            "a node name has a string's wire bytes"
        );
        let mac = MacAddr([1, 2, 3, 4, 5, 6]);
        assert_eq!(
            postcard::to_allocvec(&mac).unwrap(),
            postcard::to_allocvec(&[1u8, 2, 3, 4, 5, 6]).unwrap(),
            "a MAC has six bytes on the wire"
        );
    }
}
