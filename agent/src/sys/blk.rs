//! Block-device ioctls: partition table re-read and partition registration.

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

/// `struct blkpg_partition` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG_ADD_PARTITION: i32 = 1;
const BLKPG_DEL_PARTITION: i32 = 2;

fn blkpg<Fd: AsFd>(fd: Fd, op: i32, pno: u32, start: u64, length: u64) -> rustix::io::Result<()> {
    // BLKPG = _IO(0x12, 105); its argument is a pointer to blkpg_ioctl_arg.
    const BLKPG: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 105);
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| rustix::io::Errno::INVAL)?,
        length: i64::try_from(length).map_err(|_| rustix::io::Errno::INVAL)?,
        pno: i32::try_from(pno).map_err(|_| rustix::io::Errno::INVAL)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: BLKPG reads a blkpg_ioctl_arg (passed by pointer by `Setter`) whose `data` points
    // to a blkpg_partition of `datalen` bytes; both are #[repr(C)] mirrors of the kernel's
    // structs and live on this stack frame for the whole call. The kernel writes nothing back.
    #[allow(unsafe_code)]
    unsafe {
        rustix::ioctl::ioctl(fd, rustix::ioctl::Setter::<BLKPG, BlkpgIoctlArg>::new(arg))
    }
}

/// ioctl(fd, BLKPG, BLKPG_ADD_PARTITION): register partition `pno` at `start`, `length` bytes.
pub fn ioctl_blkpg_add<Fd: AsFd>(
    fd: Fd,
    pno: u32,
    start: u64,
    length: u64,
) -> rustix::io::Result<()> {
    blkpg(fd, BLKPG_ADD_PARTITION, pno, start, length)
}

/// ioctl(fd, BLKPG, BLKPG_DEL_PARTITION): forget partition `pno`.
pub fn ioctl_blkpg_del<Fd: AsFd>(fd: Fd, pno: u32) -> rustix::io::Result<()> {
    blkpg(fd, BLKPG_DEL_PARTITION, pno, 0, 0)
}
