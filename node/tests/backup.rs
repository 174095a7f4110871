//! Backups written by `create_backup` and restored by `restore_backup`, on real files: metadata
//! kept, the right backup chosen, and hostile archives refused with nothing written outside.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lazarus_proto::NodeName;

use lazarus_node::backup::{
    choose_backup, create_backup, restore_backup, time, BackupError, BackupRequest, ExtractOptions,
    ExtractReport, FoundBackup, RestoreRequest, ARCHIVE, MANIFEST,
};

const T0: u64 = 1_795_600_000;

fn n3() -> NodeName {
    "n3".parse().unwrap()
}

fn set_mtime(path: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A node's business files: nested dirs, modes, a symlink, a hard link, odd mtimes.
fn business_tree(base: &Path) -> PathBuf {
    let root = base.join("node-root");
    let app = root.join("srv/app");
    fs::create_dir_all(app.join("data/deep")).unwrap();
    fs::write(app.join("config.ini"), "threads=8\n").unwrap();
    fs::set_permissions(app.join("config.ini"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(app.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(app.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(app.join("data/deep/big.bin"), vec![7u8; 300_000]).unwrap();
    fs::hard_link(app.join("config.ini"), app.join("config.hardlink")).unwrap();
    std::os::unix::fs::symlink("config.ini", app.join("current")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", app.join("absolute-link")).unwrap();
    fs::set_permissions(app.join("data"), fs::Permissions::from_mode(0o750)).unwrap();
    for (p, t) in [
        ("config.ini", 1_600_000_000),
        ("run.sh", 1_600_000_100),
        ("data/deep/big.bin", 1_600_000_200),
    ] {
        set_mtime(&app.join(p), t);
    }
    set_mtime(&app.join("current"), 1_600_000_300);
    set_mtime(&app.join("data/deep"), 1_600_000_400);
    set_mtime(&app.join("data"), 1_600_000_500);
    root
}

/// Restores the newest backup of n3 before `T0 + 1` into `dest` with the plan's defaults.
fn restore(
    backups: &Path,
    dest: &Path,
    paths: &[String],
) -> Result<(FoundBackup, ExtractReport), BackupError> {
    restore_backup(&RestoreRequest {
        backup_key: None,
        backups,
        node: &n3(),
        failure_time: T0 + 1,
        mount: dest,
        root: "/",
        max_archive_bytes: lazarus_proto::DEFAULT_MAX_BACKUP_BYTES,
        options: ExtractOptions {
            paths,
            allow_setid: false,
            unrestorable: lazarus_proto::Unrestorable::Warn,
        },
    })
}

fn backup(to: &Path, root: &Path, now: u64) {
    create_backup(&BackupRequest {
        node: &n3(),
        to,
        root,
        paths: &[PathBuf::from("srv/app")],
        now,
        signing: None,
        exclude: &[],
    })
    .unwrap();
}

#[test]
fn restore_keeps_content_modes_links_and_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let root = business_tree(dir.path());
    let backups = dir.path().join("backups");
    backup(&backups, &root, T0);
    let dest = dir.path().join("restored");
    fs::create_dir(&dest).unwrap();
    let (found, report) = restore(&backups, &dest, &[]).unwrap();
    assert_eq!(found.manifest.created, T0);
    assert_eq!(report.hardlinks, 1);
    assert_eq!(report.symlinks, 2);
    let (a, b) = (root.join("srv/app"), dest.join("srv/app"));
    for p in [
        "config.ini",
        "run.sh",
        "data/deep/big.bin",
        "config.hardlink",
    ] {
        assert_eq!(
            fs::read(a.join(p)).unwrap(),
            fs::read(b.join(p)).unwrap(),
            "{p}"
        );
    }
    for p in [
        "config.ini",
        "run.sh",
        "data/deep/big.bin",
        "data",
        "data/deep",
        "current",
    ] {
        let (ma, mb) = (
            fs::symlink_metadata(a.join(p)).unwrap(),
            fs::symlink_metadata(b.join(p)).unwrap(),
        );
        assert_eq!(ma.mode(), mb.mode(), "mode of {p}");
        assert_eq!(ma.mtime(), mb.mtime(), "mtime of {p}");
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "owner of {p}");
    }
    assert_eq!(
        fs::read_link(b.join("current")).unwrap(),
        Path::new("config.ini")
    );
    assert_eq!(
        fs::read_link(b.join("absolute-link")).unwrap(),
        Path::new("/etc/hostname")
    );
    let (ia, ib) = (
        fs::metadata(b.join("config.ini")).unwrap(),
        fs::metadata(b.join("config.hardlink")).unwrap(),
    );
    assert_eq!(ia.ino(), ib.ino(), "hard link restored as a copy");
}

#[test]
fn the_newest_complete_backup_before_the_failure_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let root = business_tree(dir.path());
    let backups = dir.path().join("backups");
    for t in [T0, T0 + 3600, T0 + 7200] {
        backup(&backups, &root, t);
    }
    // Junk that must be ignored: a temp dir newer than all, a dir with a broken manifest.
    fs::create_dir_all(backups.join("n3/.tmp-x")).unwrap();
    let broken = backups.join("n3").join(time::format_utc(T0 + 5000));
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join(MANIFEST), "format = [").unwrap();
    let pick = |t| choose_backup(&backups, &n3(), t, None).map(|f| f.manifest.created);
    assert_eq!(pick(T0 + 7201).unwrap(), T0 + 7200);
    assert_eq!(
        pick(T0 + 7200).unwrap(),
        T0 + 3600,
        "a backup at the failure instant is not before it"
    );
    assert_eq!(
        pick(T0 + 6000).unwrap(),
        T0 + 3600,
        "the broken one is skipped"
    );
    assert!(matches!(pick(T0), Err(BackupError::NoneBefore { .. })));
    assert!(
        "../etc".parse::<NodeName>().is_err(),
        "a node name that leaves the backups directory cannot even be made"
    );
}

#[test]
fn a_corrupted_archive_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = business_tree(dir.path());
    let backups = dir.path().join("backups");
    backup(&backups, &root, T0);
    let archive = backups.join("n3").join(time::format_utc(T0)).join(ARCHIVE);
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&archive, &bytes).unwrap();
    let dest = dir.path().join("restored");
    fs::create_dir(&dest).unwrap();
    let err = restore(&backups, &dest, &[]).unwrap_err();
    assert!(matches!(err, BackupError::Digest { .. }), "{err}");
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
}

