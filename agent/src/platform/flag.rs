//! Where the flag record is: a plan's flag location resolved and checked, and the flag found at
//! boot, also on a disk whose copy was interrupted (its primary GPT zeroed).
//!
//! Rules this module keeps (docs/flag.md):
//!
//! - A plan's flag *path* is a partition (sysfs has a `partition` file for it) of the chosen disk,
//!   never a whole disk nor a partition of another disk; in host mode a regular file may stand
//!   for it. What is found here is only ever written through the format guard
//!   (`FlagStore::write_guarded`).
//! - At boot, a disk's flag partition is found by its GPT label in the primary table; when the
//!   primary is gone, in the backup table at the disk's last block; when both are gone, by a
//!   bounded scan for a valid record at 4 KiB-aligned offsets of the disk's first and last
//!   [`SCAN_LEN`] bytes. What is found without a partition device is addressed on the whole disk
//!   ([`FlagSite::offset`]).

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use lazarus_node::flag_store::{FlagStore, StoreError, FLAG_MAGIC};
use lazarus_proto::flag::{SlotsView, MIN_PARTITION_LEN};
use lazarus_proto::FlagLocation;

use super::partitions::sync_partitions;
use crate::disk::{self, DiskInfo};
use crate::error::{AgentError, FlagLookupError};
use crate::gpt;
use crate::root::Root;

/// How much of each end of a disk the boot scan for a record reads, at most.
pub const SCAN_LEN: u64 = 64 << 20;

/// Where a flag record lives: a flag partition or file (offset 0), or a flag partition's slots
/// addressed on its whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagSite {
    pub path: PathBuf,
    pub offset: u64,
}

impl FlagSite {
    /// A partition or file.
    pub fn device(path: PathBuf) -> Self {
        Self { path, offset: 0 }
    }

    /// Opens the store (reads and guarded writes are the caller's).
    pub fn open(&self) -> Result<FlagStore, StoreError> {
        FlagStore::open_at(&self.path, self.offset)
    }
}

impl std::fmt::Display for FlagSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            0 => write!(f, "{}", self.path.display()),
            o => write!(f, "{} at byte {o}", self.path.display()),
        }
    }
}

/// The kernel name of the block device `path` (`/dev/disk/by-partlabel/x` -> `sda3`).
fn kernel_name(path: &Path) -> Option<String> {
    let real = fs::canonicalize(path).ok()?;
    Some(real.file_name()?.to_string_lossy().into_owned())
}

/// The disk that partition `name` belongs to, from sysfs (`<sys>/class/block/<name>` is a link
/// to `…/block/<disk>/<name>` with a `partition` file); `None` when `name` is no partition.
pub fn partition_parent(root: &Root, name: &str) -> Option<String> {
    let class = root.sys.join("class/block").join(name);
    let dir = fs::canonicalize(&class).ok().or_else(|| {
        // A sysfs without class/block links (older kernels, test trees): look under each disk.
        fs::read_dir(root.sys.join("block"))
            .ok()?
            .flatten()
            .map(|d| d.path().join(name))
            .find(|p| p.join("partition").is_file())
    })?;
    if !dir.join("partition").is_file() {
        return None;
    }
    Some(dir.parent()?.file_name()?.to_string_lossy().into_owned())
}

/// Checks a plan's flag path: a partition (of `disk`, once it is chosen), or in host mode a
/// regular file.
pub fn check_flag_path(
    root: &Root,
    path: &Path,
    disk: Option<&DiskInfo>,
    files_allowed: bool,
) -> Result<(), FlagLookupError> {
    let not_partition = || FlagLookupError::NotAPartition(path.to_owned());
    let Ok(meta) = fs::metadata(path) else {
        return Err(FlagLookupError::NotFound {
            label: path.display().to_string(),
            disk: disk.map(|d| d.name.clone()),
        });
    };
    if meta.is_file() {
        return if files_allowed {
            Ok(())
        } else {
            Err(not_partition())
        };
    }
    if !meta.file_type().is_block_device() {
        return Err(not_partition());
    }
    let name = kernel_name(path).ok_or_else(not_partition)?;
    let parent = partition_parent(root, &name).ok_or_else(not_partition)?;
    match disk {
        Some(d) if d.name != parent => Err(FlagLookupError::OnAnotherDisk {
            flag: path.to_owned(),
            disk: parent,
            chosen: d.name.clone(),
        }),
        _ => Ok(()),
    }
}

