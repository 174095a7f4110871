//! A fleet simulator: N simulated nodes on real loopback sockets, driven by a real
//! `lazarus serve` process. Not a mock of the controller: the controller under test is the real
//! binary with a real cluster file, real keys and its real store; only the nodes are simulated.
//!
//! - Each node has its own loopback address `127.B.x.y` (Linux routes all of `127/8` to `lo`) and a
//!   TCP health endpoint there, served on one tokio runtime (accept and close).
//! - Each node's boot provider is `command`: `bash` sends `off NODE`, `attach NODE` or
//!   `detach NODE` over TCP to the simulator's control port. `attach` "boots" the node into
//!   rescue: a simulated agent listens at the node's address on the agent port and announces
//!   `Ready` to the controller from that address, sealed with the node's own agent key, until
//!   acknowledged (the acknowledgement is checked against the controller's public key).
//! - The simulated agent speaks the real protocol (`lazarus-proto`): it opens the controller's
//!   signed commands with a [`CommandOpener`] (session, counters, boot id), and answers each with
//!   a reply sealed under its agent key: `Hello`, `Status` with progress while it "copies",
//!   RECOVERED (phase, flag and plan id agreeing) after [`Options::recover`], and `Reboot`, after
//!   which the agent goes away and the node's health endpoint comes back.
//! - The promotion and standby hooks report `promoted FAILED` and `standby NODE` the same way,
//!   so the simulator times failure-to-promotion and sees each repair end.
//!
//! The controller logs to `controller.log` in the work folder, at the level in `LAZARUS_SIM_LOG`
//! (`info` by default).
//!
//! Used by `tests/fleet.rs` (a small fleet under `cargo test`) and `examples/fleet.rs` (the
//! `bench controller` lines of `scripts/bench`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use lazarus_proto::flag::{FlagState, FlagSummary};
use lazarus_proto::frame::{read_frame_before, seal_announce, write_frame, CommandOpener};
use lazarus_proto::{
    AgentKey, BootId, Identity, Phase, PublicKey, Ready, Request, Response, Status, Step,
};

/// The port of every node's health endpoint (each node has an address of its own).
pub const HEALTH_PORT: u16 = 7080;

/// What fleet to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes in all; the last `standbys` are standbys, the others workers.
    pub nodes: usize,
    pub standbys: usize,
    /// The second octet of the nodes' addresses (`127.B.x.y`): two fleets at once need two.
    pub net: u8,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub max_concurrent_repairs: usize,
    /// How long a simulated recovery takes (progress reported along the way).
    pub recover: Duration,
    /// The `lazarus` binary to run.
    pub lazarus: PathBuf,
    /// Where the keys, the cluster file, the store and the log go.
    pub workdir: PathBuf,
}

/// One simulated node.
struct Node {
    name: String,
    ip: Ipv4Addr,
    mac: String,
    key: AgentKey,
    /// The health endpoint's task while the node is up.
    health: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The agent of the node's current rescue boot.
    agent: Mutex<Option<Arc<Agent>>>,
}

/// What the simulator saw, with the time (since the start) it saw it.
#[derive(Debug, Default)]
pub struct Seen {
    pub failed_at: HashMap<String, Instant>,
    pub promoted_at: HashMap<String, Instant>,
    pub standby_at: HashMap<String, Instant>,
    /// `attach` commands run (rescue boots).
    pub attached: usize,
    /// Plans started by agents (a resent plan of a running recovery is not counted).
    pub recovers: usize,
    /// `GetStatus` polls answered, all agents.
    pub polls: usize,
}

/// A running fleet and the `lazarus serve` driving it.
pub struct Fleet {
    pub opts: Options,
    nodes: Vec<Arc<Node>>,
    /// Stops the health endpoints' runtime.
    rt_stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Health-check connections accepted, all nodes.
    pub accepted: Arc<AtomicU64>,
    pub seen: Arc<Mutex<Seen>>,
    pub controller: Child,
    pub api_socket: PathBuf,
    pub log: PathBuf,
    stop: Arc<AtomicBool>,
}

