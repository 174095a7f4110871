//! `scripts/bench`: copies the same images with Lazarus and with the tools users would otherwise
//! use, onto the same kind of target, in one run, and prints one line per case:
//!
//! ```text
//! bench CASE lazarus_mb_s=X peer=NAME peer_mb_s=Y ratio=Z
//! ```
//!
//! Cases: `dense` (2 GiB of random data verified by its chunk index on every core, vs `dd bs=4M
//! oflag=direct conv=fsync`), `sparse` (a 2 GiB ext4 image holding about 400 MiB of files, vs
//! `bmaptool copy` with its `.bmap`), `zstd` (that image zstd-compressed, vs `zstd -dc | dd
//! bs=4M oflag=direct conv=fsync`); then, with the dense image's chunk index:
//!
//! - `diff1`: the device holds the image with 1% of its chunks damaged (4 KiB of noise in each,
//!   at random): a differential run vs `dd` rewriting it all (ratio: dd's time over ours);
//!   `nfs-bytes` says what the differential run fetched from the source, in % of the image;
//! - `diff1-packed` (and `nfs-bytes-packed`): the same from the image packed by `lazarus image
//!   pack` (a zstd frame per chunk, their offsets in its index), vs `zstd -dc | dd`;
//! - `resume`: a full indexed copy killed (SIGKILL) once its flag's checkpoint reached 50%, then
//!   resumed: the resumed run's time over a full `dd` copy's (goal <= 0.6);
//! - `verify`: the device holds the intact image: a differential run (reads and compares,
//!   writes nothing) vs `dd` reading the device (ratio: dd's time over ours).
//!
//! Every run writes to a fresh loop device (direct I/O) over a fresh sparse file, with the source
//! read into the page cache first (only the target disk is measured); diff1, diff1-packed,
//! nfs-bytes and resume are then printed as `diff1@local` and so on (`--label` changes the
//! suffix). Each tool runs `--rounds` times, alternating; the median counts. Speeds are the
//! image's logical size over wall time. Needs root (loop devices).
//!
//! With `--source-dir DIR` (a mount of the work directory over NFS, set up by the lazarus-e2e
//! example `nfs_bench`), only diff1, diff1-packed, nfs-bytes and resume run, both tools reading
//! the image and index from DIR, with the page cache dropped before every timed run; `--wire
//! IFACE` adds the bytes received on IFACE during the differential run to the nfs-bytes line
//! (`wire=N wire_pct=P`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

const GIB: u64 = 1 << 30;

