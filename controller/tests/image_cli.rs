//! `lazarus image index` and `lazarus image check`, run as processes on plain files: the index
//! is built on several threads, round-trips through `check`, and a damaged index or image is
//! refused with one line.

mod common;

use std::process::Command;

use common::{fails, ok};
use lazarus_node::index::{sha256, Chunk, ChunkIndex};

#[test]
fn an_index_is_built_checked_and_a_damaged_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("os.img");
    let mut img = vec![0u8; 9 << 20];
    img[..3 << 20].copy_from_slice(&lazarus_testkit::noise(3 << 20, 7));
    img[(8 << 20) + 5] = 1;
    std::fs::write(&image, &img).unwrap();
    let idx_path = dir.path().join("os.idx");
    let (i, o) = (image.to_str().unwrap(), idx_path.to_str().unwrap());
    let out = ok(&[
        "image",
        "index",
        i,
        "-o",
        o,
        "--chunk-size",
        "2097152",
        "--threads",
        "3",
    ]);
    let bytes = std::fs::read(&idx_path).unwrap();
    assert!(
        out.contains(&format!("sha256 = \"{}\"", sha256(&bytes))),
        "{out}"
    );
    let idx = ChunkIndex::decode(&bytes).unwrap();
    assert_eq!((idx.len(), idx.chunk_size()), (5, 2 << 20));
    assert_eq!(idx.chunks()[2], Chunk::Hole);
    assert_eq!(idx.chunks()[0], Chunk::Data(sha256(&img[..2 << 20])));
    assert!(ok(&["image", "check", o, "--image", i]).contains("matches it"));

    let mut damaged = img.clone();
    damaged[7 << 20] = 1;
    std::fs::write(&image, &damaged).unwrap();
    assert!(fails(&["image", "check", o, "--image", i]).contains("1 chunks differ"));

    let mut torn = bytes.clone();
    torn[100] ^= 1;
    std::fs::write(&idx_path, &torn).unwrap();
    assert!(fails(&["image", "check", o]).contains("checksum"));
    std::fs::write(&idx_path, &bytes[..50]).unwrap();
    assert!(fails(&["image", "check", o]).contains("bad magic"));
    assert!(fails(&["image", "index", i, "-o", o, "--chunk-size", "4096"]).contains("chunk size"));
}

#[test]
fn a_packed_image_is_an_ordinary_zstd_stream_with_a_packed_index() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("os.img");
    let mut img = vec![0u8; 5 << 20];
    img[..(1 << 20) + 5].copy_from_slice(&lazarus_testkit::noise((1 << 20) + 5, 3));
    img[(4 << 20)..(4 << 20) + 100].fill(7);
    std::fs::write(&image, &img).unwrap();
    let (zst, idx_path) = (dir.path().join("os.img.zst"), dir.path().join("os.idx"));
    let out = ok(&[
        "image",
        "pack",
        image.to_str().unwrap(),
        "-o",
        zst.to_str().unwrap(),
        "--index",
        idx_path.to_str().unwrap(),
        "--chunk-size",
        "1048576",
    ]);
    let bytes = std::fs::read(&idx_path).unwrap();
    assert!(out.contains(&sha256(&bytes).to_hex()), "{out}");
    let idx = ChunkIndex::decode(&bytes).unwrap();
    assert_eq!(idx.len(), 5);
    assert!(idx.frame(4).is_some());
    // The zstd CLI decodes the whole packed file to the image.
    let unpacked = Command::new("zstd")
        .args(["-q", "-d", "-c"])
        .arg(&zst)
        .output()
        .expect("zstd CLI (scripts/test installs it)");
    assert!(unpacked.status.success());
    assert!(
        unpacked.stdout == img,
        "zstd -d does not give the image back"
    );
    assert!(ok(&[
        "image",
        "check",
        idx_path.to_str().unwrap(),
        "--image",
        image.to_str().unwrap()
    ])
    .contains("version 2"));
}
