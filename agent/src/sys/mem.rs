//! Memory of its own mapping, and the huge-page hint.

use std::ptr::NonNull;

use rustix::mm::{Advice, MapFlags, ProtFlags};

/// The size of a transparent huge page on x86_64 and aarch64 (4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Anonymous memory in a private mapping of its own: zeros until written, and pages no
/// allocator has touched, so advice given at creation applies at their first fault. (A heap
/// block may be recycled and cleared by `calloc`, which faults its pages in first.)
pub struct Mapped {
    base: NonNull<u8>,
    map_len: usize,
    start: usize,
    len: usize,
}

// SAFETY: a `Mapped` owns its mapping alone, as a `Box<[u8]>` owns its heap block: sending it to
// another thread moves that ownership, and a shared reference gives only `&[u8]`.
#[allow(unsafe_code)]
unsafe impl Send for Mapped {}
// SAFETY: as above; `&Mapped` allows reads only.
#[allow(unsafe_code)]
unsafe impl Sync for Mapped {}

impl Mapped {
    /// `len` bytes starting on a multiple of `align` (a power of two); `align` above 4 KiB maps
    /// `align` bytes more to find the boundary in (address space only: those pages are never
    /// touched). Aligned to [`HUGE_PAGE`] or more, the whole huge pages inside are advised as
    /// such.
    pub fn new(len: usize, align: usize) -> rustix::io::Result<Self> {
        let slack = if align > 4096 { align } else { 0 };
        let map_len = len
            .checked_add(slack)
            .ok_or(rustix::io::Errno::NOMEM)?
            .max(1);
        // SAFETY: a new private anonymous mapping where the kernel chooses (no address given),
        // so it overlaps nothing of this process; it is unmapped only by `drop`.
        #[allow(unsafe_code)]
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }?;
        let base = NonNull::new(base.cast::<u8>()).ok_or(rustix::io::Errno::NOMEM)?;
        let at = base.as_ptr() as usize;
        let mut mapped = Self {
            base,
            map_len,
            start: at.next_multiple_of(align.max(1)) - at,
            len,
        };
        if align >= HUGE_PAGE {
            if let Err(e) = advise_huge_pages(mapped.as_mut_slice()) {
                log::debug!("huge pages for a {len}-byte buffer: {e}");
            }
        }
        Ok(mapped)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: [start, start + len) lies inside the mapping (start < slack, or 0 without
        // slack), which is readable, writable and alive for as long as `self`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(self.start), self.len)
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference to the bytes.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(self.start), self.len)
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`, unmapped once; no slice of it outlives
        // `self` (they borrow it).
        #[allow(unsafe_code)]
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.map_len) };
        if let Err(e) = result {
            log::error!("unmapping a {}-byte buffer: {e}", self.map_len);
        }
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("at", &self.as_slice().as_ptr())
            .field("len", &self.len)
            .finish()
    }
}

/// madvise(MADV_HUGEPAGE) over the whole huge pages inside `buf`: the kernel backs them with
/// 2 MiB pages when they are first touched, so a direct I/O into `buf` is a few physically
/// contiguous segments instead of one per 4 KiB page. A hint only: a kernel without transparent
/// huge pages refuses it (the error is returned, and the buffer works as before).
fn advise_huge_pages(buf: &mut [u8]) -> rustix::io::Result<()> {
    let addr = buf.as_mut_ptr() as usize;
    let start = addr.next_multiple_of(HUGE_PAGE);
    let end = (addr + buf.len()) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return Ok(());
    }
    // SAFETY: [start, end) lies inside `buf`, memory this process owns and that is borrowed
    // mutably here, so it is mapped and nothing else uses it during the call. MADV_HUGEPAGE only
    // changes how the kernel backs those pages with physical memory, never their contents.
    #[allow(unsafe_code)]
    unsafe {
        rustix::mm::madvise(
            start as *mut core::ffi::c_void,
            end - start,
            Advice::LinuxHugepage,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_zeros_aligned_and_as_long_as_asked() {
        for (len, align) in [(0, 4096), (1, 4096), (12288, 4096), (3 << 20, HUGE_PAGE)] {
            let mut m = Mapped::new(len, align).unwrap();
            assert_eq!(m.as_slice().len(), len);
            assert_eq!(m.as_slice().as_ptr() as usize % align, 0);
            assert!(m.as_slice().iter().all(|&b| b == 0));
            m.as_mut_slice().fill(0xa5);
            assert!(m.as_slice().iter().all(|&b| b == 0xa5));
        }
    }
}
