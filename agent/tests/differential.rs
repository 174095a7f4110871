//! Differential copies and resumes with a chunk index, on loop devices (root) and as a real
//! process killed mid-copy: only the damaged chunks are fetched and written, the header is
//! zeroed while anything changes, and a resumed copy ends byte-identical.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lazarus_agent::image::{
    sample, write_differential, write_image, ChunkIndex, ChunkSource, CopySpec, ImageError,
    Progress, Target, Verification, HEADER_LEN,
};
use lazarus_node::flag_store::FlagStore;
use lazarus_node::index;
use lazarus_proto::flag::FlagState;
use lazarus_proto::ImageFormat;
use lazarus_testkit::{noise, require, root, sha, Loop};

const MIB: usize = 1 << 20;
/// Chunks of 2 MiB: chunk 0 holds the 1 MiB header and 1 MiB more.
const CHUNK: u32 = 2 << 20;

/// 20 MiB + a 5000-byte tail: data in chunks 0, 1, 4, 5 and the last; holes elsewhere.
fn image() -> Vec<u8> {
    let mut img = vec![0u8; 20 * MIB + 5000];
    img[..3 * MIB].copy_from_slice(&noise(3 * MIB, 1));
    img[8 * MIB..12 * MIB].copy_from_slice(&noise(4 * MIB, 2));
    let n = img.len();
    img[n - 3000..].copy_from_slice(&noise(3000, 3));
    img
}

struct Setup {
    _dir: tempfile::TempDir,
    img: Vec<u8>,
    file: std::fs::File,
    idx: ChunkIndex,
    dev: Loop,
}

fn setup(name: &str) -> Option<Setup> {
    if !require(name, root("losetup")) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let path = dir.path().join("os.img");
    std::fs::write(&path, &img).unwrap();
    let idx = index::build(&path, CHUNK, 2).unwrap();
    let backing = dir.path().join("disk");
    std::fs::write(&backing, noise(24 * MIB, 9)).unwrap();
    let dev = Loop::attach(&backing, false, true).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    Some(Setup {
        _dir: dir,
        img,
        file,
        idx,
        dev,
    })
}

fn spec(s: &Setup) -> CopySpec {
    CopySpec {
        format: ImageFormat::Raw,
        size: s.img.len() as u64,
        verify: Verification::Index(Arc::new(s.idx.clone())),
        keep: Default::default(),
    }
}

fn disk(t: &Target, len: usize) -> Vec<u8> {
    let mut back = vec![0u8; len];
    t.read_at(&mut back, 0).unwrap();
    back
}

fn diff(s: &Setup, t: &Target) -> (lazarus_agent::image::CopyReport, Progress) {
    let p = Progress::default();
    let r = write_differential(
        ChunkSource::File(&s.file),
        t,
        &spec(s),
        &s.idx,
        s.img.len() as u64,
        &p,
        None,
    )
    .unwrap();
    (r, p)
}

#[test]
fn differential_rewrites_only_damaged_chunks_on_a_loop_device() {
    let Some(s) = setup("differential_rewrites_only_damaged_chunks_on_a_loop_device") else {
        return;
    };
    let t = Target::open(s.dev.path()).unwrap();
    let size = s.img.len();
    // A full copy by index first (verified on every core).
    write_image(&s.img[..], &t, &spec(&s), &Progress::default()).unwrap();
    assert!(disk(&t, size) == s.img);

    // Intact: everything checked, nothing fetched or written, not even the header.
    let (r, p) = diff(&s, &t);
    let c = p.counters();
    assert_eq!((r.written, c.fetched, c.written), (0, 0, 0));
    assert_eq!(c.checked, size as u64);
    assert_eq!(sample(&t, &s.idx, &spec(&s), 16).unwrap(), (5, 5));

    let last = s.idx.len() - 1;
    let cases: [(&str, usize, usize, u64); 4] = [
        // (what, damaged byte, chunk, bytes fetched)
        ("first chunk", MIB + 77, 0, CHUNK as u64),
        (
            "last chunk",
            size - 10,
            last,
            s.idx.range(last).end - s.idx.range(last).start,
        ),
        ("a hole", 14 * MIB + 5, 7, 0),
        ("the header", 100, 0, CHUNK as u64),
    ];
    for (what, at, chunk, fetched) in cases {
        let b = t.file();
        use std::os::unix::fs::FileExt;
        b.write_all_at(&[s.img[at] ^ 0x5a], at as u64).unwrap();
        t.sync().unwrap();
        assert!(disk(&t, size) != s.img);
        let (r, p) = diff(&s, &t);
        let c = p.counters();
        assert!(
            disk(&t, size) == s.img,
            "{what}: the disk does not hold the image"
        );
        assert_eq!(c.fetched, fetched, "{what}: fetched");
        let r_len = s.idx.range(chunk).end - s.idx.range(chunk).start;
        // The damaged chunk, and the header written back last (from the disk or the source).
        let header_again = if chunk == 0 { 0 } else { HEADER_LEN };
        // A hole is punched where the device can (nothing written), else written as zeros.
        if what == "a hole" && r.written == header_again {
            eprintln!("{what}: punched");
        } else {
            assert_eq!(r.written, r_len + header_again, "{what}: written");
        }
        assert_eq!(c.written, r.written, "{what}: status counter");
        eprintln!(
            "{what}: checked {} fetched {} written {}",
            c.checked, c.fetched, c.written
        );
    }
}

