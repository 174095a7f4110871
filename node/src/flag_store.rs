//! The flag store: reads and writes flag records on a file or block device, durably.
//!
//! The record format and slot choice are `lazarus_proto::flag`'s. This module owns the I/O rules:
//!
//! - every write re-reads both slots first (never trusts a cached view), puts the record with the
//!   next sequence number into the slot *not* holding the current record, and returns only after
//!   the write is on stable storage (`O_DSYNC` and `fdatasync`);
//! - a write of any state other than RECOVERED that would leave a RECOVERED record in the other
//!   slot writes that slot too (sequence + 2). Otherwise, if the newest slot were later damaged
//!   (a bad sector, a stray write), the read would fall back to a stale RECOVERED and the
//!   controller could reboot a half-written disk;
//! - formatting refuses a device whose first slots hold neither zeros nor flag records unless
//!   forced, so a mistyped path does not destroy a filesystem's first 8 KiB; the agent applies
//!   the same guard ([`holds_only_flag_records`]) before every write ([`FlagStore::write_guarded`]),
//!   so a plan naming the wrong device (`/dev/sdb` for `/dev/sdb3`) never loses its partition
//!   table to a flag record;
//! - a store may begin at a byte offset of a device ([`FlagStore::open_at`]): the flag partition's
//!   slots on the whole disk, found from the backup GPT when the primary table is gone.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lazarus_proto::flag::{
    FlagError, FlagRecord, FlagState, SlotsView, MIN_PARTITION_LEN, SLOT_LEN,
};

/// The first bytes of every flag record slot.
pub const FLAG_MAGIC: &[u8; 8] = b"LZRSFLAG";
use lazarus_proto::Sha256;

/// Size of a flag file created by [`FlagStore::format`] when the path does not exist.
pub const DEFAULT_FILE_LEN: u64 = 1 << 20;

/// Errors of the flag store, each naming the device.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("{0} is {1} bytes; a flag partition needs at least {MIN_PARTITION_LEN}")]
    TooSmall(PathBuf, u64),
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("flushing {0} to stable storage: {1}")]
    Sync(PathBuf, std::io::Error),
    #[error("encoding flag record: {0}")]
    Encode(#[from] FlagError),
    #[error("refusing to format {0}: it holds data that is not a Lazarus flag record (force to overwrite)")]
    NotAFlagPartition(PathBuf),
    #[error("{0} is neither a regular file nor a block device")]
    NotFileOrDevice(PathBuf),
    #[error(
        "{0} does not exist: a flag under /dev must be an existing partition, never a new file"
    )]
    NoSuchDevice(PathBuf),
    #[error("refusing to write a flag record to {0}: its first 8 KiB hold data that is neither zeros nor a Lazarus flag record")]
    Foreign(PathBuf),
}

/// The format guard: whether the first [`MIN_PARTITION_LEN`] bytes of a device hold nothing but
/// zeros or flag records, so writing a record there destroys nothing. True when every byte is
/// zero, when a slot holds a valid record, or when each slot is either all zeros or begins with
/// the record magic (a record torn by a power cut during the very first write).
pub fn holds_only_flag_records(bytes: &[u8]) -> bool {
    let slots = &bytes[..bytes.len().min(MIN_PARTITION_LEN as usize)];
    slots.iter().all(|&b| b == 0)
        || slots
            .chunks(SLOT_LEN)
            .any(|slot| FlagRecord::decode(slot).is_ok())
        || slots
            .chunks(SLOT_LEN)
            .all(|slot| slot.iter().all(|&b| b == 0) || slot.starts_with(FLAG_MAGIC))
}

/// The fields of a record the caller chooses; the store assigns sequence and time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlagUpdate {
    pub state: FlagState,
    pub error_code: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub image_sha256: Sha256,
    pub plan_id: String,
    pub message: String,
}

impl FlagUpdate {
    /// An update that only sets the state.
    pub fn state(state: FlagState) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }
}

/// The durable writes one update turns into, in order: `(slot index, slot bytes)`.
/// Pure, so tests can tear any of them at any byte.
pub fn plan_write(
    view: &SlotsView,
    update: &FlagUpdate,
    timestamp: u64,
) -> Result<Vec<(usize, [u8; SLOT_LEN])>, FlagError> {
    let base = view.current.as_ref().map_or(0, |r| r.seq);
    let record = |seq: u64| FlagRecord {
        seq,
        state: update.state,
        error_code: update.error_code,
        timestamp,
        bytes_done: update.bytes_done,
        bytes_total: update.bytes_total,
        image_sha256: update.image_sha256,
        plan_id: update.plan_id.clone(),
        message: update.message.clone(),
    };
    let first = view.next_slot();
    let mut writes = vec![(first, record(base.wrapping_add(1)).encode()?)];
    let other = 1 - first;
    let other_is_recovered = matches!(&view.slots[other], Ok(r) if r.state == FlagState::Recovered);
    if update.state != FlagState::Recovered && other_is_recovered {
        writes.push((other, record(base.wrapping_add(2)).encode()?));
    }
    Ok(writes)
}

