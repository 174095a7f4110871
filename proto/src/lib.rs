//! The Lazarus wire protocol and flag record, shared by every binary.
//!
//! This crate owns the bytes that cross a boundary between the parts of Lazarus:
//!
//! - [`message`]: the `Request` (controller to agent) and `Response` (agent to controller) enums
//!   and the recovery [`message::Plan`], encoded with postcard. Append only.
//! - [`frame`]: framing (length prefix, 64 KiB limit, protocol version) and authentication
//!   (commands signed with the controller's Ed25519 key, replies and announcements tagged with an
//!   agent key, requests bound to the agent's boot id, its session and a strictly
//!   increasing counter, replies bound to their request).
//! - [`key`]: the keys (controller signing and public keys, agent keys) and their file formats.
//! - [`hex`]: hex text of keys, digests and ids.
//! - [`types`]: digests, boot ids, MAC addresses and node names, validated where parsed.
//! - [`flag`]: the on-disk flag record codec, pure, so the restored OS can read it without the
//!   agent.
//!
//! It must not open sockets or files: its only I/O is through `Read`/`Write` handed to it.
#![deny(unsafe_code)]

pub mod flag;
pub mod frame;
pub mod hex;
pub mod key;
pub mod message;
pub mod types;

pub use frame::{WireError, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use key::{AgentKey, KeyError, PublicKey, SigningKey};
pub use message::*;
pub use types::NameError;

/// TCP port the agent listens on.
pub const AGENT_PORT: u16 = 7460;
/// TCP port the controller receives `Ready` announcements on.
pub const CONTROLLER_PORT: u16 = 7461;
