//! The seam between the recovery logic and the machine: networking, mounts, disks, reboot.
//!
//! [`Platform`] is small on purpose. [`HostPlatform`] runs a recovery as an ordinary process:
//! the host keeps its own network, the plan's NFS export maps to a local directory, and the
//! disk selector matches loop devices or, by path, a regular file. The PID 1 implementation
//! (kernel network configuration, NFS mount) lives beside it and uses the same interface.

use std::fs;
use std::path::{Path, PathBuf};

use lazarus_proto::{DiskSelector, FlagLocation, FsType, NetworkPlan, NfsSource};

use crate::disk::{self, DiskInfo, SelectError};
use crate::error::AgentError;
use crate::root::Root;
use crate::sys;

/// What a recovery needs from the machine.
pub trait Platform: Send + Sync {
    /// Gives the node the plan's address (no-op where the network is already right).
    fn configure_network(&self, net: &NetworkPlan) -> Result<(), AgentError>;
    /// Makes the export readable; returns the directory holding its root.
    fn mount_source(&self, nfs: &NfsSource) -> Result<PathBuf, AgentError>;
    /// Undoes `mount_source`.
    fn unmount_source(&self, dir: &Path);
    /// Disks the selector may choose from.
    fn disks(&self, selector: &DiskSelector) -> Result<Vec<DiskInfo>, SelectError>;
    /// The device node of partition `number` of `disk`.
    fn partition(&self, disk: &DiskInfo, number: u32) -> Result<PathBuf, AgentError>;
    /// Asks the kernel to re-read `disk`'s partition table and waits for its partitions.
    fn reread_partitions(&self, disk: &DiskInfo) -> Result<(), AgentError>;
    /// The flag device for a plan (on `disk` when it is a partition label).
    fn flag_device(
        &self,
        location: &FlagLocation,
        disk: Option<&DiskInfo>,
    ) -> Result<PathBuf, AgentError>;
    /// The flag device to read at start, before any plan, if there is one.
    fn boot_flag_device(&self) -> Option<PathBuf>;
    /// Mounts a restored filesystem read-write; returns the mount point.
    fn mount_target(&self, device: &Path, fstype: FsType) -> Result<PathBuf, AgentError>;
    /// Unmounts a restored filesystem.
    fn unmount_target(&self, dir: &Path) -> Result<(), AgentError>;
    /// Flushes everything to stable storage.
    fn sync(&self);
}

/// Host mode: a recovery as an ordinary (usually root) process.
#[derive(Debug, Clone)]
pub struct HostPlatform {
    pub root: Root,
    /// The local directory standing for the NFS export.
    pub export_dir: PathBuf,
    /// Where restored filesystems are mounted.
    pub mount_dir: PathBuf,
    /// The flag read at start (`--flag`), if any.
    pub boot_flag: Option<PathBuf>,
}

impl HostPlatform {
    pub fn new(workdir: &Path, export_dir: Option<PathBuf>, boot_flag: Option<PathBuf>) -> Self {
        Self {
            root: Root::default(),
            export_dir: export_dir.unwrap_or_else(|| workdir.join("export")),
            mount_dir: workdir.join("mnt"),
            boot_flag,
        }
    }
}

impl Platform for HostPlatform {
    fn configure_network(&self, net: &NetworkPlan) -> Result<(), AgentError> {
        log::info!(
            "host mode: keeping the host's network (plan asks for {}/{})",
            net.address,
            net.prefix_len
        );
        Ok(())
    }

    fn mount_source(&self, nfs: &NfsSource) -> Result<PathBuf, AgentError> {
        log::info!(
            "host mode: export {}:{} is the local directory {}",
            nfs.server,
            nfs.export,
            self.export_dir.display()
        );
        if !self.export_dir.is_dir() {
            return Err(AgentError::MountSource(format!(
                "{} is not a directory",
                self.export_dir.display()
            )));
        }
        Ok(self.export_dir.clone())
    }

    fn unmount_source(&self, _dir: &Path) {}

    fn disks(&self, selector: &DiskSelector) -> Result<Vec<DiskInfo>, SelectError> {
        let mut disks = disk::scan_disks(&self.root)?;
        if let Some(path) = &selector.path {
            let p = Path::new(path);
            if let Ok(meta) = fs::metadata(p) {
                if meta.is_file() {
                    disks.push(DiskInfo {
                        name: p
                            .file_name()
                            .map_or(path.clone(), |n| n.to_string_lossy().into_owned()),
                        dev_path: p.to_owned(),
                        size: meta.len(),
                        serial: None,
                        model: None,
                        by_id: Vec::new(),
                    });
                }
            }
        }
        Ok(disks)
    }

