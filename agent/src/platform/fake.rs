//! A fake machine for unit tests of a recovery's order, no root needed.
//!
//! Disks are temporary files, the export a temporary directory, "mounting" the restored
//! filesystem hands out another temporary directory. Every call to the machine and every callback
//! to the observer is recorded in order, with what was on "disk" at that instant: the state in
//! the flag file, whether the disk file still holds its original bytes or already the image, and
//! whether the restored files are there. A test makes one call fail (or panic) to check the code
//! that reaches the flag.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use lazarus_proto::flag::{FlagRecord, FlagState};
use lazarus_proto::{DiskSelector, FlagLocation, FsType, NetworkPlan, NfsSource, Step};
use rustix::io::Errno;

use super::{FlagLookupError, FlagSite, MountError, PartitionError, Source, SourceError, Storage};
use crate::disk::{DiskInfo, SelectError};
use crate::error::AgentError;
use crate::network::NetworkError;
use crate::recovery::Observer;
use lazarus_node::flag_store::FlagStore;

/// A call to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    ConfigureNetwork,
    MountSource,
    UnmountSource,
    Disks,
    Partition,
    RereadPartitions,
    RegisterPartition,
    FlagDevice,
    MountTarget,
    UnmountTarget,
    /// `sync` of the mounted restored filesystem.
    SyncFiles,
    /// `sync` of the disk (or partition) the image went to.
    SyncDisk,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Call(Call),
    Step(Step),
    /// The observer was told of a flag record the recovery wrote.
    Flag(FlagState),
    /// The observer was told of backup entries that were not restored.
    Unrestored(Vec<String>),
}

/// The disk file's contents at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    /// Still the bytes it started with.
    Untouched,
    /// Starts with the image, byte for byte.
    Image,
    /// Anything else (a copy under way, or a failed one with its header zeroed).
    Other,
}

/// One recorded event, with a snapshot of the durable state when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub what: What,
    /// The state in the flag file (read from the file, not from memory).
    pub flag: FlagState,
    pub disk: DiskState,
    /// Whether the restored business file is in the restored filesystem.
    pub files_restored: bool,
}

/// How a chosen call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Error,
    Panic,
}

/// The fake machine and observer.
pub struct Fake {
    _dir: tempfile::TempDir,
    /// The export root (what `mount_source` returns).
    pub export: PathBuf,
    /// The one disk, a file.
    pub disk: DiskInfo,
    /// Partition 1 of the disk, a file of its own.
    pub partition: PathBuf,
    /// The flag partition, a formatted flag file.
    pub flag: PathBuf,
    /// What "mounting" the restored filesystem gives.
    pub restored: PathBuf,
    /// The business file a restore writes, relative to `restored`.
    pub restored_file: PathBuf,
    /// The disk's original bytes and the image it should end up holding.
    pub original: Vec<u8>,
    pub image: Vec<u8>,
    /// When set, this call fails (once, at its `nth` occurrence, counting from 1).
    pub fail: Option<(Call, usize, Failure)>,
    /// `flag_device` finds no flag on the disk (a wrecked disk).
    pub no_flag_on_disk: bool,
    events: Mutex<Vec<Event>>,
    /// While true, `configure_network` waits (a plan held at its first step).
    held: (Mutex<bool>, Condvar),
}

impl Fake {
    /// A disk of `disk_len` bytes and an `image` in the export at `images/system.img`, with a
    /// backup of `node` taken at `backup_time` in `backups/` holding `etc/business.conf`.
    pub fn new(image: Vec<u8>, disk_len: usize, node: &str, backup_time: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let export = dir.path().join("export");
        fs::create_dir_all(export.join("images")).expect("export");
        fs::write(export.join("images/system.img"), &image).expect("image");

        let node_root = dir.path().join("node-root");
        fs::create_dir_all(node_root.join("etc")).expect("node root");
        fs::write(node_root.join("etc/business.conf"), b"orders=42\n").expect("business file");
        let node: lazarus_proto::NodeName = node.parse().expect("node name");
        lazarus_node::backup::create_backup(&lazarus_node::backup::BackupRequest {
            node: &node,
            to: &export.join("backups"),
            root: &node_root,
            paths: &[PathBuf::from("etc")],
            now: backup_time,
            signing: None,
            exclude: &[],
        })
        .expect("backup");

        let original: Vec<u8> = (0..disk_len).map(|i| (i % 251) as u8 | 1).collect();
        let disk_path = dir.path().join("disk");
        fs::write(&disk_path, &original).expect("disk");
        let partition = dir.path().join("disk1");
        fs::write(&partition, vec![0u8; 4096]).expect("partition");
        let flag = dir.path().join("flag");
        FlagStore::format(&flag, false).expect("flag");
        let restored = dir.path().join("restored");
        fs::create_dir_all(&restored).expect("restored");
        Self {
            export,
            disk: DiskInfo {
                name: "fake0".into(),
                dev_path: disk_path,
                size: disk_len as u64,
                serial: Some("FAKE-0".into()),
                model: None,
                by_id: Vec::new(),
                excluded: None,
            },
            partition,
            flag,
            restored,
            restored_file: PathBuf::from("etc/business.conf"),
            original,
            image,
            fail: None,
            no_flag_on_disk: false,
            events: Mutex::new(Vec::new()),
            held: (Mutex::new(false), Condvar::new()),
            _dir: dir,
        }
    }

