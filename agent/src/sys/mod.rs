//! Every call into the kernel that needs `unsafe`, an ioctl, a mount, netlink or reboot lives
//! under this module, so the rest of the agent can `deny(unsafe_code)`.

pub mod blk;
pub mod mem;
pub mod netlink;

/// mount(2): mount filesystem `fstype` from `source` at `target`, with `data` options; nosuid
/// and nodev (never set for /dev itself: use [`mount_kernel_fs`]).
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
    mount_with(source, target, fstype, flags, data)
}

/// mount(2) for /proc, /sys, /dev and /run at boot: nosuid only, so device nodes work.
pub fn mount_kernel_fs(
    source: &std::path::Path,
    target: &std::path::Path,
    fstype: &str,
) -> rustix::io::Result<()> {
    mount_with(
        source,
        target,
        fstype,
        rustix::mount::MountFlags::NOSUID,
        "",
    )
}

fn mount_with(
    source: &std::path::Path,
    target: &std::path::Path,
    fstype: &str,
    flags: rustix::mount::MountFlags,
    data: &str,
) -> rustix::io::Result<()> {
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

/// syncfs(fd): flush the filesystem holding `fd`. Unlike sync(2) it reports a write-back error
/// (since Linux 5.8).
pub fn syncfs<Fd: std::os::fd::AsFd>(fd: Fd) -> rustix::io::Result<()> {
    rustix::fs::syncfs(fd)
}

/// reboot(2) with RB_AUTOBOOT, after sync(2). Returns only on failure.
pub fn reboot() -> rustix::io::Errno {
    sync_all();
    match rustix::system::reboot(rustix::system::RebootCommand::Restart) {
        Ok(()) => rustix::io::Errno::INVAL,
        Err(e) => e,
    }
}

/// finit_module(2): load the kernel module in `file` with no parameters.
pub fn finit_module(file: &std::fs::File) -> rustix::io::Result<()> {
    rustix::system::finit_module(file, c"", 0)
}

/// dup2(console, 0), dup2(console, 1), dup2(console, 2): the console becomes our stdio.
pub fn dup_stdio(console: std::os::fd::BorrowedFd<'_>) -> rustix::io::Result<()> {
    rustix::stdio::dup2_stdin(console)?;
    rustix::stdio::dup2_stdout(console)?;
    rustix::stdio::dup2_stderr(console)
}
