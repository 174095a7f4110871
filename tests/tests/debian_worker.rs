//! The lab's real worker (`lazarus_e2e::debian`): a Debian 12 disk built with mmdebstrap boots
//! under OVMF through systemd-boot into systemd, gets its address by DHCP, serves its business
//! files, backs them up to the NFS share with `lazarus backup` on a timer, and reads its flag
//! partition at boot: a disk whose flag says RECOVERED comes back as a standby.

use std::time::{Duration, Instant};

use lazarus_e2e::*;
use lazarus_testkit::require;

const MAC: &str = "52:54:00:4c:5a:61";
const IP: &str = "10.77.0.61";
/// OVMF, systemd-boot, the kernel and systemd under software emulation: about a minute.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

#[test]
fn the_debian_worker_boots_serves_backs_up_and_knows_a_recovered_flag_makes_it_a_standby() {
    let test =
        "the_debian_worker_boots_serves_backs_up_and_knows_a_recovered_flag_makes_it_a_standby";
    if !require(test, available()) || !require(test, debian::available()) {
        return;
    }
    let run = RunDir::new("debian-worker").unwrap();
    let dir = &run.path;
    let started = Instant::now();
    let tree = debian::tree(&target_dir().join("lab")).unwrap();
    eprintln!(
        "lab: Debian tree {} ready in {:.1} s",
        tree.display(),
        started.elapsed().as_secs_f64()
    );
    let lazarus = lazarus_bin().unwrap();
    let export = dir.join("export");
    std::fs::create_dir_all(export.join("backups")).unwrap();
    let disk = dir.join("w9.img");
    let started = Instant::now();
    let key = dir.join("w9-backup.key");
    lazarus_node::keyfile::generate_backup(&key, &key.with_extension("pub")).unwrap();
    let key_text = std::fs::read(&key).unwrap();
    debian::build_disk(&debian::DiskSpec {
        tree: &tree,
        lazarus: &lazarus,
        node_files: &[
            ("etc/lazarus/node", b"w9\n"),
            ("etc/lazarus/backup.key", &key_text),
            ("srv/www/index.html", b"the orders of w9\n"),
        ],
        backups: &format!("{HOST_IP}:/backups"),
        out: &disk,
        len_mib: debian::DISK_MIB,
        work: &dir.join("build"),
        rescue: None,
    })
    .unwrap();
    eprintln!(
        "lab: w9's disk assembled in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let ns = Netns::create(&format!("lz-debian-{}", std::process::id())).unwrap();
    let _nfs = Nfs::start_with_backups(&ns, dir, &export).unwrap();
    let _dhcp = Dhcp::start(&ns, dir, "tap0", &[(MAC, IP)]).unwrap();
    let service = format!("{IP}:{}", debian::SERVICE_PORT);
    let boot = |name: &str| {
        Vm::boot(
            &ns,
            dir,
            &VmSpec {
                name,
                disk: Some(&disk),
                disk_serial: "LZW9",
                mac: MAC,
                boot: VmBoot::Disk {
                    firmware: Firmware::Uefi,
                },
                nvram: None,
            },
        )
        .unwrap()
    };

    // 1. As built: a worker that serves its files and backs them up.
    let mut vm = boot("w9-first");
    vm.wait_for("the business service", BOOT_TIMEOUT, || {
        http_get(&ns, &service, "/index.html").is_some()
    });
    assert_eq!(
        http_get(&ns, &service, "/index.html").as_deref(),
        Some("the orders of w9\n")
    );
    assert_eq!(
        http_get(&ns, &service, "/lazarus-role").as_deref(),
        Some("worker\n"),
        "a disk with an empty flag is a worker"
    );
    let backups = export.join("backups/w9");
    vm.wait_for("a backup of w9 on the share", BOOT_TIMEOUT, || {
        std::fs::read_dir(&backups).is_ok_and(|d| {
            d.flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
        })
    });
    vm.kill();

    // 2. The flag says RECOVERED (as the agent leaves it): the node comes back as a standby.
    // Written into a file of the partition's size, then into the disk at the partition's offset
    // (this host's kernel registers no GPT partitions on loop devices).
    let flag = dir.join("flag.img");
    for args in [
        vec!["flag", "init", flag.to_str().unwrap()],
        vec![
            "flag",
            "set",
            flag.to_str().unwrap(),
            "--state",
            "recovered",
            "--plan-id",
            "lab-1",
        ],
    ] {
        let out = std::process::Command::new(&lazarus)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&disk).unwrap(),
        &std::fs::read(&flag).unwrap()[..1 << 20],
        debian::FLAG_OFFSET,
    )
    .unwrap();
    let vm = boot("w9-restored");
    vm.wait_for("the business service after the flag", BOOT_TIMEOUT, || {
        http_get(&ns, &service, "/lazarus-role").is_some()
    });
    assert_eq!(
        http_get(&ns, &service, "/lazarus-role").as_deref(),
        Some("standby\n"),
        "a disk whose flag says RECOVERED is a standby"
    );
}