/// Resolves a plan's flag location: a path, checked (see [`check_flag_path`]), or the GPT
/// partition with that name on `disk` (or, with no disk, the only one on any disk).
pub fn find_flag(
    root: &Root,
    location: &FlagLocation,
    disk: Option<&DiskInfo>,
    files_allowed: bool,
) -> Result<PathBuf, AgentError> {
    let label = match location {
        FlagLocation::Path(p) => {
            check_flag_path(root, Path::new(p), disk, files_allowed)?;
            return Ok(PathBuf::from(p));
        }
        FlagLocation::PartLabel(label) => label,
    };
    let disks = match disk {
        Some(d) => vec![d.clone()],
        None => writable_disks(root),
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
        [] => Err(FlagLookupError::NotFound {
            label: label.clone(),
            disk: disk.map(|d| d.name.clone()),
        }
        .into()),
        many => Err(FlagLookupError::Ambiguous {
            label: label.clone(),
            count: many.len(),
        }
        .into()),
    }
}

fn writable_disks(root: &Root) -> Vec<DiskInfo> {
    disk::scan_disks(root)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.excluded.is_none())
        .collect()
}

/// Whether `path` holds a valid flag record: the proof needed before a fallback location is
/// written to.
pub fn holds_flag_record(path: &Path) -> bool {
    FlagStore::open(path)
        .and_then(|s| s.view())
        .is_ok_and(|v| v.current.is_some())
}

/// The flag to read at boot: `configured` (a flag partition or file; or a whole disk, to look on
/// that disk), or with `search`, the one flag found on the disks that may be written.
pub fn find_boot_flag(
    root: &Root,
    configured: Option<&Path>,
    search: bool,
    label: &str,
) -> Option<FlagSite> {
    let disks = disk::scan_disks(root).unwrap_or_default();
    let on = |d: &DiskInfo| {
        let found = flag_on_disk(root, d, label);
        match &found {
            Some(site) => log::info!("flag of {}: {site}", d.name),
            None => log::info!("no flag partition {label:?} on {}", d.name),
        }
        found
    };
    match configured {
        Some(path) => {
            let is_block = fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
            let name = kernel_name(path).filter(|_| is_block);
            match disks.iter().find(|d| Some(&d.name) == name.as_ref()) {
                Some(d) => on(d),
                None => Some(FlagSite::device(path.to_owned())),
            }
        }
        None if search => {
            let found: Vec<FlagSite> = disks
                .iter()
                .filter(|d| d.excluded.is_none())
                .filter_map(on)
                .collect();
            match found.as_slice() {
                [one] => Some(one.clone()),
                [] => None,
                many => {
                    log::warn!("{} flag partitions at boot; reading none", many.len());
                    None
                }
            }
        }
        None => None,
    }
}

/// The flag of one disk at boot: by label in the primary GPT (made known to the kernel); only when
/// the disk has no valid primary GPT, in the backup GPT, else by a bounded scan for a record.
pub fn flag_on_disk(root: &Root, d: &DiskInfo, label: &str) -> Option<FlagSite> {
    if let Ok(path) = find_flag(root, &FlagLocation::PartLabel(label.into()), Some(d), false) {
        return Some(FlagSite::device(path));
    }
    let file = File::open(&d.dev_path).ok()?;
    let sector = u64::from(rustix::fs::ioctl_blksszget(&file).unwrap_or(512));
    if gpt::read_gpt(&file, sector, d.size).is_ok() {
        return None; // a whole table without the label: a disk without a flag (a data disk)
    }
    if let Ok(table) = gpt::read_backup_gpt(&file, sector, d.size) {
        if let Some(p) = table.iter().find(|p| p.name == label) {
            log::warn!(
                "{}: no primary GPT; the backup GPT puts {label:?} at byte {}",
                d.name,
                p.start
            );
            return Some(FlagSite {
                path: d.dev_path.clone(),
                offset: p.start,
            });
        }
    }
    let offset = scan_for_record(&file, d.size)?;
    log::warn!(
        "{}: no GPT names {label:?}; a flag record was found at byte {offset}",
        d.name
    );
    Some(FlagSite {
        path: d.dev_path.clone(),
        offset,
    })
}

