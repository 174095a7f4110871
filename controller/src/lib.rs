//! The Lazarus controller and operator CLI, as a library; `main.rs` only parses arguments.
//!
//! - The daemon, `lazarus serve` ([`daemon`]): health checks, the repair state machine
//!   ([`repair`], pure) with its persisted state ([`store`]), boot providers ([`provider`],
//!   [`redfish`], [`command`]), the agents driven over the wire protocol ([`agent_client`]), the
//!   HTTP API and `/metrics` ([`daemon::http`], documents in [`api`], token in [`api_token`]),
//!   and the rescue-media server ([`media`]).
//! - The cluster file ([`cluster`]) and the keys it names ([`keys`]), validated once at start.
//! - The operator CLI's pieces: the API client ([`api_client`]), direct agent commands
//!   ([`agent_cmd`]), flag commands ([`flag_cmd`]), image indexes ([`image_cmd`]).
//!
//! The controller knows agents only through `lazarus-proto`; what it shares with them on disk
//! (key files, flag store, backups) comes from `lazarus-node`.
#![deny(unsafe_code)]

pub mod agent_client;
pub mod agent_cmd;
pub mod api;
pub mod api_client;
pub mod api_token;
pub mod cluster;
pub mod command;
pub mod daemon;
pub mod flag_cmd;
pub mod health;
pub mod image_cmd;
pub mod keys;
pub mod media;
pub mod provider;
pub mod redfish;
pub mod repair;
pub mod store;
