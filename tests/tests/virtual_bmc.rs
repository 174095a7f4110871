//! The controller's Redfish provider against a BMC that really boots things: sushy-tools with its
//! libvirt driver in front of a libvirt domain (OVMF, TCG) whose disk holds the lab's Debian
//! worker. Power on boots Debian through systemd-boot; `attach` inserts the rescue ISO, sets a
//! one-time boot from CD and restarts the node: the rescue agent announces `Ready`; `power_off`
//! fences it; `detach` ejects the ISO and clears the override (the emulator keeps a "Once"
//! override as continuous), so the next power-on boots Debian from its own disk again.
//! (This emulator applies media and boot order only at power-on: a reboot from inside the guest
//! boots the ISO again. Hence the provider's `cold_boot_after_detach`.)

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lazarus_controller::redfish::{Bmc, BmcOptions};
use lazarus_e2e::libvirt::{DomainSpec, VirtLab, REDFISH_PORT};
use lazarus_e2e::*;
use lazarus_testkit::require;

const MAC: &str = "52:54:00:4c:5a:71";
const IP: &str = "10.77.0.71";
const TIMEOUT: Duration = Duration::from_secs(400);

fn wait_for(what: &str, log: &std::path::Path, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < TIMEOUT,
            "{what} not seen within {TIMEOUT:?}; serial log:\n{}",
            String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("lab: {what} after {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn redfish_fences_boots_the_rescue_iso_once_and_a_power_cycle_returns_the_node_to_its_debian_disk()
{
    let test =
        "redfish_fences_boots_the_rescue_iso_once_and_a_power_cycle_returns_the_node_to_its_debian_disk";
    if !require(test, libvirt::redfish_lab_available()) {
        return;
    }
    let run = RunDir::new("virtual-bmc").unwrap();
    let dir = &run.path;
    let art = artifacts(dir).unwrap();
    let tree = debian::tree(&target_dir().join("lab")).unwrap();
    let lazarus = lazarus_bin().unwrap();
    let export = dir.join("export");
    std::fs::create_dir_all(export.join("backups")).unwrap();
    let disk = dir.join("w1.img");
    debian::build_disk(&debian::DiskSpec {
        tree: &tree,
        lazarus: &lazarus,
        node_files: &[
            ("etc/lazarus/node", b"w1\n"),
            ("srv/www/index.html", b"the orders of w1\n"),
        ],
        backups: &format!("{HOST_IP}:/backups"),
        out: &disk,
        len_mib: debian::DISK_MIB,
        work: &dir.join("build"),
        rescue: None,
    })
    .unwrap();
    let media = rescue_media(&art, dir).unwrap();

    let ns = Netns::create_bridged(&format!("lz-bmc-{}", std::process::id()), &["tw1"]).unwrap();
    let _nfs = Nfs::start_with_backups(&ns, dir, &export).unwrap();
    let _dhcp = Dhcp::start(&ns, dir, "br0", &[(MAC, IP)]).unwrap();
    let mut served = lazarus_testkit::Reaped::default();
    served.push(
        ns.command("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                HOST_IP,
                "8081",
                "--directory",
            ])
            .arg(&media)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lab = VirtLab::start(&ns, dir).unwrap();
    let serial = dir.join("w1-serial.log");
    lab.define(&DomainSpec {
        name: "w1",
        disk: &disk,
        disk_serial: "LZW1",
        mac: MAC,
        tap: "tw1",
        memory_mib: 768,
        serial_log: &serial,
    })
    .unwrap();
    // The lab's emulator speaks plain http inside the test's own namespace.
    let bmc = Bmc::new(&BmcOptions {
        endpoint: format!("http://{HOST_IP}:{REDFISH_PORT}"),
        system: lab.system("w1").unwrap(),
        insecure_http: true,
        ..Default::default()
    })
    .unwrap();
    let budget = Duration::from_secs(120);
    let in_ns = |f: Box<dyn FnOnce() + Send>| ns.enter(f).unwrap();
    let service = format!("{IP}:{}", debian::SERVICE_PORT);

    // 1. Powered on through Redfish (no media, no override): Debian from its own disk.
    {
        let b = bmc.clone();
        in_ns(Box::new(move || {
            let op = b.within(budget);
            op.detach().unwrap();
            op.power_on().unwrap();
        }));
    }
    wait_for("Debian's business service", &serial, || {
        http_get(&ns, &service, "/index.html").is_some()
    });

    // 2. Fenced, then booted into the rescue ISO once: the agent announces Ready.
    let ready = receive_ready(&ns, &art).unwrap();
    {
        let b = bmc.clone();
        in_ns(Box::new(move || {
            b.within(budget).power_off().unwrap();
            assert_eq!(b.within(budget).power_state().unwrap(), "Off");
            b.within(budget)
                .attach(&format!("http://{HOST_IP}:8081/rescue.iso"))
                .unwrap();
        }));
    }
    wait_for("the rescue agent's Ready", &serial, || ready.is_finished());
    let (r, peer) = ready.join().unwrap().unwrap();
    assert_eq!(peer.ip().to_string(), IP, "{r:?}");
    assert!(r.identity.macs.contains(&MAC.parse().unwrap()), "{r:?}");

    // 3. Detached (ISO ejected, override cleared) and power-cycled, as the provider does with
    // `cold_boot_after_detach`: this emulator applies media and boot order only at power-on (a
    // reboot from inside the guest boots the ISO again, tried). Debian again, from the disk.
    std::fs::write(&serial, "").unwrap();
    {
        let b = bmc.clone();
        in_ns(Box::new(move || {
            let op = b.within(budget);
            op.detach().unwrap();
            op.power_off().unwrap();
            op.power_on().unwrap();
        }));
    }
    wait_for(
        "Debian's business service after the rescue boot",
        &serial,
        || http_get(&ns, &service, "/index.html").is_some(),
    );
    let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
    assert!(
        !log.contains("lazarus-agent"),
        "the rescue ISO booted again after detach:\n{log}"
    );
}
