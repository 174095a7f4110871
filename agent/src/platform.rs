//! The seam between the recovery logic and the machine: networking, mounts, disks, reboot.
//!
//! [`Platform`] is small on purpose. [`Machine`] in host mode runs a recovery as an ordinary process:
//! the host keeps its own network, the plan's NFS export maps to a local directory, and the
//! disk selector matches loop devices or, by path, a regular file. In rescue mode (PID 1) the
//! same machine configures the kernel's network and mounts the export over NFS.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use lazarus_proto::{DiskSelector, FlagLocation, FsType, NetworkPlan, NfsSource};

use crate::disk::{self, DiskInfo, SelectError};
use crate::error::AgentError;
use crate::gpt::{self, GptPartition};
use crate::network::{self, Interface};
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
    /// The flag device to read at start, before any plan, if there is one.
    fn boot_flag_device(&self) -> Option<PathBuf>;
    /// Mounts a restored filesystem read-write; returns the mount point.
    fn mount_target(&self, device: &Path, fstype: FsType) -> Result<PathBuf, AgentError>;
    /// Unmounts a restored filesystem.
    fn unmount_target(&self, dir: &Path) -> Result<(), AgentError>;
    /// Flushes everything to stable storage.
    fn sync(&self);
}

/// Where a [`Machine`] gets its network and image source.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Host mode: an ordinary (usually root) process. The host keeps its network; the export is
    /// this local directory.
    Host { export_dir: PathBuf },
    /// The rescue initramfs: the plan's address goes on `iface` with netlink, the export is
    /// mounted over NFS.
    Rescue { iface: Interface },
}

/// The machine the agent runs on: disks from sysfs, network and source by [`Mode`].
#[derive(Debug)]
pub struct Machine {
    pub root: Root,
    pub mode: Mode,
    /// Where the source and restored filesystems are mounted.
    pub mount_dir: PathBuf,
    /// The flag read at start, if any.
    pub boot_flag: Option<PathBuf>,
    /// Flag devices found earlier in this boot, by disk: after a failed copy zeroed a disk's
    /// partition table, the flag is still found where it was (if it still holds a record).
    pub remembered: std::sync::Mutex<std::collections::HashMap<String, PathBuf>>,
}

impl Machine {
    /// A machine in `mode`.
    pub fn new(root: Root, mode: Mode, mount_dir: PathBuf, boot_flag: Option<PathBuf>) -> Self {
        Self {
            root,
            mode,
            mount_dir,
            boot_flag,
            remembered: Default::default(),
        }
    }

    /// Host mode under `workdir`; the export is `export_dir` (default `<workdir>/export`).
    pub fn host(workdir: &Path, export_dir: Option<PathBuf>, boot_flag: Option<PathBuf>) -> Self {
        Self::new(
            Root::default(),
            Mode::Host {
                export_dir: export_dir.unwrap_or_else(|| workdir.join("export")),
            },
            workdir.join("mnt"),
            boot_flag,
        )
    }
}

impl Platform for Machine {
    fn configure_network(&self, net: &NetworkPlan) -> Result<(), AgentError> {
        match &self.mode {
            Mode::Host { .. } => {
                log::info!(
                    "host mode: keeping the host's network (plan asks for {}/{})",
                    net.address,
                    net.prefix_len
                );
                Ok(())
            }
            Mode::Rescue { iface } => {
                let iface = match &net.interface {
                    Some(want) => {
                        network::choose(&self.root, Some(want), std::time::Duration::from_secs(10))
                            .map_err(AgentError::Network)?
                    }
                    None => iface.clone(),
                };
                network::bring_up(&self.root, &iface, std::time::Duration::from_secs(30))
                    .map_err(AgentError::Network)?;
                network::set_address(&iface, net.address, net.prefix_len, net.gateway)
                    .map_err(AgentError::Network)
            }
        }
    }

    fn mount_source(&self, nfs: &NfsSource) -> Result<PathBuf, AgentError> {
        match &self.mode {
            Mode::Host { export_dir } => {
                log::info!(
                    "host mode: export {}:{} is the local directory {}",
                    nfs.server,
                    nfs.export,
                    export_dir.display()
                );
                if !export_dir.is_dir() {
                    return Err(AgentError::MountSource(format!(
                        "{} is not a directory",
                        export_dir.display()
                    )));
                }
                Ok(export_dir.clone())
            }
            Mode::Rescue { .. } => mount_nfs(&self.mount_dir.join("source"), nfs),
        }
    }

