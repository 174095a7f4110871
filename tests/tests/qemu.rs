//! The rescue boot, end to end: the stock Debian kernel boots our initramfs in QEMU (software
//! emulation) inside a network namespace, the agent runs as PID 1, announces `Ready`, and is
//! driven over the real protocol to rewrite the node's disk from nfs-ganesha, restore business
//! files, and reboot. Then the host inspects the disk.

use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use lazarus_controller::agent_client::AgentClient;
use lazarus_e2e::disk::{self, FLAG_OFFSET, MIB};
use lazarus_e2e::*;
use lazarus_proto::flag::{FlagRecord, FlagState, SlotsView};
use lazarus_proto::*;
use sha2::Digest;

const GUEST_IP: &str = "10.77.0.2";
const MAC: &str = "52:54:00:4c:5a:01";
/// Software emulation on two cores: boots take tens of seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const PLAN_TIMEOUT: Duration = Duration::from_secs(300);

fn sha(data: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(data).into())
}

fn flag_on(disk: &Path) -> FlagRecord {
    let mut slots = vec![0u8; 8192];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut slots, FLAG_OFFSET)
        .unwrap();
    SlotsView::decode(&slots).record()
}

fn plan(id: &str, image: &[u8], restore: Option<RestoreSpec>) -> Plan {
    Plan {
        plan_id: id.into(),
        network: NetworkPlan {
            address: GUEST_IP.parse().unwrap(),
            prefix_len: PREFIX,
            gateway: None,
            interface: None,
        },
        nfs: NfsSource {
            server: HOST_IP.parse().unwrap(),
            export: "/export".into(),
            version: NfsVersion::V4_1,
            options: String::new(),
        },
        image: ImageSpec {
            path: "images/worker.img".into(),
            format: ImageFormat::Raw,
            size: image.len() as u64,
            sha256: sha(image),
            layout: ImageLayout::WholeDisk,
            bmap: None,
            index: None,
            mode: lazarus_proto::CopyMode::Auto,
        },
        target: DiskSelector {
            serial: Some("LZNODE01".into()),
            ..DiskSelector::default()
        },
        flag: FlagLocation::default(),
        restore,
        allow_weak_selector: false,
        restore_setid: false,
        unrestorable: lazarus_proto::Unrestorable::Warn,
        max_backup_bytes: lazarus_proto::DEFAULT_MAX_BACKUP_BYTES,
    }
}

