//! The seam between a recovery and the machine: two small traits, split by concern.
//!
//! - [`Source`] reaches the image: the node's address and the export. This is all that differs
//!   between the two real machines: [`HostSource`] runs a recovery as an ordinary process (the
//!   host keeps its network, the export is a local directory); [`RescueSource`] is PID 1 in the
//!   rescue initramfs (the plan's address goes on an interface with netlink, the export is
//!   mounted over NFS).
//! - [`Storage`] is the node's disks: listing them from sysfs, their partitions, the flag
//!   partition, mounting the restored filesystem and flushing. [`SysDisks`] is the one real
//!   implementation, shared by both machines.
//!
//! A [`Machine`] joins a source and the disks; a recovery takes any [`Platform`] (both traits),
//! so its order is unit-tested against a fake (`fake`, tests only) without root.
//!
//! This module must not decide anything about a plan: it does what a step asks, and every
//! failure is a typed error naming the step.

mod disks;
#[cfg(test)]
pub(crate) mod fake;
mod flag;
mod partitions;
mod source;

use std::path::{Path, PathBuf};

use lazarus_proto::{DiskSelector, FlagLocation, FsType, NetworkPlan, NfsSource};

use crate::disk::{DiskInfo, SelectError};
use crate::error::AgentError;
use crate::network::Interface;
use crate::root::Root;

pub use crate::error::{FlagLookupError, MountError, PartitionError, SourceError};
pub use disks::{mount_restored, SysDisks};
pub use flag::{
    check_flag_path, find_boot_flag, find_flag, flag_on_disk, holds_flag_record, partition_parent,
    scan_for_record, FlagSite, SCAN_LEN,
};
pub use partitions::{reread_and_wait, sync_partitions};
pub use source::{mount_nfs, HostSource, RescueSource};

/// Reaching the image: the node's network and the export holding images and backups.
pub trait Source: Send + Sync {
    /// Gives the node the plan's address (no-op where the network is already right).
    fn configure_network(&self, net: &NetworkPlan) -> Result<(), AgentError>;
    /// Makes the export readable; returns the directory holding its root.
    fn mount_source(&self, nfs: &NfsSource) -> Result<PathBuf, AgentError>;
    /// Undoes `mount_source` (best effort: the source is read-only).
    fn unmount_source(&self, dir: &Path);
}

/// The node's disks, partitions, flag partition and restored filesystem.
pub trait Storage: Send + Sync {
    /// Disks the selector may choose from.
    fn disks(&self, selector: &DiskSelector) -> Result<Vec<DiskInfo>, SelectError>;
    /// The device node of partition `number` of `disk` (the kernel's view made to match the
    /// disk's GPT first).
    fn partition(&self, disk: &DiskInfo, number: u32) -> Result<PathBuf, AgentError>;
    /// Asks the kernel to re-read `disk`'s partition table and waits for its partitions.
    fn reread_partitions(&self, disk: &DiskInfo) -> Result<(), AgentError>;
    /// Registers partition `number` of `disk` (`start`, `len` bytes) with the kernel, replacing a
    /// stale one of that number, and returns its device node: for the flag partition as the image
    /// defines it, when a wrecked disk no longer describes one.
    fn register_partition(
        &self,
        disk: &DiskInfo,
        number: u32,
        start: u64,
        len: u64,
    ) -> Result<PathBuf, AgentError>;
    /// The flag device for a plan: the partition with the plan's label on `disk` (with no disk,
    /// the only one), or the plan's path once checked: a partition (of `disk`, when given), or
    /// in host mode a regular file. Nothing is written here.
    fn flag_device(
        &self,
        location: &FlagLocation,
        disk: Option<&DiskInfo>,
    ) -> Result<PathBuf, AgentError>;
    /// Where the flag is at start, before any plan, if there is one (also on a disk whose copy
    /// was interrupted: see `platform::flag`).
    fn boot_flag_device(&self) -> Option<FlagSite>;
    /// Mounts a restored filesystem read-write; returns the mount point.
    fn mount_target(&self, device: &Path, fstype: FsType) -> Result<PathBuf, AgentError>;
    /// Unmounts a restored filesystem.
    fn unmount_target(&self, dir: &Path) -> Result<(), AgentError>;
    /// Makes everything written to `path` durable: a mounted filesystem (syncfs(2)) or a disk
    /// (fsync(2)). A write-back error (a failing disk) is an error, never a silent success.
    fn sync(&self, path: &Path) -> Result<(), AgentError>;
}

