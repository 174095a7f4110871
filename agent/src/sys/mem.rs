//! Memory hints.

/// The size of a transparent huge page on x86_64 and aarch64 (4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// madvise(MADV_HUGEPAGE) over the whole huge pages inside `buf`: the kernel backs them with
/// 2 MiB pages when they are first touched, so a direct I/O into `buf` is a few physically
/// contiguous segments instead of one per 4 KiB page. A hint only: a kernel without transparent
/// huge pages refuses it (the error is returned, and the buffer works as before).
pub fn advise_huge_pages(buf: &mut [u8]) -> rustix::io::Result<()> {
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
            rustix::mm::Advice::LinuxHugepage,
        )
    }
}