fn wait_done(c: &mut AgentClient) -> Status {
    let deadline = Instant::now() + PLAN_TIMEOUT;
    loop {
        let s = c.status_of(&Request::GetStatus).expect("status");
        if s.phase != Phase::Recovering {
            return s;
        }
        assert!(Instant::now() < deadline, "plan did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn rescue_boot_rewrites_the_disk_over_nfs_restores_files_and_reboots() {
    if !lazarus_testkit::require(
        "rescue_boot_rewrites_the_disk_over_nfs_restores_files_and_reboots",
        available(),
    ) {
        return;
    }
    let run = RunDir::new("rescue-boot").unwrap();
    let dir = &run.path;
    let art = artifacts(dir).expect("building the kernel, agent and initramfs");
    eprintln!(
        "lab: static agent {} bytes, initramfs {} bytes",
        art.agent_bytes, art.initramfs_bytes
    );

    // The known-good system image and the node's business backup, on the NFS export.
    let worker = disk::worker_image(dir).unwrap();
    let (export, image) = (&worker.export, &worker.bytes);
    let business = dir.join("business");
    std::fs::create_dir_all(business.join("srv/app")).unwrap();
    std::fs::write(business.join("srv/app/orders.db"), b"order 1\norder 2\n").unwrap();
    std::fs::set_permissions(
        business.join("srv/app/orders.db"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("orders.db", business.join("srv/app/current")).unwrap();
    lazarus_node::backup::create_backup(&lazarus_node::backup::BackupRequest {
        node: &"node-1".parse().unwrap(),
        to: &export.join("backups"),
        root: &business,
        paths: &["srv".into()],
        now: 1_795_000_000,
        signing: Some(&backup_key()),
        exclude: &[],
    })
    .unwrap();

    // The failed node's disk: the same layout, old contents, a flag partition.
    let oldroot = dir.join("oldroot");
    std::fs::create_dir_all(&oldroot).unwrap();
    std::fs::write(oldroot.join("broken"), "yes").unwrap();
    let node_disk = dir.join("node-1.img");
    disk::build(&node_disk, &oldroot, disk::DISK_MIB).unwrap();

    let ns = Netns::create(&format!("lz-e2e-{}", std::process::id())).unwrap();
    let _nfs = Nfs::start(&ns, dir, export).unwrap();

    // The controller's side of Ready: listen inside the namespace.
    let ready = receive_ready(&ns, &art).unwrap();

    let mut vm = Vm::boot(
        &ns,
        dir,
        &VmSpec {
            name: "node-1",
            disk: Some(&node_disk),
            disk_serial: "LZNODE01",
            mac: MAC,
            boot: VmBoot::Direct {
                vmlinuz: &art.vmlinuz,
                initramfs: &art.initramfs,
                append: format!("lazarus.ip={GUEST_IP}/{PREFIX} lazarus.controller={HOST_IP}:7461"),
            },
            nvram: None,
        },
    )
    .unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !ready.is_finished() {
        assert!(
            Instant::now() < deadline,
            "no Ready within {BOOT_TIMEOUT:?}\n{}\n{}",
            vm.command_line,
            vm.serial_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ready, _) = ready.join().unwrap().unwrap();
    let to_ready = vm.started.elapsed();
    eprintln!(
        "lab: Ready {:.1} s after QEMU started",
        to_ready.as_secs_f64()
    );
    assert!(
        ready
            .identity
            .macs
            .contains(&MacAddr([0x52, 0x54, 0x00, 0x4c, 0x5a, 0x01])),
        "{ready:?}"
    );
    assert_eq!(ready.flag.as_ref().map(|f| f.state), Some(FlagState::None));

    let addr: SocketAddr = format!("{GUEST_IP}:{AGENT_PORT}").parse().unwrap();
    let (signing, key) = (art.signing.clone(), art.key.clone());
    let mut c = ns
        .enter(move || {
            AgentClient::connect(&addr.to_string(), signing, key, Duration::from_secs(60))
        })
        .unwrap()
        .unwrap();
    assert_eq!(c.boot_id(), ready.boot_id);

    // 1. A wrong digest: FAILED, the first MiB zeroed, the agent still answering.
    let mut bad = plan("e2e-bad-digest", image, None);
    bad.image.sha256.0[0] ^= 0xff;
    c.status_of(&Request::Recover(Box::new(bad))).unwrap();
    let s = wait_done(&mut c);
    assert_eq!(
        (s.phase, s.error.as_ref().map(|e| e.code)),
        (Phase::Failed, Some(504)),
        "{s:?}\n{}",
        vm.serial_log()
    );
    let f = flag_on(&node_disk);
    assert_eq!(
        (f.state, f.error_code, f.plan_id.as_str()),
        (FlagState::Failed, 504, "e2e-bad-digest")
    );
    let mut head = vec![0u8; MIB as usize];
    std::fs::File::open(&node_disk)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(
        head.iter().all(|&b| b == 0),
        "first MiB not zero after FAILED"
    );
    assert_eq!(
        c.status_of(&Request::GetStatus).unwrap().phase,
        Phase::Failed
    );

    // 2. The image alone: the disk then holds its bytes exactly.
    c.status_of(&Request::Recover(Box::new(plan("e2e-image", image, None))))
        .unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.phase, Phase::Recovered, "{s:?}\n{}", vm.serial_log());
    let mut written = vec![0u8; image.len()];
    std::fs::File::open(&node_disk)
        .unwrap()
        .read_exact_at(&mut written, 0)
        .unwrap();
    assert_eq!(
        sha(&written),
        sha(image),
        "the disk does not hold the image"
    );
    assert_eq!(
        (flag_on(&node_disk).state, flag_on(&node_disk).plan_id),
        (FlagState::Recovered, "e2e-image".to_string())
    );

    // 3. The whole repair: image and business files, then Reboot.
    let restore = RestoreSpec {
        backups_dir: "backups".into(),
        node: "node-1".parse().unwrap(),
        failure_time: 1_795_000_100,
        filesystem: RestoreFilesystem {
            partition: Some(1),
            fstype: FsType::Ext4,
            root: "/".into(),
        },
        paths: vec![],
        backup_key: Some(lazarus_proto::BackupKey(*backup_key().public().as_bytes())),
    };
    c.status_of(&Request::Recover(Box::new(plan(
        "e2e-repair",
        image,
        Some(restore),
    ))))
    .unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.phase, Phase::Recovered, "{s:?}\n{}", vm.serial_log());
    assert_eq!(
        c.status_of(&Request::Reboot).unwrap().phase,
        Phase::Rebooting
    );
    let exit = vm.wait_exit(Duration::from_secs(120));
    assert!(
        exit.is_some(),
        "QEMU did not exit after Reboot\n{}",
        vm.serial_log()
    );

    // On the host: the flag says RECOVERED with the plan id (read by the CLI, as the restored OS
    // would), and the business files are in the restored filesystem with their modes.
    let f = flag_on(&node_disk);
    assert_eq!(
        (f.state, f.plan_id.as_str()),
        (FlagState::Recovered, "e2e-repair")
    );
    let dev = std::process::Command::new("losetup")
        .args(["-f", "--show", "-P"])
        .arg(&node_disk)
        .output()
        .unwrap();
    let dev = String::from_utf8_lossy(&dev.stdout).trim().to_string();
    let _ = std::process::Command::new("partx")
        .args(["-a", &dev])
        .status();
    let cli = std::process::Command::new(std::env::var("LAZARUS_CLI").unwrap_or_else(|_| {
        lazarus_e2e::workspace()
            .join("target/debug/lazarus")
            .display()
            .to_string()
    }))
    .args(["flag", "show", "--json", &format!("{dev}p2")])
    .output();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-o", "ro", &format!("{dev}p1")])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    let check = || -> Result<(), String> {
        if !mounted {
            return Err("mounting the restored root failed".into());
        }
        let os = std::fs::read_to_string(mnt.join("etc/os-release")).map_err(|e| e.to_string())?;
        if os != "NAME=lazarus-worker\n" {
            return Err(format!("os-release: {os:?}"));
        }
        if mnt.join("broken").exists() {
            return Err("the old root survived".into());
        }
        let db = std::fs::read(mnt.join("srv/app/orders.db")).map_err(|e| e.to_string())?;
        if db != b"order 1\norder 2\n" {
            return Err("orders.db differs".into());
        }
        let mode = std::fs::metadata(mnt.join("srv/app/orders.db"))
            .map_err(|e| e.to_string())?
            .mode()
            & 0o7777;
        if mode != 0o640 {
            return Err(format!("orders.db mode {mode:o}"));
        }
        let link = std::fs::read_link(mnt.join("srv/app/current")).map_err(|e| e.to_string())?;
        if link != Path::new("orders.db") {
            return Err(format!("symlink {link:?}"));
        }
        Ok(())
    };
    let result = check();
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev])
        .status();
    result.unwrap();
    if let Ok(out) = cli {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("\"state\":\"recovered\"") && text.contains("e2e-repair"),
                "{text}"
            );
        }
    }
    eprintln!(
        "lab: kernel start to Ready {:.1} s; serial log:\n{}",
        to_ready.as_secs_f64(),
        vm.serial_log()
            .lines()
            .filter(|l| !l.contains("loaded module"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Boots node-1 from `node_disk` and waits for its Ready; returns the VM, the Ready and a client.
fn boot_node(
    ns: &Netns,
    dir: &Path,
    art: &Artifacts,
    node_disk: &Path,
) -> (Vm, Ready, AgentClient) {
    let ready = receive_ready(ns, art).unwrap();
    let vm = Vm::boot(
        ns,
        dir,
        &VmSpec {
            name: "node-1",
            disk: Some(node_disk),
            disk_serial: "LZNODE01",
            mac: MAC,
            boot: VmBoot::Direct {
                vmlinuz: &art.vmlinuz,
                initramfs: &art.initramfs,
                append: format!("lazarus.ip={GUEST_IP}/{PREFIX} lazarus.controller={HOST_IP}:7461"),
            },
            nvram: None,
        },
    )
    .unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !ready.is_finished() {
        assert!(
            Instant::now() < deadline,
            "no Ready within {BOOT_TIMEOUT:?}\n{}\n{}",
            vm.command_line,
            vm.serial_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ready, _) = ready.join().unwrap().unwrap();
    let addr: SocketAddr = format!("{GUEST_IP}:{AGENT_PORT}").parse().unwrap();
    let (signing, key) = (art.signing.clone(), art.key.clone());
    let c = ns
        .enter(move || {
            AgentClient::connect(&addr.to_string(), signing, key, Duration::from_secs(60))
        })
        .unwrap()
        .unwrap();
    (vm, ready, c)
}

/// Writes the worker image's chunk index beside it (1 MiB chunks: a checkpoint every 6 MiB of
/// this 48 MiB image) and returns a maker of plans that carry it.
fn indexed_plans(worker: &disk::WorkerImage) -> impl Fn(&str) -> Plan + '_ {
    let idx = lazarus_node::index::build(&worker.path, 1 << 20, 2)
        .unwrap()
        .encode();
    std::fs::write(worker.export.join("images/worker.idx"), &idx).unwrap();
    move |id: &str| {
        let mut p = plan(id, &worker.bytes, None);
        p.image.index = Some(IndexRef {
            path: "images/worker.idx".into(),
            sha256: sha(&idx),
        });
        p
    }
}

#[test]
fn a_vm_killed_mid_copy_resumes_after_reboot_and_ends_recovered() {
    if !lazarus_testkit::require(
        "a_vm_killed_mid_copy_resumes_after_reboot_and_ends_recovered",
        available(),
    ) {
        return;
    }
    let run = RunDir::new("resume").unwrap();
    let dir = &run.path;
    let art = artifacts(dir).expect("building the kernel, agent and initramfs");
    let worker = disk::worker_image(dir).unwrap();
    let (export, image) = (&worker.export, &worker.bytes);
    let with_index = indexed_plans(&worker);
    let oldroot = dir.join("oldroot");
    std::fs::create_dir_all(&oldroot).unwrap();
    std::fs::write(oldroot.join("broken"), "yes").unwrap();
    let node_disk = dir.join("node-1.img");
    disk::build(&node_disk, &oldroot, disk::DISK_MIB).unwrap();
    let ns = Netns::create(&format!("lz-e2e-r{}", std::process::id())).unwrap();
    let _nfs = Nfs::start(&ns, dir, export).unwrap();

    // 1. The copy starts; once a checkpoint is on the disk's flag, the plug is pulled.
    let (mut vm, _, mut c) = boot_node(&ns, dir, &art, &node_disk);
    c.status_of(&Request::Recover(Box::new(with_index("e2e-resume-1"))))
        .unwrap();
    let deadline = Instant::now() + PLAN_TIMEOUT;
    let cut_at = loop {
        let f = flag_on(&node_disk);
        if f.state == FlagState::Recovering && f.bytes_done > 0 {
            break f.bytes_done;
        }
        assert!(
            f.state != FlagState::Recovered && Instant::now() < deadline,
            "no checkpoint before the copy ended: {f:?}\n{}",
            vm.serial_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    vm.kill();
    let mut head = vec![0u8; MIB as usize];
    std::fs::File::open(&node_disk)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(
        head.iter().all(|&b| b == 0),
        "a disk cut off mid-copy has a header"
    );
    eprintln!(
        "lab: power cut with a checkpoint at {cut_at} of {} bytes",
        image.len()
    );

    // 2. Rebooted: the agent finds the interrupted attempt, and a new Recover of the same image
    //    reads back what the checkpoint covers and writes only the rest.
    let (mut vm, ready, mut c) = boot_node(&ns, dir, &art, &node_disk);
    assert_eq!(
        ready.flag.as_ref().map(|f| f.state),
        Some(FlagState::Recovering),
        "{ready:?}"
    );
    c.status_of(&Request::Recover(Box::new(with_index("e2e-resume-2"))))
        .unwrap();
    let s = wait_done(&mut c);
    assert_eq!(s.phase, Phase::Recovered, "{s:?}\n{}", vm.serial_log());
    eprintln!("lab: resumed run: {:?}", s.copy);
    assert!(s.copy.checked > 0, "nothing was read back: {:?}", s.copy);
    assert!(
        s.copy.written < image.len() as u64,
        "the resumed run rewrote everything: {:?}",
        s.copy
    );
    let mut written = vec![0u8; image.len()];
    std::fs::File::open(&node_disk)
        .unwrap()
        .read_exact_at(&mut written, 0)
        .unwrap();
    // (The flag partition lies past the image's 48 MiB.)
    assert!(
        written == *image,
        "the resumed disk does not hold the image"
    );
    let f = flag_on(&node_disk);
    assert_eq!(
        (f.state, f.plan_id.as_str()),
        (FlagState::Recovered, "e2e-resume-2")
    );
    vm.kill();
}

/// Waits until `done(status)` or `timeout`; returns the status and when it came.
fn wait_status(
    c: &mut AgentClient,
    timeout: Duration,
    done: impl Fn(&Status) -> bool,
) -> Option<(Status, Instant)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(s) = c.status_of(&Request::GetStatus) {
            if done(&s) {
                return Some((s, Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_vanished_nfs_server_pauses_the_copy_and_abort_works_while_a_read_is_blocked() {
    if !lazarus_testkit::require(
        "a_vanished_nfs_server_pauses_the_copy_and_abort_works_while_a_read_is_blocked",
        available(),
    ) {
        return;
    }
    let run = RunDir::new("stall").unwrap();
    let dir = &run.path;
    let art = artifacts(dir).expect("building the kernel, agent and initramfs");
    let worker = disk::worker_image(dir).unwrap();
    let (export, image) = (&worker.export, &worker.bytes);
    let with_index = indexed_plans(&worker);
    let full = |id: &str| {
        let mut p = with_index(id);
        p.image.mode = CopyMode::Full;
        p
    };
    let oldroot = dir.join("oldroot");
    std::fs::create_dir_all(&oldroot).unwrap();
    let node_disk = dir.join("node-1.img");
    disk::build(&node_disk, &oldroot, disk::DISK_MIB).unwrap();
    let ns = Netns::create(&format!("lz-e2e-s{}", std::process::id())).unwrap();
    let nfs = Nfs::start(&ns, dir, export).unwrap();
    let (vm, _, mut c) = boot_node(&ns, dir, &art, &node_disk);

    // 1. The server goes away mid-copy: a pause reported within 30 s, then the copy goes on
    //    when the server is back, and ends RECOVERED with the disk matching.
    c.status_of(&Request::Recover(Box::new(full("e2e-stall-1"))))
        .unwrap();
    let copying = |s: &Status| s.step == Some(Step::CopyImage) && s.copy.fetched > 0;
    wait_status(&mut c, PLAN_TIMEOUT, copying).expect("the copy never started");
    drop(nfs);
    let gone = Instant::now();
    let (s, at) = wait_status(&mut c, Duration::from_secs(60), |s| {
        s.copy.source_stalled_since.is_some() || s.phase != Phase::Recovering
    })
    .expect("no status");
    assert_eq!(s.phase, Phase::Recovering, "{s:?}\n{}", vm.serial_log());
    let reported = at - gone;
    eprintln!(
        "lab: stall reported {:.1} s after the server died",
        reported.as_secs_f64()
    );
    assert!(reported < Duration::from_secs(30), "{reported:?}");
    let nfs = Nfs::start(&ns, dir, export).unwrap();
    let back = Instant::now();
    let s = wait_done(&mut c);
    eprintln!(
        "lab: after the server came back, {:.1} s to {:?}: {:?}",
        back.elapsed().as_secs_f64(),
        s.phase,
        s.copy
    );
    assert_eq!(s.phase, Phase::Recovered, "{s:?}\n{}", vm.serial_log());
    let mut written = vec![0u8; image.len()];
    std::fs::File::open(&node_disk)
        .unwrap()
        .read_exact_at(&mut written, 0)
        .unwrap();
    assert!(written == *image, "the disk does not hold the image");

    // 2. Again, and this time Abort while the read is blocked: FAILED (507) within seconds.
    c.status_of(&Request::Recover(Box::new(full("e2e-stall-2"))))
        .unwrap();
    wait_status(&mut c, PLAN_TIMEOUT, copying).expect("the second copy never started");
    drop(nfs);
    wait_status(&mut c, Duration::from_secs(60), |s| {
        s.copy.source_stalled_since.is_some() || s.phase != Phase::Recovering
    })
    .expect("no stall");
    let asked = Instant::now();
    c.status_of(&Request::Abort).unwrap();
    let (s, at) = wait_status(&mut c, Duration::from_secs(60), |s| {
        s.phase != Phase::Recovering
    })
    .expect("the abort never took effect");
    let took = at - asked;
    eprintln!(
        "lab: Abort during a blocked read took {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(
        (s.phase, s.error.as_ref().map(|e| e.code)),
        (Phase::Failed, Some(507)),
        "{s:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let mut head = vec![0u8; MIB as usize];
    std::fs::File::open(&node_disk)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(
        head.iter().all(|&b| b == 0),
        "header not zeroed after the abort"
    );
}

/// node-1's backup key: `lazarus backup` signs with it; the plan carries its public half.
fn backup_key() -> lazarus_proto::SigningKey {
    lazarus_proto::SigningKey::from_seed([0x5b; 32])
}