#[test]
fn a_failed_differential_leaves_the_header_zero_and_a_blank_disk_samples_no_match() {
    let Some(s) =
        setup("a_failed_differential_leaves_the_header_zero_and_a_blank_disk_samples_no_match")
    else {
        return;
    };
    let t = Target::open(s.dev.path()).unwrap();
    // The disk holds noise: no sampled chunk matches (auto goes full).
    assert_eq!(sample(&t, &s.idx, &spec(&s), 16).unwrap(), (0, 5));
    // A source that lies about chunk 4: refused before a byte of it is written, header zero.
    let mut lying = s.img.clone();
    lying[8 * MIB + 3] ^= 1;
    let path = s._dir.path().join("lying.img");
    std::fs::write(&path, &lying).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let err = write_differential(
        ChunkSource::File(&f),
        &t,
        &spec(&s),
        &s.idx,
        s.img.len() as u64,
        &Progress::default(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::ChunkMismatch { chunk: 4, .. }),
        "{err}"
    );
    assert!(disk(&t, MIB).iter().all(|&b| b == 0), "header not zeroed");
    // An abort during the check also zeroes the header.
    let p = Progress::default();
    p.abort();
    assert!(matches!(
        write_differential(
            ChunkSource::File(&s.file),
            &t,
            &spec(&s),
            &s.idx,
            u64::MAX,
            &p,
            None
        ),
        Err(ImageError::Aborted)
    ));
    // A stream source (zstd) works in order, skipping forward.
    let (r, _) = {
        let p = Progress::default();
        let src = ChunkSource::Stream {
            reader: Box::new(std::io::Cursor::new(s.img.clone())),
            pos: 0,
        };
        let r =
            write_differential(src, &t, &spec(&s), &s.idx, s.img.len() as u64, &p, None).unwrap();
        (r, p)
    };
    assert!(r.written > 0);
    assert!(disk(&t, s.img.len()) == s.img);
    let _ = sha(&s.img);
}

