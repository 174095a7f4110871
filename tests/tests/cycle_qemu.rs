//! The whole repair in the QEMU lab: two nodes boot their system from their own disks (the lab's
//! worker system reads its root filesystem from `/dev/vda1` and answers health checks); the
//! worker dies and its disk is wrecked; `lazarus serve` fences it, promotes the standby, has the
//! `command` boot provider boot it into the rescue initramfs, drives the agent to rewrite the disk
//! from nfs-ganesha, reboots it, and the node boots its restored system from its own disk and
//! passes its health check as a standby.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lazarus_controller::api_client;
use lazarus_e2e::disk;
use lazarus_e2e::*;
use sha2::Digest;

fn supervisor(dir: &Path, vmlinuz: &Path) -> String {
    format!(
        r#"#!/bin/sh
# run-node.sh NAME TAP MAC SERIAL IP RESCUE_IP: one machine; its mode file says what it boots.
name=$1 tap=$2 mac=$3 serial=$4 ip=$5 rip=$6 dir={dir}
while true; do
  mode=$(cat "$dir/$name.mode")
  case $mode in
    off) sleep 0.3; continue ;;
    rescue) initrd="$dir/initramfs.gz"; append="console=ttyS0 panic=-1 quiet lazarus.ip=$rip/24 lazarus.controller={host}:7461" ;;
    *) initrd="$dir/worker-initramfs.gz"; append="console=ttyS0 panic=-1 quiet lazarus.ip=$ip/24" ;;
  esac
  n=$(( $(cat "$dir/$name.boots" 2>/dev/null | wc -l) + 1 ))
  echo "$(date +%s) $mode" >> "$dir/$name.boots"
  qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -no-reboot -nodefaults \
    -serial "file:$dir/$name-$n-$mode.log" -kernel {kernel} -initrd "$initrd" -append "$append" \
    -netdev tap,id=n0,ifname=$tap,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=$mac \
    -drive file=$dir/$name.img,format=raw,if=none,id=d0,cache=writeback -device virtio-blk-pci,drive=d0,serial=$serial &
  echo $! > "$dir/$name.pid"
  wait $!
done
"#,
        dir = dir.display(),
        host = HOST_IP,
        kernel = vmlinuz.display()
    )
}

fn up(ns: &Netns, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
        .unwrap_or(false)
}

