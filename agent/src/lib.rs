//! The Lazarus rescue agent, as a library.
//!
//! Today it holds the flag store: the durable, power-safe read and write of the flag record on a
//! file or block device. The recovery engine, protocol server and state machine arrive with the
//! recovery-engine issue; PID 1 duties with the rescue-boot issue.
#![deny(unsafe_code)]

pub mod announce;
pub mod config;
pub mod dhcp;
pub mod disk;
pub mod error;
pub mod gpt;
pub mod identity;
pub mod image;
pub mod kmod;
pub mod logring;
pub mod network;
pub mod pid1;
pub mod platform;
pub mod recovery;
pub mod root;
pub mod server;
pub mod service;
pub mod state;
pub mod sys;
