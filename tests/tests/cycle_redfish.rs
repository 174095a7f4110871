//! The whole repair on the real boot path: two libvirt domains (OVMF, TCG) run the lab's Debian
//! worker from their own disks behind a Redfish BMC (sushy-tools' libvirt driver); the worker
//! dies and its disk is wrecked; `lazarus serve` fences it through Redfish, promotes the standby,
//! makes a rescue ISO for this repair alone (the public base initramfs and a part holding a key
//! made for the repair), inserts it from a single-use URL it serves itself, boots it once, drives the agent to rewrite the disk
//! over NFS and restore the worker's business files from its last backup, ejects the ISO, and
//! the node boots Debian from its own disk through systemd-boot, reads its flag, and rejoins as a
//! standby serving the files of its last backup.

use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lazarus_controller::api_client::ApiClient;
use lazarus_e2e::libvirt::{DomainSpec, VirtLab, REDFISH_PORT};
use lazarus_e2e::*;
use lazarus_testkit::require;
use sha2::Digest;

/// name, role, tap, MAC, disk serial, address (DHCP), rescue address.
const NODES: [(&str, &str, &str, &str, &str, &str, &str); 2] = [
    (
        "w1",
        "worker",
        "tw1",
        "52:54:00:4c:5a:81",
        "LZW1",
        "10.77.0.81",
        "10.77.0.181",
    ),
    (
        "s1",
        "standby",
        "ts1",
        "52:54:00:4c:5a:82",
        "LZS1",
        "10.77.0.82",
        "10.77.0.182",
    ),
];