#[test]
fn a_dead_worker_vm_is_replaced_repaired_over_nfs_and_boots_back_as_a_standby() {
    if !lazarus_testkit::require(
        "a_dead_worker_vm_is_replaced_repaired_over_nfs_and_boots_back_as_a_standby",
        available(),
    ) {
        return;
    }
    let run = RunDir::new("full-cycle").unwrap();
    let dir = run.path.clone();
    let art = artifacts(&dir).unwrap();
    worker_initramfs(&art, &dir).unwrap();
    let worker = disk::worker_image(&dir).unwrap();
    let (export, sysroot, image) = (&worker.export, &worker.sysroot, &worker.bytes);
    let image_sha: [u8; 32] = sha2::Sha256::digest(image).into();
    for node in ["w1", "s1"] {
        disk::build(&dir.join(format!("{node}.img")), sysroot, disk::DISK_MIB).unwrap();
        std::fs::write(dir.join(format!("{node}.mode")), "worker").unwrap();
    }
    let script = dir.join("run-node.sh");
    std::fs::write(&script, supervisor(&dir, &art.vmlinuz)).unwrap();
    let hook = dir.join("promote.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$LAZARUS_FAILED $LAZARUS_PROMOTED\" >> {}/promotions\n",
            dir.display()
        ),
    )
    .unwrap();
    for f in [&script, &hook] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }

    let ns = Netns::create_bridged(&format!("lz-cycle-{}", std::process::id()), &["tw1", "ts1"])
        .unwrap();
    let _nfs = Nfs::start(&ns, &dir, export).unwrap();
    // The supervisors lead their own process groups, so their QEMU children go with them.
    let mut procs = lazarus_testkit::Reaped::default();
    for (name, tap, mac, serial, ip, rip) in [
        (
            "w1",
            "tw1",
            "52:54:00:4c:5a:11",
            "LZW1",
            "10.77.0.11",
            "10.77.0.111",
        ),
        (
            "s1",
            "ts1",
            "52:54:00:4c:5a:12",
            "LZS1",
            "10.77.0.12",
            "10.77.0.112",
        ),
    ] {
        procs.0.push(
            ns.command("sh")
                .process_group(0)
                .arg(&script)
                .args([name, tap, mac, serial, ip, rip])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(up(&ns, "10.77.0.11:8080") && up(&ns, "10.77.0.12:8080")) {
        assert!(
            Instant::now() < deadline,
            "the nodes never came up; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    let cmd = |node: &str, mode: &str, kill: bool| {
        let kill = if kill {
            format!(
                "; kill $(cat {d}/{node}.pid) 2>/dev/null; true",
                d = dir.display()
            )
        } else {
            String::new()
        };
        format!(
            r#"["sh", "-c", "echo {mode} > {d}/{node}.mode{kill}"]"#,
            d = dir.display()
        )
    };
    let config = dir.join("cluster.toml");
    let api = format!("{HOST_IP}:7470");
    let mut nodes = String::new();
    for (name, role, mac, serial, ip, rip) in [
        (
            "w1",
            "worker",
            "52:54:00:4c:5a:11",
            "LZW1",
            "10.77.0.11",
            "10.77.0.111",
        ),
        (
            "s1",
            "standby",
            "52:54:00:4c:5a:12",
            "LZS1",
            "10.77.0.12",
            "10.77.0.112",
        ),
    ] {
        nodes.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nmacs = [\"{mac}\"]\nimage = \"worker\"\n\
             health = {{ kind = \"tcp\", target = \"{ip}:8080\" }}\n\
             boot = {{ provider = \"command\", power_off = {off}, attach = {attach}, detach = {detach} }}\n\
             rescue = {{ address = \"{rip}\", prefix_len = 24 }}\ndisk = {{ serial = \"{serial}\" }}\n",
            off = cmd(name, "off", true),
            attach = cmd(name, "rescue", true),
            detach = cmd(name, "worker", false),
        ));
    }
    std::fs::write(
        &config,
        format!(
            "[controller]\napi = \"{api}\"\nready = \"{HOST_IP}:7461\"\nkey_file = \"{key}\"\n\n\
             [policy]\nhealth_interval = \"2s\"\nhealth_timeout = \"1s\"\nfailure_threshold = 2\nrecovery_threshold = 1\npoll_interval = \"1s\"\n\n\
             [promotion]\ncommand = [\"{hook}\"]\n\n[nfs]\nserver = \"{HOST_IP}\"\nexport = \"/export\"\n\n\
             [images.worker]\npath = \"images/worker.img\"\nformat = \"raw\"\nsize = {size}\nsha256 = \"{sha}\"\n{nodes}",
            key = art.key_path.display(),
            hook = hook.display(),
            size = image.len(),
            sha = image_sha.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        ),
    )
    .unwrap();
    let lazarus = target_dir().join("debug/lazarus");
    procs.0.push(
        ns.command(&lazarus)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = |ns: &Netns| {
        let api = api.clone();
        ns.enter(move || api_client::status(&api).ok())
            .ok()
            .flatten()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status(&ns).is_some_and(|s| s.nodes.iter().all(|n| n.state == "healthy")) {
        assert!(
            Instant::now() < deadline,
            "controller not ready\n{}",
            std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // w1 dies, and its disk is wrecked.
    let started = Instant::now();
    std::fs::write(dir.join("w1.mode"), "off").unwrap();
    let pid = std::fs::read_to_string(dir.join("w1.pid")).unwrap();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("w1.img"))
        .unwrap()
        .write_all_at(&vec![0xee; 4 << 20], 0)
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let s = status(&ns);
        let events = {
            let api = api.clone();
            ns.enter(move || api_client::events(&api, Some("w1")).unwrap_or_default())
                .unwrap()
        };
        if events
            .iter()
            .any(|e| e.from == "verifying" && e.to == "healthy")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w1 was not repaired: {s:?}\n{}",
            std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let took = started.elapsed();
    let s = status(&ns).unwrap();
    let role = |n: &str| s.nodes.iter().find(|x| x.name == n).map(|x| x.role);
    assert_eq!(role("s1"), Some(lazarus_controller::cluster::Role::Worker));
    assert_eq!(role("w1"), Some(lazarus_controller::cluster::Role::Standby));
    assert_eq!(
        std::fs::read_to_string(dir.join("promotions")).unwrap(),
        "w1 s1\n"
    );
    assert!(
        up(&ns, "10.77.0.11:8080"),
        "w1's restored system does not answer"
    );
    let mut head = vec![0u8; image.len()];
    std::fs::File::open(dir.join("w1.img"))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    let got: [u8; 32] = sha2::Sha256::digest(&head).into();
    assert_eq!(got, image_sha, "w1's disk does not hold the image");
    let boots = std::fs::read_to_string(dir.join("w1.boots")).unwrap();
    let modes: Vec<&str> = boots
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(modes, ["worker", "rescue", "worker"], "w1 booted {modes:?}");
    let timeline = {
        let api = api.clone();
        ns.enter(move || api_client::events(&api, None).unwrap_or_default())
            .unwrap()
    };
    let t0 = timeline.first().map_or(0, |e| e.time);
    eprintln!("lab: full cycle in {:.0} s:", took.as_secs_f64());
    for e in timeline {
        eprintln!(
            "  +{:>4}s {:<3} {} -> {}: {}",
            e.time - t0,
            e.node,
            e.from,
            e.to,
            e.reason
        );
    }
    for name in ["w1", "s1"] {
        std::fs::write(dir.join(format!("{name}.mode")), "off").unwrap();
        let pid = std::fs::read_to_string(dir.join(format!("{name}.pid"))).unwrap_or_default();
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}
