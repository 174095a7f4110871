//! Hostile backups on a share that every node can write (issue #10): a swapped archive, headers
//! claiming gigabytes, setuid files, hard links out of the restored paths, symlinks on the disk,
//! devices and fifos. Real `tar.zst` archives as `lazarus backup` writes them, and crafted ones;
//! every case with its safe outcome asserted, and a refused restore writes nothing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lazarus_node::backup::{
    choose_backup, create_backup, extract_verified, open_root, read_archive, restore_backup, time,
    BackupError, BackupRequest, ExtractOptions, ExtractReport, FoundBackup, RestoreRequest,
    ARCHIVE, MANIFEST,
};
use lazarus_proto::{NodeName, Unrestorable, DEFAULT_MAX_BACKUP_BYTES};

const T0: u64 = 1_795_600_000;

fn n3() -> NodeName {
    "n3".parse().unwrap()
}

fn options(paths: &[String]) -> ExtractOptions<'_> {
    ExtractOptions {
        paths,
        allow_setid: false,
        unrestorable: Unrestorable::Warn,
    }
}

fn restore_with(
    backups: &Path,
    dest: &Path,
    options: ExtractOptions,
) -> Result<(FoundBackup, ExtractReport), BackupError> {
    restore_backup(&RestoreRequest {
        backup_key: None,
        backups,
        node: &n3(),
        failure_time: T0 + 1,
        mount: dest,
        root: "/",
        max_archive_bytes: DEFAULT_MAX_BACKUP_BYTES,
        options,
    })
}

fn restore(backups: &Path, dest: &Path) -> Result<(FoundBackup, ExtractReport), BackupError> {
    restore_with(backups, dest, options(&[]))
}

/// Backs up `paths` of `root` for n3 at `now`, as `lazarus backup` does.
fn backup(to: &Path, root: &Path, paths: &[&str], now: u64) -> FoundBackup {
    let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    create_backup(&BackupRequest {
        node: &n3(),
        to,
        root,
        paths: &paths,
        now,
        signing: None,
        exclude: &[],
    })
    .unwrap()
}

/// Plants `zst` as n3's backup at `T0` with a manifest that matches it (what any node with
/// write access to the share can do).
fn plant(backups: &Path, zst: &[u8]) {
    let dir = backups.join("n3").join(time::format_utc(T0));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(ARCHIVE), zst).unwrap();
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(zst).into();
    let hex = lazarus_proto::hex::encode(&digest);
    fs::write(
        dir.join(MANIFEST),
        format!(
            "format = 1\nnode = \"n3\"\ncreated = {T0}\narchive = \"{ARCHIVE}\"\narchive_size = {}\narchive_sha256 = \"{hex}\"\npaths = []\n",
            zst.len()
        ),
    )
    .unwrap();
}

fn plant_tar(backups: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let tar_bytes = b.into_inner().unwrap();
    plant(
        backups,
        &ruzstd::encoding::compress_to_vec(
            &tar_bytes[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
    );
}

fn header(kind: tar::EntryType, len: usize, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(mode);
    h.set_uid(u64::from(rustix::process::geteuid().as_raw()));
    h.set_gid(u64::from(rustix::process::getegid().as_raw()));
    h.set_mtime(T0);
    h.set_entry_type(kind);
    h
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, data.len(), 0o644);
    b.append_data(&mut h, path, data).unwrap();
}

fn add_link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = header(tar::EntryType::Link, 0, 0o644);
    // Raw link name: the tar crate's own setter refuses absolute targets.
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    field[..target.len()].copy_from_slice(target.as_bytes());
    h.set_cksum();
    b.append_data(&mut h, path, &[][..]).unwrap();
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let dest = dir.path().join("restored");
    fs::create_dir(&dest).unwrap();
    (dir, backups, dest)
}