/// Runs `lazarus-agent copy --index` on the device; returns (exit ok, stdout).
fn agent_copy(img: &Path, idx: &Path, dev: &Path, flag: &Path, sha: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_lazarus-agent"))
        .args(["copy", "--image"])
        .arg(img)
        .arg("--index")
        .arg(idx)
        .arg("--target")
        .arg(dev)
        .arg("--flag")
        .arg(flag)
        .args(["--sha256", sha, "--mode", "auto"])
        .env("LAZARUS_CHECKPOINT_BYTES", (8 << 20).to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn counter(out: &str, name: &str) -> u64 {
    out.split(&format!("{name} "))
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {out:?}"))
}

#[test]
fn a_copy_killed_at_random_points_resumes_to_identical_bytes() {
    if !require(
        "a_copy_killed_at_random_points_resumes_to_identical_bytes",
        root("losetup"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 192 * MIB + 777;
    let mut img = noise(size, 11);
    img[40 * MIB..60 * MIB].fill(0);
    let path = dir.path().join("os.img");
    std::fs::write(&path, &img).unwrap();
    let idx_path = dir.path().join("os.idx");
    let idx = index::build(&path, 4 << 20, 2).unwrap();
    std::fs::write(&idx_path, idx.encode()).unwrap();
    let digest = sha(&img).to_hex();
    let flag = dir.path().join("flag");
    FlagStore::format(&flag, false).unwrap();
    let backing = dir.path().join("disk");
    std::fs::write(&backing, noise(200 * MIB, 5)).unwrap();
    let dev = Loop::attach(&backing, false, true).unwrap();
    // A seed from the clock, printed, so a failure can be replayed by reading the log.
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("kill seed {x}");
    let mut resumed_less = 0;
    for round in 0..5 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // First a run on a wrecked disk, killed somewhere in its first 20..400 ms; in the last
        // round, a random 0..30 ms after its first checkpoint reached the flag.
        let kill_after = 20 + x % 380;
        let mut child = agent_copy(&path, &idx_path, dev.path(), &flag, &digest);
        if round == 4 {
            let start = std::time::Instant::now();
            while FlagStore::open(&flag).unwrap().read().unwrap().bytes_done == 0
                && start.elapsed().as_secs() < 30
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            std::thread::sleep(std::time::Duration::from_millis(x % 30));
        } else {
            std::thread::sleep(std::time::Duration::from_millis(kill_after));
        }
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let _ = child.wait();
        let rec = FlagStore::open(&flag).unwrap().read().unwrap();
        eprintln!(
            "round {round}: killed after {kill_after} ms (finished: {finished}), flag {} at {}",
            rec.state.name(),
            rec.bytes_done
        );
        if !finished {
            assert_ne!(rec.state, FlagState::Recovered);
            let mut head = vec![0u8; MIB];
            use std::os::unix::fs::FileExt;
            std::fs::File::open(dev.path())
                .unwrap()
                .read_exact_at(&mut head, 0)
                .unwrap();
            // Zeroed once writing began, or still the wreck's bytes: never the image's header
            // over a half-written disk.
            assert!(
                head[..] != img[..MIB],
                "a killed copy left the image's header on the disk"
            );
        }
        let checkpoint = rec.bytes_done;
        // The resumed run.
        let out = agent_copy(&path, &idx_path, dev.path(), &flag, &digest)
            .wait_with_output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "resume failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = counter(&stdout, "written");
        eprintln!("round {round}: resumed: {stdout}");
        let mut back = vec![0u8; size];
        use std::os::unix::fs::FileExt;
        std::fs::File::open(dev.path())
            .unwrap()
            .read_exact_at(&mut back, 0)
            .unwrap();
        assert!(
            back == img,
            "round {round}: the resumed disk differs from the image"
        );
        let rec = FlagStore::open(&flag).unwrap().read().unwrap();
        assert_eq!(rec.state, FlagState::Recovered);
        if !finished && checkpoint > 0 {
            // What lay below the checkpoint was read back, not rewritten (but chunk 0, whose
            // header was zero, and the header itself).
            assert!(
                written <= (size as u64 - checkpoint) + (4 << 20) + HEADER_LEN,
                "round {round}: wrote {written} after a checkpoint at {checkpoint}"
            );
            resumed_less += 1;
        } else if round == 4 {
            panic!("the last round was not killed after a checkpoint (finished: {finished})");
        }
        // Wreck the disk again for the next round (a new image attempt from scratch).
        std::fs::OpenOptions::new()
            .write(true)
            .open(dev.path())
            .unwrap()
            .write_all_at(&noise(size, round + 20), 0)
            .unwrap();
        FlagStore::format(&flag, true).unwrap();
    }
    eprintln!("{resumed_less} of 5 rounds resumed from a checkpoint");
}

/// Runs a differential copy of `s`'s image onto its device with `keep`, on a thread of its own:
/// a run that hangs fails the test instead of holding it.
fn diff_keeping(s: &Setup, keep: &lazarus_agent::image::Kept) -> lazarus_agent::image::CopyReport {
    let (file, idx, dev) = (
        s.file.try_clone().unwrap(),
        s.idx.clone(),
        s.dev.path().to_owned(),
    );
    let spec = CopySpec {
        keep: keep.clone(),
        ..spec(s)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let target = Target::open(&dev).unwrap();
        let p = Progress::default();
        let r = write_differential(
            ChunkSource::File(&file),
            &target,
            &spec,
            &idx,
            spec.size,
            &p,
            None,
        );
        // Released before the answer: the caller opens the device again at once, and a claim
        // (`O_EXCL`) still held here would make that open fail with EBUSY.
        drop(target);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the differential run hung")
        .unwrap()
}

#[test]
fn differential_runs_with_kept_ranges_finish_and_leave_the_kept_bytes_alone() {
    // A whole-disk image over its own flag partition keeps the flag's slots: here 8 KiB in chunk
    // 0 (past the header) and 8 KiB in chunk 4, holding other bytes than the image. Chunks
    // touching them are compared outside them, after the check.
    let Some(s) = setup("differential_runs_with_kept_ranges_finish_and_leave_the_kept_bytes_alone")
    else {
        return;
    };
    let kept = [
        (MIB + 65536) as u64..(MIB + 73728) as u64,
        (8 * MIB + 4096) as u64..(8 * MIB + 12288) as u64,
    ];
    let keep = lazarus_agent::image::Kept::new(kept.clone());
    // The test opens the device only between runs (a block device is opened exclusively).
    let t = Target::open(s.dev.path()).unwrap();
    t.write_at(&s.img, 0).unwrap();
    for k in &kept {
        t.write_at(&vec![0x5a; (k.end - k.start) as usize], k.start)
            .unwrap();
    }
    t.sync().unwrap();
    drop(t);
    let outside_kept_is_image = |back: &[u8]| {
        let mut want = s.img.clone();
        for k in &kept {
            want[k.start as usize..k.end as usize].fill(0x5a);
        }
        back[..s.img.len()] == want[..]
    };
    // Intact outside the kept ranges: nothing written, header included.
    let report = diff_keeping(&s, &keep);
    assert_eq!(report.written, 0, "{report:?}");
    let t = Target::open(s.dev.path()).unwrap();
    assert!(
        outside_kept_is_image(&disk(&t, s.img.len())),
        "the disk changed"
    );
    // One damaged chunk (9): it is rewritten, the kept bytes stay.
    t.write_at(&noise(4096, 7), (18 * MIB) as u64).unwrap();
    t.sync().unwrap();
    drop(t);
    let report = diff_keeping(&s, &keep);
    assert!(report.written > 0, "{report:?}");
    let t = Target::open(s.dev.path()).unwrap();
    assert!(
        outside_kept_is_image(&disk(&t, s.img.len())),
        "not the image outside the kept ranges"
    );
}
