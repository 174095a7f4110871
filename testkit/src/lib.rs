//! Helpers shared by every Lazarus test crate, so no crate keeps its own copy:
//!
//! - [`skip`] and [`require`]: a test that cannot run here says why, loudly; under `scripts/test`
//!   (`LAZARUS_REQUIRE_ALL=1`) it fails instead, so a skip is never counted as a pass;
//! - [`noise`] and [`sha`]: deterministic test data and its digest;
//! - [`Loop`]: a loop device over a file, detached on drop;
//! - [`Reaped`]: a child process stopped by its pid (and its process group) on drop, never by a
//!   name pattern.
//!
//! It depends on nothing of Lazarus but the wire types, so every crate can use it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The environment variable that turns every skip into a failure (`scripts/test` sets it).
pub const REQUIRE_ALL: &str = "LAZARUS_REQUIRE_ALL";
/// Where skips are counted (one line each), if set: `scripts/test` prints the total.
pub const SKIP_LOG: &str = "LAZARUS_SKIP_LOG";

/// Records that `test` cannot run here because of `why`. Under `LAZARUS_REQUIRE_ALL=1` this
/// panics, failing the test; otherwise it prints `SKIPPED test: why` and appends a line to
/// `$LAZARUS_SKIP_LOG`. The caller returns after it.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!("{line} ({REQUIRE_ALL}=1: every test must run)");
    }
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// `Ok(())` when the test can run; otherwise [`skip`]s it and returns `false`, so a test begins
/// `if !require("name", check()) { return; }`.
pub fn require(test: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) => {
            skip(test, &why);
            false
        }
    }
}

/// `Ok(())` as root, else the reason, for [`require`].
pub fn root(what: &str) -> Result<(), String> {
    if is_root() {
        Ok(())
    } else {
        Err(format!("needs root for {what} (scripts/test runs as root)"))
    }
}