#[test]
fn the_archive_extracted_is_the_copy_that_was_verified_not_a_later_swap() {
    let (dir, backups, dest) = setup();
    let root = dir.path().join("node-root");
    fs::create_dir_all(root.join("srv")).unwrap();
    fs::write(root.join("srv/data"), "verified").unwrap();
    backup(&backups, &root, &["srv"], T0);
    // A second, equally valid archive with other content: what a hostile node swaps in.
    fs::write(root.join("srv/data"), "swapped!").unwrap();
    let other = backup(&dir.path().join("other"), &root, &["srv"], T0);

    let found = choose_backup(&backups, &n3(), T0 + 1, None).unwrap();
    let copy = read_archive(&found, DEFAULT_MAX_BACKUP_BYTES).unwrap();
    // The share changes after the read: the archive is replaced, then truncated, then removed.
    fs::rename(other.archive_path(), found.archive_path()).unwrap();
    let verified = copy.verify(&found.manifest).unwrap();
    fs::write(found.archive_path(), b"").unwrap();
    fs::remove_file(found.archive_path()).unwrap();
    let root_fd = open_root(&dest, "/").unwrap();
    extract_verified(&verified, &root_fd, &options(&[])).unwrap();
    assert_eq!(fs::read(dest.join("srv/data")).unwrap(), b"verified");

    // Swapped before the read: the copy fails its check and nothing is written.
    let (_dir2, backups2, dest2) = setup();
    backup(&backups2, &root, &["srv"], T0);
    let found2 = choose_backup(&backups2, &n3(), T0 + 1, None).unwrap();
    let mut bytes = fs::read(found2.archive_path()).unwrap();
    bytes[40] ^= 0x55;
    fs::write(found2.archive_path(), &bytes).unwrap();
    let err = restore(&backups2, &dest2).unwrap_err();
    assert!(matches!(err, BackupError::Digest { .. }), "{err}");
    assert!(tree(&dest2).is_empty());
}

#[test]
fn an_archive_that_is_a_symlink_or_too_large_is_refused_before_it_is_read() {
    let (dir, backups, dest) = setup();
    let root = dir.path().join("node-root");
    fs::create_dir_all(root.join("srv")).unwrap();
    fs::write(root.join("srv/data"), vec![9u8; 100_000]).unwrap();
    let found = backup(&backups, &root, &["srv"], T0);
    // Over the cap: refused from the manifest, before a byte is read.
    let err = restore_backup(&RestoreRequest {
        backup_key: None,
        backups: &backups,
        node: &n3(),
        failure_time: T0 + 1,
        mount: &dest,
        root: "/",
        max_archive_bytes: found.manifest.archive_size - 1,
        options: options(&[]),
    })
    .unwrap_err();
    assert!(matches!(err, BackupError::TooLarge { .. }), "{err}");
    // Longer than its manifest says: at most one byte more is read, then refused.
    let mut bytes = fs::read(found.archive_path()).unwrap();
    bytes.extend_from_slice(&[0; 4096]);
    fs::write(found.archive_path(), &bytes).unwrap();
    let err = restore(&backups, &dest).unwrap_err();
    assert!(
        matches!(err, BackupError::Size { got, expected, .. } if got == expected + 1),
        "{err}"
    );
    // A symlink to an archive elsewhere is never followed.
    let elsewhere = dir.path().join("elsewhere.tar.zst");
    fs::write(&elsewhere, &bytes[..bytes.len() - 4096]).unwrap();
    fs::remove_file(found.archive_path()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, found.archive_path()).unwrap();
    let err = restore(&backups, &dest).unwrap_err();
    assert!(matches!(err, BackupError::Read(..)), "{err}");
    // A fifo in its place neither hangs the restore nor is read.
    fs::remove_file(found.archive_path()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        found.archive_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let err = restore(&backups, &dest).unwrap_err();
    assert!(matches!(err, BackupError::NotAFile { .. }), "{err}");
    assert!(tree(&dest).is_empty());
}

/// A zstd frame of raw and RLE blocks, written by hand: a few hundred bytes that decompress to
/// `tar` followed by `zeros` zero bytes (a "tiny archive" with gigabytes inside).
fn zstd_with_zeros(tar: &[u8], zeros: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38]; // magic; no size; window 128 KiB
    let block = |out: &mut Vec<u8>, kind: u32, size: u32, last: bool| {
        let h = (size << 3) | (kind << 1) | u32::from(last);
        out.extend_from_slice(&h.to_le_bytes()[..3]);
    };
    for chunk in tar.chunks(BLOCK as usize) {
        block(&mut out, 0, chunk.len() as u32, false);
        out.extend_from_slice(chunk);
    }
    let mut left = zeros;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        block(&mut out, 1, n as u32, left == 0);
        out.push(0);
    }
    out
}

fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_tiny_archive_claiming_a_multi_gigabyte_long_name_is_refused_quickly() {
    for kind in [tar::EntryType::GNULongName, tar::EntryType::XHeader] {
        let (_dir, backups, dest) = setup();
        let claimed: u64 = 3 << 30;
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(claimed);
        h.set_cksum();
        let zst = zstd_with_zeros(h.as_bytes(), claimed);
        assert!(zst.len() < 200 << 10, "{} bytes", zst.len());
        plant(&backups, &zst);
        let (before, started) = (peak_rss_kib(), std::time::Instant::now());
        let err = restore(&backups, &dest).unwrap_err();
        assert!(
            matches!(err, BackupError::HeaderTooLarge { size, .. } if size == claimed),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(
            peak_rss_kib() - before < 64 << 10,
            "memory grew from {before} KiB to {} KiB",
            peak_rss_kib()
        );
        assert!(tree(&dest).is_empty());
    }
}

#[test]
fn setuid_and_setgid_are_dropped_unless_the_plan_allows_them() {
    for allow in [false, true] {
        let (dir, backups, dest) = setup();
        let root = dir.path().join("node-root");
        fs::create_dir_all(root.join("srv/shared")).unwrap();
        for (name, mode) in [("suid", 0o4755), ("sgid", 0o2755), ("plain", 0o755)] {
            let p = root.join("srv").join(name);
            fs::write(&p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        // A setgid directory (shared group folder) is no privilege: kept either way.
        fs::set_permissions(root.join("srv/shared"), fs::Permissions::from_mode(0o2775)).unwrap();
        backup(&backups, &root, &["srv"], T0);
        let (_, report) = restore_with(
            &backups,
            &dest,
            ExtractOptions {
                allow_setid: allow,
                ..options(&[])
            },
        )
        .unwrap();
        let mode = |p: &str| fs::metadata(dest.join("srv").join(p)).unwrap().mode() & 0o7777;
        let want = if allow {
            [0o4755, 0o2755]
        } else {
            [0o755, 0o755]
        };
        assert_eq!([mode("suid"), mode("sgid")], want, "allow_setid {allow}");
        assert_eq!(mode("plain"), 0o755);
        assert_eq!(mode("shared"), 0o2775);
        assert_eq!(report.setid_stripped, if allow { 0 } else { 2 });
    }
}

#[test]
fn hard_links_reach_only_files_the_restore_itself_writes() {
    let cases: [(&str, &[String]); 4] = [
        ("/etc/shadow", &[]),
        ("etc/shadow", &[]), // on the disk, not in the archive
        ("etc/passwd", &["srv".to_string()][..]), // in the archive, outside the selected paths
        ("srv/later", &[]),  // in the archive, but after the link
    ];
    for (target, paths) in cases {
        let (_dir, backups, dest) = setup();
        fs::create_dir(dest.join("etc")).unwrap();
        fs::write(dest.join("etc/shadow"), "root:secret").unwrap();
        plant_tar(&backups, |b| {
            add_file(b, "srv/first", b"restored first");
            add_file(b, "etc/passwd", b"root:x:0:0");
            add_link(b, "srv/link", target);
            add_file(b, "srv/later", b"later");
        });
        let err = restore_with(&backups, &dest, options(paths)).unwrap_err();
        assert!(
            matches!(err, BackupError::UnsafeEntry { .. }),
            "{target}: {err}"
        );
        assert_eq!(tree(&dest), ["etc", "etc/shadow"], "{target}: written");
        assert_eq!(fs::metadata(dest.join("etc/shadow")).unwrap().nlink(), 1);
    }
    // A link to a file restored before it, in the selected paths, is restored as a link.
    let (_dir, backups, dest) = setup();
    plant_tar(&backups, |b| {
        add_file(b, "srv/first", b"restored first");
        add_link(b, "srv/link", "srv/first");
    });
    let (_, report) = restore_with(&backups, &dest, options(&["srv".into()])).unwrap();
    assert_eq!(report.hardlinks, 1);
    assert_eq!(fs::metadata(dest.join("srv/first")).unwrap().nlink(), 2);
}

#[test]
fn a_symlink_on_the_disk_refuses_the_restore_before_its_first_entry() {
    // `var -> <outside>` on the disk; the archive's first entry is harmless, a later one goes
    // through `var`. Nothing at all is written, not even the harmless entry.
    let (dir, backups, dest) = setup();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("var")).unwrap();
    plant_tar(&backups, |b| {
        add_file(b, "aaa-good.txt", b"good");
        add_file(b, "var/lib/app/state", b"evil");
    });
    let err = restore(&backups, &dest).unwrap_err();
    assert!(matches!(err, BackupError::UnsafeTarget { .. }), "{err}");
    assert!(err.to_string().contains("var"), "{err}");
    assert_eq!(tree(&dest), ["var"]);
    assert!(tree(&outside).is_empty());
    // A directory on the disk where the archive puts a file: refused the same way.
    let (_dir, backups, dest) = setup();
    fs::create_dir_all(dest.join("srv/app")).unwrap();
    plant_tar(&backups, |b| {
        add_file(b, "aaa-good.txt", b"good");
        add_file(b, "srv/app", b"a file");
    });
    let err = restore(&backups, &dest).unwrap_err();
    assert!(matches!(err, BackupError::UnsafeTarget { .. }), "{err}");
    assert_eq!(tree(&dest), ["srv", "srv/app"]);
    // The archive's own directory entry replaces a symlink of that name (never following it).
    let (dir, backups, dest) = setup();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("var")).unwrap();
    plant_tar(&backups, |b| {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        b.append_data(&mut h, "var", &[][..]).unwrap();
        add_file(b, "var/state", b"fine");
    });
    restore(&backups, &dest).unwrap();
    assert!(fs::symlink_metadata(dest.join("var")).unwrap().is_dir());
    assert_eq!(fs::read(dest.join("var/state")).unwrap(), b"fine");
    assert!(tree(&outside).is_empty());
}

#[test]
fn the_restore_root_is_opened_without_following_symlinks() {
    let (dir, backups, mount) = setup();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, mount.join("data")).unwrap();
    fs::create_dir_all(mount.join("real/sub")).unwrap();
    std::os::unix::fs::symlink("real", mount.join("via")).unwrap();
    plant_tar(&backups, |b| add_file(b, "file", b"x"));
    for root in ["data", "/data/", "via/sub", "real/../data"] {
        let err = restore_backup(&RestoreRequest {
            backup_key: None,
            backups: &backups,
            node: &n3(),
            failure_time: T0 + 1,
            mount: &mount,
            root,
            max_archive_bytes: DEFAULT_MAX_BACKUP_BYTES,
            options: options(&[]),
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::UnsafeTarget { .. } | BackupError::UnsafeEntry { .. }
            ),
            "{root}: {err}"
        );
    }
    assert!(tree(&outside).is_empty());
    assert!(!mount.join("real/sub/file").exists());
}