/// Writes a hand-made hostile backup whose manifest is valid (so the digest passes).
fn hostile_backup(backups: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let tar_bytes = b.into_inner().unwrap();
    let zst = ruzstd::encoding::compress_to_vec(
        &tar_bytes[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let dir = backups.join("n3").join(time::format_utc(T0));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(ARCHIVE), &zst).unwrap();
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&zst).into();
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

fn file_header(len: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(T0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Puts a raw name into a header, bypassing the tar crate's own path checks.
fn raw_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
}

fn assert_refused(build: impl FnOnce(&mut tar::Builder<Vec<u8>>), outside_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    hostile_backup(&backups, build);
    let dest = dir.path().join("restored");
    fs::create_dir(&dest).unwrap();
    let err = restore(&backups, &dest, &[]).unwrap_err();
    assert!(matches!(err, BackupError::UnsafeEntry { .. }), "{err}");
    assert_eq!(
        fs::read_dir(&dest).unwrap().count(),
        0,
        "something was written: {err}"
    );
    assert!(!dir.path().join(outside_name).exists());
}

#[test]
fn dot_dot_entries_are_refused_and_nothing_is_written() {
    assert_refused(
        |b| {
            let mut h = file_header(4);
            raw_name(&mut h, "ok.txt");
            b.append(&h, &b"fine"[..]).unwrap();
            let mut h = file_header(4);
            raw_name(&mut h, "../evil");
            b.append(&h, &b"evil"[..]).unwrap();
        },
        "evil",
    );
}

#[test]
fn absolute_entries_are_refused() {
    assert_refused(
        |b| {
            let mut h = file_header(4);
            raw_name(&mut h, "/tmp/lazarus-absolute-evil");
            b.append(&h, &b"evil"[..]).unwrap();
        },
        "lazarus-absolute-evil",
    );
}

#[test]
fn writes_through_an_archive_symlink_are_refused() {
    assert_refused(
        |b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(T0);
            b.append_link(&mut h, "escape", "..").unwrap();
            let mut h = file_header(4);
            raw_name(&mut h, "escape/outside-file");
            b.append(&h, &b"evil"[..]).unwrap();
        },
        "outside-file",
    );
}

#[test]
fn a_symlink_already_on_the_disk_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    hostile_backup(&backups, |b| {
        let mut h = file_header(4);
        raw_name(&mut h, "etc/passwd");
        b.append(&h, &b"evil"[..]).unwrap();
    });
    let dest = dir.path().join("restored");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("etc")).unwrap();
    let err = restore(&backups, &dest, &[]).unwrap_err();
    assert!(matches!(err, BackupError::UnsafeTarget { .. }), "{err}");
    assert!(
        !outside.join("passwd").exists(),
        "wrote through a symlink on the disk"
    );
}

#[test]
fn only_the_selected_paths_are_restored() {
    let dir = tempfile::tempdir().unwrap();
    let root = business_tree(dir.path());
    let backups = dir.path().join("backups");
    backup(&backups, &root, T0);
    let dest = dir.path().join("restored");
    fs::create_dir(&dest).unwrap();
    restore(&backups, &dest, &["/srv/app/data".into()]).unwrap();
    assert!(dest.join("srv/app/data/deep/big.bin").exists());
    assert!(!dest.join("srv/app/config.ini").exists());
}

#[test]
fn backup_refuses_paths_outside_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = business_tree(dir.path());
    let to = dir.path().join("backups");
    for (node, path) in [("n3", "../x"), ("n3", "/elsewhere"), ("n3", "missing")] {
        let r = create_backup(&BackupRequest {
            node: &node.parse().unwrap(),
            to: &to,
            root: &root,
            paths: &[PathBuf::from(path)],
            now: T0,
            signing: None,
            exclude: &[],
        });
        assert!(r.is_err(), "{node} {path}");
    }
    assert!(
        !to.join("n3").exists() || fs::read_dir(to.join("n3")).unwrap().count() == 0,
        "left files behind"
    );
}
