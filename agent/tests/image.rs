//! The copy engine on real files (and, as root, loop devices): exact bytes, verification, the
//! held-back header, sparse writes, and every way a copy must fail.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use lazarus_agent::image::{
    write_image, write_image_with, CopyReport, CopySpec, ImageError, Piece, Pieces, Progress,
    Reopen, Target, Verification, WatchedRead, HEADER_LEN,
};
use lazarus_proto::{ImageFormat, Sha256};

const MIB: usize = 1 << 20;

use lazarus_testkit::{noise, require, root, sha, Loop};

/// An image that looks like a filesystem: data islands in a sea of zeros, odd total size.
fn sparse_image() -> Vec<u8> {
    let mut img = vec![0u8; 21 * MIB + 4096 * 3 + 7];
    img[..8192].copy_from_slice(&noise(8192, 1)); // "partition table"
    img[3 * MIB..5 * MIB].copy_from_slice(&noise(2 * MIB, 2));
    img[9 * MIB + 100..9 * MIB + 200].copy_from_slice(&noise(100, 3));
    let n = img.len();
    img[n - 5000..].copy_from_slice(&noise(5000, 4));
    img
}

fn target_file(dir: &Path, len: usize) -> PathBuf {
    let path = dir.join("disk");
    std::fs::write(&path, noise(len, 99)).unwrap();
    path
}

fn spec(img: &[u8], format: ImageFormat) -> CopySpec {
    CopySpec::whole(format, img.len() as u64, sha(img))
}

fn digest_mut(s: &mut CopySpec) -> &mut Sha256 {
    match &mut s.verify {
        Verification::Whole(d) => d,
        _ => panic!("not a whole-image spec"),
    }
}

fn zstd(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-q", "-c", "-3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("zstd CLI (scripts/test installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn raw_image_lands_byte_for_byte_and_the_rest_of_the_disk_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(9 * MIB + 123, 7);
    let path = target_file(dir.path(), 12 * MIB);
    let before = std::fs::read(&path).unwrap();
    let target = Target::open(&path).unwrap();
    let progress = Progress::default();
    let report = write_image(&img[..], &target, &spec(&img, ImageFormat::Raw), &progress).unwrap();
    assert_eq!(report.bytes, img.len() as u64);
    assert_eq!(progress.done(), img.len() as u64);
    let after = std::fs::read(&path).unwrap();
    assert!(after[..img.len()] == img[..], "image bytes differ");
    assert!(
        after[img.len()..] == before[img.len()..],
        "bytes past the image changed"
    );
}

#[test]
fn zstd_image_from_the_zstd_cli_lands_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let path = target_file(dir.path(), img.len());
    let target = Target::open(&path).unwrap();
    let compressed = zstd(&img);
    write_image(
        &compressed[..],
        &target,
        &spec(&img, ImageFormat::Zstd),
        &Progress::default(),
    )
    .unwrap();
    assert!(std::fs::read(&path).unwrap() == img);
}

#[test]
fn zero_blocks_are_punched_not_written_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let path = target_file(dir.path(), img.len());
    let target = Target::open(&path).unwrap();
    let report = write_image(
        &img[..],
        &target,
        &spec(&img, ImageFormat::Raw),
        &Progress::default(),
    )
    .unwrap();
    assert!(report.sparse);
    assert!(
        report.written < 4 * MIB as u64,
        "wrote {} bytes of zeros",
        report.written
    );
    assert!(
        std::fs::read(&path).unwrap() == img,
        "a skipped block did not read back as zero"
    );
}

/// Checks the target's first MiB while the copy runs: the reader calls this between chunks.
struct WatchHeader<'a> {
    inner: &'a [u8],
    target: PathBuf,
    checks: usize,
}

impl Read for WatchHeader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut head = vec![0u8; HEADER_LEN as usize];
        std::fs::File::open(&self.target)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert!(
            head.iter().all(|&b| b == 0),
            "header written before the digest matched"
        );
        self.checks += 1;
        let n = buf.len().min(self.inner.len()).min(256 << 10);
        buf[..n].copy_from_slice(&self.inner[..n]);
        self.inner = &self.inner[n..];
        Ok(n)
    }
}

