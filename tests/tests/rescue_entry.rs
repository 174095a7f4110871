//! The seed's rescue entry (`lazarus rescue install`, `lazarus rescue once`) on the lab's real
//! Debian worker: the rescue kernel sits on the node's own ESP beside its system entry and is
//! never booted by default; armed from the running system, the next boot (and only that one)
//! starts the rescue agent, which announces `Ready`; the boot after it is the node's own system
//! again. The node keeps its UEFI variables across the three boots, as a machine's NVRAM does.
//!
//! What the lab cannot show: Redfish `UefiTarget`/`UefiBootNext` (sushy-tools' libvirt driver
//! implements neither; see docs/controller.md).

use std::time::Duration;

use lazarus_e2e::*;
use lazarus_testkit::require;

const MAC: &str = "52:54:00:4c:5a:62";
const IP: &str = "10.77.0.62";
/// OVMF, systemd-boot, the kernel and systemd under software emulation: about a minute.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

#[test]
fn the_rescue_entry_boots_once_when_armed_from_the_running_node_and_never_by_default() {
    let test = "the_rescue_entry_boots_once_when_armed_from_the_running_node_and_never_by_default";
    if !require(test, available()) || !require(test, debian::available()) {
        return;
    }
    let run = RunDir::new("rescue-entry").unwrap();
    let dir = &run.path;
    let art = artifacts(dir).unwrap();
    let tree = debian::tree(&target_dir().join("lab")).unwrap();
    let lazarus = lazarus_bin().unwrap();
    let disk = dir.join("w8.img");
    let cmdline = format!("console=ttyS0 panic=-1 lazarus.controller={HOST_IP}:7461");
    debian::build_disk(&debian::DiskSpec {
        tree: &tree,
        lazarus: &lazarus,
        node_files: &[
            ("etc/lazarus/node", b"w8\n"),
            ("srv/www/index.html", b"the orders of w8\n"),
        ],
        backups: &format!("{HOST_IP}:/backups"),
        out: &disk,
        len_mib: debian::DISK_MIB,
        work: &dir.join("build"),
        rescue: Some(debian::Rescue {
            kernel: &art.vmlinuz,
            initramfs: &art.initramfs,
            cmdline: &cmdline,
        }),
    })
    .unwrap();

    let ns = Netns::create(&format!("lz-rentry-{}", std::process::id())).unwrap();
    let _dhcp = Dhcp::start(&ns, dir, "tap0", &[(MAC, IP)]).unwrap();
    let service = format!("{IP}:{}", debian::SERVICE_PORT);
    let boot = |name: &str| {
        Vm::boot(
            &ns,
            dir,
            &VmSpec {
                name,
                disk: Some(&disk),
                disk_serial: "LZW8",
                mac: MAC,
                boot: VmBoot::Disk {
                    firmware: Firmware::Uefi,
                },
                nvram: Some("w8"),
            },
        )
        .unwrap()
    };

    // 1. With the rescue entry on its ESP, the node boots its own system.
    let mut vm = boot("w8-first");
    vm.wait_for("the business service", BOOT_TIMEOUT, || {
        http_get(&ns, &service, "/index.html").is_some()
    });
    let agent_timeout = Duration::from_secs(120);
    let (code, out) = vm
        .guest_exec(&["/usr/local/bin/lazarus", "rescue", "once"], agent_timeout)
        .unwrap();
    assert_eq!(code, 0, "lazarus rescue once: {out}");
    assert!(out.contains("lazarus-rescue.conf"), "{out}");

    // 2. Rebooted by its own system, it starts the rescue agent, which announces itself.
    let ready = receive_ready(&ns, &art).unwrap();
    vm.guest_spawn(&["/usr/bin/systemctl", "reboot"], agent_timeout)
        .unwrap();
    assert!(
        vm.wait_exit(BOOT_TIMEOUT).is_some(),
        "the node did not reboot\n{}",
        vm.serial_log()
    );
    let vm = boot("w8-rescue");
    vm.wait_for("the rescue agent's Ready", BOOT_TIMEOUT, || {
        ready.is_finished()
    });
    let (ready, peer) = ready.join().unwrap().unwrap();
    assert_eq!(peer.ip().to_string(), IP, "{ready:?}");
    assert!(
        ready.identity.macs.contains(&MAC.parse().unwrap()),
        "{ready:?}"
    );
    assert!(
        vm.serial_log().contains("PID 1"),
        "the rescue agent did not start as PID 1:\n{}",
        vm.serial_log()
    );
    drop(vm); // power cut: the one-time entry was used up by the firmware's boot loader

    // 3. The next boot is the node's own system again.
    let vm = boot("w8-after");
    vm.wait_for(
        "the business service after the rescue boot",
        BOOT_TIMEOUT,
        || http_get(&ns, &service, "/index.html").is_some(),
    );
    assert_eq!(
        http_get(&ns, &service, "/index.html").as_deref(),
        Some("the orders of w8\n")
    );
}
