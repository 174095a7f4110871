//! The Lazarus rescue agent, as a library: everything the `lazarus-agent` binary does, testable
//! as an ordinary process.
//!
//! - [`pid1`]: PID 1 mode, `/init` of the rescue initramfs (early mounts, modules, bootstrap
//!   network by [`config`] or [`dhcp`], then serving until a `Reboot`).
//! - [`server`], [`service`], [`state`], [`announce`]: the authenticated protocol server, the
//!   live status of one boot, its phases decided by one pure function, and the `Ready`
//!   announcement.
//! - [`recovery`]: one plan, step by step, with the flag written ahead of every side effect;
//!   [`image`] is its copy engine, [`disk`] and [`gpt`] find the target and its partitions.
//! - [`platform`]: the seam between a recovery and the machine (host mode or rescue mode).
//! - [`sys`]: every `unsafe` call into the kernel; the rest of the crate denies `unsafe`.
//!
//! The flag store, key file, backups and agent config are `lazarus-node`'s; the wire types are
//! `lazarus-proto`'s.
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
