//! The device or file an image is written to.
//!
//! Block devices get a second descriptor opened with `O_DIRECT` for aligned writes (no page-cache
//! copy, no cache pollution); unaligned writes (the image's tail, the held-back header) go
//! through the buffered descriptor. Regular files (host mode) are written buffered and flushed
//! with `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;

use super::buf::ALIGN;

/// An open write target.
#[derive(Debug)]
pub struct Target {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    len: u64,
    is_block: bool,
}

impl Target {
    /// Opens a block device or an existing regular file for writing. A block device is opened
    /// with `O_EXCL`, which claims it: the open fails with `EBUSY` while the device or one of its
    /// partitions is mounted or claimed by another exclusive opener (a RAID or LVM member), and
    /// nobody can mount it while the target is open. (`O_EXCL` without `O_CREAT` has this
    /// meaning on Linux for block devices only; a regular file is opened as usual.)
    pub fn open(path: &Path) -> io::Result<Self> {
        let exclusive = std::fs::metadata(path)?.file_type().is_block_device();
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if exclusive {
            options.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        }
        let mut file = options.open(path)?;
        let kind = file.metadata()?.file_type();
        let is_block = kind.is_block_device();
        if !is_block && !kind.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a block device nor a regular file",
            ));
        }
        let len = file.seek(SeekFrom::End(0))?;
        // The second descriptor needs no claim of its own: the first one holds the device.
        let direct = if is_block && logical_block_size(&file) <= ALIGN as u32 {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path)
                .ok()
        } else {
            None
        };
        Ok(Self {
            path: path.to_owned(),
            file,
            direct,
            len,
            is_block,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block
    }

    /// fallocate(fd, PUNCH_HOLE | KEEP_SIZE, offset, len): make a range read back as zeros,
    /// cheaply. On a block device the kernel does this only where the device can zero without
    /// writing (discard with a zeroing guarantee, thin provisioning, loop over a sparse file) and
    /// fails otherwise; on a file it frees the blocks. Returns whether the range now reads zero.
    pub fn punch_zeroes(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .is_ok()
    }

    /// Writes `data` at `offset`, through `O_DIRECT` when address, length and offset allow.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let aligned = (data.as_ptr() as usize).is_multiple_of(ALIGN)
            && data.len().is_multiple_of(ALIGN)
            && offset.is_multiple_of(ALIGN as u64);
        match &self.direct {
            Some(direct) if aligned => direct.write_all_at(data, offset),
            _ => self.file.write_all_at(data, offset),
        }
    }

    /// Writes `len` zero bytes at `offset` (the slow way, for devices that cannot punch).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` (for verification and tests), through `O_DIRECT`
    /// when address, length and offset allow: a differential run reads the whole disk once, and
    /// through the page cache that cost a copy per byte and evicted everything else (measured:
    /// 2.8x slower than `dd iflag=direct` reading the same device). A direct read first writes
    /// back dirty cached pages of its range, so it sees the buffered writes too.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(ALIGN)
            && buf.len().is_multiple_of(ALIGN)
            && offset.is_multiple_of(ALIGN as u64);
        match &self.direct {
            Some(direct) if aligned => direct.read_exact_at(buf, offset),
            _ => self.file.read_exact_at(buf, offset),
        }
    }

    /// fdatasync(fd): everything written so far, through either descriptor, is on stable
    /// storage. Both descriptors share one inode, so one call flushes the page cache and sends
    /// one cache flush to the device.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The borrowed file, for ioctls such as BLKRRPART.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// ioctl(fd, BLKSSZGET) through rustix; 512 when the device does not say.
fn logical_block_size(file: &File) -> u32 {
    rustix::fs::ioctl_blksszget(file).unwrap_or(512)
}