#[test]
fn write_image_keeps_header_zero_until_digest_matches() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(10 * MIB, 5);
    let path = target_file(dir.path(), 10 * MIB);
    let target = Target::open(&path).unwrap();
    let mut source = WatchHeader {
        inner: &img,
        target: path.clone(),
        checks: 0,
    };
    write_image(
        &mut source,
        &target,
        &spec(&img, ImageFormat::Raw),
        &Progress::default(),
    )
    .unwrap();
    assert!(source.checks > 10);
    assert!(std::fs::read(&path).unwrap() == img);
}

fn assert_header_zero(path: &Path) {
    let data = std::fs::read(path).unwrap();
    assert!(
        data[..MIB].iter().all(|&b| b == 0),
        "first MiB not zeroed after a failure"
    );
}

#[test]
fn wrong_digest_fails_and_leaves_the_first_mib_zero() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(6 * MIB, 8);
    let path = target_file(dir.path(), 8 * MIB);
    let target = Target::open(&path).unwrap();
    let mut s = spec(&img, ImageFormat::Raw);
    digest_mut(&mut s).0[0] ^= 1;
    let err = write_image(&img[..], &target, &s, &Progress::default()).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_header_zero(&path);
}

#[test]
fn truncated_image_fails_as_too_short() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(6 * MIB, 9);
    let path = target_file(dir.path(), 8 * MIB);
    let target = Target::open(&path).unwrap();
    let s = spec(&img, ImageFormat::Raw);
    let err = write_image(&img[..5 * MIB + 3], &target, &s, &Progress::default()).unwrap_err();
    assert!(
        matches!(err, ImageError::TooShort { got, .. } if got == 5 * MIB as u64 + 3),
        "{err}"
    );
    assert_header_zero(&path);
    // A zstd stream cut in half fails too (as a read error or as too short).
    let z = zstd(&img);
    let err = write_image(
        &z[..z.len() / 2],
        &target,
        &spec(&img, ImageFormat::Zstd),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::TooShort { .. } | ImageError::Read(_)),
        "{err}"
    );
    assert_header_zero(&path);
}

#[test]
fn longer_image_than_declared_fails_as_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(3 * MIB, 10);
    let path = target_file(dir.path(), 8 * MIB);
    let target = Target::open(&path).unwrap();
    let mut s = spec(&img[..2 * MIB], ImageFormat::Raw);
    s.size = 2 * MIB as u64;
    let err = write_image(&img[..], &target, &s, &Progress::default()).unwrap_err();
    assert!(matches!(err, ImageError::TooLong { .. }), "{err}");
    assert_header_zero(&path);
}

#[test]
fn corrupt_zstd_fails_as_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(2 * MIB, 11);
    let path = target_file(dir.path(), 4 * MIB);
    let target = Target::open(&path).unwrap();
    let mut z = zstd(&img);
    let mid = z.len() / 2;
    z[mid..mid + 64].fill(0xee);
    let err = write_image(
        &z[..],
        &target,
        &spec(&img, ImageFormat::Zstd),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Read(_) | ImageError::DigestMismatch { .. } | ImageError::TooShort { .. }
        ),
        "{err}"
    );
    assert_header_zero(&path);
}

#[test]
fn too_small_target_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(5 * MIB, 12);
    let path = target_file(dir.path(), 4 * MIB);
    let before = std::fs::read(&path).unwrap();
    let target = Target::open(&path).unwrap();
    let err = write_image(
        &img[..],
        &target,
        &spec(&img, ImageFormat::Raw),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::TargetTooSmall { .. }), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a refused copy changed the target"
    );
}

#[test]
fn abort_stops_the_copy_and_zeroes_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let img = noise(16 * MIB, 13);
    let path = target_file(dir.path(), 16 * MIB);
    let target = Target::open(&path).unwrap();
    let progress = Progress::default();
    progress.abort();
    let err = write_image(&img[..], &target, &spec(&img, ImageFormat::Raw), &progress).unwrap_err();
    assert!(matches!(err, ImageError::Aborted), "{err}");
    assert_header_zero(&path);
}

#[test]
fn images_land_on_a_loop_device_as_root() {
    if !require("images_land_on_a_loop_device_as_root", root("losetup")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let backing = target_file(dir.path(), 24 * MIB);
    let dev = Loop::attach(&backing, false, true).unwrap();
    let target = Target::open(dev.path()).unwrap();
    assert!(target.is_block_device());
    let report = write_image(
        &img[..],
        &target,
        &spec(&img, ImageFormat::Raw),
        &Progress::default(),
    )
    .unwrap();
    let mut back = vec![0u8; img.len()];
    target.read_at(&mut back, 0).unwrap();
    assert!(back == img, "loop device does not hold the image");
    eprintln!(
        "loop device copy: sparse={} written={}",
        report.sparse, report.written
    );
    // And a failed copy on the device leaves its first MiB zero.
    let mut bad = spec(&img, ImageFormat::Raw);
    digest_mut(&mut bad).0[5] ^= 0x10;
    assert!(write_image(&img[..], &target, &bad, &Progress::default()).is_err());
    let mut head = vec![0u8; MIB];
    target.read_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|&b| b == 0));
}