fn wait_for(what: &str, timeout: Duration, dir: &std::path::Path, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < timeout,
            "{what} not seen within {timeout:?}; see {}\n{}",
            dir.display(),
            std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("lab: {what} after {:.0} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_dead_debian_worker_is_fenced_replaced_rebuilt_through_redfish_and_rejoins_as_a_standby() {
    let test =
        "a_dead_debian_worker_is_fenced_replaced_rebuilt_through_redfish_and_rejoins_as_a_standby";
    if !require(test, libvirt::redfish_lab_available())
        || !require(
            test,
            lazarus_testkit::program("bmaptool", "scripts/test installs bmap-tools"),
        )
    {
        return;
    }
    let run = RunDir::new("cycle-redfish").unwrap();
    let dir = &run.path;
    let art = artifacts(dir).unwrap();
    let tree = debian::tree(&target_dir().join("lab")).unwrap();
    let lazarus = lazarus_bin().unwrap();
    let export = dir.join("export");
    std::fs::create_dir_all(export.join("images")).unwrap();
    std::fs::create_dir_all(export.join("backups")).unwrap();
    let backups_src = format!("{HOST_IP}:/backups");

    // The golden image: Debian and the node's services, nothing of any one node.
    let image = export.join("images/worker.img");
    debian::build_disk(&debian::DiskSpec {
        tree: &tree,
        lazarus: &lazarus,
        node_files: &[],
        backups: &backups_src,
        out: &image,
        len_mib: debian::IMAGE_MIB,
        work: &dir.join("build"),
        rescue: None,
    })
    .unwrap();
    let bmap = export.join("images/worker.img.bmap");
    let out = std::process::Command::new("bmaptool")
        .args(["create", "-o"])
        .arg(&bmap)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = lazarus_proto::hex::encode;
    let image_sha = hex(&sha2::Sha256::digest(std::fs::read(&image).unwrap()));
    let bmap_sha = hex(&sha2::Sha256::digest(std::fs::read(&bmap).unwrap()));
    let image_len = std::fs::metadata(&image).unwrap().len();

    // Each node's own disk: the same system, its name, its backup key and its business files.
    for (name, ..) in NODES {
        let orders = format!("the orders of {name}\n");
        let key = dir.join(format!("{name}-backup.key"));
        lazarus_node::keyfile::generate_backup(&key, &key.with_extension("pub")).unwrap();
        let key_text = std::fs::read(&key).unwrap();
        debian::build_disk(&debian::DiskSpec {
            tree: &tree,
            lazarus: &lazarus,
            node_files: &[
                ("etc/lazarus/node", format!("{name}\n").as_bytes()),
                ("etc/lazarus/backup.key", &key_text),
                ("srv/www/index.html", orders.as_bytes()),
            ],
            backups: &backups_src,
            out: &dir.join(format!("{name}.img")),
            len_mib: debian::DISK_MIB,
            work: &dir.join("build"),
            rescue: None,
        })
        .unwrap();
    }
    // Media made ahead of time: none. Each repair's ISO is made by the controller.
    let media = dir.join("media");
    std::fs::create_dir_all(&media).unwrap();

    let ns =
        Netns::create_bridged(&format!("lz-cyc-{}", std::process::id()), &["tw1", "ts1"]).unwrap();
    let _nfs = Nfs::start_with_backups(&ns, dir, &export).unwrap();
    let hosts: Vec<(&str, &str)> = NODES.iter().map(|n| (n.3, n.5)).collect();
    let _dhcp = Dhcp::start(&ns, dir, "br0", &hosts).unwrap();
    let mut lab = VirtLab::start(&ns, dir).unwrap();
    for (name, _, tap, mac, serial, ..) in NODES {
        lab.define(&DomainSpec {
            name,
            disk: &dir.join(format!("{name}.img")),
            disk_serial: serial,
            mac,
            tap,
            memory_mib: 768,
            serial_log: &dir.join(format!("{name}-serial.log")),
        })
        .unwrap();
        lab.virsh(&["start", name]).unwrap();
    }
    for (name, .., ip, _) in NODES {
        let service = format!("{ip}:{}", debian::SERVICE_PORT);
        wait_for(
            &format!("{name}'s Debian"),
            Duration::from_secs(400),
            dir,
            || http_get(&ns, &service, "/index.html").is_some(),
        );
    }
    wait_for("w1's first backup", Duration::from_secs(180), dir, || {
        std::fs::read_dir(export.join("backups/w1")).is_ok_and(|d| {
            d.flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
        })
    });

    // The controller.
    let hook = dir.join("promote.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$LAZARUS_FAILED $LAZARUS_PROMOTED\" >> {}/promotions\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let api = dir.join("api.sock");
    let mut nodes = String::new();
    for (name, role, _, mac, serial, ip, rip) in NODES {
        let system = lab.system(name).unwrap();
        nodes.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nmacs = [\"{mac}\"]\nimage = \"worker\"\n\
             health = {{ kind = \"http\", url = \"http://{ip}:{port}/index.html\" }}\n\
             boot = {{ provider = \"redfish\", endpoint = \"http://{HOST_IP}:{REDFISH_PORT}\", \
             insecure_http = true, system = \"{system}\", \
             image_url = \"{{rescue_iso_url}}\", cold_boot_after_detach = true }}\n\
             rescue = {{ address = \"{rip}\", prefix_len = 24 }}\ndisk = {{ serial = \"{serial}\" }}\n\
             restore = {{ partition = 2, fstype = \"ext4\", paths = [\"srv/www\", \"etc/lazarus\"], \
             backup_key = \"{backup_key}\" }}\n",
            port = debian::SERVICE_PORT,
            backup_key = std::fs::read_to_string(dir.join(format!("{name}-backup.pub")))
                .unwrap()
                .trim_end(),
        ));
    }
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[controller]\nready = \"{HOST_IP}:7461\"\nsigning_key = \"{signing}\"\n\
             agent_keys = \"{agents}\"\n\
             media = {{ listen = \"{HOST_IP}:7480\", dir = \"{media}\", rescue = {{ kernel = \"{kernel}\", \
             initramfs = \"{base}\", cmdline = \"console=ttyS0 panic=-1 lazarus.controller={HOST_IP}:7461\" }} }}\n\
             api = {{ socket = \"{api}\" }}\n\n\
             [policy]\nhealth_interval = \"2s\"\nhealth_timeout = \"1500ms\"\nfailure_threshold = 2\n\
             recovery_threshold = 1\npoll_interval = \"2s\"\n\n\
             [promotion]\ncommand = [\"{hook}\"]\n\n\
             [nfs]\nserver = \"{HOST_IP}\"\nexport = \"/export\"\n\n\
             [images.worker]\npath = \"images/worker.img\"\nformat = \"raw\"\nsize = {image_len}\n\
             sha256 = \"{image_sha}\"\nbmap = {{ path = \"images/worker.img.bmap\", sha256 = \"{bmap_sha}\" }}\n{nodes}",
            signing = art.signing_path.display(),
            // No node has a key of its own: each repair makes one.
            agents = art.agent_keys(dir, &[]).unwrap().display(),
            media = media.display(),
            kernel = art.vmlinuz.display(),
            base = art.base.display(),
            hook = hook.display(),
            api = api.display(),
        ),
    )
    .unwrap();
    let mut procs = lazarus_testkit::Reaped::default();
    procs.push(
        ns.command(&lazarus)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = |ns: &Netns| {
        let api = api.clone();
        ns.enter(move || ApiClient::unix(&api).status().ok())
            .ok()
            .flatten()
    };
    wait_for(
        "the controller's healthy cluster",
        Duration::from_secs(60),
        dir,
        || status(&ns).is_some_and(|s| s.nodes.iter().all(|n| n.state == "healthy")),
    );

    // w1 dies (power cut), and its disk is wrecked: partition table and boot sector gone.
    let started = Instant::now();
    lab.virsh(&["destroy", "w1"]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("w1.img"))
        .unwrap()
        .write_all_at(&vec![0xee; 4 << 20], 0)
        .unwrap();

    let events = |ns: &Netns| {
        let api = api.clone();
        ns.enter(move || ApiClient::unix(&api).events(Some("w1")).unwrap_or_default())
            .unwrap()
    };
    wait_for(
        "w1 rebuilt and healthy again",
        Duration::from_secs(1500),
        dir,
        || {
            events(&ns)
                .iter()
                .any(|e| e.from == "verifying" && e.to == "healthy")
        },
    );
    let took = started.elapsed();
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap();
    assert!(
        log.contains("w1: agent ready") && log.contains("this repair's medium"),
        "w1's agent did not speak with the repair's key:\n{log}"
    );
    wait_for(
        "the repair key's revocation",
        Duration::from_secs(30),
        dir,
        || {
            std::fs::read_to_string(dir.join("controller.log"))
                .is_ok_and(|l| l.contains("w1: the repair's agent key is revoked"))
        },
    );
    let s = status(&ns).unwrap();
    let role = |n: &str| s.nodes.iter().find(|x| x.name == n).map(|x| x.role);
    assert_eq!(role("s1"), Some(lazarus_controller::cluster::Role::Worker));
    assert_eq!(role("w1"), Some(lazarus_controller::cluster::Role::Standby));
    let promotions = std::fs::read_to_string(dir.join("promotions")).unwrap();
    assert!(promotions.starts_with("w1 s1"), "{promotions}");
    // Its files came from its last backup (the golden image has none), its flag says RECOVERED.
    let w1 = format!("{}:{}", NODES[0].5, debian::SERVICE_PORT);
    assert_eq!(
        http_get(&ns, &w1, "/index.html").as_deref(),
        Some("the orders of w1\n")
    );
    assert_eq!(
        http_get(&ns, &w1, "/lazarus-role").as_deref(),
        Some("standby\n"),
        "the rebuilt node did not read its flag as a standby"
    );
    // The disk holds the image where the image has data.
    let mut head = vec![0u8; 1 << 20];
    std::fs::File::open(dir.join("w1.img"))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    let mut want = vec![0u8; 1 << 20];
    std::fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut want, 0)
        .unwrap();
    assert!(head == want, "w1's first MiB is not the image's");
    let timeline = {
        let api = api.clone();
        ns.enter(move || ApiClient::unix(&api).events(None).unwrap_or_default())
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
}
