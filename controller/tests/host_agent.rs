//! The agent in host mode, a real process, driven over the real protocol on loopback: whole
//! recoveries onto files and (as root) loop devices, and every way a recovery must fail.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use lazarus_proto::frame::{read_frame, write_frame, AnnounceOpener};
use lazarus_proto::*;

const MIB: usize = 1 << 20;

#[test]
fn recovers_onto_a_file() {
    let lab = Lab::new();
    let img = noise(5 * MIB + 777, 1);
    let rel = lab.image("os.img", &img);
    let disk = lab.path("disk.img");
    std::fs::write(&disk, noise(8 * MIB, 2)).unwrap();
    let flag = lab.flag("flag.img");
    let agent = lab.agent(Some(&flag), None);
    let mut c = lab.client(&agent);
    let s = c.status_of(&Request::GetStatus).unwrap();
    assert_eq!(s.phase, Phase::Ready);
    let plan = plan("file-1", &rel, &img, by_path(&disk), flag_at(&flag));
    c.status_of(&Request::Recover(Box::new(plan.clone())))
        .unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.phase, Phase::Recovered, "{s:?}\n{}", agent.log());
    assert_eq!(
        (s.bytes_done, s.bytes_total),
        (img.len() as u64, img.len() as u64)
    );
    assert_eq!(s.flag.state, flag::FlagState::Recovered);
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..img.len()] == img[..],
        "disk does not hold the image"
    );
    let f = flag_json(&flag);
    assert_eq!(
        (f["state"].as_str(), f["plan_id"].as_str()),
        (Some("recovered"), Some("file-1"))
    );
    // The same plan again is answered, not re-run; its flag is unchanged.
    let again = c.status_of(&Request::Recover(Box::new(plan))).unwrap();
    assert_eq!(again.phase, Phase::Recovered);
    assert_eq!(flag_json(&flag)["seq"], f["seq"]);
    // Logs come over the protocol too.
    let Response::Logs(logs) = c.call(&Request::GetLogs { since: 0 }).unwrap() else {
        panic!()
    };
    assert!(logs
        .lines
        .iter()
        .any(|l| l.message.contains("plan file-1 recovered")));
}

#[test]
fn a_wrong_digest_ends_failed_with_the_first_mib_zero_and_the_agent_still_answers() {
    let lab = Lab::new();
    let img = noise(4 * MIB, 3);
    let rel = lab.image("os.img", &img);
    let disk = lab.path("disk.img");
    std::fs::write(&disk, noise(6 * MIB, 4)).unwrap();
    let flag = lab.flag("flag.img");
    let agent = lab.agent(Some(&flag), None);
    let mut c = lab.client(&agent);
    let mut p = plan("bad-digest", &rel, &img, by_path(&disk), flag_at(&flag));
    p.image.sha256.0[0] ^= 0xff;
    c.status_of(&Request::Recover(Box::new(p))).unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.phase, Phase::Failed);
    let e = s.error.expect("an error");
    assert_eq!(e.code, 504, "{}", e.message);
    assert!(e.message.contains("digest"), "{}", e.message);
    let f = flag_json(&flag);
    assert_eq!(
        (f["state"].as_str(), f["error_code"].as_u64()),
        (Some("failed"), Some(504))
    );
    let d = std::fs::read(&disk).unwrap();
    assert!(d[..MIB].iter().all(|&b| b == 0), "first MiB not zeroed");
    // Still answering, and a corrected plan may run after a failure.
    assert_eq!(
        c.status_of(&Request::GetStatus).unwrap().phase,
        Phase::Failed
    );
    let good = plan("good", &rel, &img, by_path(&disk), flag_at(&flag));
    c.status_of(&Request::Recover(Box::new(good))).unwrap();
    assert_eq!(wait_done(&mut c).phase, Phase::Recovered);
}

#[test]
fn a_truncated_image_ends_failed() {
    let lab = Lab::new();
    let img = noise(4 * MIB, 5);
    let rel = lab.image("os.img", &img[..3 * MIB]);
    let disk = lab.path("disk.img");
    std::fs::write(&disk, noise(6 * MIB, 6)).unwrap();
    let flag = lab.flag("flag.img");
    let agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    c.status_of(&Request::Recover(Box::new(plan(
        "short",
        &rel,
        &img,
        by_path(&disk),
        flag_at(&flag),
    ))))
    .unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.error.map(|e| e.code), Some(502));
    assert_eq!(flag_json(&flag)["state"], "failed");
    assert!(std::fs::read(&disk).unwrap()[..MIB].iter().all(|&b| b == 0));
}