    fn partition(&self, disk: &DiskInfo, number: u32) -> Result<PathBuf, AgentError> {
        Ok(disk::partition(&self.root, &disk.name, number)?.dev_path)
    }

    fn reread_partitions(&self, disk: &DiskInfo) -> Result<(), AgentError> {
        reread_and_wait(&self.root, disk)
    }

    fn flag_device(
        &self,
        location: &FlagLocation,
        disk: Option<&DiskInfo>,
    ) -> Result<PathBuf, AgentError> {
        find_flag(&self.root, location, disk)
    }

    fn boot_flag_device(&self) -> Option<PathBuf> {
        self.boot_flag.clone()
    }

    fn mount_target(&self, device: &Path, fstype: FsType) -> Result<PathBuf, AgentError> {
        mount_restored(&self.mount_dir, device, fstype)
    }

    fn unmount_target(&self, dir: &Path) -> Result<(), AgentError> {
        sys::unmount(dir, false)
            .map_err(|e| AgentError::MountTarget(format!("unmounting {}: {e}", dir.display())))
    }

    fn sync(&self) {
        sys::sync_all();
    }
}

/// BLKRRPART on a whole-disk block device, then waits (up to 10 s) for sysfs to list its
/// partitions. A regular file has no partition table to re-read.
pub fn reread_and_wait(root: &Root, disk: &DiskInfo) -> Result<(), AgentError> {
    let Ok(meta) = fs::metadata(&disk.dev_path) else {
        return Err(AgentError::Partitions(
            disk.dev_path.clone(),
            "device vanished".into(),
        ));
    };
    if meta.is_file() {
        return Ok(());
    }
    let file = fs::File::open(&disk.dev_path)
        .map_err(|e| AgentError::Partitions(disk.dev_path.clone(), e.to_string()))?;
    sys::ioctl_blkrrpart(&file)
        .map_err(|e| AgentError::Partitions(disk.dev_path.clone(), e.to_string()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while disk::partitions(root, &disk.name).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Device nodes of partitions appear shortly after sysfs (devtmpfs or udev).
    for p in disk::partitions(root, &disk.name) {
        while !p.dev_path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Resolves a plan's flag location: a path as given, or the partition with that label on
/// `disk` (or, with no disk, the only one on any disk).
pub fn find_flag(
    root: &Root,
    location: &FlagLocation,
    disk: Option<&DiskInfo>,
) -> Result<PathBuf, AgentError> {
    match location {
        FlagLocation::Path(p) => Ok(PathBuf::from(p)),
        FlagLocation::PartLabel(label) => {
            let found: Vec<_> = match disk {
                Some(d) => disk::partitions(root, &d.name)
                    .into_iter()
                    .filter(|p| p.label.as_deref() == Some(label.as_str()))
                    .collect(),
                None => disk::find_by_label(root, label),
            };
            match found.as_slice() {
                [one] => Ok(one.dev_path.clone()),
                [] => Err(AgentError::NoFlag(format!(
                    "no partition labelled {label:?}{}",
                    disk.map_or(String::new(), |d| format!(" on {}", d.name))
                ))),
                many => Err(AgentError::NoFlag(format!(
                    "{} partitions labelled {label:?}; refusing to guess",
                    many.len()
                ))),
            }
        }
    }
}

/// Mounts `device` (ext4 or xfs) read-write under `mount_dir`.
pub fn mount_restored(
    mount_dir: &Path,
    device: &Path,
    fstype: FsType,
) -> Result<PathBuf, AgentError> {
    let target = mount_dir.join("restored");
    fs::create_dir_all(&target)
        .map_err(|e| AgentError::MountTarget(format!("creating {}: {e}", target.display())))?;
    let name = match fstype {
        FsType::Ext4 => "ext4",
        FsType::Xfs => "xfs",
    };
    sys::mount_fs(device, &target, name, false, "").map_err(|e| {
        AgentError::MountTarget(format!(
            "mount -t {name} {} {}: {e}",
            device.display(),
            target.display()
        ))
    })?;
    Ok(target)
}
