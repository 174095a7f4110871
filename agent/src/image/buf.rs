//! Page-aligned, recycled I/O buffers for the copy pipeline.
//!
//! `O_DIRECT` needs the buffer address aligned to the device's logical block size; 4096 covers
//! every device in use. Buffers of 2 MiB or more start on a 2 MiB boundary instead and are
//! advised to the kernel as huge pages: a 4 MiB direct read or write is then a few physically
//! contiguous segments, not 1,024 pages. (Measured here, 2 GiB read with `O_DIRECT` in 4 MiB
//! pieces from a loop device: 0.61 s every time with huge pages, 0.69-1.24 s without; `dd`'s
//! buffer is the latter.) Each buffer is a mapping of its own ([`Mapped`]): fresh zero pages, so
//! the advice comes before the first fault whatever the allocator has done. Buffers go back to
//! their pool when the last `Arc<Chunk>` holding them drops, so the reader never allocates after
//! start-up.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use crate::sys::mem::{Mapped, HUGE_PAGE};

/// Alignment of every buffer.
pub const ALIGN: usize = 4096;

/// A fixed-capacity buffer whose data starts on an [`ALIGN`] boundary (2 MiB from 2 MiB up).
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Mapped,
    /// Every byte is known to be zero (new, or back from a chunk that was all hole): a hole
    /// need not be written into it again.
    zeroed: bool,
}

impl AlignedBuf {
    pub fn new(capacity: usize) -> Self {
        let align = if capacity >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            ALIGN
        };
        let storage = Mapped::new(capacity, align).unwrap_or_else(|e| {
            // What a `Vec` does when memory runs out (the process ends), with the reason.
            log::error!("mapping a {capacity}-byte buffer: {e}");
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(capacity.max(1), align)
                    .unwrap_or(std::alloc::Layout::new::<u8>()),
            )
        });
        Self {
            storage,
            zeroed: true,
        }
    }

    /// Whether every byte is known to be zero.
    pub fn zeroed(&self) -> bool {
        self.zeroed
    }

    pub fn as_slice(&self) -> &[u8] {
        self.storage.as_slice()
    }

    /// The bytes, to be written: from here on they are no longer known to be zero.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.zeroed = false;
        self.storage.as_mut_slice()
    }
}

/// A bounded set of buffers shared by the pipeline's threads.
pub struct Pool {
    home: SyncSender<AlignedBuf>,
    free: Mutex<Receiver<AlignedBuf>>,
}

impl Pool {
    pub fn new(count: usize, capacity: usize) -> Self {
        let (home, free) = sync_channel(count);
        for _ in 0..count {
            // The channel holds `count` buffers: this never blocks or fails.
            let _ = home.send(AlignedBuf::new(capacity));
        }
        Self {
            home,
            free: Mutex::new(free),
        }
    }

    /// Waits for a free buffer.
    pub fn take(&self) -> Option<AlignedBuf> {
        self.free.lock().ok()?.recv().ok()
    }

    /// Wraps a filled buffer; it returns to this pool when the chunk drops.
    pub fn chunk(&self, buf: AlignedBuf, offset: u64, len: usize) -> Chunk {
        Chunk {
            buf: Some(buf),
            offset,
            len,
            hole: false,
            home: self.home.clone(),
        }
    }
}

/// `len` bytes of the image starting at `offset`, in a pooled buffer.
pub struct Chunk {
    buf: Option<AlignedBuf>,
    pub offset: u64,
    pub len: usize,
    /// The bytes came from a hole of the image file (zeros, not read): see `Source`.
    pub(crate) hole: bool,
    home: SyncSender<AlignedBuf>,
}

impl Chunk {
    pub fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b.as_slice()[..self.len],
            None => &[],
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(mut buf) = self.buf.take() {
            // A chunk that was all hole filled its whole buffer with zeros.
            buf.zeroed = self.hole && self.len == buf.as_slice().len();
            // The pool may be gone at shutdown; the buffer is then simply freed.
            let _ = self.home.try_send(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let pool = Pool::new(2, 3 * ALIGN);
        let a = pool.take().unwrap();
        assert_eq!(a.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(a.as_slice().len(), 3 * ALIGN);
        let b = pool.take().unwrap();
        let chunk = pool.chunk(a, 0, 10);
        assert_eq!(chunk.data().len(), 10);
        drop(chunk);
        let again = pool.take().unwrap();
        assert_eq!(again.as_slice().as_ptr() as usize % ALIGN, 0);
        drop((b, again));
    }

    /// AnonHugePages of the mapping holding `addr`, in kB, from /proc/self/smaps.
    fn huge_kb_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if let Some(kb) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
                return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn chunk_sized_buffers_start_on_a_huge_page_and_are_backed_by_huge_pages() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap();
        assert!(
            !thp.contains("[never]"),
            "this test needs transparent huge pages (always or madvise): {thp}"
        );
        let mut buf = AlignedBuf::new(4 << 20);
        let at = buf.as_slice().as_ptr() as usize;
        assert_eq!(at % HUGE_PAGE, 0);
        assert!(buf.zeroed() && buf.as_slice().iter().all(|&b| b == 0));
        buf.as_mut_slice().fill(1);
        assert!(
            huge_kb_at(at) >= 4096,
            "a touched 4 MiB buffer is backed by huge pages"
        );
        // Small buffers keep the page alignment.
        let small = AlignedBuf::new(3 * ALIGN);
        assert_eq!(small.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(small.as_slice().len(), 3 * ALIGN);
    }

    #[test]
    fn a_buffer_is_known_zero_only_when_new_or_back_from_a_whole_hole_chunk() {
        let pool = Pool::new(1, 2 * ALIGN);
        // Fills the pool's only buffer, hands it back as a chunk of `len` bytes, takes it again.
        let cycle = |len: usize, hole: bool| {
            let mut buf = pool.take().unwrap();
            let _ = buf.as_mut_slice();
            assert!(
                !buf.zeroed(),
                "a buffer handed out for writing is not known zero"
            );
            let mut chunk = pool.chunk(buf, 0, len);
            chunk.hole = hole;
            drop(chunk);
            let buf = pool.take().unwrap();
            let zeroed = buf.zeroed();
            drop(pool.chunk(buf, 0, 0));
            zeroed
        };
        let new = pool.take().unwrap();
        assert!(new.zeroed(), "a new buffer is zeros");
        drop(pool.chunk(new, 0, 0));
        assert!(
            cycle(2 * ALIGN, true),
            "back from a chunk that was all hole"
        );
        assert!(!cycle(2 * ALIGN, false), "back from a data chunk");
        assert!(
            !cycle(ALIGN, true),
            "back from a short hole chunk (the rest unknown)"
        );
    }
}