#[test]
fn no_matching_disk_fails_before_anything_is_written() {
    let lab = Lab::new();
    let img = noise(MIB, 7);
    let rel = lab.image("os.img", &img);
    let flag = lab.flag("flag.img");
    let agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    let sel = DiskSelector {
        serial: Some("NO-SUCH-SERIAL-0000".into()),
        ..DiskSelector::default()
    };
    c.status_of(&Request::Recover(Box::new(plan(
        "nodisk",
        &rel,
        &img,
        sel,
        flag_at(&flag),
    ))))
    .unwrap();
    let s = wait_done(&mut c);
    let e = s.error.unwrap();
    assert_eq!(e.code, 401, "{}", e.message);
    assert!(e.message.contains("no disk matches"), "{}", e.message);
    let f = flag_json(&flag);
    assert_eq!(
        (f["state"].as_str(), f["error_code"].as_u64()),
        (Some("failed"), Some(401))
    );
}

#[test]
fn bad_plans_are_refused_with_a_reason() {
    let lab = Lab::new();
    let img = noise(MIB, 8);
    let rel = lab.image("os.img", &img);
    let agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    let flag = lab.path("flag.img");
    let mut p = plan("x", &rel, &img, DiskSelector::default(), flag_at(&flag));
    match c.call(&Request::Recover(Box::new(p.clone()))) {
        Err(e) => assert!(e.to_string().contains("names no disk"), "{e}"),
        Ok(r) => panic!("accepted a plan naming no disk: {r:?}"),
    }
    p.target = by_path(&lab.path("d"));
    p.image.path = "../../etc/passwd".into();
    assert!(c.call(&Request::Recover(Box::new(p))).is_err());
    assert_eq!(
        c.status_of(&Request::GetStatus).unwrap().phase,
        Phase::Ready
    );
}

#[test]
fn commands_signed_by_another_key_are_not_answered() {
    let lab = Lab::new();
    let agent = lab.agent(None, None);
    // Someone holding a node's agent key (its media) but not the controller's signing key.
    let other = SigningKey::from_seed([0x33; 32]);
    let r = lazarus_controller::agent_client::AgentClient::connect(
        &agent.addr,
        other,
        lab.key.clone(),
        Duration::from_secs(3),
    );
    let err = r.expect_err("a wrong key was answered");
    assert!(err.to_string().contains("connection closed"), "{err}");
    // The agent's stderr reaches the test through a reader thread: give the line a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log().contains("ignoring a command") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        agent.log().contains("ignoring a command"),
        "{}",
        agent.log()
    );
}

#[test]
fn killed_mid_copy_the_flag_is_not_recovered_and_the_next_recover_completes() {
    let lab = Lab::new();
    let img = noise(12 * MIB, 9);
    // The image is a FIFO the test feeds: the agent is killed while it waits for the rest.
    let fifo = lab.fifo_image("os.img");
    let disk = lab.path("disk.img");
    std::fs::write(&disk, noise(16 * MIB, 10)).unwrap();
    let flag = lab.flag("flag.img");
    let p = plan(
        "killed",
        "images/os.img",
        &img,
        by_path(&disk),
        flag_at(&flag),
    );

    let mut agent = lab.agent(Some(&flag), None);
    let mut c = lab.client(&agent);
    c.status_of(&Request::Recover(Box::new(p.clone()))).unwrap();
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    feed.write_all(&img[..6 * MIB]).unwrap();
    // Another plan while one runs is refused; the same plan id is answered.
    let mut other = p.clone();
    other.plan_id = "other".into();
    let busy = c.call(&Request::Recover(Box::new(other))).unwrap_err();
    assert!(busy.to_string().contains("Busy"), "{busy}");
    assert_eq!(
        c.status_of(&Request::Recover(Box::new(p.clone())))
            .unwrap()
            .phase,
        Phase::Recovering
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.status_of(&Request::GetStatus).unwrap().bytes_done < 4 * MIB as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "copy did not progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill();
    drop(feed);
    let f = flag_json(&flag);
    assert_eq!(f["state"], "recovering", "{f}");
    assert!(
        std::fs::read(&disk).unwrap()[..MIB].iter().all(|&b| b == 0),
        "header written before the end"
    );

    // Start again; it announces Ready to the controller, reporting the RECOVERING it found.
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, &img).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let controller = listener.local_addr().unwrap();
    let (key, signing) = (lab.key.clone(), lab.signing.clone());
    let announced = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let frame = read_frame(&mut s).unwrap();
        let (_, _, body, reply) = AnnounceOpener::default()
            .open("node-a", &key, &frame)
            .unwrap();
        write_frame(&mut s, &reply.seal_ack(&signing).unwrap()).unwrap();
        body
    });
    let agent = lab.agent(Some(&flag), Some(controller));
    let Response::Ready(ready) = announced.join().unwrap() else {
        panic!("not a Ready")
    };
    let found = ready.flag.expect("the flag found at start");
    assert_eq!(
        (found.state, found.plan_id.as_str()),
        (flag::FlagState::Recovering, "killed")
    );
    let mut c = lab.client(&agent);
    assert_eq!(c.boot_id(), ready.boot_id);
    let s = c.status_of(&Request::GetStatus).unwrap();
    assert_eq!(
        s.flag.state,
        flag::FlagState::None,
        "the stale flag was not cleared"
    );
    c.status_of(&Request::Recover(Box::new(p))).unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.phase, Phase::Recovered, "{s:?}\n{}", agent.log());
    assert!(std::fs::read(&disk).unwrap()[..img.len()] == img[..]);
    assert_eq!(flag_json(&flag)["state"], "recovered");
}