#[test]
fn devices_and_fifos_are_listed_or_fatal_as_the_plan_says() {
    // A real backup of a tree holding a fifo, as `lazarus backup` writes it, plus a crafted one
    // holding a block and a character device.
    let (dir, backups, dest) = setup();
    let root = dir.path().join("node-root");
    fs::create_dir_all(root.join("srv")).unwrap();
    fs::write(root.join("srv/data"), "data").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("srv/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    backup(&backups, &root, &["srv"], T0);
    let (_, report) = restore(&backups, &dest).unwrap();
    assert_eq!(report.unrestored, ["srv/pipe (fifo)"]);
    assert_eq!(
        report.unrestored_line().unwrap(),
        "1 entry not restored: srv/pipe (fifo)"
    );
    assert_eq!(fs::read(dest.join("srv/data")).unwrap(), b"data");
    assert!(!dest.join("srv/pipe").exists());

    for fatal in [false, true] {
        let (_dir, backups, dest) = setup();
        plant_tar(&backups, |b| {
            add_file(b, "aaa", b"first");
            for (kind, name) in [
                (tar::EntryType::Block, "dev/sda"),
                (tar::EntryType::Char, "dev/mem"),
                (tar::EntryType::Fifo, "run/fifo"),
            ] {
                let mut h = header(kind, 0, 0o600);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
        });
        let unrestorable = if fatal {
            Unrestorable::Fatal
        } else {
            Unrestorable::Warn
        };
        let got = restore_with(
            &backups,
            &dest,
            ExtractOptions {
                unrestorable,
                ..options(&[])
            },
        );
        let listed = "3 entries not restored: dev/sda (block device), dev/mem (character device), run/fifo (fifo)";
        if fatal {
            let err = got.unwrap_err();
            assert!(matches!(err, BackupError::Unrestorable(_)), "{err}");
            assert!(err.to_string().contains(listed), "{err}");
            assert!(tree(&dest).is_empty(), "written: {:?}", tree(&dest));
        } else {
            let (_, report) = got.unwrap();
            assert_eq!(report.unrestored_line().unwrap(), listed);
            assert_eq!(tree(&dest), ["aaa"]);
        }
    }
}

#[test]
fn backups_are_created_private() {
    let (dir, backups, _) = setup();
    let root = dir.path().join("node-root");
    fs::create_dir_all(root.join("srv")).unwrap();
    fs::write(root.join("srv/data"), "data").unwrap();
    // An older version left the node's folder world-readable: it is narrowed.
    fs::create_dir_all(backups.join("n3")).unwrap();
    fs::set_permissions(backups.join("n3"), fs::Permissions::from_mode(0o755)).unwrap();
    let found = backup(&backups, &root, &["srv"], T0);
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&backups.join("n3")), 0o700);
    assert_eq!(mode(&found.dir), 0o700);
    assert_eq!(mode(&found.archive_path()), 0o600);
    assert_eq!(mode(&found.dir.join(MANIFEST)), 0o600);
}