/// Writes `img` as a sparse file named `name` (holes where a 4 KiB block is zero).
fn sparse_file(dir: &Path, name: &str, img: &[u8]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(img.len() as u64).unwrap();
    for (i, block) in img.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            f.write_all_at(block, (i * 4096) as u64).unwrap();
        }
    }
    path
}

/// Writes `img` as a sparse file (holes where it is zero) and has bmaptool map it.
fn bmaptool_map(dir: &Path, img: &[u8]) -> (PathBuf, lazarus_agent::image::Bmap) {
    let path = sparse_file(dir, "sparse.img", img);
    let bmap_path = dir.join("sparse.bmap");
    let out = Command::new("bmaptool")
        .arg("create")
        .arg(&path)
        .arg("-o")
        .arg(&bmap_path)
        .output()
        .expect("bmaptool (scripts/test installs bmap-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map =
        lazarus_agent::image::Bmap::parse(&std::fs::read_to_string(&bmap_path).unwrap()).unwrap();
    (path, map)
}

#[test]
fn a_bmaptool_map_verifies_the_copy_range_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let (_, map) = bmaptool_map(dir.path(), &img);
    assert!(map.mapped_bytes() < img.len() as u64 / 4);
    let path = target_file(dir.path(), img.len());
    let target = Target::open(&path).unwrap();
    let spec = CopySpec {
        format: ImageFormat::Raw,
        size: img.len() as u64,
        verify: Verification::Ranges(map.ranges.clone()),
        keep: Default::default(),
    };
    write_image(&img[..], &target, &spec, &Progress::default()).unwrap();
    assert!(std::fs::read(&path).unwrap() == img);

    // A changed byte inside a mapped range, and data where the map says there is a hole.
    let mut bad = img.clone();
    bad[3 * MIB + 17] ^= 1;
    let err = write_image(&bad[..], &target, &spec, &Progress::default()).unwrap_err();
    assert!(matches!(err, ImageError::RangeMismatch { .. }), "{err}");
    assert_header_zero(&path);
    let mut bad = img.clone();
    bad[15 * MIB] = 1;
    let err = write_image(&bad[..], &target, &spec, &Progress::default()).unwrap_err();
    assert!(
        matches!(err, ImageError::DataOutsideMap { offset } if offset == 15 * MIB as u64),
        "{err}"
    );
    assert_header_zero(&path);
}

/// Copies the file at `path` as a recovery reads it (its own thread, holes not read).
fn copy_file(
    path: &Path,
    target: &Target,
    spec: &CopySpec,
) -> (Result<CopyReport, ImageError>, u64) {
    let progress = Progress::default();
    let source = WatchedRead::new(
        Reopen::new(path.to_owned(), std::fs::File::open(path).unwrap()),
        &progress,
    );
    let result = write_image_with(source, target, spec, &progress, None);
    (result, progress.counters().fetched)
}

