//! What runs on a node and touches its files, shared by the rescue agent, the controller's CLI
//! (run on nodes: `lazarus flag`, `lazarus backup`, `lazarus keygen`) and the initramfs builder:
//!
//! - [`keyfile`]: key files (agent keys, the controller's signing and public keys; secret ones
//!   mode 0600, none ever overwritten);
//! - [`index`]: chunk indexes of system images (a SHA-256 per chunk, holes marked);
//! - [`flag_store`]: durable, power-safe reads and writes of the flag record on a file or block
//!   device (the record's bytes are `lazarus_proto::flag`'s);
//! - [`backup`]: the business-file backup format: create, choose, verify, extract;
//! - [`agent_config`]: the schema of the agent's baked-in `agent.toml`;
//! - [`zstd`]: a pure-Rust reader of multi-frame zstd streams (backups and images);
//! - [`admission`]: per-peer and total connection limits for listeners anyone can reach;
//! - [`random`]: random bytes from the kernel;
//! - [`rescue_entry`]: the rescue kernel as a boot entry on the node's ESP, booted once.
//!
//! It speaks no network protocol and knows nothing of the repair: the agent and controller own
//! those.
#![deny(unsafe_code)]

pub mod admission;
pub mod agent_config;
pub mod backup;
pub mod flag_store;
pub mod index;
pub mod keyfile;
pub mod random;
pub mod rescue_entry;
pub mod zstd;

pub use flag_store::{FlagStore, FlagUpdate, StoreError};
