//! Shared helpers of the controller's integration tests: real agent processes in host mode.
#![allow(dead_code)]

pub mod repair_lab;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazarus_controller::agent_client::AgentClient;
use lazarus_proto::*;

/// The agent binary, built beside `lazarus` (asked of cargo every time: a binary left from an
/// older build would test old code).
pub fn agent_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "lazarus-agent",
                "--bin",
                "lazarus-agent",
            ])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building lazarus-agent");
    });
    Path::new(env!("CARGO_BIN_EXE_lazarus")).with_file_name("lazarus-agent")
}

pub fn lazarus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(args)
        .output()
        .unwrap()
}

/// `lazarus ARGS`, which must succeed: its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = lazarus(args);
    assert!(
        out.status.success(),
        "lazarus {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `lazarus ARGS`, which must fail as a bad input does: exit status 2, exactly one line on
/// stderr, nothing that looks like a panic. Returns that line.
pub fn fails(args: &[&str]) -> String {
    let out = lazarus(args);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "lazarus {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "lazarus {args:?} stderr: {err:?}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A TCP connection from `from` (any port) to `to`.
pub fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )?;
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    rustix::net::bind(&socket, &local)?;
    rustix::net::connect(&socket, &to)?;
    Ok(std::net::TcpStream::from(socket))
}

/// A free TCP port on `ip` (free when asked; the test binds it soon after).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The MACs of the nodes of [`two_node_cluster`].
pub const W1_MAC: &str = "52:54:00:00:40:00";
pub const S1_MAC: &str = "52:54:00:00:40:01";

/// Writes `cluster.toml` in the lab and returns its path: `[controller]` with the lines of
/// `controller` (api, ready) and the lab's keys, a quick health policy, and two nodes that stay
/// healthy, w1 (worker) and s1 (standby), with manual providers, rescued at `rescue`.
pub fn two_node_cluster(lab: &Lab, controller: &str, rescue: [&str; 2]) -> PathBuf {
    let mut nodes = String::new();
    for (name, role, mac, address) in [
        ("w1", "worker", W1_MAC, rescue[0]),
        ("s1", "standby", S1_MAC, rescue[1]),
    ] {
        nodes.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nmacs = [\"{mac}\"]\n\
             image = \"worker\"\nhealth = {{ kind = \"exec\", command = [\"true\"] }}\n\
             boot = {{ provider = \"manual\" }}\nrescue = {{ address = \"{address}\", prefix_len = 8 }}\n\
             disk = {{ path = \"/nonexistent\" }}\nallow_weak_selector = true\n"
        ));
    }
    let config = lab.path("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[controller]\n{controller}\n{keys}\n[policy]\n\
             health_interval = \"500ms\"\nhealth_timeout = \"300ms\"\n\n\
             [nfs]\nserver = \"127.0.0.1\"\nexport = \"/export\"\n\n\
             [images.worker]\npath = \"images/worker.img\"\nformat = \"raw\"\nsize = 1048576\n\
             sha256 = \"{sha}\"\n{nodes}",
            keys = lab.key_config(&["w1", "s1"]),
            sha = "00".repeat(32),
        ),
    )
    .unwrap();
    config
}

