//! Every call into the kernel that needs `unsafe` or an ioctl lives here, so the rest of the
//! agent can `deny(unsafe_code)`.

use std::os::fd::AsFd;

/// ioctl(fd, BLKRRPART): ask the kernel to re-read the partition table of a whole-disk device.
pub fn ioctl_blkrrpart<Fd: AsFd>(fd: Fd) -> rustix::io::Result<()> {
    // BLKRRPART = _IO(0x12, 95), no argument.
    const BLKRRPART: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 95);
    // SAFETY: BLKRRPART takes no argument and writes nothing to user memory; `NoArg` passes none.
    // The fd is borrowed for the duration of the call.
    #[allow(unsafe_code)]
    unsafe {
        rustix::ioctl::ioctl(fd, rustix::ioctl::NoArg::<BLKRRPART>::new())
    }
}

/// mount(2): mount filesystem `fstype` from `source` at `target`, with `data` options.
pub fn mount_fs(
    source: &std::path::Path,
    target: &std::path::Path,
    fstype: &str,
    read_only: bool,
    data: &str,
) -> rustix::io::Result<()> {
    let mut flags = rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV;
    if read_only {
        flags |= rustix::mount::MountFlags::RDONLY;
    }
    let data = std::ffi::CString::new(data).map_err(|_| rustix::io::Errno::INVAL)?;
    let data = (!data.as_bytes().is_empty()).then_some(data.as_c_str());
    rustix::mount::mount(source, target, fstype, flags, data)
}

/// umount2(target, 0): unmount; `lazy` adds MNT_DETACH for a source that stopped answering.
pub fn unmount(target: &std::path::Path, lazy: bool) -> rustix::io::Result<()> {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    rustix::mount::unmount(target, flags)
}

/// sync(2): flush every filesystem and block device.
pub fn sync_all() {
    rustix::fs::sync();
}

/// getrandom(2) until `buf` is full.
pub fn fill_random(buf: &mut [u8]) -> rustix::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled +=
            rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}
