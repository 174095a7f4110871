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
