//! Per-repair media, end to end with real processes: `lazarus serve` makes a repair's own agent
//! key at attach and serves the public base initramfs with that key's part appended at a random
//! URL; the test plays the node's firmware (fetches the medium the provider was handed, takes
//! the key out of it as the kernel would, and boots the host-mode agent with it). The URL serves
//! its first client alone, dies when the agent has announced itself, and the key is revoked when
//! the repair ends: an announcement made with it afterwards is not acknowledged.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use lazarus_controller::api::StatusView;
use lazarus_controller::api_client::ApiClient;
use lazarus_proto::frame::{read_frame, seal_announce};
use lazarus_proto::*;

const MIB: usize = 1 << 20;
const MAC: &str = "52:54:00:00:50:01";

fn state_of(s: &StatusView, node: &str) -> String {
    s.nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.state.clone())
        .unwrap_or_default()
}

fn wait_until(what: &str, log: &Path, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A GET of `url` from the address `from`: the status and body.
fn get_from(from: &str, url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = connect_from(from, host.parse().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&reply[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, reply[split + 4..].to_vec())
}

/// The agent key in an initramfs's last (uncompressed newc) archive, as the kernel unpacks it.
fn key_in(initrd: &[u8]) -> Vec<u8> {
    let name = b"etc/lazarus/agent.key\0";
    let at = initrd
        .windows(name.len())
        .rposition(|w| w == name)
        .expect("the medium holds an agent key");
    let header = at - 110;
    assert_eq!(&initrd[header..header + 6], b"070701", "a newc header");
    let field = |i: usize| {
        let hex = std::str::from_utf8(&initrd[header + 6 + 8 * i..header + 14 + 8 * i]).unwrap();
        usize::from_str_radix(hex, 16).unwrap()
    };
    let (size, namesize) = (field(6), field(11));
    let data = (at + namesize).next_multiple_of(4);
    initrd[data..data + size].to_vec()
}

/// Whether the controller acknowledges a `Ready` of the node sealed under `key`.
fn acknowledged(ready: SocketAddr, key: &AgentKey) -> bool {
    let boot = BootId([0x5a; 16]);
    let body = Response::Ready(Ready {
        boot_id: boot,
        identity: Identity {
            macs: vec![MAC.parse().unwrap()],
            address: Some("127.0.0.43".parse().unwrap()),
            ..Identity::default()
        },
        flag: None,
        agent_version: "test".into(),
    });
    let frame = seal_announce(key, boot, 1, &body).unwrap().0;
    let mut s = std::net::TcpStream::connect(ready).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&frame).unwrap();
    read_frame(&mut s).is_ok()
}

#[test]
fn a_repair_medium_holds_its_own_key_serves_one_client_and_dies_with_the_repair() {
    let lab = Lab::new();
    let img = noise(2 * MIB, 31);
    lab.image("worker.img", &img);
    let disk = lab.path("w1-disk.img");
    std::fs::write(&disk, noise(3 * MIB, 32)).unwrap();
    let flag = lab.flag("w1-flag.img");
    // What the controller assembles media from. Not booted here (the host-mode agent plays the
    // booted medium): only their bytes are checked. 1001 bytes: the part is padded to 4.
    let kernel = lab.path("vmlinuz");
    std::fs::write(&kernel, noise(300_001, 33)).unwrap();
    let base = lab.path("base.img");
    std::fs::write(&base, noise(1001, 34)).unwrap();
    let media_dir = lab.path("media");
    std::fs::create_dir_all(&media_dir).unwrap();
    let urls_file = lab.path("urls");
    let api = lab.path("api.sock").display().to_string();
    let ready: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let media_port = free_port("127.0.0.1");
    let s1_health = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = lab.path("cluster.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[controller]
api = {{ socket = "{api}" }}
ready = "{ready}"
{keys}media = {{ listen = "127.0.0.1:{media_port}", dir = "{media_dir}", rescue = {{ kernel = "{kernel}", initramfs = "{base}", ttl = "10m" }} }}

[policy]
health_interval = "500ms"
health_timeout = "300ms"
failure_threshold = 2
recovery_threshold = 1
poll_interval = "300ms"
{image}{w1}{s1}"#,
            // w1 has no key file: its media are made per repair.
            keys = lab.key_config(&["s1"]),
            media_dir = media_dir.display(),
            kernel = kernel.display(),
            base = base.display(),
            image = worker_image_toml("format = \"raw\"", img.len(), sha(&img)),
            w1 = worker_toml(
                "w1",
                MAC,
                &lab.path("w1-up"),
                &format!(
                    "echo {{rescue_initrd_url}} {{rescue_kernel_url}} > {}",
                    urls_file.display()
                ),
                "127.0.0.41",
                &disk,
                &flag
            ),
            s1 = standby_toml(
                "s1",
                "52:54:00:00:50:02",
                &format!(
                    "{{ kind = \"tcp\", target = \"{}\" }}",
                    s1_health.local_addr().unwrap()
                ),
                "127.0.0.42"
            ),
        ),
    )
    .unwrap();
    std::fs::write(lab.path("w1-up"), "").unwrap();
    let data = lab.path("data");
    let log = lab.path("controller.log");
    let mut procs = lazarus_testkit::Reaped::default();
    procs.push(serve(&config, &data, &log));
    let status = || ApiClient::unix(&api).status().ok();
    wait_until("a healthy cluster", &log, || {
        status().is_some_and(|s| s.nodes.iter().all(|n| n.state == "healthy"))
    });

    // w1 dies; the attach hands its provider the URLs of a medium made for this repair.
    std::fs::remove_file(lab.path("w1-up")).unwrap();
    wait_until("the attach", &log, || {
        std::fs::read_to_string(&urls_file).is_ok_and(|u| u.ends_with('\n'))
    });
    let urls = std::fs::read_to_string(&urls_file).unwrap();
    let (initrd_url, kernel_url) = urls.trim().split_once(' ').unwrap();
    assert!(
        initrd_url.starts_with(&format!("http://127.0.0.1:{media_port}/r/")),
        "{initrd_url}"
    );

    // The firmware fetches it: the public base, then a part holding the repair's own key.
    let (code, initrd) = get_from("127.0.0.1", initrd_url);
    assert_eq!(code, 200);
    let base_bytes = std::fs::read(&base).unwrap();
    assert!(initrd.starts_with(&base_bytes), "the base comes first");
    let key_text = key_in(&initrd);
    let repair_key = AgentKey::from_hex(std::str::from_utf8(&key_text).unwrap().trim()).unwrap();
    assert_ne!(repair_key, lab.key, "the repair has a key of its own");
    assert_eq!(
        get_from("127.0.0.1", kernel_url),
        (200, std::fs::read(&kernel).unwrap())
    );
    // The URL belongs to its first client: another address, or a guessed token, gets nothing.
    assert_eq!(get_from("127.0.0.2", initrd_url).0, 404);
    let guessed = format!(
        "{}{}",
        &initrd_url[..initrd_url.len() - 43],
        "0123456789abcdef0123456789abcdef/initrd.img"
    );
    assert_eq!(get_from("127.0.0.1", &guessed).0, 404, "{guessed}");

    // It "boots": the agent runs with the key the medium held.
    let key_file = lab.path("repair.key");
    std::fs::write(&key_file, &key_text).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    procs.push(
        std::process::Command::new(agent_bin())
            .args([
                "serve",
                "--host",
                "--listen",
                "127.0.0.41:7460",
                "--key-file",
            ])
            .arg(&key_file)
            .arg("--controller-pub")
            .arg(&lab.public_path)
            .arg("--workdir")
            .arg(lab.path("w1-work"))
            .arg("--export-dir")
            .arg(&lab.export)
            .arg("--flag")
            .arg(&flag)
            .args(["--controller", &ready.to_string(), "--mac", MAC])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.path("w1-agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("w1's recovery", &log, || {
        status().is_some_and(|s| {
            matches!(
                state_of(&s, "w1").as_str(),
                "recovering" | "detaching" | "rebooting" | "verifying"
            )
        })
    });
    // Its agent announced itself with the key: the medium has done its work and is gone.
    assert_eq!(get_from("127.0.0.1", initrd_url).0, 404);
    assert_eq!(
        std::fs::read_dir(data.join("media")).unwrap().count(),
        0,
        "the medium's files were not deleted"
    );

    // The node comes back up once the agent has rebooted it.
    wait_until("w1 healthy again", &log, || {
        let s = status().map(|s| state_of(&s, "w1")).unwrap_or_default();
        if s == "verifying" || s == "rebooting" {
            let _ = std::fs::write(lab.path("w1-up"), "");
        }
        s == "healthy"
    });
    assert!(
        std::fs::read(&disk).unwrap()[..img.len()] == img[..],
        "w1's disk does not hold the image"
    );
    assert_eq!(flag_json(&flag)["state"], "recovered");
    wait_until("the key's revocation", &log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("w1: the repair's agent key is revoked")
    });
    // Revoked: an announcement made with it is not acknowledged, and the store forgets it.
    assert!(!acknowledged(ready, &repair_key));
    wait_until("the refusal's reason", &log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ignoring an announcement for w1 from 127.0.0.1:")
    });
    drop(procs);
    let store = lazarus_controller::store::Store::open(&data).unwrap();
    assert!(store.repair_keys().unwrap().is_empty());
}
