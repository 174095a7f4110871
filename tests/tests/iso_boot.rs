//! The rescue ISO (`lazarus_initramfs::iso`): built reproducibly without root, and booted through
//! real firmware to the agent's `Ready`: OVMF (UEFI) and SeaBIOS (legacy BIOS), each from a
//! virtual CD and from the same bytes as a raw disk (how a USB stick presents it).

use std::time::{Duration, Instant};

use lazarus_e2e::*;
use lazarus_initramfs::iso::{build_iso, check_tools, IsoOptions};
use lazarus_testkit::require;

/// OVMF alone takes about 10 s under TCG before the kernel starts; two guests may share 2 cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn lab_ready(test: &str) -> bool {
    require(test, available())
        && require(test, check_tools().map_err(|e| e.to_string()))
        && require(
            test,
            std::path::Path::new(OVMF_CODE)
                .exists()
                .then_some(())
                .ok_or_else(|| format!("{OVMF_CODE} is missing (scripts/test installs ovmf)")),
        )
}

/// Boots `image` with `firmware` from a CD, then from a disk, and waits for `Ready` each time.
fn boots_to_ready(name: &str, firmware: Firmware) {
    let run = RunDir::new(name).unwrap();
    let dir = &run.path;
    let art = artifacts(dir).unwrap();
    let guest_ip = "10.77.0.2";
    let image = dir.join("rescue.iso");
    build_iso(&IsoOptions {
        kernel: art.vmlinuz.clone(),
        initrds: vec![art.initramfs.clone()],
        cmdline: format!(
            "console=ttyS0 panic=-1 lazarus.ip={guest_ip}/{PREFIX} lazarus.controller={HOST_IP}:7461"
        ),
        output: image.clone(),
    })
    .unwrap();
    for as_disk in [false, true] {
        let how = if as_disk { "disk" } else { "cd" };
        let ns = Netns::create(&format!("lz-{name}-{how}-{}", std::process::id())).unwrap();
        let ready = receive_ready(&ns, &art).unwrap();
        let vm = Vm::boot(
            &ns,
            dir,
            &VmSpec {
                name: &format!("{name}-{how}"),
                disk: None,
                disk_serial: "",
                mac: "52:54:00:4c:5a:31",
                boot: VmBoot::Media {
                    image: &image,
                    firmware,
                    as_disk,
                },
                nvram: None,
            },
        )
        .unwrap();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while !ready.is_finished() {
            assert!(
                Instant::now() < deadline,
                "{firmware:?} from {how}: no Ready within {BOOT_TIMEOUT:?}\n{}\n{}",
                vm.command_line,
                vm.serial_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (ready, peer) = ready.join().unwrap().unwrap();
        eprintln!(
            "lab: {firmware:?} from {how}: Ready {:.1} s after QEMU started",
            vm.started.elapsed().as_secs_f64()
        );
        assert_eq!(
            peer.ip().to_string(),
            guest_ip,
            "the command line on the medium set the address: {ready:?}"
        );
        assert!(
            ready
                .identity
                .macs
                .contains(&"52:54:00:4c:5a:31".parse().unwrap()),
            "{ready:?}"
        );
        let log = vm.serial_log();
        assert!(
            log.contains("lazarus-agent") && log.contains("PID 1"),
            "the agent did not start as PID 1:\n{log}"
        );
    }
}

#[test]
fn the_rescue_iso_boots_to_ready_under_uefi_from_cd_and_from_disk() {
    if lab_ready("the_rescue_iso_boots_to_ready_under_uefi_from_cd_and_from_disk") {
        boots_to_ready("iso-uefi", Firmware::Uefi);
    }
}

#[test]
fn the_rescue_iso_boots_to_ready_under_bios_from_cd_and_from_disk() {
    if lab_ready("the_rescue_iso_boots_to_ready_under_bios_from_cd_and_from_disk") {
        boots_to_ready("iso-bios", Firmware::Bios);
    }
}

#[test]
fn the_rescue_iso_is_reproducible_and_built_without_root() {
    let test = "the_rescue_iso_is_reproducible_and_built_without_root";
    if !require(test, check_tools().map_err(|e| e.to_string()))
        || !require(test, lazarus_testkit::root("dropping to another user"))
    {
        return;
    }
    // Small stand-ins for the kernel and initramfs: the image does not look inside them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let kernel = dir.path().join("vmlinuz");
    let base = dir.path().join("base.img");
    let part = dir.path().join("node.img");
    std::fs::write(&kernel, lazarus_testkit::noise(300_000, 1)).unwrap();
    std::fs::write(&base, lazarus_testkit::noise(200_000, 2)).unwrap();
    std::fs::write(&part, lazarus_testkit::noise(1_000, 3)).unwrap();
    // As an unprivileged user (nobody), through the command operators run.
    let bin = mkrescue_bin();
    let build = |out: &str, cmdline: &str, parts: &[&std::path::Path]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("--kernel")
            .arg(&kernel)
            .args(["--cmdline", cmdline, "-o"])
            .arg(dir.path().join(out));
        for p in parts {
            cmd.arg("--initrd").arg(p);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(dir.path().join(out)).unwrap()
    };
    let a = build(
        "a.iso",
        "console=ttyS0 lazarus.ip=10.0.0.5/24",
        &[&base, &part],
    );
    std::thread::sleep(Duration::from_millis(1100));
    let b = build(
        "b.iso",
        "console=ttyS0 lazarus.ip=10.0.0.5/24",
        &[&base, &part],
    );
    assert!(a == b, "two builds from the same inputs differ");
    let c = build(
        "c.iso",
        "console=ttyS0 lazarus.ip=10.0.0.6/24",
        &[&base, &part],
    );
    assert!(a != c, "the command line did not change the image");
    let d = build("d.iso", "console=ttyS0 lazarus.ip=10.0.0.5/24", &[&base]);
    assert!(a != d, "the per-node part did not change the image");
    // Hybrid: an MBR boot signature for BIOS disks, an ISO 9660 volume for CDs.
    assert_eq!(&a[510..512], &[0x55, 0xaa], "no MBR boot signature");
    assert_eq!(
        &a[0x8001..0x8006],
        b"CD001",
        "no ISO 9660 volume descriptor"
    );
}

/// `lazarus-mkrescue`, built beside this package's binaries (on demand when tested alone).
fn mkrescue_bin() -> std::path::PathBuf {
    let bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_lazarus-lab")).with_file_name("lazarus-mkrescue");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "lazarus-initramfs",
                "--bin",
                "lazarus-mkrescue",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building lazarus-mkrescue");
    }
    bin
}
