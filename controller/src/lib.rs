//! The Lazarus controller and operator CLI, as a library.
//!
//! Today: the cluster key file ([`keyfile`]) and the flag commands ([`flag_cmd`]). The controller
//! daemon (failure detection, fenced promotion, repair orchestration) arrives with the controller
//! issue.
#![deny(unsafe_code)]

pub mod agent_client;
pub mod agent_cmd;
pub mod api;
pub mod api_client;
pub mod cluster;
pub mod command;
pub mod daemon;
pub mod flag_cmd;
pub mod health;
pub mod provider;
pub mod redfish;
pub mod repair;
pub mod store;