fn sh(cmd: &str) -> anyhow::Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| cmd.to_string())?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Deterministic incompressible bytes, written in 4 MiB pieces.
fn write_noise(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    Ok(
        sh(&format!("openssl dgst -sha256 -r '{}'", path.display()))?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

struct Images {
    dense: PathBuf,
    dense_sha: String,
    dense_idx: PathBuf,
    sparse: PathBuf,
    bmap: PathBuf,
    zst: PathBuf,
    sparse_sha: String,
}

/// The dense image packed (`lazarus image pack`: one zstd frame per chunk) and its index.
const PACKED: &str = "dense.packed.zst";
const PACKED_IDX: &str = "dense.packed.idx";

fn prepare(dir: &Path) -> anyhow::Result<Images> {
    std::fs::create_dir_all(dir)?;
    let dense = dir.join("dense.img");
    if std::fs::metadata(&dense).map(|m| m.len()).ok() != Some(2 * GIB) {
        eprintln!("making a 2 GiB random image");
        write_noise(&dense, 2 * GIB, 0x5eed)?;
    }
    let sparse = dir.join("sparse.img");
    let bmap = dir.join("sparse.bmap");
    let zst = dir.join("sparse.img.zst");
    if !sparse.exists() || !bmap.exists() || !zst.exists() {
        eprintln!("making a 2 GiB ext4 image with 400 MiB of files, its .bmap and .zst");
        let files = dir.join("files");
        let _ = std::fs::remove_dir_all(&files);
        for d in 0..20 {
            let sub = files.join(format!("dir{d:02}"));
            std::fs::create_dir_all(&sub)?;
            for f in 0..20 {
                write_noise(
                    &sub.join(format!("file{f:02}.bin")),
                    1 << 20,
                    (d * 100 + f + 7) as u64,
                )?;
            }
        }
        let _ = std::fs::remove_file(&sparse);
        sh(&format!(
            "mkfs.ext4 -q -F -d '{}' '{}' 2G",
            files.display(),
            sparse.display()
        ))?;
        std::fs::remove_dir_all(&files)?;
        sh(&format!(
            "bmaptool -q create '{}' -o '{}'",
            sparse.display(),
            bmap.display()
        ))?;
        sh(&format!(
            "zstd -q -f -3 '{}' -o '{}'",
            sparse.display(),
            zst.display()
        ))?;
    }
    let dense_idx = dir.join("dense.idx");
    if !dense_idx.exists() {
        let idx = lazarus_node::index::build(&dense, lazarus_node::index::DEFAULT_CHUNK, 2)?;
        std::fs::write(&dense_idx, idx.encode())?;
    }
    let (packed, packed_idx) = (dir.join(PACKED), dir.join(PACKED_IDX));
    if !packed_idx.exists() {
        eprintln!("packing the 2 GiB random image (one zstd frame per chunk)");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&packed)?);
        let idx =
            lazarus_node::index::pack(&dense, &mut out, lazarus_node::index::DEFAULT_CHUNK, 2)?;
        std::io::Write::flush(&mut out)?;
        std::fs::write(&packed_idx, idx.encode())?;
    }
    Ok(Images {
        dense_idx,
        dense_sha: sha256_of(&dense)?,
        sparse_sha: sha256_of(&sparse)?,
        dense,
        sparse,
        bmap,
        zst,
    })
}

/// Runs `cmd` (with `{dev}` replaced) against a fresh loop device; returns wall seconds.
fn timed_run(
    dir: &Path,
    size: u64,
    source: &Path,
    cmd: &str,
    check: Option<&str>,
) -> anyhow::Result<f64> {
    let dev = Dev::new(dir, size)?;
    sh(&format!("cat '{}' > /dev/null", source.display()))?;
    let cmd = cmd.replace("{dev}", &dev.dev);
    let start = Instant::now();
    sh(&cmd)?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(want) = check {
        dev.holds(size, want)
            .with_context(|| format!("after {cmd}"))?;
    }
    Ok(secs)
}

/// A fresh loop device (direct I/O) over a fresh sparse file of `size` + 64 MiB.
struct Dev {
    dev: String,
    backing: PathBuf,
}

impl Dev {
    fn new(dir: &Path, size: u64) -> anyhow::Result<Self> {
        let backing = dir.join("target.img");
        let _ = std::fs::remove_file(&backing);
        std::fs::File::create(&backing)?.set_len(size + (64 << 20))?;
        let dev = sh(&format!(
            "losetup -f --show --direct-io=on '{}'",
            backing.display()
        ))?;
        let dev = Self { dev, backing };
        // A device whose discard was turned off (the kernel keeps that per device number) would
        // make every punch fail and the figures incomparable with other runs.
        let limit = format!(
            "/sys/block/{}/queue/discard_max_bytes",
            dev.dev.trim_start_matches("/dev/")
        );
        if std::fs::read_to_string(&limit)
            .with_context(|| limit.clone())?
            .trim()
            == "0"
        {
            bail!(
                "{} has discard turned off: remove it (LOOP_CTL_REMOVE) or reboot",
                dev.dev
            );
        }
        Ok(dev)
    }

    fn holds(&self, size: u64, sha: &str) -> anyhow::Result<()> {
        let got = sh(&format!(
            "head -c {size} {} | openssl dgst -sha256 -r",
            self.dev
        ))?;
        if !got.starts_with(sha) {
            bail!("{} does not hold the image", self.dev);
        }
        Ok(())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = sh(&format!("losetup -d {}", self.dev));
        let _ = std::fs::remove_file(&self.backing);
    }
}