    /// A plan for the fake: a whole-disk raw image onto its disk, the flag found by label,
    /// business files of `node-3` (from its backup older than `failure_time`) restored into
    /// partition 1.
    pub fn plan(&self, failure_time: u64) -> lazarus_proto::Plan {
        use lazarus_proto::{FsType, ImageFormat, ImageLayout};
        let text = include_str!("../../../docs/plan.example.toml");
        let mut plan: lazarus_proto::Plan = toml::from_str(text).expect("example plan parses");
        plan.plan_id = "fake-1".into();
        plan.image.path = "images/system.img".into();
        plan.image.format = ImageFormat::Raw;
        plan.image.size = self.image.len() as u64;
        plan.image.sha256 = lazarus_testkit::sha(&self.image);
        plan.image.layout = ImageLayout::WholeDisk;
        plan.image.bmap = None;
        plan.target = DiskSelector {
            serial: self.disk.serial.clone(),
            ..Default::default()
        };
        plan.flag = FlagLocation::PartLabel("lazarus-flag".into());
        let restore = plan.restore.as_mut().expect("the example restores files");
        restore.backups_dir = "backups".into();
        restore.node = "node-3".parse().expect("node name");
        restore.failure_time = failure_time;
        restore.paths = Vec::new();
        restore.filesystem.partition = Some(1);
        restore.filesystem.fstype = FsType::Ext4;
        restore.filesystem.root = "/".into();
        plan
    }