/// The first 4 KiB-aligned offset, in the first and then the last [`SCAN_LEN`] bytes of a disk
/// of `len` bytes, where a flag record begins and the two slots from there hold a valid record.
pub fn scan_for_record(disk: &impl FileExt, len: u64) -> Option<u64> {
    const STEP: u64 = 4096;
    const CHUNK: u64 = 1 << 20;
    let tail = len.saturating_sub(SCAN_LEN) / STEP * STEP;
    let regions = [0..SCAN_LEN.min(len), tail.max(SCAN_LEN.min(len))..len];
    let mut buf = vec![0u8; (CHUNK + MIN_PARTITION_LEN) as usize];
    for region in regions {
        let mut at = region.start;
        while at < region.end {
            let want = (CHUNK + MIN_PARTITION_LEN).min(len - at) as usize;
            if disk.read_exact_at(&mut buf[..want], at).is_err() {
                break;
            }
            let mut o = 0usize;
            while (o as u64) < CHUNK && o + MIN_PARTITION_LEN as usize <= want {
                let slots = &buf[o..o + MIN_PARTITION_LEN as usize];
                if slots.starts_with(FLAG_MAGIC) && SlotsView::decode(slots).current.is_some() {
                    return Some(at + o as u64);
                }
                o += STEP as usize;
            }
            at += CHUNK;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_node::flag_store::FlagUpdate;
    use lazarus_proto::flag::FlagState;

    #[test]
    fn a_partition_knows_its_disk_and_a_whole_disk_is_no_partition() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::under(dir.path());
        let part = root.sys.join("block/sdb/sdb2");
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("partition"), "2\n").unwrap();
        fs::create_dir_all(root.sys.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&part, root.sys.join("class/block/sdb2")).unwrap();
        assert_eq!(partition_parent(&root, "sdb2").as_deref(), Some("sdb"));
        assert_eq!(partition_parent(&root, "sdb"), None);
        // Without the class/block link, found under its disk.
        fs::remove_file(root.sys.join("class/block/sdb2")).unwrap();
        assert_eq!(partition_parent(&root, "sdb2").as_deref(), Some("sdb"));
        // A regular file is a flag only in host mode.
        let file = dir.path().join("flag");
        fs::write(&file, vec![0u8; 8192]).unwrap();
        assert!(check_flag_path(&root, &file, None, true).is_ok());
        assert!(matches!(
            check_flag_path(&root, &file, None, false),
            Err(FlagLookupError::NotAPartition(_))
        ));
    }

    #[test]
    fn the_scan_finds_a_record_at_a_4k_offset_and_nothing_on_a_blank_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let len = 3 * SCAN_LEN;
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        drop(f);
        let file = File::open(&path).unwrap();
        assert_eq!(scan_for_record(&file, len), None);
        for at in [5 * 4096 + (1 << 20), len - (1 << 20)] {
            let store = FlagStore::open_at(&path, at).unwrap();
            store
                .write_guarded(&FlagUpdate {
                    state: FlagState::Recovering,
                    plan_id: "scan".into(),
                    ..FlagUpdate::default()
                })
                .unwrap();
            assert_eq!(
                scan_for_record(&file, len),
                Some(at.min(5 * 4096 + (1 << 20)))
            );
        }
        // Not in the middle of a large disk: the scan is bounded.
        let mid = dir.path().join("mid");
        let f = File::create(&mid).unwrap();
        f.set_len(len).unwrap();
        drop(f);
        FlagStore::open_at(&mid, SCAN_LEN + (1 << 20))
            .unwrap()
            .write_guarded(&FlagUpdate::state(FlagState::Failed))
            .unwrap();
        assert_eq!(scan_for_record(&File::open(&mid).unwrap(), len), None);
    }
}
