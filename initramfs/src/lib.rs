//! Builds the rescue initramfs (newc cpio, compressed) from the agent, a kernel's modules and a
//! config. Not built yet: the rescue-boot issue fills this crate.
#![deny(unsafe_code)]