/// What a recovery needs from the machine.
pub trait Platform: Source + Storage {}

impl<T: Source + Storage + ?Sized> Platform for T {}

/// A real machine: a source (host or rescue) and the node's disks from sysfs.
#[derive(Debug)]
pub struct Machine<S> {
    pub source: S,
    pub disks: SysDisks,
}

/// Host mode: an ordinary process; the export is a local directory.
pub type HostMachine = Machine<HostSource>;
/// Rescue mode: PID 1 of the rescue initramfs; the export is mounted over NFS.
pub type RescueMachine = Machine<RescueSource>;

impl HostMachine {
    /// Host mode under `workdir` (mounts under `<workdir>/mnt`); the export is `export_dir`
    /// (default `<workdir>/export`), and a regular file named by a selector's path stands for a
    /// disk. `boot_flag` is a flag partition or file, or a whole disk to find the flag on; host
    /// mode never searches the host's disks.
    pub fn host(workdir: &Path, export_dir: Option<PathBuf>, boot_flag: Option<PathBuf>) -> Self {
        Self {
            source: HostSource {
                export_dir: export_dir.unwrap_or_else(|| workdir.join("export")),
            },
            disks: SysDisks {
                root: Root::default(),
                mount_dir: workdir.join("mnt"),
                boot_flag,
                search_boot_flag: false,
                files_as_disks: true,
                rescue_media: Vec::new(),
            },
        }
    }
}

impl RescueMachine {
    /// Rescue mode: the bootstrap interface `iface` (used unless a plan names another), mounts
    /// under `mount_dir`; the flag at boot is `boot_flag` (a partition, or a whole disk to look
    /// on) or else looked for on every disk; `rescue_media` are never written.
    pub fn rescue(
        root: Root,
        iface: Interface,
        mount_dir: PathBuf,
        boot_flag: Option<PathBuf>,
        rescue_media: Vec<String>,
    ) -> Self {
        Self {
            source: RescueSource {
                root: root.clone(),
                iface,
                mount_dir: mount_dir.clone(),
            },
            disks: SysDisks {
                root,
                mount_dir,
                boot_flag,
                search_boot_flag: true,
                files_as_disks: false,
                rescue_media,
            },
        }
    }
}

impl<S: Source> Source for Machine<S> {
    fn configure_network(&self, net: &NetworkPlan) -> Result<(), AgentError> {
        self.source.configure_network(net)
    }

    fn mount_source(&self, nfs: &NfsSource) -> Result<PathBuf, AgentError> {
        self.source.mount_source(nfs)
    }

    fn unmount_source(&self, dir: &Path) {
        self.source.unmount_source(dir)
    }
}

impl<S: Send + Sync> Storage for Machine<S> {
    fn disks(&self, selector: &DiskSelector) -> Result<Vec<DiskInfo>, SelectError> {
        self.disks.disks(selector)
    }

    fn partition(&self, disk: &DiskInfo, number: u32) -> Result<PathBuf, AgentError> {
        self.disks.partition(disk, number)
    }

    fn reread_partitions(&self, disk: &DiskInfo) -> Result<(), AgentError> {
        self.disks.reread_partitions(disk)
    }

    fn register_partition(
        &self,
        disk: &DiskInfo,
        number: u32,
        start: u64,
        len: u64,
    ) -> Result<PathBuf, AgentError> {
        self.disks.register_partition(disk, number, start, len)
    }

    fn flag_device(
        &self,
        location: &FlagLocation,
        disk: Option<&DiskInfo>,
    ) -> Result<PathBuf, AgentError> {
        self.disks.flag_device(location, disk)
    }

    fn boot_flag_device(&self) -> Option<FlagSite> {
        self.disks.boot_flag_device()
    }

    fn mount_target(&self, device: &Path, fstype: FsType) -> Result<PathBuf, AgentError> {
        self.disks.mount_target(device, fstype)
    }

    fn unmount_target(&self, dir: &Path) -> Result<(), AgentError> {
        self.disks.unmount_target(dir)
    }

    fn sync(&self, path: &Path) -> Result<(), AgentError> {
        self.disks.sync(path)
    }
}