#[test]
fn reboot_is_answered_and_then_the_host_mode_agent_exits() {
    let lab = Lab::new();
    let mut agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    assert_eq!(
        c.status_of(&Request::Reboot).unwrap().phase,
        Phase::Rebooting
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not exit after Reboot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn skip_unless_root(name: &str) -> bool {
    !lazarus_testkit::require(name, lazarus_testkit::root("loop devices and mount"))
}

/// Builds a whole-disk image: GPT, partition 1 `root` (ext4 holding `files`), partition 2
/// `lazarus-flag`; no root needed (mkfs.ext4 -d, sfdisk on a file).
fn disk_image(dir: &Path, files: &Path, total_mib: u64) -> Vec<u8> {
    let disk = dir.join("built-disk.img");
    let part = dir.join("built-root.ext4");
    let fs_mib = total_mib - 4;
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(files)
        .arg(&part)
        .arg(format!("{fs_mib}M")));
    let _ = std::fs::remove_file(&disk);
    run(std::process::Command::new("truncate")
        .args(["-s", &format!("{total_mib}M")])
        .arg(&disk));
    let script = format!(
        "label: gpt\nstart=2048, size={}, type=L, name=root\nsize=2048, type=L, name=lazarus-flag\n",
        fs_mib * 2048
    );
    let mut sf = std::process::Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sf.wait().unwrap().success());
    run(std::process::Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc,fsync", "status=none"]));
    std::fs::read(&disk).unwrap()
}

#[test]
fn whole_disk_image_onto_a_loop_device_with_business_files_restored() {
    if skip_unless_root("whole_disk_image_onto_a_loop_device_with_business_files_restored") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let lab = Lab::new();
    // The known-good system: an ext4 root with an OS marker.
    let sysroot = lab.path("sysroot");
    std::fs::create_dir_all(sysroot.join("etc")).unwrap();
    std::fs::write(sysroot.join("etc/os-release"), "NAME=worker\n").unwrap();
    let img = disk_image(lab.dir.path(), &sysroot, 48);
    let rel = lab.image("worker.img", &img);
    // The failed node's disk: an older layout with a flag partition and junk.
    let old_files = lab.path("oldroot");
    std::fs::create_dir_all(&old_files).unwrap();
    std::fs::write(old_files.join("junk"), "broken").unwrap();
    let old = disk_image(lab.dir.path(), &old_files, 48);
    let backing = lab.path("node-disk.img");
    std::fs::write(&backing, &old).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_len(64 * MIB as u64)
        .unwrap();
    let dev = Loop::new(&backing);
    // Business files of the node, backed up before the failure.
    let business = lab.path("business");
    std::fs::create_dir_all(business.join("srv/app/data")).unwrap();
    std::fs::write(business.join("srv/app/data/orders.db"), noise(200_000, 11)).unwrap();
    std::fs::set_permissions(
        business.join("srv/app/data/orders.db"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("data/orders.db", business.join("srv/app/current")).unwrap();
    // node-a's backup key signs its backups; the plan carries the public half.
    let backup_key = lab.path("backup.key");
    let out = lazarus(&["keygen", "--backup", backup_key.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let public = lazarus_proto::PublicKey::from_text_as(
        &std::fs::read_to_string(lab.path("backup.pub")).unwrap(),
        lazarus_proto::key::Role::Backup,
    )
    .unwrap();
    let out = lazarus(&[
        "backup",
        "--node",
        "node-a",
        "--to",
        lab.export.join("backups").to_str().unwrap(),
        "--root",
        business.to_str().unwrap(),
        "--signing-key",
        backup_key.to_str().unwrap(),
        "srv/app",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failure_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 100;
    // Another node (its own backup key) plants a newer backup of node-a: never restored.
    let planted = lab.path("planted");
    std::fs::create_dir_all(planted.join("srv/app/data")).unwrap();
    std::fs::write(planted.join("srv/app/data/orders.db"), noise(200_000, 99)).unwrap();
    lazarus_node::backup::create_backup(&lazarus_node::backup::BackupRequest {
        node: &"node-a".parse().unwrap(),
        to: &lab.export.join("backups"),
        root: &planted,
        paths: &["srv/app".into()],
        now: failure_time - 50,
        signing: Some(&SigningKey::from_seed([0x66; 32])),
        exclude: &[],
    })
    .unwrap();

    let agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    let mut p = plan(
        "loop-1",
        &rel,
        &img,
        by_path(dev.path()),
        FlagLocation::default(),
    );
    p.restore = Some(RestoreSpec {
        backups_dir: "backups".into(),
        node: "node-a".parse().unwrap(),
        failure_time,
        filesystem: RestoreFilesystem {
            partition: Some(1),
            fstype: FsType::Ext4,
            root: "/".into(),
        },
        paths: vec![],
        backup_key: Some(BackupKey(*public.as_bytes())),
    });
    c.status_of(&Request::Recover(Box::new(p))).unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.phase, Phase::Recovered, "{s:?}\n{}", agent.log());
    assert!(
        agent.log().contains("not signed by the node's backup key"),
        "the planted backup was not skipped as unsigned:\n{}",
        agent.log()
    );

    let mut on_disk = vec![0u8; img.len()];
    std::fs::File::open(dev.path())
        .unwrap()
        .read_exact_at_compat(&mut on_disk);
    // The restore changed the root filesystem; the rest of the image is byte-exact.
    assert!(on_disk[..MIB] == img[..MIB], "partition table differs");
    assert!(
        on_disk[img.len() - 2 * MIB..] == img[img.len() - 2 * MIB..],
        "the image's last 2 MiB differ"
    );
    let flag_dev = format!("{}p2", dev.path().display());
    let f = flag_json(Path::new(&flag_dev));
    assert_eq!(
        (f["state"].as_str(), f["plan_id"].as_str()),
        (Some("recovered"), Some("loop-1"))
    );
    // Mount the restored root and look at the business files.
    let mnt = lab.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let p1 = format!("{}p1", dev.path().display());
    assert!(std::process::Command::new("mount")
        .args(["-o", "ro", &p1])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let check = || -> Result<(), String> {
        let os = std::fs::read_to_string(mnt.join("etc/os-release")).map_err(|e| e.to_string())?;
        if os != "NAME=worker\n" {
            return Err(format!("os-release: {os}"));
        }
        if mnt.join("junk").exists() {
            return Err("old junk survived".into());
        }
        let db = mnt.join("srv/app/data/orders.db");
        if std::fs::read(&db).map_err(|e| e.to_string())? != noise(200_000, 11) {
            return Err("orders.db differs".into());
        }
        let m = std::fs::metadata(&db).map_err(|e| e.to_string())?;
        let src = std::fs::metadata(business.join("srv/app/data/orders.db")).unwrap();
        if m.mode() & 0o7777 != 0o600 || m.mtime() != src.mtime() {
            return Err(format!("metadata {:o} {}", m.mode(), m.mtime()));
        }
        let link = std::fs::read_link(mnt.join("srv/app/current")).map_err(|e| e.to_string())?;
        if link != Path::new("data/orders.db") {
            return Err(format!("link {link:?}"));
        }
        Ok(())
    };
    let result = check();
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    result.unwrap();
}

trait ReadExactAt {
    fn read_exact_at_compat(&self, buf: &mut [u8]);
}

impl ReadExactAt for std::fs::File {
    fn read_exact_at_compat(&self, buf: &mut [u8]) {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, 0).unwrap();
    }
}

#[test]
fn two_matching_disks_are_refused() {
    if skip_unless_root("two_matching_disks_are_refused") {
        return;
    }
    let lab = Lab::new();
    let img = noise(MIB, 12);
    let rel = lab.image("os.img", &img);
    // Two disks of one odd size: a size selector matches both.
    let size = 37 * MIB + 4096;
    let (a, b) = (lab.path("a.img"), lab.path("b.img"));
    std::fs::write(&a, noise(size, 13)).unwrap();
    std::fs::write(&b, noise(size, 14)).unwrap();
    let (da, db) = (Loop::new(&a), Loop::new(&b));
    let flag = lab.flag("flag.img");
    let agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    let sel = DiskSelector {
        size: Some(size as u64),
        ..DiskSelector::default()
    };
    c.status_of(&Request::Recover(Box::new(plan(
        "two",
        &rel,
        &img,
        sel,
        flag_at(&flag),
    ))))
    .unwrap();
    let s = wait_done(&mut c);
    let e = s.error.unwrap();
    assert_eq!(e.code, 402, "{}", e.message);
    assert!(
        e.message.contains(&da.name()) && e.message.contains(&db.name()),
        "{}",
        e.message
    );
    assert!(
        std::fs::read(&a).unwrap() == noise(size, 13),
        "disk a was written"
    );
    assert!(
        std::fs::read(&b).unwrap() == noise(size, 14),
        "disk b was written"
    );
}

#[test]
fn a_backup_with_dot_dot_entries_ends_failed_and_writes_nothing_outside() {
    if skip_unless_root("a_backup_with_dot_dot_entries_ends_failed_and_writes_nothing_outside") {
        return;
    }
    let lab = Lab::new();
    let sysroot = lab.path("sysroot");
    std::fs::create_dir_all(&sysroot).unwrap();
    let img = disk_image(lab.dir.path(), &sysroot, 24);
    let rel = lab.image("worker.img", &img);
    let backing = lab.path("node-disk.img");
    std::fs::write(&backing, &img).unwrap();
    let dev = Loop::new(&backing);
    // A hostile backup: valid manifest and digest, an entry `../escaped`.
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_entry_type(tar::EntryType::Regular);
        let name = b"../escaped";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        b.finish().unwrap();
    }
    let zst = ruzstd::encoding::compress_to_vec(
        &tar_bytes[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let ts = 1_700_000_000u64;
    let dir = lab
        .export
        .join("backups/node-a")
        .join(lazarus_node::backup::time::format_utc(ts));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("files.tar.zst"), &zst).unwrap();
    std::fs::write(
        dir.join("manifest.toml"),
        format!(
            "format = 1\nnode = \"node-a\"\ncreated = {ts}\narchive = \"files.tar.zst\"\narchive_size = {}\narchive_sha256 = \"{}\"\npaths = []\n",
            zst.len(),
            sha(&zst)
        ),
    )
    .unwrap();
    let agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    let mut p = plan(
        "hostile",
        &rel,
        &img,
        by_path(dev.path()),
        FlagLocation::default(),
    );
    p.restore = Some(RestoreSpec {
        backups_dir: "backups".into(),
        node: "node-a".parse().unwrap(),
        failure_time: ts + 10,
        filesystem: RestoreFilesystem {
            partition: Some(1),
            fstype: FsType::Ext4,
            root: "/".into(),
        },
        paths: vec![],
        backup_key: None,
    });
    c.status_of(&Request::Recover(Box::new(p))).unwrap();
    let s = wait_done(&mut c);
    let e = s.error.unwrap();
    assert_eq!(e.code, 709, "{}", e.message);
    assert!(!lab.path("work/mnt/escaped").exists() && !lab.path("work/escaped").exists());
    let f = flag_json(Path::new(&format!("{}p2", dev.path().display())));
    assert_eq!(
        (f["state"].as_str(), f["error_code"].as_u64()),
        (Some("failed"), Some(709))
    );
}

#[test]
fn abort_stops_a_running_copy_and_ends_failed() {
    let lab = Lab::new();
    let img = noise(12 * MIB, 15);
    let fifo = lab.fifo_image("os.img");
    let disk = lab.path("disk.img");
    std::fs::write(&disk, noise(16 * MIB, 16)).unwrap();
    let flag = lab.flag("flag.img");
    let agent = lab.agent(None, None);
    let mut c = lab.client(&agent);
    let p = plan(
        "aborted",
        "images/os.img",
        &img,
        by_path(&disk),
        flag_at(&flag),
    );
    c.status_of(&Request::Recover(Box::new(p))).unwrap();
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    feed.write_all(&img[..5 * MIB]).unwrap();
    assert_eq!(
        c.status_of(&Request::Abort).unwrap().phase,
        Phase::Recovering
    );
    // The reader notices at its next chunk.
    let _ = feed.write_all(&img[5 * MIB..]);
    drop(feed);
    let s = wait_done(&mut c);
    assert_eq!(
        (s.phase, s.error.as_ref().map(|e| e.code)),
        (Phase::Failed, Some(507)),
        "{s:?}"
    );
    assert_eq!(flag_json(&flag)["error_code"], 507);
    assert!(std::fs::read(&disk).unwrap()[..MIB].iter().all(|&b| b == 0));
    // Nothing left to abort.
    assert!(c.call(&Request::Abort).is_err());
}

#[test]
fn the_lazarus_agent_cli_drives_a_recovery_from_a_plan_file() {
    let lab = Lab::new();
    let img = noise(3 * MIB, 17);
    let rel = lab.image("os.img", &img);
    let disk = lab.path("disk.img");
    std::fs::write(&disk, noise(4 * MIB, 18)).unwrap();
    let flag = lab.flag("flag.img");
    let agent = lab.agent(None, None);
    let plan_text = format!(
        "plan_id = \"cli-1\"\nallow_weak_selector = true\n[network]\naddress = \"127.0.0.1\"\nprefix_len = 8\n\
         [nfs]\nserver = \"127.0.0.1\"\nexport = \"/export\"\nversion = \"v4.1\"\noptions = \"\"\n\
         [image]\npath = \"{rel}\"\nformat = \"raw\"\nsize = {}\nsha256 = \"{}\"\nlayout = \"whole_disk\"\n\
         [target]\npath = \"{}\"\n[flag]\npath = \"{}\"\n",
        img.len(),
        sha(&img),
        disk.display(),
        flag.display()
    );
    let plan_path = lab.path("plan.toml");
    std::fs::write(&plan_path, &plan_text).unwrap();
    let (key, signing) = (
        lab.key_path.to_str().unwrap(),
        lab.signing_path.to_str().unwrap(),
    );
    let common = [
        "--addr",
        agent.addr.as_str(),
        "--agent-key",
        key,
        "--signing-key",
        signing,
    ];
    let run = |args: &[&str]| {
        let mut all = vec!["agent"];
        all.extend_from_slice(args);
        all.extend_from_slice(&common);
        lazarus(&all)
    };
    let out = run(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phase"], "ready");
    let out = run(&["recover", "--plan", plan_path.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("phase:     recovered"));
    assert!(std::fs::read(&disk).unwrap()[..img.len()] == img[..]);
    let out = run(&["logs"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("plan cli-1 recovered"));

    // A broken plan file is one line naming the file and line; a wrong key is one line too:
    // another node's agent key (its replies do not verify) and a signing key the agent does not
    // trust (it does not answer).
    std::fs::write(&plan_path, plan_text.replace("size = ", "size = \"x")).unwrap();
    let out = run(&["recover", "--plan", plan_path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("plan.toml") && err.contains("line"), "{err}");
    let other = lab.path("other.key");
    lazarus_node::keyfile::generate(&other).unwrap();
    let (other_signing, other_public) = (lab.path("other-controller.key"), lab.path("other.pub"));
    lazarus_node::keyfile::generate_controller(&other_signing, &other_public).unwrap();
    for (agent_key, signing_key, why) in [
        (other.to_str().unwrap(), signing, "authentication failed"),
        (key, other_signing.to_str().unwrap(), ""),
    ] {
        let out = lazarus(&[
            "agent",
            "status",
            "--timeout",
            "3",
            "--addr",
            &agent.addr,
            "--agent-key",
            agent_key,
            "--signing-key",
            signing_key,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(why), "{err}");
    }
}