/// A backup of n3 at `now` of `root`'s `srv`, signed by `key`.
fn signed_backup(to: &Path, root: &Path, now: u64, key: &lazarus_proto::SigningKey) -> PathBuf {
    create_backup(&BackupRequest {
        node: &n3(),
        to,
        root,
        paths: &[PathBuf::from("srv")],
        now,
        signing: Some(key),
        exclude: &[],
    })
    .unwrap()
    .dir
}

#[test]
fn only_backups_signed_by_the_nodes_key_are_chosen_and_none_can_be_relabelled() {
    let dir = tempfile::tempdir().unwrap();
    let (share, genuine_root, planted_root) = (
        dir.path().join("share"),
        dir.path().join("genuine"),
        dir.path().join("planted"),
    );
    for (root, text) in [(&genuine_root, "genuine"), (&planted_root, "planted")] {
        fs::create_dir_all(root.join("srv")).unwrap();
        fs::write(root.join("srv/data"), text).unwrap();
    }
    let n3_key = lazarus_proto::SigningKey::from_seed([3; 32]);
    let other_key = lazarus_proto::SigningKey::from_seed([4; 32]);
    let public = n3_key.public();
    let pick =
        |before| choose_backup(&share, &n3(), before, Some(&public)).map(|f| f.manifest.created);
    let old = signed_backup(&share, &genuine_root, T0 - 100, &n3_key);
    // Another node's key, a newer time: skipped.
    signed_backup(&share, &planted_root, T0 - 50, &other_key);
    assert_eq!(pick(T0).unwrap(), T0 - 100);
    // Unsigned, newer still: skipped.
    create_backup(&BackupRequest {
        node: &n3(),
        to: &share,
        root: &planted_root,
        paths: &[PathBuf::from("srv")],
        now: T0 - 40,
        signing: None,
        exclude: &[],
    })
    .unwrap();
    assert_eq!(pick(T0).unwrap(), T0 - 100);
    // n3's own signature copied onto a manifest edited to name another archive digest: skipped.
    let forged = signed_backup(&share, &planted_root, T0 - 30, &other_key);
    fs::copy(old.join("manifest.sig"), forged.join("manifest.sig")).unwrap();
    assert_eq!(pick(T0).unwrap(), T0 - 100);
    // The genuine old backup copied under a newer name: its signed time no longer matches.
    let relabelled = share.join("n3").join(time::format_utc(T0 - 20));
    fs::create_dir_all(&relabelled).unwrap();
    for f in fs::read_dir(&old).unwrap().flatten() {
        fs::copy(f.path(), relabelled.join(f.file_name())).unwrap();
    }
    assert_eq!(pick(T0).unwrap(), T0 - 100);
    // Without n3's key (a hand-written plan) the newest well-formed one would be taken.
    assert_eq!(
        choose_backup(&share, &n3(), T0, None)
            .unwrap()
            .manifest
            .created,
        T0 - 30
    );
    // And the restore given the key puts back the genuine files.
    let dest = dir.path().join("dest");
    fs::create_dir_all(&dest).unwrap();
    restore_backup(&RestoreRequest {
        backup_key: Some(&public),
        backups: &share,
        node: &n3(),
        failure_time: T0,
        mount: &dest,
        root: "/",
        max_archive_bytes: DEFAULT_MAX_BACKUP_BYTES,
        options: options(&[]),
    })
    .unwrap();
    assert_eq!(
        fs::read_to_string(dest.join("srv/data")).unwrap(),
        "genuine"
    );
    // The key's own file is never in a backup, however the paths name it.
    let keyed = dir.path().join("keyed");
    fs::create_dir_all(keyed.join("etc/lazarus")).unwrap();
    fs::write(keyed.join("etc/lazarus/backup.key"), n3_key.to_text()).unwrap();
    fs::write(keyed.join("etc/lazarus/node"), "n3").unwrap();
    let found = create_backup(&BackupRequest {
        node: &n3(),
        to: &dir.path().join("share2"),
        root: &keyed,
        paths: &[PathBuf::from("etc")],
        now: T0 - 10,
        signing: Some(&n3_key),
        exclude: &[keyed.join("etc/lazarus/backup.key")],
    })
    .unwrap();
    let archive = read_archive(&found, DEFAULT_MAX_BACKUP_BYTES)
        .unwrap()
        .verify(&found.manifest)
        .unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut archive.tar_stream(), &mut tar).unwrap();
    let text = String::from_utf8_lossy(&tar);
    assert!(text.contains("etc/lazarus/node") && !text.contains("backup.key"));
    assert!(!text.contains(n3_key.to_text().trim_end()));
    // No signed backup at all: none is restored.
    let stranger = lazarus_proto::SigningKey::from_seed([9; 32]).public();
    assert!(matches!(
        choose_backup(&share, &n3(), T0, Some(&stranger)),
        Err(BackupError::NoneBefore { .. })
    ));
}
