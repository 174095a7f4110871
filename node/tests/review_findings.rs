//! Found by an attacker's review, kept as regression tests. Review finding: `lazarus backup --root DIR` (a snapshot or a mounted copy of the node's root,
//! the usual way to take a consistent backup) archives the node's backup key. The key is left
//! out only by the (device, inode) of the file `--signing-key` names (default
//! /etc/lazarus/backup.key, not relative to --root), so the same key at DIR/etc/lazarus/backup.key
//! is another inode and goes into the archive on the share, readable by other nodes' root: with
//! it, any node signs backups that n3's agent restores.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use lazarus_node::backup::{create_backup, read_archive, BackupRequest};
use lazarus_proto::{NodeName, DEFAULT_MAX_BACKUP_BYTES};

#[test]
fn the_backup_key_never_travels_in_a_backup_of_a_snapshot_root() {
    let dir = tempfile::tempdir().unwrap();
    let n3: NodeName = "n3".parse().unwrap();
    let key = lazarus_proto::SigningKey::from_seed([3; 32]);
    // The live system's key file (what --signing-key names) ...
    let live = dir.path().join("live/etc/lazarus");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("backup.key"), key.to_text()).unwrap();
    // ... and the snapshot of the same root that is backed up (--root).
    let snap = dir.path().join("snap");
    std::fs::create_dir_all(snap.join("etc/lazarus")).unwrap();
    std::fs::write(snap.join("etc/lazarus/backup.key"), key.to_text()).unwrap();
    std::fs::write(snap.join("etc/hostname"), "n3").unwrap();
    let found = create_backup(&BackupRequest {
        node: &n3,
        to: &dir.path().join("share"),
        root: &snap,
        paths: &[PathBuf::from("etc")],
        now: 1_795_600_000,
        signing: Some(&key),
        exclude: &[live.join("backup.key")],
    })
    .unwrap();
    let archive = read_archive(&found, DEFAULT_MAX_BACKUP_BYTES)
        .unwrap()
        .verify(&found.manifest)
        .unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut archive.tar_stream(), &mut tar).unwrap();
    let text = String::from_utf8_lossy(&tar);
    assert!(
        !text.contains(key.to_text().trim_end()),
        "the node's backup signing key is inside the backup on the share"
    );
}

/// Review finding (TOCTOU, another node's write access to the share): `private_dir` checks the
/// node's folder with `symlink_metadata` and then narrows it with `set_permissions`, which
/// follows symlinks. A node that swaps `<backups>/n3` for a symlink in between (an absolute one
/// resolves on n3's own disk) has `lazarus backup` on n3, running as root, chmod 0700 a folder
/// of its choosing there (/usr/bin, /etc: a broken node). Here the swap is RENAME_EXCHANGE in a
/// loop, the victim a folder beside the share.
#[test]
fn a_swapped_node_folder_never_has_its_target_chmodded() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let root = dir.path().join("root");
    let victim = dir.path().join("victim");
    for d in [&share, &root.join("srv"), &victim] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(root.join("srv/data"), "x").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o751)).unwrap();
    // A loose folder for n3 (as an older version, or another node, left it) and a symlink.
    let node_dir = share.join("n3");
    std::fs::create_dir(&node_dir).unwrap();
    let link = share.join("swap");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, node_dir, link) = (stop.clone(), node_dir.clone(), link.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Keep the real folder loose so the chmod path is taken.
                // (only this thread swaps, so its own lstat-then-chmod is not racy)
                for p in [&node_dir, &link] {
                    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
                        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
                    }
                }
                let _ = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &node_dir,
                    rustix::fs::CWD,
                    &link,
                    rustix::fs::RenameFlags::EXCHANGE,
                );
            }
        })
    };
    let n3: NodeName = "n3".parse().unwrap();
    let started = std::time::Instant::now();
    let mut chmodded = None;
    let mut now = 1_795_600_000;
    while started.elapsed() < std::time::Duration::from_secs(8) {
        now += 1;
        let _ = create_backup(&BackupRequest {
            node: &n3,
            to: &share,
            root: &root,
            paths: &[PathBuf::from("srv")],
            now,
            signing: None,
            exclude: &[],
        });
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        if mode != 0o751 {
            chmodded = Some(mode);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(
        chmodded, None,
        "lazarus backup chmodded the symlink's target (a folder outside the share) from 751"
    );
}

/// Review finding (TOCTOU, DoS): `read_small` checks `manifest.toml` / `manifest.sig` with
/// `symlink_metadata` and then opens the path again with a plain blocking open. Swapped for a
/// fifo in between (RENAME_EXCHANGE by any node that writes the share), the open blocks with no
/// writer: the agent's restore hangs (the module promises "a fifo planted there must not hang the
/// agent"; `read_archive` uses O_NONBLOCK|O_NOFOLLOW and fstat, `read_small` does not).
#[test]
fn a_manifest_swapped_for_a_fifo_never_hangs_the_choice() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("srv")).unwrap();
    std::fs::write(root.join("srv/data"), "x").unwrap();
    let n3: NodeName = "n3".parse().unwrap();
    let found = create_backup(&BackupRequest {
        node: &n3,
        to: &share,
        root: &root,
        paths: &[PathBuf::from("srv")],
        now: 1_795_600_000,
        signing: None,
        exclude: &[],
    })
    .unwrap();
    let manifest = found.dir.join("manifest.toml");
    let fifo = found.dir.join("swap");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, manifest, fifo) = (stop.clone(), manifest.clone(), fifo.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &manifest,
                    rustix::fs::CWD,
                    &fifo,
                    rustix::fs::RenameFlags::EXCHANGE,
                );
            }
        })
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let share2 = share.clone();
    std::thread::spawn(move || {
        let n3: NodeName = "n3".parse().unwrap();
        for _ in 0..5_000 {
            let _ = lazarus_node::backup::choose_backup(&share2, &n3, 1_795_600_001, None);
        }
        let _ = done_tx.send(());
    });
    // Five thousand choices take well under a second; ten seconds without an end is a hang.
    let hung = done_rx.recv_timeout(Duration::from_secs(10)).is_err();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let mut waits = Vec::new();
    if hung {
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            if let Ok(w) = std::fs::read_to_string(t.path().join("wchan")) {
                waits.push(w);
            }
        }
        // Unblock the stuck open: give the fifo (under either name) a writer.
        for p in [&manifest, &fifo] {
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo()) {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(p);
            }
        }
    }
    assert!(
        !hung,
        "choose_backup blocked in open(2) on a fifo swapped in after its lstat (thread waits: {waits:?})"
    );
}
