//! `scripts/bench copy`'s NFS half: serves the bench's work directory with a real nfs-ganesha in
//! a network namespace joined to this one by a veth pair, mounts it here, and runs the bench
//! harness's indexed cases (diff1, diff1-packed, nfs-bytes, resume) with the image read through
//! that mount: once over the link as it is, once with the server's side shaped to 1 Gbit/s
//! (`tc tbf`), the common data-centre rescue network.
//!
//! This machine kind's kernel has no NFS client (no CONFIG_NFS_FS, no modules), so the mount is
//! `scripts/lib/nfs-fuse` (libnfs, NFSv4, through FUSE): a userspace NFS client; the kernel's
//! page cache sits above it as above any mount, and the harness drops it before every timed run.
//!
//! ```text
//! nfs_bench --harness BENCH --nfs-fuse NFS_FUSE --workdir DIR [harness options]
//! ```
//!
//! The namespace, the server and the mount are torn down on every exit path but a kill.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lazarus_e2e::{Export, Netns, Nfs};

const NS: &str = "lzbench";
const OUTSIDE: &str = "lzb-host";
const INSIDE: &str = "lzb-srv";
const CLIENT_IP: &str = "10.79.0.2";
const SERVER_IP: &str = "10.79.0.1";

/// The userspace NFS mount; unmounted and stopped (by pid) on drop.
struct Mount {
    child: Child,
    at: PathBuf,
}

impl Mount {
    fn start(nfs_fuse: &Path, at: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let child = Command::new(nfs_fuse)
            .args([SERVER_IP, "/export"])
            .arg(at)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nfs_fuse.display()))?;
        let mut m = Self {
            child,
            at: at.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !at.join("dense.idx").exists() {
            if m.child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("the NFS mount at {} did not come up", at.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(m)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.at)
            .stderr(Stdio::null())
            .status();
        if self.child.try_wait().map(|s| s.is_none()).unwrap_or(false) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn tc(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", NS, "tc"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |name: &str| -> anyhow::Result<String> {
        let i = args
            .iter()
            .position(|a| a == name)
            .with_context(|| format!("{name} is required"))?;
        let v = args.get(i + 1).cloned().context(name.to_string())?;
        args.drain(i..i + 2);
        Ok(v)
    };
    let harness = take("--harness")?;
    let nfs_fuse = PathBuf::from(take("--nfs-fuse")?);
    let workdir = PathBuf::from(take("--workdir")?).canonicalize()?;
    let rest = args;
    for f in ["dense.img", "dense.idx"] {
        if !workdir.join(f).exists() {
            bail!(
                "{} is missing: run the bench harness first",
                workdir.join(f).display()
            );
        }
    }
    let run_dir = workdir.join("nfs");
    std::fs::create_dir_all(&run_dir)?;

    let ns = Netns::create_veth(NS, OUTSIDE, CLIENT_IP, INSIDE, SERVER_IP)?;
    let _nfs = Nfs::start_on(
        &ns,
        &run_dir,
        SERVER_IP,
        &[Export {
            path: &workdir,
            pseudo: "/export",
            writable: false,
        }],
    )?;
    let mount = Mount::start(&nfs_fuse, &run_dir.join("mnt"))?;

    for (label, shape) in [("", false), ("@1gbit", true)] {
        if shape {
            tc(&[
                "qdisc", "add", "dev", INSIDE, "root", "tbf", "rate", "1gbit", "burst", "1mb",
                "latency", "20ms",
            ])?;
        }
        let status = Command::new(&harness)
            .args(&rest)
            .arg("--workdir")
            .arg(&workdir)
            .arg("--source-dir")
            .arg(&mount.at)
            .args(["--label", label, "--wire", OUTSIDE])
            .status()
            .with_context(|| format!("running {harness}"))?;
        if !status.success() {
            bail!("the bench harness over NFS{label} failed: {status}");
        }
    }
    Ok(())
}