fn timed(cmd: &str) -> anyhow::Result<(f64, String)> {
    let start = Instant::now();
    let out = sh(cmd)?;
    Ok((start.elapsed().as_secs_f64(), out))
}

/// The number after `name ` in the agent's summary line.
fn counter(out: &str, name: &str) -> u64 {
    out.split(&format!("{name} "))
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Where the indexed cases' timed runs read the image and its index from.
struct Source {
    /// A directory holding `dense.img` and `dense.idx` as served over NFS (a mount point), or
    /// None for the work directory's own files, read into the page cache first.
    dir: Option<PathBuf>,
    /// Appended to the case names: `diff1{label}`.
    label: String,
    /// The network interface the NFS traffic arrives on: its received bytes are counted around
    /// the differential run.
    wire: Option<String>,
}

impl Source {
    /// Before each timed run: over NFS, nothing cached on either side (this machine's page cache
    /// holds both the mount's pages and the NFS server's file); locally, the image in the cache.
    fn settle(&self, image: &Path) -> anyhow::Result<()> {
        if self.dir.is_some() {
            sh("sync; echo 3 > /proc/sys/vm/drop_caches")?;
        } else {
            sh(&format!("cat '{}' > /dev/null", image.display()))?;
        }
        Ok(())
    }

    fn wire_bytes(&self) -> anyhow::Result<Option<u64>> {
        let Some(iface) = &self.wire else {
            return Ok(None);
        };
        let path = format!("/sys/class/net/{iface}/statistics/rx_bytes");
        let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        Ok(Some(text.trim().parse().with_context(|| path.clone())?))
    }
}

/// The indexed cases: diff1 (+ nfs-bytes), resume, verify (verify only from the local source:
/// it reads the disk and the index, never the image).
fn indexed_cases(
    agent: &str,
    dir: &Path,
    img: &Images,
    rounds: usize,
    src: &Source,
    wanted: &dyn Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let size = 2 * GIB;
    let (image, index) = match &src.dir {
        Some(d) => (d.join("dense.img"), d.join("dense.idx")),
        None => (img.dense.clone(), img.dense_idx.clone()),
    };
    let label = &src.label;
    // Puts the image on a device before a case (untimed): always from the local file.
    let fill = format!(
        "dd if='{}' of={{dev}} bs=4M oflag=direct conv=fsync status=none",
        img.dense.display()
    );
    // What a user would run instead, reading from the case's source.
    let dd = format!(
        "dd if='{}' of={{dev}} bs=4M oflag=direct conv=fsync status=none",
        image.display()
    );
    let ours = |mode: &str, dev: &str, flag: Option<&Path>| {
        format!(
            "{agent} copy --image '{}' --target {dev} --sha256 {} --index '{}' --mode {mode}{}",
            image.display(),
            img.dense_sha,
            index.display(),
            flag.map_or(String::new(), |f| format!(" --flag '{}'", f.display()))
        )
    };
    let chunks = (size >> 22) as usize;
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    sh(&format!("cat '{}' > /dev/null", img.dense.display()))?;

    // diff1: 1% of the chunks damaged; diff1-packed: the same from the packed image.
    let packed = src.dir.as_deref().unwrap_or(dir);
    let (packed, packed_idx) = (packed.join(PACKED), packed.join(PACKED_IDX));
    let variants = [
        ("diff1", "", image.clone(), ours("differential", "{dev}", None), dd.clone()),
        (
            "diff1-packed",
            "-packed",
            packed.clone(),
            format!(
                "{agent} copy --image '{}' --format zstd --target {{dev}} --sha256 {} --index '{}' --mode differential",
                packed.display(),
                img.dense_sha,
                packed_idx.display()
            ),
            format!(
                "zstd -q -dc '{}' | dd of={{dev}} bs=4M iflag=fullblock oflag=direct conv=fsync status=none",
                packed.display()
            ),
        ),
    ];
    for (case, suffix, source, ours_cmd, peer_cmd) in &variants {
        if !wanted(case) {
            continue;
        }
        let (mut a, mut b, mut fetched, mut wire) = (Vec::new(), Vec::new(), 0, None);
        for round in 0..rounds {
            for ours_turn in [true, false] {
                let d = Dev::new(dir, size)?;
                sh(&fill.replace("{dev}", &d.dev))?;
                {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::OpenOptions::new().write(true).open(&d.dev)?;
                    for _ in 0..chunks.div_ceil(100) {
                        let c = rand() as usize % chunks;
                        let at =
                            (c as u64) * (4 << 20) + (rand() % ((4 << 20) - 4096)) / 4096 * 4096;
                        f.write_all_at(&[0xa5; 4096], at)?;
                    }
                    f.sync_all()?;
                }
                src.settle(source)?;
                if ours_turn {
                    let before = src.wire_bytes()?;
                    let (t, out) = timed(&ours_cmd.replace("{dev}", &d.dev))?;
                    fetched = counter(&out, "fetched");
                    wire = match (before, src.wire_bytes()?) {
                        (Some(b), Some(e)) => Some(e.saturating_sub(b)),
                        _ => None,
                    };
                    a.push(t);
                } else {
                    b.push(timed(&peer_cmd.replace("{dev}", &d.dev))?.0);
                }
                if round == 0 {
                    d.holds(size, &img.dense_sha)?;
                }
            }
        }
        let (ta, tb) = (median(a), median(b));
        let peer = if suffix.is_empty() { "dd" } else { "zstd+dd" };
        println!(
            "bench {case}{label} lazarus_s={ta:.2} peer={peer} peer_s={tb:.2} ratio={:.2}",
            tb / ta
        );
        // Over NFS, the bytes that crossed the link (NFS replies with their RPC and TCP/IP
        // headers, the index included) count, not only what the agent says it fetched.
        let wire = wire.map_or(String::new(), |w| {
            format!(" wire={w} wire_pct={:.2}", w as f64 * 100.0 / size as f64)
        });
        println!(
            "bench nfs-bytes{suffix}{label} fetched={fetched} image={size} pct={:.2}{wire}",
            fetched as f64 * 100.0 / size as f64
        );
    }

    // resume: killed at a 50% checkpoint, then resumed; vs a full dd copy.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..if wanted("resume") { rounds } else { 0 } {
        let d = Dev::new(dir, size)?;
        let flag = dir.join("flag.img");
        let _ = std::fs::remove_file(&flag);
        lazarus_node::flag_store::FlagStore::format(&flag, false)?;
        let cmd = ours("full", &d.dev, Some(&flag));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .spawn()?;
        let start = Instant::now();
        loop {
            let rec = lazarus_node::flag_store::FlagStore::open(&flag)?.read()?;
            if rec.bytes_done >= size / 2 {
                break;
            }
            if child.try_wait()?.is_some() || start.elapsed().as_secs() > 120 {
                bail!("resume: the copy ended before its 50% checkpoint");
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill()?;
        child.wait()?;
        src.settle(&image)?;
        a.push(timed(&ours("auto", &d.dev, Some(&flag)))?.0);
        if round == 0 {
            d.holds(size, &img.dense_sha)?;
        }
        drop(d);
        let d = Dev::new(dir, size)?;
        src.settle(&image)?;
        b.push(timed(&dd.replace("{dev}", &d.dev))?.0);
    }
    if wanted("resume") {
        let (ta, tb) = (median(a), median(b));
        println!(
            "bench resume{label} lazarus_s={ta:.2} peer=dd-full peer_s={tb:.2} ratio={:.2}",
            ta / tb
        );
    }
    if !wanted("verify") || src.dir.is_some() {
        return Ok(());
    }

    // verify: the intact image on the device.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let d = Dev::new(dir, size)?;
    sh(&fill.replace("{dev}", &d.dev))?;
    for _ in 0..rounds {
        let (t, out) = timed(&ours("differential", &d.dev, None))?;
        if counter(&out, "written") != 0 {
            bail!("verify: an intact disk was written: {out}");
        }
        a.push(t);
        b.push(
            timed(&format!(
                "dd if={} of=/dev/null bs=4M count={} iflag=direct status=none",
                d.dev,
                size >> 22
            ))?
            .0,
        );
    }
    let (ta, tb) = (median(a), median(b));
    println!(
        "bench verify lazarus_s={ta:.2} peer=dd-read peer_s={tb:.2} ratio={:.2}",
        tb / ta
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let agent = get("--agent").context("--agent BIN is required")?;
    let dir = PathBuf::from(get("--workdir").unwrap_or_else(|| "target/bench".into()));
    let rounds: usize = get("--rounds").map_or(Ok(3), |r| r.parse())?;
    let src = Source {
        dir: get("--source-dir").map(PathBuf::from),
        label: get("--label").unwrap_or_else(|| {
            if get("--source-dir").is_some() {
                ""
            } else {
                "@local"
            }
            .to_string()
        }),
        wire: get("--wire"),
    };
    if !rustix::process::geteuid().is_root() {
        bail!("the benchmark needs root (loop devices)");
    }
    let img = prepare(&dir)?;
    let size = 2 * GIB;
    let cases = [
        (
            "dense",
            img.dense.clone(),
            format!(
                "{agent} copy --image '{}' --target {{dev}} --sha256 {} --index '{}' --mode full",
                img.dense.display(),
                img.dense_sha,
                img.dense_idx.display()
            ),
            "dd",
            format!("dd if='{}' of={{dev}} bs=4M oflag=direct conv=fsync status=none", img.dense.display()),
            img.dense_sha.clone(),
        ),
        (
            "sparse",
            img.sparse.clone(),
            format!("{agent} copy --image '{}' --target {{dev}} --bmap '{}'", img.sparse.display(), img.bmap.display()),
            "bmaptool",
            format!("bmaptool -q copy --bmap '{}' '{}' {{dev}}", img.bmap.display(), img.sparse.display()),
            img.sparse_sha.clone(),
        ),
        (
            "zstd",
            img.zst.clone(),
            format!(
                "{agent} copy --image '{}' --format zstd --target {{dev}} --bmap '{}'",
                img.zst.display(),
                img.bmap.display()
            ),
            "zstd+dd",
            format!(
                "zstd -q -dc '{}' | dd of={{dev}} bs=4M iflag=fullblock oflag=direct conv=fsync status=none",
                img.zst.display()
            ),
            img.sparse_sha.clone(),
        ),
    ];
    let only = get("--cases");
    let wanted = |name: &str| match only.as_deref() {
        None => true,
        Some(o) => o.split(',').any(|c| c == name),
    };
    for (name, source, ours, peer, theirs, sha) in &cases {
        if !wanted(name) || src.dir.is_some() {
            continue;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // The first round also checks that each tool left the image on the device.
            let check = (round == 0).then_some(sha.as_str());
            a.push(timed_run(&dir, size, source, ours, check)?);
            b.push(timed_run(&dir, size, source, theirs, check)?);
        }
        let (ta, tb) = (median(a), median(b));
        let (sa, sb) = (size as f64 / ta / 1e6, size as f64 / tb / 1e6);
        println!(
            "bench {name} lazarus_mb_s={sa:.0} peer={peer} peer_mb_s={sb:.0} ratio={:.2}",
            sa / sb
        );
    }
    if ["diff1", "diff1-packed", "resume", "verify"]
        .iter()
        .any(|c| wanted(c))
    {
        indexed_cases(&agent, &dir, &img, rounds, &src, &wanted)?;
    }
    Ok(())
}