/// `Ok(())` when `program` is on the PATH, else the reason, for [`require`].
pub fn program(program: &str, installed_by: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    if found {
        Ok(())
    } else {
        Err(format!("{program} is not installed ({installed_by})"))
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Deterministic incompressible bytes (xorshift), the same for the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// SHA-256 of `data`.
pub fn sha(data: &[u8]) -> lazarus_proto::Sha256 {
    use sha2::Digest;
    lazarus_proto::Sha256(sha2::Sha256::digest(data).into())
}

/// A loop device over a file, detached on drop.
pub struct Loop {
    path: PathBuf,
    /// Still bound to its file (false once detached).
    attached: bool,
    /// The number of a device added for this loop alone (`attach_without_discard`): removed
    /// after the detach.
    added: Option<usize>,
}

impl Loop {
    /// `losetup -f --show [-P] [--direct-io=on] FILE`: `partscan` registers partitions,
    /// `direct_io` makes the loop device bypass the backing file's page cache.
    pub fn attach(backing: &Path, partscan: bool, direct_io: bool) -> Result<Self, String> {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if partscan {
            cmd.arg("-P");
        }
        if direct_io {
            cmd.arg("--direct-io=on");
        }
        let out = cmd
            .arg(backing)
            .output()
            .map_err(|e| format!("running losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup {}: {}",
                backing.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Loop {
            path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            attached: true,
            added: None,
        })
    }

    /// With partition scanning, as a disk is seen; panics if losetup fails.
    pub fn new(backing: &Path) -> Self {
        Self::attach(backing, true, false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel name (`loop3`).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// A loop device whose discard is off, so fallocate(PUNCH_HOLE) on it fails as on a disk
    /// without cheap zeroing. The kernel keeps that limit for the device number after a detach
    /// (and takes nothing but 0 while it is off), so the device is one of its own: added with a
    /// high number (`LOOP_CTL_ADD`), which `losetup -f` picks only when every lower one is in
    /// use, and removed on drop (`LOOP_CTL_REMOVE`).
    pub fn attach_without_discard(backing: &Path, direct_io: bool) -> Result<Self, String> {
        let mut number = 200;
        loop {
            match ioctl_loop_control::<LOOP_CTL_ADD>(number) {
                Ok(()) => break,
                Err(rustix::io::Errno::EXIST) if number < 1000 => number += 1,
                Err(e) => return Err(format!("adding a loop device: {e}")),
            }
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let mut cmd = Command::new("losetup");
        if direct_io {
            cmd.arg("--direct-io=on");
        }
        let out = cmd
            .arg(&path)
            .arg(backing)
            .output()
            .map_err(|e| format!("running losetup: {e}"))?;
        if !out.status.success() {
            // Not bound: only the removal is left to do.
            let _ = remove_loop(number);
            return Err(format!(
                "losetup {} {}: {}",
                path.display(),
                backing.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = Loop {
            path,
            attached: true,
            added: Some(number),
        };
        let limit = format!("/sys/block/loop{number}/queue/discard_max_bytes");
        std::fs::write(&limit, "0").map_err(|e| format!("{limit}: {e}"))?;
        Ok(dev)
    }

    /// Detaches the device now (and removes one added by `attach_without_discard`), saying
    /// what failed.
    pub fn detach(mut self) -> Result<(), String> {
        self.release()
    }

    fn release(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.attached) {
            return Ok(());
        }
        match Command::new("losetup").arg("-d").arg(&self.path).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(format!("losetup -d {}: {s}", self.path.display())),
            Err(e) => return Err(format!("running losetup: {e}")),
        }
        self.added.take().map_or(Ok(()), remove_loop)
    }
}

/// LOOP_CTL_REMOVE of detached device `number`, retried while the kernel still holds it.
fn remove_loop(number: usize) -> Result<(), String> {
    let mut tries = 0;
    loop {
        match ioctl_loop_control::<LOOP_CTL_REMOVE>(number) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::BUSY) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                return Err(format!(
                    "removing /dev/loop{number} (its discard stays off until the machine \
                     reboots): {e}"
                ))
            }
        }
    }
}

const LOOP_CTL_ADD: rustix::ioctl::Opcode = 0x4C80;
const LOOP_CTL_REMOVE: rustix::ioctl::Opcode = 0x4C81;

/// ioctl(/dev/loop-control, REQUEST, number): add or remove loop device `number`
/// (`LOOP_CTL_ADD`, `LOOP_CTL_REMOVE`).
#[allow(unsafe_code)]
fn ioctl_loop_control<const REQUEST: rustix::ioctl::Opcode>(
    number: usize,
) -> rustix::io::Result<()> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
    // SAFETY: both requests take the device number by value and touch no memory of ours.
    let request = unsafe { rustix::ioctl::IntegerSetter::<REQUEST>::new_usize(number) };
    // SAFETY: `control` is /dev/loop-control, which defines these requests.
    unsafe { rustix::ioctl::ioctl(&control, request) }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("{e}");
        }
    }
}

/// Child processes stopped by their pid on drop: each gets SIGKILL, and so does its process
/// group when it leads one (started with `process_group(0)`), then it is reaped.
#[derive(Default)]
pub struct Reaped(pub Vec<Child>);

impl Reaped {
    pub fn push(&mut self, child: Child) -> &mut Child {
        self.0.push(child);
        self.0.last_mut().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill_group(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// kill(pid, SIGKILL), for a process known by the pid it wrote down.
pub fn kill_pid(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// kill(-pid, SIGKILL) when `pid` leads its own process group; nothing otherwise.
pub fn kill_group(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    if rustix::process::getpgid(Some(pid)).ok() == Some(pid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_seeded() {
        assert_eq!(noise(64, 7), noise(64, 7));
        assert_ne!(noise(64, 7), noise(64, 8));
    }

    #[test]
    fn a_skip_fails_the_test_when_every_test_is_required() {
        // Run the check in a child process so this process's environment is left alone.
        if std::env::var_os("LAZARUS_TESTKIT_CHILD").is_some() {
            skip("child", "testing the skip");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let run = |require_all: &str| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "tests::a_skip_fails_the_test_when_every_test_is_required",
                    "--nocapture",
                ])
                .env("LAZARUS_TESTKIT_CHILD", "1")
                .env(REQUIRE_ALL, require_all)
                .env_remove(SKIP_LOG)
                .output()
                .unwrap()
        };
        let strict = run("1");
        assert!(!strict.status.success(), "a required skip passed");
        assert!(
            String::from_utf8_lossy(&strict.stdout).contains("SKIPPED child")
                || String::from_utf8_lossy(&strict.stderr).contains("SKIPPED child")
        );
        let lax = run("0");
        assert!(lax.status.success(), "a local skip failed");
        assert!(String::from_utf8_lossy(&lax.stderr).contains("SKIPPED child: testing the skip"));
    }
}
