//! The node's disks as sysfs and devtmpfs show them: the one real [`Storage`], shared by host and
//! rescue mode.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use lazarus_proto::{DiskSelector, FlagLocation, FsType};

use super::flag::{find_boot_flag, find_flag, FlagSite};
use super::partitions::{self, register_partition, sync_partitions};
use super::Storage;
use crate::disk::{self, DiskInfo, SelectError};
use crate::error::{AgentError, MountError};
use crate::root::Root;
use crate::sys;

/// Disks from sysfs under `root`, mounts under `mount_dir`.
#[derive(Debug, Clone)]
pub struct SysDisks {
    pub root: Root,
    /// Where the restored filesystem is mounted.
    pub mount_dir: PathBuf,
    /// The flag read at start: a flag partition or file, or a whole disk to look for it on.
    pub boot_flag: Option<PathBuf>,
    /// With no `boot_flag`, look for the flag on every disk that may be written (rescue mode).
    pub search_boot_flag: bool,
    /// Host mode: a regular file named by a selector's path stands for a disk, and a regular
    /// file named by a flag path for a flag partition.
    pub files_as_disks: bool,
    /// Disks the kernel command line names as the rescue medium (`lazarus.media=`): never
    /// written.
    pub rescue_media: Vec<String>,
}

impl Storage for SysDisks {
    fn disks(&self, selector: &DiskSelector) -> Result<Vec<DiskInfo>, SelectError> {
        let mut disks = disk::scan_disks(&self.root)?;
        disk::exclude_named(&mut disks, &self.rescue_media);
        if let (true, Some(path)) = (self.files_as_disks, &selector.path) {
            if let Some(file) = file_disk(Path::new(path)) {
                disks.push(file);
            }
        }
        Ok(disks)
    }

    fn partition(&self, disk: &DiskInfo, number: u32) -> Result<PathBuf, AgentError> {
        sync_partitions(&self.root, disk)?;
        Ok(disk::partition(&self.root, &disk.name, number)?.dev_path)
    }

    fn reread_partitions(&self, disk: &DiskInfo) -> Result<(), AgentError> {
        partitions::reread_and_wait(&self.root, disk)
    }

    fn register_partition(
        &self,
        disk: &DiskInfo,
        number: u32,
        start: u64,
        len: u64,
    ) -> Result<PathBuf, AgentError> {
        register_partition(&self.root, disk, number, start, len)
    }

    fn flag_device(
        &self,
        location: &FlagLocation,
        disk: Option<&DiskInfo>,
    ) -> Result<PathBuf, AgentError> {
        find_flag(&self.root, location, disk, self.files_as_disks)
    }

    fn boot_flag_device(&self) -> Option<FlagSite> {
        find_boot_flag(
            &self.root,
            self.boot_flag.as_deref(),
            self.search_boot_flag,
            lazarus_proto::flag::DEFAULT_PARTLABEL,
        )
    }

    fn mount_target(&self, device: &Path, fstype: FsType) -> Result<PathBuf, AgentError> {
        Ok(mount_restored(&self.mount_dir, device, fstype)?)
    }

    fn unmount_target(&self, dir: &Path) -> Result<(), AgentError> {
        sys::unmount(dir, false).map_err(|e| MountError::Unmount(dir.to_owned(), e))?;
        Ok(())
    }

    fn sync(&self, path: &Path) -> Result<(), AgentError> {
        sys::sync_all();
        // sync(2) reports nothing; syncfs(2) and fsync(2) report a write-back error (EIO).
        let err = |e| AgentError::Sync(path.to_owned(), e);
        let file = File::open(path).map_err(err)?;
        if file.metadata().map_err(err)?.is_dir() {
            sys::syncfs(&file).map_err(|e| err(e.into()))
        } else {
            file.sync_all().map_err(err)
        }
    }
}

/// A regular file as a disk (host mode).
fn file_disk(path: &Path) -> Option<DiskInfo> {
    let meta = fs::metadata(path).ok()?;
    meta.is_file().then(|| DiskInfo {
        name: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        dev_path: path.to_owned(),
        size: meta.len(),
        serial: None,
        model: None,
        by_id: Vec::new(),
        excluded: None,
    })
}

/// Mounts `device` (ext4 or xfs) read-write at `<mount_dir>/restored`.
pub fn mount_restored(
    mount_dir: &Path,
    device: &Path,
    fstype: FsType,
) -> Result<PathBuf, MountError> {
    let target = mount_dir.join("restored");
    fs::create_dir_all(&target).map_err(|e| MountError::MountPoint(target.clone(), e))?;
    let fstype = match fstype {
        FsType::Ext4 => "ext4",
        FsType::Xfs => "xfs",
    };
    sys::mount_fs(device, &target, fstype, false, "").map_err(|source| MountError::Mount {
        device: device.to_owned(),
        target: target.clone(),
        fstype,
        source,
    })?;
    Ok(target)
}