#[test]
fn holes_of_the_image_file_are_not_read_yet_data_outside_the_map_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let (path, map) = bmaptool_map(dir.path(), &img);
    let disk = target_file(dir.path(), img.len());
    let target = Target::open(&disk).unwrap();
    let ranges = CopySpec {
        format: ImageFormat::Raw,
        size: img.len() as u64,
        verify: Verification::Ranges(map.ranges.clone()),
        keep: Default::default(),
    };
    // Only what the file holds is fetched: the 4 MiB chunks that are all hole are not read.
    let (report, fetched) = copy_file(&path, &target, &ranges);
    report.unwrap();
    assert!(
        std::fs::read(&disk).unwrap() == img,
        "block map: the disk is not the image"
    );
    assert!(fetched >= map.mapped_bytes(), "fetched {fetched}");
    assert!(
        fetched <= img.len() as u64 / 2,
        "fetched {fetched} of {}",
        img.len()
    );
    // The whole-image digest and a chunk index, the same way.
    for verify in [
        Verification::Whole(sha(&img)),
        Verification::Index(std::sync::Arc::new(
            lazarus_node::index::build(&path, lazarus_node::index::DEFAULT_CHUNK, 2).unwrap(),
        )),
    ] {
        std::fs::write(&disk, noise(img.len(), 98)).unwrap();
        let spec = CopySpec {
            verify,
            ..ranges.clone()
        };
        let (report, fetched) = copy_file(&path, &target, &spec);
        report.unwrap();
        assert!(
            std::fs::read(&disk).unwrap() == img,
            "the disk is not the image"
        );
        assert!(fetched <= img.len() as u64 / 2, "fetched {fetched}");
    }
    // Data where the map or the index says hole is read (the file has data there) and refused.
    let mut bad = img.clone();
    bad[15 * MIB] = 1;
    let bad_path = sparse_file(dir.path(), "bad.img", &bad);
    let (report, _) = copy_file(&bad_path, &target, &ranges);
    let err = report.unwrap_err();
    assert!(
        matches!(err, ImageError::DataOutsideMap { offset } if offset == 15 * MIB as u64),
        "{err}"
    );
    assert_header_zero(&disk);
    let indexed = CopySpec {
        verify: Verification::Index(std::sync::Arc::new(
            lazarus_node::index::build(&path, lazarus_node::index::DEFAULT_CHUNK, 2).unwrap(),
        )),
        ..ranges.clone()
    };
    let (report, _) = copy_file(&bad_path, &target, &indexed);
    let err = report.unwrap_err();
    assert!(
        matches!(err, ImageError::ChunkMismatch { chunk: 3, .. }),
        "{err}"
    );
    assert_header_zero(&disk);
    // A file ending in a hole is still counted against the declared size.
    let target = Target::open(&target_file(dir.path(), img.len() + 16 * MIB)).unwrap();
    for (size, short) in [(img.len() - 4096, false), (img.len() + 8 * MIB, true)] {
        let spec = CopySpec {
            size: size as u64,
            verify: Verification::Whole(sha(&img)),
            ..ranges.clone()
        };
        let (report, _) = copy_file(&path, &target, &spec);
        let err = report.unwrap_err();
        assert!(
            matches!(
                (&err, short),
                (ImageError::TooShort { .. }, true) | (ImageError::TooLong { .. }, false)
            ),
            "declared {size}: {err}"
        );
    }
}

/// 24 chunks of 4 MiB, three times the pipeline's buffers, so every buffer is reused: all hole,
/// then data with a 2 MiB hole after it, then a 2 MiB hole with data after it. A buffer back from
/// an all-hole chunk is known to hold zeros and its holes are not written again; one back from a
/// data chunk must be, or old data would show where the file has a hole.
fn holes_between_data() -> Vec<u8> {
    let half = 2 * MIB;
    let mut img = vec![0u8; 24 * 4 * MIB];
    for (i, chunk) in img.chunks_mut(4 * MIB).enumerate() {
        match i % 3 {
            0 => {}
            1 => chunk[..half].copy_from_slice(&noise(half, i as u64)),
            _ => chunk[half..].copy_from_slice(&noise(half, i as u64)),
        }
    }
    img
}

/// Copies `img` (a sparse file at `path`, mapped by `map`) onto `target` over old bytes, with a
/// whole-image digest and then with the block map: both succeed and leave the image.
fn copies_from_reused_buffers(
    path: &Path,
    map: &lazarus_agent::image::Bmap,
    img: &[u8],
    target: &Target,
) {
    let whole = spec(img, ImageFormat::Raw);
    let ranges = CopySpec {
        verify: Verification::Ranges(map.ranges.clone()),
        ..whole.clone()
    };
    for spec in [whole, ranges] {
        // Old bytes everywhere, written through the target (the device's own view).
        target.write_at(&noise(img.len(), 99), 0).unwrap();
        target.sync().unwrap();
        let (report, fetched) = copy_file(path, target, &spec);
        report.unwrap_or_else(|e| panic!("{:?}: {e}", spec.verify));
        assert!(
            fetched <= img.len() as u64 / 2 + 4 * MIB as u64,
            "fetched {fetched}"
        );
        let mut back = vec![0u8; img.len()];
        target.read_at(&mut back, 0).unwrap();
        assert!(back == img, "{:?}: the disk is not the image", spec.verify);
    }
}