fn node_ip(net: u8, i: usize) -> Ipv4Addr {
    // 200 nodes per /24, starting at .10: the controller admits at most 16 announcements per /24
    // at once, as it would for a real rack.
    Ipv4Addr::new(127, net, (i / 200) as u8, (i % 200) as u8 + 10)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    lazarus_node::random::fill(&mut b).expect("random bytes");
    u64::from_le_bytes(b)
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Raises this process's open-file limit to its hard limit (10,000 nodes are 10,000 listening
/// sockets); the controller started from here inherits it. Returns the limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

impl Fleet {
    /// Writes keys and the cluster file, brings every node's health endpoint up, and starts
    /// `lazarus serve`.
    pub fn start(opts: Options) -> Result<Self> {
        let w = &opts.workdir;
        std::fs::create_dir_all(w.join("agents"))?;
        let (signing, public_path) = (w.join("controller.key"), w.join("controller.pub"));
        let public = lazarus_node::keyfile::generate_controller(&signing, &public_path)?;
        // The health endpoints' runtime, driven by a thread of its own until the fleet is dropped.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let rt = runtime.handle().clone();
        let (rt_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = runtime.block_on(stopped);
        });
        let mut nodes = Vec::with_capacity(opts.nodes);
        let mut by_name = HashMap::new();
        for i in 0..opts.nodes {
            let name = format!("n{i:05}");
            let path = w.join("agents").join(format!("{name}.key"));
            lazarus_node::keyfile::generate(&path)?;
            let key = lazarus_node::keyfile::load(&path)?;
            by_name.insert(name.clone(), i);
            nodes.push(Arc::new(Node {
                name,
                ip: node_ip(opts.net, i),
                mac: format!(
                    "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
                    opts.net,
                    (i >> 16) as u8,
                    (i >> 8) as u8,
                    i as u8
                ),
                key,
                health: Mutex::new(None),
                agent: Mutex::new(None),
            }));
        }
        let ctl = TcpListener::bind("127.0.0.1:0")?;
        let ctl_port = ctl.local_addr()?.port();
        let ready_addr: SocketAddr = {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let api_socket = w.join("api.sock");
        let config = w.join("cluster.toml");
        std::fs::write(
            &config,
            cluster_file(&opts, &nodes, ctl_port, ready_addr, &signing, &api_socket),
        )?;
        let accepted = Arc::new(AtomicU64::new(0));
        for n in &nodes {
            serve_health(n, &rt, &accepted, Duration::ZERO)?;
        }
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctl {
            nodes: nodes.clone(),
            by_name: by_name.clone(),
            seen: seen.clone(),
            rt: rt.clone(),
            accepted: accepted.clone(),
            ready_addr,
            public,
            recover: opts.recover,
            stop: stop.clone(),
        });
        std::thread::spawn(move || {
            for conn in ctl.incoming() {
                let Ok(s) = conn else { continue };
                let ctx = ctx.clone();
                std::thread::spawn(move || ctx.handle(s));
            }
        });
        let log = w.join("controller.log");
        let controller = Command::new(&opts.lazarus)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(w.join("data"))
            .env(
                "LAZARUS_LOG",
                std::env::var("LAZARUS_SIM_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", opts.lazarus.display()))?;
        Ok(Self {
            nodes,
            rt_stop: Some(rt_stop),
            accepted,
            seen,
            controller,
            api_socket,
            log,
            stop,
            opts,
        })
    }

    /// The controller's log so far (the last `lines` lines).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The nodes' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Whether node `i` is a worker in the cluster file.
    pub fn is_worker(&self, i: usize) -> bool {
        i < self.opts.nodes - self.opts.standbys
    }

    /// Node `i` fails: its health endpoint stops answering (connections are refused).
    pub fn fail(&self, i: usize) {
        let n = &self.nodes[i];
        if let Some(task) = n.health.lock().unwrap().take() {
            task.abort();
        }
        // The listener is dropped when the aborted task is next polled: wait for that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(
            &SocketAddr::from((n.ip, HEALTH_PORT)),
            Duration::from_millis(200),
        )
        .is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.seen
            .lock()
            .unwrap()
            .failed_at
            .insert(n.name.clone(), Instant::now());
    }

    /// CPU seconds the controller has used (user + system, from `/proc/PID/stat`).
    pub fn controller_cpu(&self) -> Result<f64> {
        cpu_seconds(self.controller.id())
    }

    /// The controller's resident memory in MiB (`VmRSS` of `/proc/PID/status`).
    pub fn controller_rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.controller.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    /// The controller's status over its API (`GET /api/status`).
    pub fn status(&self) -> Result<lazarus_controller::api::StatusView> {
        Ok(lazarus_controller::api_client::ApiClient::unix(&self.api_socket).status()?)
    }

    /// Waits until the API answers and every node is healthy, or `within` passes.
    pub fn wait_all_healthy(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.controller.try_wait()? {
                bail!("lazarus serve exited ({status}):\n{}", self.log_tail(30));
            }
            if let Ok(s) = self.status() {
                if s.nodes.len() == self.nodes.len() && s.nodes.iter().all(|n| n.state == "healthy")
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "not every node healthy after {within:?}:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Health checks answered per second, and the controller's CPU use (percent of one core),
    /// over `window`.
    pub fn measure(&self, window: Duration) -> Result<(f64, f64)> {
        let (a0, c0, t0) = (
            self.accepted.load(Ordering::Relaxed),
            self.controller_cpu()?,
            Instant::now(),
        );
        std::thread::sleep(window);
        let (a1, c1, dt) = (
            self.accepted.load(Ordering::Relaxed),
            self.controller_cpu()?,
            t0.elapsed().as_secs_f64(),
        );
        Ok(((a1 - a0) as f64 / dt, (c1 - c0) / dt * 100.0))
    }

    /// Waits until each of `nodes` was promoted away from and came back as a standby, or
    /// `within` passes; returns how many came back.
    pub fn wait_repaired(&mut self, nodes: &[String], within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.controller.try_wait()? {
                bail!("lazarus serve exited ({status}):\n{}", self.log_tail(30));
            }
            let back = {
                let seen = self.seen.lock().unwrap();
                nodes
                    .iter()
                    .filter(|n| seen.standby_at.contains_key(*n))
                    .count()
            };
            if back == nodes.len() || Instant::now() > deadline {
                return Ok(back);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Seconds from each failure of `nodes` to the promotion of its replacement (sorted); a
    /// node never promoted is left out.
    pub fn detect_times(&self, nodes: &[String]) -> Vec<f64> {
        let seen = self.seen.lock().unwrap();
        let mut v: Vec<f64> = nodes
            .iter()
            .filter_map(|n| {
                let (f, p) = (seen.failed_at.get(n)?, seen.promoted_at.get(n)?);
                Some(p.saturating_duration_since(*f).as_secs_f64())
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.controller.kill();
        let _ = self.controller.wait();
        if let Some(stop) = self.rt_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The `p`-th percentile (0..=100) of sorted `v` (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// User + system CPU seconds of process `pid` (fields 14 and 15 of `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from its closing parenthesis.
    let rest = &stat[stat.rfind(')').context("/proc/PID/stat without ')'")? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let (utime, stime): (u64, u64) = (f[11].parse()?, f[12].parse()?);
    Ok((utime + stime) as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The cluster file of the fleet.
fn cluster_file(
    opts: &Options,
    nodes: &[Arc<Node>],
    ctl_port: u16,
    ready: SocketAddr,
    signing: &Path,
    api_socket: &Path,
) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    // Providers and hooks are real commands: bash writes one line to the control port and wants
    // `ok` back.
    let say = |what: &str| {
        format!(
            "[\"bash\", \"-c\", \"exec 3<>/dev/tcp/127.0.0.1/{ctl_port}; echo {what} >&3; \
             read -r ok <&3; [ \\\"$ok\\\" = ok ]\"]"
        )
    };
    let mut out = format!(
        "[controller]\nready = \"{ready}\"\nsigning_key = \"{}\"\nagent_keys = \"{}\"\n\
         api = {{ socket = \"{}\" }}\n\n\
         [policy]\nhealth_interval = \"{}\"\nhealth_timeout = \"{}\"\nfailure_threshold = {}\n\
         recovery_threshold = 2\nmax_concurrent_repairs = {}\nmax_unhealthy = {}\n\
         poll_interval = \"1s\"\nretries = 2\nfencing = \"required\"\n\n\
         [promotion]\ncommand = {}\ntimeout = \"30s\"\n\n\
         [standby]\ncommand = {}\ntimeout = \"30s\"\n\n\
         [nfs]\nserver = \"127.0.0.1\"\nexport = \"/export\"\n\n\
         [images.sim]\npath = \"images/sim.img\"\nformat = \"raw\"\nsize = 1073741824\n\
         sha256 = \"{}\"\n",
        signing.display(),
        opts.workdir.join("agents").display(),
        api_socket.display(),
        ms(opts.interval),
        ms(opts.timeout),
        opts.failure_threshold,
        opts.max_concurrent_repairs,
        opts.max_concurrent_repairs * 2 + 2,
        say("promoted $LAZARUS_FAILED $LAZARUS_PROMOTED"),
        say("standby $LAZARUS_NODE"),
        "00".repeat(32),
    );
    let workers = opts.nodes - opts.standbys;
    for (i, n) in nodes.iter().enumerate() {
        let role = if i < workers { "worker" } else { "standby" };
        out.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nmacs = [\"{mac}\"]\nimage = \"sim\"\n\
             health = {{ kind = \"tcp\", target = \"{ip}:{HEALTH_PORT}\" }}\n\
             rescue = {{ address = \"{ip}\", prefix_len = 8 }}\n\
             disk = {{ path = \"/nonexistent/{name}\" }}\nallow_weak_selector = true\n\
             [nodes.boot]\nprovider = \"command\"\npower_off = {off}\nattach = {attach}\n\
             detach = {detach}\n",
            name = n.name,
            mac = n.mac,
            ip = n.ip,
            off = say("off {node}"),
            attach = say("attach {node}"),
            detach = say("detach {node}"),
        ));
    }
    out
}

/// What the control port's handler works with.
struct Ctl {
    nodes: Vec<Arc<Node>>,
    by_name: HashMap<String, usize>,
    seen: Arc<Mutex<Seen>>,
    rt: tokio::runtime::Handle,
    accepted: Arc<AtomicU64>,
    ready_addr: SocketAddr,
    public: PublicKey,
    recover: Duration,
    stop: Arc<AtomicBool>,
}

impl Ctl {
    fn handle(&self, s: TcpStream) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut line = String::new();
        let Ok(mut w) = s.try_clone() else { return };
        if BufReader::new(s).read_line(&mut line).is_err() {
            return;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = words.get(1).and_then(|n| self.by_name.get(*n)).copied();
        let ok = match (words.first().copied(), node) {
            (Some("promoted"), Some(i)) => {
                let name = self.nodes[i].name.clone();
                self.seen
                    .lock()
                    .unwrap()
                    .promoted_at
                    .entry(name)
                    .or_insert_with(Instant::now);
                true
            }
            (Some("standby"), Some(i)) => {
                let name = self.nodes[i].name.clone();
                self.seen
                    .lock()
                    .unwrap()
                    .standby_at
                    .insert(name, Instant::now());
                true
            }
            // Powered off: the node's health endpoint (down already, it failed) stays down, and
            // a rescue agent left from an earlier attempt goes away.
            (Some("off"), Some(i)) => {
                if let Some(a) = self.nodes[i].agent.lock().unwrap().take() {
                    a.end();
                }
                true
            }
            (Some("attach"), Some(i)) => {
                self.seen.lock().unwrap().attached += 1;
                self.boot_rescue(i).is_ok()
            }
            (Some("detach"), Some(_)) => true,
            _ => false,
        };
        let _ = w.write_all(if ok { b"ok\n" } else { b"no\n" });
    }

    /// Boots node `i` into rescue: a new boot of its agent listens and announces `Ready`.
    fn boot_rescue(&self, i: usize) -> Result<()> {
        let n = self.nodes[i].clone();
        if let Some(old) = n.agent.lock().unwrap().take() {
            old.end();
        }
        let mut boot = [0u8; 16];
        lazarus_node::random::fill(&mut boot)?;
        let agent = Arc::new(Agent {
            boot_id: BootId(boot),
            key: n.key.clone(),
            public: self.public,
            gone: AtomicBool::new(false),
            conns: Mutex::default(),
            state: Mutex::new(AgentState::default()),
            recover: self.recover,
            seen: self.seen.clone(),
        });
        *n.agent.lock().unwrap() = Some(agent.clone());
        let listener = bind_retrying(
            SocketAddr::from((n.ip, lazarus_proto::AGENT_PORT)),
            Duration::from_secs(5),
        )?;
        listener.set_nonblocking(true)?;
        let (a, stop) = (agent.clone(), self.stop.clone());
        let restore = RestoreNode {
            node: n.clone(),
            rt: self.rt.clone(),
            accepted: self.accepted.clone(),
        };
        std::thread::spawn(move || a.listen(listener, &stop, restore));
        let (a, ready_addr, rt) = (agent, self.ready_addr, self.rt.clone());
        let identity = Identity {
            macs: vec![n.mac.parse().expect("a MAC of ours")],
            system_uuid: None,
            serial: None,
            address: Some(n.ip.into()),
        };
        std::thread::spawn(move || a.announce(n.ip, ready_addr, identity, &rt));
        Ok(())
    }
}

/// Binds `addr`, retrying for a while (an agent of the node's last boot may still hold it).
fn bind_retrying(addr: SocketAddr, wait: Duration) -> Result<TcpListener> {
    let deadline = Instant::now() + wait;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("binding {addr}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// How a rebooted node comes back: its health endpoint up again.
struct RestoreNode {
    node: Arc<Node>,
    rt: tokio::runtime::Handle,
    accepted: Arc<AtomicU64>,
}

impl RestoreNode {
    fn up(&self) {
        let _ = serve_health(&self.node, &self.rt, &self.accepted, Duration::from_secs(5));
    }
}

/// Brings `n`'s health endpoint up on `rt` (binding for up to `wait` while the address is busy):
/// each connection is accepted, counted and closed.
fn serve_health(
    n: &Node,
    rt: &tokio::runtime::Handle,
    accepted: &Arc<AtomicU64>,
    wait: Duration,
) -> Result<()> {
    let l = bind_retrying(SocketAddr::from((n.ip, HEALTH_PORT)), wait)?;
    l.set_nonblocking(true)?;
    let accepted = accepted.clone();
    let task = rt.spawn(async move {
        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
            return;
        };
        loop {
            if let Ok((s, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        }
    });
    if let Some(old) = n.health.lock().unwrap().replace(task) {
        old.abort();
    }
    Ok(())
}

/// One boot of a simulated rescue agent.
struct Agent {
    boot_id: BootId,
    key: AgentKey,
    public: PublicKey,
    /// The boot is over (rebooted or powered off).
    gone: AtomicBool,
    /// The controller's connections to this boot, closed when it ends (a machine that reboots
    /// or loses power answers nothing more on them).
    conns: Mutex<Vec<TcpStream>>,
    state: Mutex<AgentState>,
    recover: Duration,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct AgentState {
    plan: Option<(String, Instant)>,
    rebooting: bool,
    flag_seq: u64,
}

const SIM_BYTES: u64 = 1 << 30;

impl Agent {
    /// Announces `Ready` from `ip` until the controller acknowledges it.
    fn announce(
        &self,
        ip: Ipv4Addr,
        to: SocketAddr,
        identity: Identity,
        rt: &tokio::runtime::Handle,
    ) {
        let ready = Ready {
            boot_id: self.boot_id,
            identity,
            flag: None,
            agent_version: "sim".into(),
        };
        let mut backoff = Duration::from_millis(100);
        for counter in 1.. {
            if self.gone.load(Ordering::Relaxed) {
                return;
            }
            match self.announce_once(ip, to, &ready, counter, rt) {
                Ok(()) => return,
                Err(e) => {
                    if counter > 5 {
                        eprintln!("sim: announcing {ip}: {e:#}");
                    }
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn announce_once(
        &self,
        ip: Ipv4Addr,
        to: SocketAddr,
        ready: &Ready,
        counter: u64,
        rt: &tokio::runtime::Handle,
    ) -> Result<()> {
        // From the node's own address, as a real agent on its own network would.
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::from((ip, 0)))?;
            tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
                .and_then(|s| s.into_std())
        })?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut s = s;
        let (frame, wait) = seal_announce(
            &self.key,
            self.boot_id,
            counter,
            &Response::Ready(ready.clone()),
        )?;
        write_frame(&mut s, &frame)?;
        let reply = read_frame_before(&mut s, Instant::now() + Duration::from_secs(5))?;
        wait.open_ack(&self.public, &reply)?;
        Ok(())
    }

    /// Serves the controller's connections until the boot is over.
    fn listen(self: Arc<Self>, l: TcpListener, stop: &AtomicBool, restore: RestoreNode) {
        while !self.gone.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let a = self.clone();
                    std::thread::spawn(move || a.serve(s));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            let rebooting = self.state.lock().unwrap().rebooting;
            if rebooting {
                // The reply to `Reboot` is out; the node restarts into its restored system.
                std::thread::sleep(Duration::from_millis(200));
                self.end();
                drop(l);
                restore.up();
                return;
            }
        }
    }

    /// Ends this boot: no more answers, its connections closed.
    fn end(&self) {
        self.gone.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// One connection, closed when it ends (its clone kept for [`Self::end`] must not hold it
    /// open).
    fn serve(&self, mut s: TcpStream) {
        let _ = s.set_nonblocking(false);
        let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
        if let Ok(c) = s.try_clone() {
            self.conns.lock().unwrap().push(c);
        }
        self.answer(&mut s);
        let _ = s.shutdown(std::net::Shutdown::Both);
    }

    /// The controller's signed commands, each answered under the agent key.
    fn answer(&self, s: &mut TcpStream) {
        let mut opener = CommandOpener::new(self.public, self.boot_id);
        while !self.gone.load(Ordering::Relaxed) {
            let Ok(frame) = read_frame_before(s, Instant::now() + Duration::from_secs(60)) else {
                return;
            };
            let Ok((request, reply_to)) = opener.open(&frame) else {
                return;
            };
            let response = match request {
                Request::Hello => {
                    let mut hello = opener.begin(random_u64());
                    hello.agent_version = "sim".into();
                    Response::Hello(hello)
                }
                Request::Recover(plan) => {
                    let mut st = self.state.lock().unwrap();
                    if st.plan.is_none() {
                        st.plan = Some((plan.plan_id.clone(), Instant::now()));
                        st.flag_seq += 1;
                        self.seen.lock().unwrap().recovers += 1;
                    }
                    drop(st);
                    Response::Status(self.status())
                }
                Request::Reboot => {
                    self.state.lock().unwrap().rebooting = true;
                    Response::Status(self.status())
                }
                Request::GetStatus => {
                    self.seen.lock().unwrap().polls += 1;
                    Response::Status(self.status())
                }
                _ => Response::Status(self.status()),
            };
            let Ok(reply) = reply_to.seal_reply(&self.key, &response) else {
                return;
            };
            if write_frame(s, &reply).is_err() {
                return;
            }
        }
    }

    /// The agent's status: copying with progress for [`Self::recover`], then RECOVERED.
    fn status(&self) -> Status {
        let st = self.state.lock().unwrap();
        let none = FlagSummary {
            state: FlagState::None,
            seq: 0,
            plan_id: String::new(),
            error_code: 0,
            bytes_done: 0,
            timestamp: 0,
        };
        let (phase, step, done, plan_id, flag) = match &st.plan {
            None => (Phase::Ready, None, 0, None, none),
            Some((id, started)) => {
                let part = (started.elapsed().as_secs_f64() / self.recover.as_secs_f64()).min(1.0);
                let done = (SIM_BYTES as f64 * part) as u64;
                let finished = part >= 1.0;
                let flag = FlagSummary {
                    state: if finished {
                        FlagState::Recovered
                    } else {
                        FlagState::Recovering
                    },
                    seq: st.flag_seq + u64::from(finished),
                    plan_id: id.clone(),
                    error_code: 0,
                    bytes_done: done,
                    timestamp: unix_now(),
                };
                let phase = match (st.rebooting, finished) {
                    (true, _) => Phase::Rebooting,
                    (false, true) => Phase::Recovered,
                    (false, false) => Phase::Recovering,
                };
                let step = (!finished).then_some(Step::CopyImage);
                (phase, step, done, Some(id.clone()), flag)
            }
        };
        Status {
            boot_id: self.boot_id,
            phase,
            step,
            bytes_done: done,
            bytes_total: SIM_BYTES,
            flag,
            plan_id,
            error: None,
            found_at_boot: None,
            unrestored: Vec::new(),
            copy: Default::default(),
        }
    }
}