/// Starts `lazarus serve` with its log in `log`.
pub fn serve(config: &Path, data: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[allow(unused_imports)]
pub use lazarus_testkit::{is_root, noise, sha, Loop};

/// A lab folder: the controller's keys, an agent key, export dir (the "NFS export"), work dir.
pub struct Lab {
    pub dir: tempfile::TempDir,
    /// The controller's signing key file, and its public key file.
    pub signing_path: PathBuf,
    pub public_path: PathBuf,
    pub signing: SigningKey,
    /// The agent key of the lab's agents.
    pub key_path: PathBuf,
    pub key: AgentKey,
    pub export: PathBuf,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (signing_path, public_path) = (
            dir.path().join("controller.key"),
            dir.path().join("controller.pub"),
        );
        lazarus_node::keyfile::generate_controller(&signing_path, &public_path).unwrap();
        let key_path = dir.path().join("agent.key");
        lazarus_node::keyfile::generate(&key_path).unwrap();
        let key = lazarus_node::keyfile::load(&key_path).unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir_all(export.join("images")).unwrap();
        Self {
            signing: lazarus_node::keyfile::load_controller(&signing_path).unwrap(),
            dir,
            signing_path,
            public_path,
            key_path,
            key,
            export,
        }
    }

    /// `[controller]` key lines for a cluster file: the signing key, and an agent-key folder
    /// holding the lab's agent key for each of `nodes`.
    pub fn key_config(&self, nodes: &[&str]) -> String {
        let dir = self.path("agents");
        std::fs::create_dir_all(&dir).unwrap();
        for n in nodes {
            let path = dir.join(format!("{n}.key"));
            if !path.exists() {
                std::fs::copy(&self.key_path, path).unwrap();
            }
        }
        format!(
            "signing_key = \"{}\"\nagent_keys = \"{}\"\n",
            self.signing_path.display(),
            dir.display()
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a host-mode agent; `flag` is the flag it reads at start.
    pub fn agent(&self, flag: Option<&Path>, controller: Option<SocketAddr>) -> AgentProc {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["serve", "--host", "--listen", "127.0.0.1:0", "--key-file"])
            .arg(&self.key_path)
            .arg("--controller-pub")
            .arg(&self.public_path)
            .arg("--workdir")
            .arg(self.path("work"))
            .arg("--export-dir")
            .arg(&self.export)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(f) = flag {
            cmd.arg("--flag").arg(f);
        }
        if let Some(c) = controller {
            cmd.arg("--controller").arg(c.to_string());
        }
        let mut child = cmd.spawn().expect("starting lazarus-agent");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("agent did not start listening: {}", log.lock().unwrap()));
        AgentProc { child, addr, log }
    }

    pub fn client(&self, agent: &AgentProc) -> AgentClient {
        AgentClient::connect(
            &agent.addr,
            self.signing.clone(),
            self.key.clone(),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// A formatted flag file `NAME` in the lab folder.
    pub fn flag(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let out = lazarus(&["flag", "init", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// A named pipe in the export as `images/NAME`: an image the test feeds, so a copy can be held
    /// mid-way.
    pub fn fifo_image(&self, name: &str) -> PathBuf {
        let path = self.export.join("images").join(name);
        assert!(Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success());
        path
    }

    /// Puts `data` in the export as `images/NAME`.
    pub fn image(&self, name: &str, data: &[u8]) -> String {
        std::fs::write(self.export.join("images").join(name), data).unwrap();
        format!("images/{name}")
    }
}

/// The agents a test's "rescue boot" started, stopped by pid when the test ends (they exit by
/// themselves after Reboot). The attach command appends each agent's pid to `file`.
pub struct Agents {
    pub file: PathBuf,
}

impl Agents {
    /// A shell suffix for an attach command: `exec` so that `$!` is the agent itself.
    pub fn record(&self) -> String {
        format!("echo $! >> {}", self.file.display())
    }

    /// The pids of the agents started so far that still run the agent binary (a pid of an agent
    /// that has exited may have been given to another process since).
    pub fn running(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("lazarus-agent"))
            })
            .collect()
    }

    /// The one running agent.
    pub fn pid(&self) -> rustix::process::Pid {
        let pids = self.running();
        assert_eq!(pids.len(), 1, "one rescue agent runs: {pids:?}");
        rustix::process::Pid::from_raw(pids[0] as i32).unwrap()
    }

    /// The `attach` shell command of node `name`'s `command` boot provider: a host-mode agent of
    /// `lab` listening on `listen`, announcing `mac` to the controller's `ready` listener, reading
    /// and writing `flag`; its log in `NAME-agent.log`, its pid recorded here.
    pub fn attach(
        &self,
        lab: &Lab,
        name: &str,
        listen: &str,
        mac: &str,
        ready: &str,
        flag: &Path,
    ) -> String {
        format!(
            "exec {} serve --host --listen {listen} --key-file {} --controller-pub {} --workdir {} \
             --export-dir {} --flag {} --controller {ready} --mac {mac} >> {} 2>&1 & {}",
            agent_bin().display(),
            lab.key_path.display(),
            lab.public_path.display(),
            lab.path(&format!("{name}-work")).display(),
            lab.export.display(),
            flag.display(),
            lab.path(&format!("{name}-agent.log")).display(),
            self.record()
        )
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for pid in self.running() {
            lazarus_testkit::kill_pid(pid);
        }
    }
}

/// The `[nfs]` section and image `worker` (at `images/worker.img`, `size` bytes, SHA-256
/// `sha256`) of a test cluster file; `format` holds its format lines (`format = "raw"`, or zstd
/// with an index and a mode).
pub fn worker_image_toml(format: &str, size: usize, sha256: impl std::fmt::Display) -> String {
    format!(
        r#"
[nfs]
server = "127.0.0.1"
export = "/export"

[images.worker]
path = "images/worker.img"
{format}
size = {size}
sha256 = "{sha256}"
"#
    )
}

/// A worker's `[[nodes]]` block of a test cluster file: healthy while `up` exists, booted into
/// rescue by the shell command `attach`, rescued at `rescue` (/8), disk and flag files.
pub fn worker_toml(
    name: &str,
    mac: &str,
    up: &Path,
    attach: &str,
    rescue: &str,
    disk: &Path,
    flag: &Path,
) -> String {
    format!(
        r#"
[[nodes]]
name = "{name}"
role = "worker"
macs = ["{mac}"]
image = "worker"
health = {{ kind = "exec", command = ["test", "-e", "{up}"] }}
boot = {{ provider = "command", attach = ["sh", "-c", "{attach}"], detach = ["true"], power_off = ["true"] }}
rescue = {{ address = "{rescue}", prefix_len = 8 }}
disk = {{ path = "{disk}" }}
allow_weak_selector = true
flag = {{ path = "{flag}" }}
"#,
        up = up.display(),
        attach = attach.replace('"', "\\\""),
        disk = disk.display(),
        flag = flag.display(),
    )
}

/// A standby's `[[nodes]]` block of a test cluster file: `health` is its inline table, booted by
/// hand, rescued at `rescue` (/8).
pub fn standby_toml(name: &str, mac: &str, health: &str, rescue: &str) -> String {
    format!(
        r#"
[[nodes]]
name = "{name}"
role = "standby"
macs = ["{mac}"]
image = "worker"
health = {health}
boot = {{ provider = "manual" }}
rescue = {{ address = "{rescue}", prefix_len = 8 }}
disk = {{ path = "/nonexistent" }}
allow_weak_selector = true
"#
    )
}

pub struct AgentProc {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl AgentProc {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plan writing `image` (relative to the export) to the disk at `target`, flag at `flag`.
pub fn plan(id: &str, image: &str, data: &[u8], target: DiskSelector, flag: FlagLocation) -> Plan {
    Plan {
        plan_id: id.into(),
        network: NetworkPlan {
            address: "127.0.0.1".parse().unwrap(),
            prefix_len: 8,
            gateway: None,
            interface: None,
        },
        nfs: NfsSource {
            server: "127.0.0.1".parse().unwrap(),
            export: "/export".into(),
            version: NfsVersion::V4_1,
            options: String::new(),
        },
        image: ImageSpec {
            path: image.into(),
            format: ImageFormat::Raw,
            size: data.len() as u64,
            sha256: sha(data),
            layout: ImageLayout::WholeDisk,
            bmap: None,
            index: None,
            mode: lazarus_proto::CopyMode::Auto,
        },
        target,
        flag,
        restore: None,
        // Host-mode tests name files and loop devices by path.
        allow_weak_selector: true,
        restore_setid: false,
        unrestorable: lazarus_proto::Unrestorable::Warn,
        max_backup_bytes: lazarus_proto::DEFAULT_MAX_BACKUP_BYTES,
    }
}

pub fn by_path(p: &Path) -> DiskSelector {
    DiskSelector {
        path: Some(p.to_string_lossy().into_owned()),
        ..DiskSelector::default()
    }
}

pub fn flag_at(p: &Path) -> FlagLocation {
    FlagLocation::Path(p.to_string_lossy().into_owned())
}

/// Polls until the agent leaves `Recovering`.
pub fn wait_done(client: &mut AgentClient) -> Status {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = client.status_of(&Request::GetStatus).unwrap();
        if s.phase != Phase::Recovering {
            return s;
        }
        assert!(Instant::now() < deadline, "recovery did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn flag_json(path: &Path) -> serde_json::Value {
    let out = lazarus(&["flag", "show", "--json", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