/// A flag partition or file, open for reading and durable writing.
#[derive(Debug)]
pub struct FlagStore {
    file: File,
    path: PathBuf,
    /// Where slot 0 begins on the file or device.
    offset: u64,
}

impl FlagStore {
    /// Opens an existing flag file or partition.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_at(path, 0)
    }

    /// Opens a store whose slots begin `offset` bytes into a file or device (a flag partition
    /// addressed on its whole disk).
    pub fn open_at(path: &Path, offset: u64) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::DSYNC.bits() as i32)
            .open(path)
            .map_err(|e| StoreError::Open(path.to_owned(), e))?;
        let mut store = Self {
            file,
            path: path.to_owned(),
            offset,
        };
        let kind = store
            .file
            .metadata()
            .map_err(|e| StoreError::Open(path.to_owned(), e))?
            .file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(StoreError::NotFileOrDevice(path.to_owned()));
        }
        let len = store.len()?.saturating_sub(offset);
        if len < MIN_PARTITION_LEN {
            return Err(StoreError::TooSmall(path.to_owned(), len));
        }
        Ok(store)
    }

    /// Formats a flag file or partition: both slots blank, state `none`. A missing path is
    /// created as a 1 MiB file. Unless `force`, refuses when the slots hold anything but zeros or
    /// flag records.
    pub fn format(path: &Path, force: bool) -> Result<Self, StoreError> {
        if !path.exists() && path.starts_with("/dev") {
            // A missing partition node (a kernel without a GPT parser, a typo) must not turn
            // into a regular file in devtmpfs that looks like success.
            return Err(StoreError::NoSuchDevice(path.to_owned()));
        }
        if !path.exists() {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| StoreError::Open(path.to_owned(), e))?;
            file.set_len(DEFAULT_FILE_LEN)
                .map_err(|e| StoreError::Write(path.to_owned(), e))?;
        }
        let store = Self::open(path)?;
        let bytes = store.read_slots()?;
        if !holds_only_flag_records(&bytes) && !force {
            return Err(StoreError::NotAFlagPartition(path.to_owned()));
        }
        store.write_slot_bytes(0, &vec![0u8; MIN_PARTITION_LEN as usize])?;
        store.sync()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the slots begin on the file or device.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads both slots from the device.
    pub fn view(&self) -> Result<SlotsView, StoreError> {
        Ok(SlotsView::decode(&self.read_slots()?))
    }

    /// The current record (state `none` for a blank or unreadable-record partition).
    pub fn read(&self) -> Result<FlagRecord, StoreError> {
        Ok(self.view()?.record())
    }

    /// Writes a record durably and returns it as stored.
    pub fn write(&self, update: &FlagUpdate) -> Result<FlagRecord, StoreError> {
        self.write_slots(SlotsView::decode(&self.read_slots()?), update)
    }

    /// Writes a record durably, but only if the slots hold nothing but zeros or flag records
    /// ([`holds_only_flag_records`], checked on the bytes read for this very write); otherwise
    /// [`StoreError::Foreign`] and nothing is written.
    pub fn write_guarded(&self, update: &FlagUpdate) -> Result<FlagRecord, StoreError> {
        let bytes = self.read_slots()?;
        if !holds_only_flag_records(&bytes) {
            return Err(StoreError::Foreign(self.path.clone()));
        }
        self.write_slots(SlotsView::decode(&bytes), update)
    }

    /// Both slots as they are on the device (to copy the current record elsewhere).
    pub fn slots(&self) -> Result<Vec<u8>, StoreError> {
        self.read_slots()
    }

    /// Whether the slots pass the format guard now.
    pub fn guard_passes(&self) -> Result<bool, StoreError> {
        Ok(holds_only_flag_records(&self.read_slots()?))
    }

    fn write_slots(&self, view: SlotsView, update: &FlagUpdate) -> Result<FlagRecord, StoreError> {
        let writes = plan_write(&view, update, unix_now())?;
        for (slot, bytes) in &writes {
            self.write_slot_bytes(*slot as u64 * SLOT_LEN as u64, bytes)?;
            self.sync()?;
        }
        let stored = self.read()?;
        Ok(stored)
    }

    fn read_slots(&self) -> Result<Vec<u8>, StoreError> {
        let mut bytes = vec![0u8; MIN_PARTITION_LEN as usize];
        self.file
            .read_exact_at(&mut bytes, self.offset)
            .map_err(|e| StoreError::Read(self.path.clone(), e))?;
        Ok(bytes)
    }

    fn write_slot_bytes(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all_at(bytes, self.offset + offset)
            .map_err(|e| StoreError::Write(self.path.clone(), e))
    }

    /// fdatasync(fd): the O_DSYNC write is already durable; this also covers devices and
    /// filesystems that ignore O_DSYNC.
    fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::Sync(self.path.clone(), e))
    }

    /// The size of the file or block device (block devices report 0 in metadata).
    fn len(&mut self) -> Result<u64, StoreError> {
        let len = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(|e| StoreError::Read(self.path.clone(), e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| StoreError::Read(self.path.clone(), e))?;
        Ok(len)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
