//! Making the kernel's view of a disk's partitions match its GPT, and waiting for their device
//! nodes: after a whole-disk image replaced the table, and for a flag partition a wrecked disk
//! no longer describes. There is no udev in the rescue initramfs; devtmpfs makes the nodes.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::disk::{self, DiskInfo};
use crate::error::{AgentError, PartitionError};
use crate::gpt::{self, GptError, GptPartition};
use crate::root::Root;
use crate::sys;

/// How long partition device nodes may take to appear.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

fn fail(disk: &DiskInfo) -> impl Fn(PartitionError) -> AgentError + '_ {
    |e| AgentError::Partitions(disk.dev_path.clone(), e)
}

/// Opens `disk`; `None` for a regular file (host mode), which has no partitions to manage.
fn open_block(disk: &DiskInfo) -> Result<Option<File>, AgentError> {
    let file = File::open(&disk.dev_path)
        .map_err(PartitionError::Open)
        .map_err(fail(disk))?;
    let meta = file
        .metadata()
        .map_err(PartitionError::Open)
        .map_err(fail(disk))?;
    Ok((!meta.is_file()).then_some(file))
}

/// BLKRRPART on a whole-disk block device, then makes the kernel's partitions match the GPT
/// (see [`sync_partitions`]). A regular file has no partition table to re-read.
pub fn reread_and_wait(root: &Root, disk: &DiskInfo) -> Result<(), AgentError> {
    let Some(file) = open_block(disk)? else {
        return Ok(());
    };
    if let Err(e) = sys::blk::ioctl_blkrrpart(&file) {
        log::warn!(
            "BLKRRPART on {}: {e}; registering partitions from the GPT",
            disk.dev_path.display()
        );
    }
    drop(file);
    sync_partitions(root, disk)?;
    Ok(())
}

/// Reads `disk`'s GPT and makes the kernel's partitions match it: partitions the kernel lacks
/// (a kernel without a GPT parser) are added with BLKPG, stale ones removed; then waits for their
/// device nodes. Returns the GPT's partitions (empty without a GPT, or for a regular file).
pub fn sync_partitions(root: &Root, disk: &DiskInfo) -> Result<Vec<GptPartition>, AgentError> {
    let Some(file) = open_block(disk)? else {
        return Ok(Vec::new());
    };
    let sector = u64::from(rustix::fs::ioctl_blksszget(&file).unwrap_or(512));
    let table = match gpt::read_gpt(&file, sector, disk.size) {
        Ok(t) => t,
        // No table (a disk whose failed copy zeroed its first MiB): leave the kernel's view of
        // the old partitions alone; the flag partition is still reachable through it.
        Err(GptError::NoHeader) => return Ok(Vec::new()),
        Err(e) => return Err(fail(disk)(PartitionError::Gpt(e))),
    };
    for p in disk::partitions(root, &disk.name) {
        let wanted = table
            .iter()
            .any(|t| t.number == p.number && t.start == p.start && t.len == p.size);
        if !wanted {
            sys::blk::ioctl_blkpg_del(&file, p.number)
                .map_err(|source| PartitionError::Remove {
                    number: p.number,
                    source,
                })
                .map_err(fail(disk))?;
        }
    }
    let current = disk::partitions(root, &disk.name);
    for t in &table {
        if !current.iter().any(|p| p.number == t.number) {
            sys::blk::ioctl_blkpg_add(&file, t.number, t.start, t.len)
                .map_err(|source| PartitionError::Add {
                    number: t.number,
                    source,
                })
                .map_err(fail(disk))?;
        }
    }
    let numbers: Vec<u32> = table.iter().map(|t| t.number).collect();
    wait_for_nodes(root, disk, &numbers)?;
    Ok(table)
}

/// Registers partition `number` (`start`, `len` bytes) of the block device `disk`, replacing a
/// stale one of that number, and returns its device node once it exists.
pub fn register_partition(
    root: &Root,
    disk: &DiskInfo,
    number: u32,
    start: u64,
    len: u64,
) -> Result<PathBuf, AgentError> {
    let file = File::open(&disk.dev_path)
        .map_err(PartitionError::Open)
        .map_err(fail(disk))?;
    let meta = file
        .metadata()
        .map_err(PartitionError::Open)
        .map_err(fail(disk))?;
    if !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        return Err(crate::error::FlagLookupError::NotBlockDevice(disk.dev_path.clone()).into());
    }
    if start.checked_add(len).is_none_or(|end| end > disk.size) {
        return Err(fail(disk)(PartitionError::PastEnd { number, start, len }));
    }
    if disk::partitions(root, &disk.name)
        .iter()
        .any(|p| p.number == number)
    {
        sys::blk::ioctl_blkpg_del(&file, number)
            .map_err(|source| PartitionError::Remove { number, source })
            .map_err(fail(disk))?;
    }
    sys::blk::ioctl_blkpg_add(&file, number, start, len)
        .map_err(|source| PartitionError::Add { number, source })
        .map_err(fail(disk))?;
    wait_for_nodes(root, disk, &[number])?;
    Ok(disk::partition(root, &disk.name, number)?.dev_path)
}

/// Waits until sysfs lists partitions `numbers` of `disk` and their device nodes exist.
fn wait_for_nodes(root: &Root, disk: &DiskInfo, numbers: &[u32]) -> Result<(), AgentError> {
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        let parts = disk::partitions(root, &disk.name);
        let missing: Vec<u32> = numbers
            .iter()
            .copied()
            .filter(|n| !parts.iter().any(|p| p.number == *n && p.dev_path.exists()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(disk)(PartitionError::NotReady {
                numbers: missing,
                secs: NODE_TIMEOUT.as_secs(),
            }));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