#[test]
fn buffers_reused_between_hole_chunks_and_data_chunks_hold_no_stale_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let img = holes_between_data();
    let (path, map) = bmaptool_map(dir.path(), &img);
    let disk = target_file(dir.path(), img.len());
    let target = Target::open(&disk).unwrap();
    copies_from_reused_buffers(&path, &map, &img, &target);
}

#[test]
fn a_block_map_checked_on_every_core_reports_the_first_real_error() {
    // Three ranges shared by two hashers: 40 MiB at the start (hasher 0), 8 MiB at 48 MiB and
    // 4 MiB at the end (hasher 1, with the gaps before them). Data in the gap before the second,
    // far from the end: hasher 1 fails, the reader stops, and hasher 0 sees a stream cut short
    // before the last range. The error is the data in the gap, not a range left unchecked.
    let dir = tempfile::tempdir().unwrap();
    let mut img = vec![0u8; 128 * MIB];
    img[..40 * MIB].copy_from_slice(&noise(40 * MIB, 1));
    img[48 * MIB..56 * MIB].copy_from_slice(&noise(8 * MIB, 2));
    img[124 * MIB..].copy_from_slice(&noise(4 * MIB, 3));
    let range = |start: usize, end: usize| lazarus_agent::image::MappedRange {
        start: start as u64,
        end: end as u64,
        sha256: sha(&img[start..end]),
    };
    let ranges = vec![
        range(0, 40 * MIB),
        range(48 * MIB, 56 * MIB),
        range(124 * MIB, 128 * MIB),
    ];
    img[44 * MIB] = 1;
    let path = dir.path().join("image");
    std::fs::write(&path, &img).unwrap();
    let disk = target_file(dir.path(), img.len());
    let target = Target::open(&disk).unwrap();
    let spec = CopySpec {
        verify: Verification::Ranges(ranges),
        ..spec(&img, ImageFormat::Raw)
    };
    let (report, _) = copy_file(&path, &target, &spec);
    let err = report.unwrap_err();
    assert!(
        matches!(err, ImageError::DataOutsideMap { offset } if offset == 44 * MIB as u64),
        "{err}"
    );
    assert_header_zero(&disk);
}

/// A loop device over `len` old bytes, its discard turned off: fallocate(PUNCH_HOLE) on it
/// fails, as on a disk without cheap zeroing. Drop the target, then `detach` the device.
fn unpunchable(dir: &Path, len: usize) -> (Loop, Target) {
    let dev = Loop::attach_without_discard(&target_file(dir, len), true).unwrap();
    let target = Target::open(dev.path()).unwrap();
    assert!(
        !target.punch_zeroes(0, 1 << 20),
        "the device can still punch"
    );
    (dev, target)
}