    fn unmount_source(&self, dir: &Path) {
        if let Mode::Rescue { .. } = self.mode {
            if let Err(e) = sys::unmount(dir, true) {
                log::warn!("unmounting {}: {e}", dir.display());
            }
        }
    }

    fn disks(&self, selector: &DiskSelector) -> Result<Vec<DiskInfo>, SelectError> {
        let mut disks = disk::scan_disks(&self.root)?;
        // Host mode only: a regular file named by path stands for a disk.
        if let (Mode::Host { .. }, Some(path)) = (&self.mode, &selector.path) {
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
        sync_partitions(&self.root, disk)?;
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

    fn register_partition(
        &self,
        disk: &DiskInfo,
        number: u32,
        start: u64,
        len: u64,
    ) -> Result<PathBuf, AgentError> {
        let err = |e: String| AgentError::Partitions(disk.dev_path.clone(), e);
        let file = fs::File::open(&disk.dev_path).map_err(|e| err(e.to_string()))?;
        if !file
            .metadata()
            .map_err(|e| err(e.to_string()))?
            .file_type()
            .is_block_device()
        {
            return Err(AgentError::NoFlag(format!(
                "{} is not a block device",
                disk.dev_path.display()
            )));
        }
        if start.checked_add(len).is_none_or(|end| end > disk.size) {
            return Err(err(format!(
                "partition {number} ({start}+{len}) lies past the end of the disk"
            )));
        }
        if disk::partitions(&self.root, &disk.name)
            .iter()
            .any(|p| p.number == number)
        {
            sys::blk::ioctl_blkpg_del(&file, number)
                .map_err(|e| err(format!("removing partition {number}: {e}")))?;
        }
        sys::blk::ioctl_blkpg_add(&file, number, start, len)
            .map_err(|e| err(format!("adding partition {number}: {e}")))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(p) = disk::partition(&self.root, &disk.name, number) {
                if p.dev_path.exists() {
                    return Ok(p.dev_path);
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(err(format!("partition {number} did not appear")));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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

/// Mounts an NFS export read-only with mount(2): v4.x as `nfs4`, v3 as `nfs`, soft with
/// timeouts so a vanished server fails the plan instead of hanging it.
pub fn mount_nfs(target: &Path, nfs: &NfsSource) -> Result<PathBuf, AgentError> {
    use lazarus_proto::NfsVersion;
    fs::create_dir_all(target)
        .map_err(|e| AgentError::MountSource(format!("creating {}: {e}", target.display())))?;
    let (fstype, vers) = match nfs.version {
        NfsVersion::V3 => ("nfs", "3"),
        NfsVersion::V4 => ("nfs4", "4.0"),
        NfsVersion::V4_1 => ("nfs4", "4.1"),
        NfsVersion::V4_2 => ("nfs4", "4.2"),
    };
    let mut data = format!("vers={vers},addr={},soft,timeo=600,retrans=3", nfs.server);
    if nfs.version == NfsVersion::V3 {
        data.push_str(",nolock,proto=tcp,mountproto=tcp");
    }
    if !nfs.options.is_empty() {
        data.push(',');
        data.push_str(&nfs.options);
    }
    let server = match nfs.server {
        std::net::IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    let source = PathBuf::from(format!("{server}:{}", nfs.export));
    sys::mount_fs(&source, target, fstype, true, &data).map_err(|e| {
        AgentError::MountSource(format!(
            "mount -t {fstype} -o {data} {} {}: {e}",
            source.display(),
            target.display()
        ))
    })?;
    log::info!(
        "mounted {} (NFS v{vers}) at {}",
        source.display(),
        target.display()
    );
    Ok(target.to_owned())
}

/// BLKRRPART on a whole-disk block device, then makes the kernel's partitions match the GPT
/// (see [`sync_partitions`]). A regular file has no partition table to re-read.
pub fn reread_and_wait(root: &Root, disk: &DiskInfo) -> Result<(), AgentError> {
    let err = |e: String| AgentError::Partitions(disk.dev_path.clone(), e);
    let file = fs::File::open(&disk.dev_path).map_err(|e| err(e.to_string()))?;
    if file.metadata().map_err(|e| err(e.to_string()))?.is_file() {
        return Ok(());
    }
    if let Err(e) = sys::blk::ioctl_blkrrpart(&file) {
        log::warn!(
            "BLKRRPART on {}: {e}; registering partitions from the GPT",
            disk.dev_path.display()
        );
    }
    sync_partitions(root, disk)?;
    Ok(())
}

/// Reads `disk`'s GPT and makes the kernel's partitions match it: partitions the kernel lacks
/// (a kernel without a GPT parser) are added with BLKPG, stale ones removed; then waits up to
/// 10 s for their device nodes. Returns the GPT's partitions (empty without a GPT).
pub fn sync_partitions(root: &Root, disk: &DiskInfo) -> Result<Vec<GptPartition>, AgentError> {
    let err = |e: String| AgentError::Partitions(disk.dev_path.clone(), e);
    let file = fs::File::open(&disk.dev_path).map_err(|e| err(e.to_string()))?;
    if file.metadata().map_err(|e| err(e.to_string()))?.is_file() {
        return Ok(Vec::new());
    }
    let sector = u64::from(rustix::fs::ioctl_blksszget(&file).unwrap_or(512));
    let table = match gpt::read_gpt(&file, sector) {
        Ok(t) => t,
        // No table (a disk whose failed copy zeroed its first MiB): leave the kernel's view of
        // the old partitions alone; the flag partition is still reachable through it.
        Err(gpt::GptError::NoHeader) => return Ok(Vec::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    let current = disk::partitions(root, &disk.name);
    for p in &current {
        let wanted = table
            .iter()
            .any(|t| t.number == p.number && t.start == p.start && t.len == p.size);
        if !wanted {
            sys::blk::ioctl_blkpg_del(&file, p.number)
                .map_err(|e| err(format!("removing partition {}: {e}", p.number)))?;
        }
    }
    let current = disk::partitions(root, &disk.name);
    for t in &table {
        if !current.iter().any(|p| p.number == t.number) {
            sys::blk::ioctl_blkpg_add(&file, t.number, t.start, t.len)
                .map_err(|e| err(format!("adding partition {}: {e}", t.number)))?;
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let parts = disk::partitions(root, &disk.name);
        let ready = table.iter().all(|t| {
            parts
                .iter()
                .any(|p| p.number == t.number && p.dev_path.exists())
        });
        if ready {
            return Ok(table);
        }
        if std::time::Instant::now() > deadline {
            return Err(err("partition device nodes did not appear".into()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Resolves a plan's flag location: a path as given, or the GPT partition with that name on
/// `disk` (or, with no disk, the only one on any disk).
pub fn find_flag(
    root: &Root,
    location: &FlagLocation,
    disk: Option<&DiskInfo>,
) -> Result<PathBuf, AgentError> {
    let label = match location {
        FlagLocation::Path(p) => return Ok(PathBuf::from(p)),
        FlagLocation::PartLabel(label) => label,
    };
    let disks = match disk {
        Some(d) => vec![d.clone()],
        None => disk::scan_disks(root).unwrap_or_default(),
    };
    let mut found = Vec::new();
    for d in &disks {
        let Ok(table) = sync_partitions(root, d) else {
            continue;
        };
        let before = found.len();
        for t in table.iter().filter(|t| &t.name == label) {
            found.push(disk::partition(root, &d.name, t.number)?.dev_path);
        }
        if found.len() == before && table.is_empty() {
            // No GPT on the disk (its first MiB was zeroed by a failed copy): the kernel may still
            // know the old partition by name. Trust it only if it holds a valid flag record.
            found.extend(
                disk::partitions(root, &d.name)
                    .into_iter()
                    .filter(|p| {
                        p.label.as_deref() == Some(label.as_str()) && holds_flag_record(&p.dev_path)
                    })
                    .map(|p| p.dev_path),
            );
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(AgentError::NoFlag(format!(
            "no GPT partition named {label:?}{}",
            disk.map_or(String::new(), |d| format!(" on {}", d.name))
        ))),
        many => Err(AgentError::NoFlag(format!(
            "{} partitions named {label:?}; refusing to guess",
            many.len()
        ))),
    }
}

/// Whether `path` holds a valid flag record: the proof needed before a fallback location is
/// written to.
pub fn holds_flag_record(path: &Path) -> bool {
    lazarus_node::flag_store::FlagStore::open(path)
        .and_then(|s| s.view())
        .is_ok_and(|v| v.current.is_some())
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