    /// Adds a backup of `node-3` taken at `time` (a newer one than [`Fake::new`]'s wins) whose
    /// `etc/` also holds a fifo (`etc/pipe`, never restored) and a setuid file (`etc/suid`,
    /// mode 04755).
    pub fn add_backup_with_specials(&self, time: u64) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let etc = dir.path().join("etc");
        fs::create_dir_all(&etc).expect("etc");
        fs::write(etc.join("business.conf"), b"orders=43\n").expect("business file");
        fs::write(etc.join("suid"), b"#!/bin/sh\n").expect("suid file");
        fs::set_permissions(etc.join("suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            etc.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("fifo");
        lazarus_node::backup::create_backup(&lazarus_node::backup::BackupRequest {
            node: &"node-3".parse().expect("node name"),
            to: &self.export.join("backups"),
            root: dir.path(),
            paths: &[PathBuf::from("etc")],
            now: time,
            signing: None,
            exclude: &[],
        })
        .expect("backup");
    }

    /// Holds (`true`) or releases (`false`) every plan at `configure_network`.
    pub fn hold(&self, held: bool) {
        *self.held.0.lock().unwrap_or_else(|p| p.into_inner()) = held;
        self.held.1.notify_all();
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The calls and steps recorded so far, without snapshots.
    pub fn trace(&self) -> Vec<What> {
        self.events().into_iter().map(|e| e.what).collect()
    }

    /// The record in the flag file now.
    pub fn flag_record(&self) -> FlagRecord {
        FlagStore::open(&self.flag)
            .and_then(|s| s.read())
            .expect("flag file readable")
    }

    /// The disk file's contents now.
    pub fn disk_state(&self) -> DiskState {
        let now = fs::read(&self.disk.dev_path).expect("disk file");
        if now == self.original {
            DiskState::Untouched
        } else if now.starts_with(&self.image) {
            DiskState::Image
        } else {
            DiskState::Other
        }
    }

    fn record(&self, what: What) {
        let flag = FlagStore::open(&self.flag)
            .and_then(|s| s.read())
            .map_or(FlagState::None, |r| r.state);
        let event = Event {
            what,
            flag,
            disk: self.disk_state(),
            files_restored: self.restored.join(&self.restored_file).is_file(),
        };
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    /// Records `call`; true when it is the one to fail now (a panic does not return).
    fn call(&self, call: Call) -> bool {
        self.record(What::Call(call));
        let Some((which, nth, how)) = self.fail else {
            return false;
        };
        let seen = self
            .events()
            .iter()
            .filter(|e| e.what == What::Call(call))
            .count();
        if which != call || seen != nth {
            return false;
        }
        if how == Failure::Panic {
            panic!("the fake panics in {call:?}");
        }
        true
    }
}

impl Source for Fake {
    fn configure_network(&self, _net: &NetworkPlan) -> Result<(), AgentError> {
        let mut held = self.held.0.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.held.1.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        drop(held);
        if self.call(Call::ConfigureNetwork) {
            return Err(NetworkError::NoCarrier {
                iface: "eth0".into(),
                secs: 30,
            }
            .into());
        }
        Ok(())
    }

    fn mount_source(&self, _nfs: &NfsSource) -> Result<PathBuf, AgentError> {
        if self.call(Call::MountSource) {
            return Err(SourceError::Mount {
                export: "10.0.0.1:/export".into(),
                target: "/run/lazarus/source".into(),
                fstype: "nfs4",
                data: "vers=4.1".into(),
                source: Errno::TIMEDOUT,
            }
            .into());
        }
        Ok(self.export.clone())
    }

    fn unmount_source(&self, _dir: &Path) {
        self.call(Call::UnmountSource);
    }
}

impl Storage for Fake {
    fn disks(&self, _selector: &DiskSelector) -> Result<Vec<DiskInfo>, SelectError> {
        if self.call(Call::Disks) {
            return Err(SelectError::Sysfs("/sys/block".into(), "EIO".into()));
        }
        Ok(vec![self.disk.clone()])
    }

    fn partition(&self, disk: &DiskInfo, number: u32) -> Result<PathBuf, AgentError> {
        if self.call(Call::Partition) || number != 1 {
            return Err(SelectError::NoPartition {
                disk: disk.name.clone(),
                number,
            }
            .into());
        }
        Ok(self.partition.clone())
    }

    fn reread_partitions(&self, disk: &DiskInfo) -> Result<(), AgentError> {
        if self.call(Call::RereadPartitions) {
            return Err(AgentError::Partitions(
                disk.dev_path.clone(),
                PartitionError::NotReady {
                    numbers: vec![1],
                    secs: 10,
                },
            ));
        }
        Ok(())
    }

    fn register_partition(
        &self,
        disk: &DiskInfo,
        _number: u32,
        _start: u64,
        _len: u64,
    ) -> Result<PathBuf, AgentError> {
        self.call(Call::RegisterPartition);
        Err(FlagLookupError::NotBlockDevice(disk.dev_path.clone()).into())
    }

    fn flag_device(
        &self,
        location: &FlagLocation,
        disk: Option<&DiskInfo>,
    ) -> Result<PathBuf, AgentError> {
        let fail = self.call(Call::FlagDevice);
        match location {
            FlagLocation::Path(p) if !fail => Ok(PathBuf::from(p)),
            FlagLocation::PartLabel(_) if !fail && !self.no_flag_on_disk => Ok(self.flag.clone()),
            FlagLocation::Path(label) | FlagLocation::PartLabel(label) => {
                Err(FlagLookupError::NotFound {
                    label: label.clone(),
                    disk: disk.map(|d| d.name.clone()),
                }
                .into())
            }
        }
    }

    fn boot_flag_device(&self) -> Option<FlagSite> {
        Some(FlagSite::device(self.flag.clone()))
    }

    fn mount_target(&self, device: &Path, fstype: FsType) -> Result<PathBuf, AgentError> {
        if self.call(Call::MountTarget) {
            return Err(MountError::Mount {
                device: device.to_owned(),
                target: self.restored.clone(),
                fstype: match fstype {
                    FsType::Ext4 => "ext4",
                    FsType::Xfs => "xfs",
                },
                source: Errno::INVAL,
            }
            .into());
        }
        Ok(self.restored.clone())
    }

    fn unmount_target(&self, dir: &Path) -> Result<(), AgentError> {
        if self.call(Call::UnmountTarget) {
            return Err(MountError::Unmount(dir.to_owned(), Errno::BUSY).into());
        }
        Ok(())
    }

    fn sync(&self, path: &Path) -> Result<(), AgentError> {
        let call = if path == self.restored {
            Call::SyncFiles
        } else {
            Call::SyncDisk
        };
        if self.call(call) {
            return Err(AgentError::Sync(
                path.to_owned(),
                std::io::Error::from_raw_os_error(Errno::IO.raw_os_error()),
            ));
        }
        Ok(())
    }
}

impl Observer for Fake {
    fn step(&self, step: Step) {
        self.record(What::Step(step));
    }

    fn flag(&self, record: &FlagRecord) {
        self.record(What::Flag(record.state));
    }

    fn unrestored(&self, entries: &[String]) {
        self.record(What::Unrestored(entries.to_vec()));
    }
}