#[test]
fn on_a_disk_that_cannot_punch_reused_buffers_write_zeros_for_holes() {
    // Where the target cannot punch, hole chunks are written from their buffers: a stale one
    // would put old data on the disk (the verifiers skip zero checks for hole bytes).
    if !require(
        "on_a_disk_that_cannot_punch_reused_buffers_write_zeros_for_holes",
        root("losetup"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = holes_between_data();
    let (path, map) = bmaptool_map(dir.path(), &img);
    let (dev, target) = unpunchable(dir.path(), img.len());
    copies_from_reused_buffers(&path, &map, &img, &target);
    drop(target);
    dev.detach().unwrap();
}

#[test]
fn on_a_disk_that_cannot_punch_the_holes_are_written_as_zeros_over_the_old_bytes() {
    if !require(
        "on_a_disk_that_cannot_punch_the_holes_are_written_as_zeros_over_the_old_bytes",
        root("losetup"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let (path, map) = bmaptool_map(dir.path(), &img);
    let (dev, target) = unpunchable(dir.path(), 24 * MIB);
    let spec = CopySpec {
        format: ImageFormat::Raw,
        size: img.len() as u64,
        verify: Verification::Ranges(map.ranges.clone()),
        keep: Default::default(),
    };
    let (report, fetched) = copy_file(&path, &target, &spec);
    let report = report.unwrap();
    assert!(!report.sparse, "{report:?}");
    // The holes were not read, yet every byte of the image range was written.
    assert!(fetched <= img.len() as u64 / 2, "fetched {fetched}");
    assert!(report.written >= img.len() as u64 - 4096, "{report:?}");
    let mut back = vec![0u8; img.len()];
    target.read_at(&mut back, 0).unwrap();
    assert!(back == img, "the device does not hold the image");
    drop(target);
    // Detached and removed, so no later user of this device number finds discard off.
    dev.detach().unwrap();
}

#[test]
fn fetched_counts_the_bytes_read_from_the_file_compressed_ones_for_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let packed = zstd(&img);
    let path = dir.path().join("image.zst");
    std::fs::write(&path, &packed).unwrap();
    let disk = target_file(dir.path(), img.len());
    let target = Target::open(&disk).unwrap();
    let (report, fetched) = copy_file(&path, &target, &spec(&img, ImageFormat::Zstd));
    report.unwrap();
    assert!(
        std::fs::read(&disk).unwrap() == img,
        "the disk is not the image"
    );
    assert_eq!(fetched, packed.len() as u64);
}

/// A source that gives `data` but says `lie` is a hole of the file.
struct Liar {
    data: Vec<u8>,
    pos: usize,
    lie: std::ops::Range<usize>,
}

impl Pieces for Liar {
    fn next_piece(&mut self, mut buf: Vec<u8>, max: usize) -> std::io::Result<Piece> {
        if self.pos == self.lie.start {
            self.pos = self.lie.end;
            return Ok(Piece::Hole(self.lie.len() as u64));
        }
        let end = self.data.len().min(self.pos + max);
        let end = if self.pos < self.lie.start {
            end.min(self.lie.start)
        } else {
            end
        };
        buf.clear();
        buf.extend_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(Piece::Data(buf))
    }
}

#[test]
fn a_source_that_calls_data_a_hole_cannot_get_zeros_past_any_digest() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let (path, map) = bmaptool_map(dir.path(), &img);
    let disk = target_file(dir.path(), img.len());
    let target = Target::open(&disk).unwrap();
    let index = lazarus_node::index::build(&path, lazarus_node::index::DEFAULT_CHUNK, 2).unwrap();
    // 3-5 MiB holds data; the liar says hole. Whichever way the image is verified, it fails
    // with the first MiB zero.
    for verify in [
        Verification::Whole(sha(&img)),
        Verification::Ranges(map.ranges.clone()),
        Verification::Index(std::sync::Arc::new(index)),
    ] {
        let spec = CopySpec {
            format: ImageFormat::Raw,
            size: img.len() as u64,
            verify,
            keep: Default::default(),
        };
        let progress = Progress::default();
        let liar = Liar {
            data: img.clone(),
            pos: 0,
            lie: 3 * MIB..5 * MIB,
        };
        let err = write_image_with(
            WatchedRead::new(liar, &progress),
            &target,
            &spec,
            &progress,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::DigestMismatch { .. }
                    | ImageError::RangeMismatch { .. }
                    | ImageError::ChunkMismatch { .. }
            ),
            "{err}"
        );
        assert_header_zero(&disk);
    }
}

#[test]
fn kept_ranges_are_never_written_zeroed_or_punched() {
    use lazarus_agent::image::Kept;
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image();
    let path = target_file(dir.path(), img.len() + MIB);
    let before = std::fs::read(&path).unwrap();
    // One range in the held-back header, one in a run of zeros (punched around), one unaligned
    // in data.
    let keep = [
        4096..12288,
        7 * MIB as u64..7 * MIB as u64 + 8192,
        3 * MIB as u64 + 100..3 * MIB as u64 + 9000,
    ];
    let mut s = spec(&img, ImageFormat::Raw);
    s.keep = Kept::new(keep.clone());
    let target = Target::open(&path).unwrap();
    write_image(&img[..], &target, &s, &Progress::default()).unwrap();
    let after = std::fs::read(&path).unwrap();
    let mut want = img.clone();
    for r in &keep {
        let r = r.start as usize..r.end as usize;
        want[r.clone()].copy_from_slice(&before[r]);
    }
    assert!(
        after[..img.len()] == want[..],
        "a kept range changed, or the image is wrong elsewhere"
    );
    // A failed copy zeroes the first MiB but the kept range in it.
    std::fs::write(&path, &before).unwrap();
    digest_mut(&mut s).0[0] ^= 1;
    assert!(write_image(&img[..], &target, &s, &Progress::default()).is_err());
    let after = std::fs::read(&path).unwrap();
    assert!(
        after[4096..12288] == before[4096..12288],
        "the failure path zeroed a kept range"
    );
    assert!(after[..4096]
        .iter()
        .chain(&after[12288..MIB])
        .all(|&b| b == 0));
}
