//! A repair the test steps through: `lazarus serve` (a real process) over worker w1 and standby
//! s1, w1's `command` boot provider starting a real host-mode agent, and w1's image a named pipe
//! the test feeds, so the copy advances only when the test says. For tests of what an operator
//! sees (`lazarus watch`, the web view) while a repair moves.
//!
//! Two kinds of copy: a full copy of a raw image ([`RepairLab::start`]), and a differential
//! copy ([`RepairLab::start_differential`]): a chunk index in the plan, w1's disk holding the
//! image but for two damaged chunks, and the image fed as a zstd stream (chunks read in order,
//! skipped by reading), so the agent checks the whole disk at once and fetches and writes as fed.

use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use super::*;
use lazarus_controller::api::{NodeView, StatusView};
use lazarus_controller::api_client::ApiClient;

pub const MIB: usize = 1 << 20;
/// The image's size: four of the agent's 4 MiB copy chunks, so a quarter fed shows as progress.
pub const IMAGE_LEN: usize = 16 * MIB;
/// The bearer token of the TCP listener, when there is one.
pub const TOKEN: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";

/// The controller, its lab, and the rescue agent its attach command starts (stopped by pid).
pub struct RepairLab {
    /// Agents started by the attach command, killed by the pids they wrote down. First, so that
    /// it is dropped before the lab folder holding the pid file.
    agents: Agents,
    pub lab: Lab,
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// The TCP listener (`HOST:PORT`) and its token file, if asked for.
    pub tcp: Option<(String, PathBuf)>,
    pub log: PathBuf,
    /// Where w1's agent listens.
    pub agent_addr: String,
    controller: Child,
    pub image: Vec<u8>,
    /// What the test feeds into the image pipe: the image itself, or its packed zstd stream.
    pub stream: Vec<u8>,
    /// Of a differential copy: the packed index (each chunk's frame in `stream`), and the
    /// chunks damaged on w1's disk.
    pub packed: Option<(lazarus_node::index::ChunkIndex, Vec<usize>)>,
    /// The write end of the image pipe, once the agent has opened it.
    feed: Option<std::fs::File>,
    fed: usize,
}

impl Drop for RepairLab {
    fn drop(&mut self) {
        // The controller first; the agents then go with `agents`.
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}

impl RepairLab {
    /// Starts the controller (with a TCP listener and token when `tcp`) and waits until both
    /// nodes are healthy. `net` keeps the agents of tests running at once apart (127.0.`net`.1).
    pub fn start(net: u8, tcp: bool) -> Self {
        Self::start_with(net, tcp, None)
    }

    /// As [`Self::start`], with `promotion` as the `[promotion]` hook.
    pub fn start_with(net: u8, tcp: bool, promotion: Option<&std::path::Path>) -> Self {
        Self::start_lab(net, tcp, promotion, false)
    }

    /// As [`Self::start`], for a differential copy: w1's disk holds the image but for chunks 1
    /// and 3 (of four, [`DEFAULT_CHUNK`](lazarus_node::index::DEFAULT_CHUNK) each), the plan
    /// carries the image's chunk index and `mode = "differential"`, and the test feeds the
    /// image packed as zstd.
    pub fn start_differential(net: u8, tcp: bool) -> Self {
        Self::start_lab(net, tcp, None, true)
    }

    fn start_lab(
        net: u8,
        tcp: bool,
        promotion: Option<&std::path::Path>,
        differential: bool,
    ) -> Self {
        use lazarus_node::index;
        let lab = Lab::new();
        let image = noise(IMAGE_LEN, 77);
        lab.fifo_image("worker.img");
        let disk = lab.path("w1-disk.img");
        let mut on_disk = noise(IMAGE_LEN + 4 * MIB, 78);
        let (mut stream, mut packed, mut image_lines) =
            (image.clone(), None, String::from("format = \"raw\""));
        if differential {
            let raw = lab.path("worker.raw");
            std::fs::write(&raw, &image).unwrap();
            let chunk = index::DEFAULT_CHUNK;
            let idx = index::build(&raw, chunk, 2).unwrap();
            let bytes = idx.encode();
            std::fs::write(lab.export.join("images/worker.idx"), &bytes).unwrap();
            let mut zst = Vec::new();
            let packed_idx = index::pack(&raw, &mut zst, chunk, 2).unwrap();
            let damaged = vec![1, 3];
            on_disk[..IMAGE_LEN].copy_from_slice(&image);
            for &i in &damaged {
                let r = idx.range(i);
                on_disk[r.start as usize..r.end as usize]
                    .copy_from_slice(&noise((r.end - r.start) as usize, 79 + i as u64));
            }
            image_lines = format!(
                "format = \"zstd\"\nindex = {{ path = \"images/worker.idx\", sha256 = \"{}\" }}\nmode = \"differential\"",
                index::sha256(&bytes)
            );
            stream = zst;
            packed = Some((packed_idx, damaged));
        }
        std::fs::write(&disk, on_disk).unwrap();
        let flag = lab.flag("w1-flag.img");
        let up = lab.path("w1-up");
        std::fs::write(&up, "").unwrap();
        let socket = lab.path("api.sock");
        let ready = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let agents = Agents {
            file: lab.path("agents.pids"),
        };
        let tcp = tcp.then(|| {
            let token_file = lab.path("api.token");
            std::fs::write(&token_file, TOKEN).unwrap();
            std::fs::set_permissions(
                &token_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            (format!("127.0.0.1:{}", free_port("127.0.0.1")), token_file)
        });
        let api = match &tcp {
            None => format!("api = {{ socket = \"{}\" }}", socket.display()),
            Some((listen, token)) => format!(
                "api = {{ socket = \"{}\", listen = \"{listen}\", token_file = \"{}\" }}",
                socket.display(),
                token.display()
            ),
        };
        let attach = agents.attach(
            &lab,
            "w1",
            &format!("127.0.{net}.1:7460"),
            &format!("52:54:00:00:{net:02x}:01"),
            &ready,
            &flag,
        );
        let config = lab.path("cluster.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[controller]
{api}
ready = "{ready}"
{keys}
[policy]
health_interval = "1s"
# A check that fails here fails at once (the file is gone); the long timeout only keeps a
# loaded machine's slow fork from failing a healthy node.
health_timeout = "900ms"
failure_threshold = 2
recovery_threshold = 1
poll_interval = "300ms"
{promotion}{image}{w1}{s1}"#,
                keys = lab.key_config(&["w1", "s1"]),
                promotion = promotion.map_or(String::new(), |p| format!(
                    "\n[promotion]\ncommand = [\"{}\"]\n",
                    p.display()
                )),
                image = worker_image_toml(&image_lines, image.len(), sha(&image)),
                w1 = worker_toml(
                    "w1",
                    &format!("52:54:00:00:{net:02x}:01"),
                    &up,
                    &attach,
                    &format!("127.0.{net}.1"),
                    &disk,
                    &flag
                ),
                s1 = standby_toml(
                    "s1",
                    &format!("52:54:00:00:{net:02x}:02"),
                    "{ kind = \"exec\", command = [\"true\"] }",
                    &format!("127.0.{net}.2")
                ),
            ),
        )
        .unwrap();
        let log = lab.path("controller.log");
        let controller = serve(&config, &lab.path("data"), &log);
        let r = Self {
            agents,
            lab,
            socket,
            tcp,
            log,
            agent_addr: format!("127.0.{net}.1:7460"),
            controller,
            image,
            stream,
            packed,
            feed: None,
            fed: 0,
        };
        r.wait_for("both nodes healthy", Duration::from_secs(20), |s| {
            s.nodes.iter().all(|n| n.state == "healthy")
        });
        r
    }

    /// `unix:SOCKET`, for `--api`.
    pub fn unix_api(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub fn status(&self) -> Option<StatusView> {
        ApiClient::unix(&self.socket).status().ok()
    }

    /// `node` as the API shows it now.
    pub fn node(&self, node: &str) -> NodeView {
        let s = self.status().expect("the API answers");
        s.nodes.into_iter().find(|n| n.name == node).unwrap()
    }

    pub fn logs(&self) -> String {
        format!(
            "controller:\n{}\nagent:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(self.lab.path("w1-agent.log")).unwrap_or_default()
        )
    }

    /// Polls the API until `pred` holds.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&StatusView) -> bool,
    ) -> StatusView {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if let Some(s) = s.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What w1's agent reports now, asked directly (as `lazarus agent status` does).
    pub fn agent_status(&self) -> lazarus_proto::Status {
        let mut client = lazarus_controller::agent_client::AgentClient::connect(
            &self.agent_addr,
            self.lab.signing.clone(),
            self.lab.key.clone(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("connecting to w1's agent: {e}\n{}", self.logs()));
        client
            .status_of(&lazarus_proto::Request::GetStatus)
            .unwrap_or_else(|e| panic!("w1's agent status: {e}\n{}", self.logs()))
    }

    /// Waits until the copy counters the API shows for w1 are those its agent reports, twice in
    /// a row (the copy is held still by the test), and `pred` holds for them; returns them.
    pub fn settled_copy(
        &self,
        what: &str,
        pred: impl Fn(&lazarus_proto::CopyCounters) -> bool,
    ) -> lazarus_proto::CopyCounters {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            let agent = self.agent_status().copy;
            let api = self.node("w1").copy;
            if api == Some(agent) && pred(&agent) {
                if last == Some(agent) {
                    return agent;
                }
                last = Some(agent);
            } else {
                last = None;
            }
            assert!(
                Instant::now() < deadline,
                "the API never showed {what} as w1's agent reports it: API {api:?}, agent {agent:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(400));
        }
    }

    /// w1 fails its health checks from now on.
    pub fn kill_worker(&self) {
        std::fs::remove_file(self.lab.path("w1-up")).unwrap();
    }

    /// Feeds the next `len` bytes of the image to the agent (opening the pipe the first time,
    /// once the agent reads it).
    pub fn feed(&mut self, len: usize) {
        if self.feed.is_none() {
            let path = self.lab.export.join("images/worker.img");
            let (tx, rx) = std::sync::mpsc::channel();
            // Opening a pipe for writing waits for its reader: on a thread, so a reader that
            // never comes fails the test instead of hanging it.
            std::thread::spawn(move || {
                let _ = tx.send(std::fs::OpenOptions::new().write(true).open(path));
            });
            let f = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the agent never read the image\n{}", self.logs()))
                .unwrap();
            self.feed = Some(f);
        }
        let end = (self.fed + len).min(self.stream.len());
        let f = self.feed.as_mut().unwrap();
        f.write_all(&self.stream[self.fed..end]).unwrap();
        f.flush().unwrap();
        self.fed = end;
        if self.fed == self.stream.len() {
            self.feed = None; // end of the image
        }
    }

    /// Feeds the stream up to byte `end` of it (nothing when it was fed that far).
    pub fn feed_to(&mut self, end: usize) {
        self.feed(end.saturating_sub(self.fed));
    }

    /// Feeds the rest of the image, then brings the restored w1 up (its health check passes
    /// once it is told to reboot) and waits until it is healthy again.
    pub fn finish(&mut self) {
        self.feed(self.stream.len() - self.fed);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = self.status().map(|s| {
                s.nodes
                    .into_iter()
                    .find(|n| n.name == "w1")
                    .map(|n| n.state)
                    .unwrap_or_default()
            });
            match state.as_deref() {
                Some("rebooting" | "verifying") => {
                    std::fs::write(self.lab.path("w1-up"), "").unwrap();
                }
                Some("healthy") if self.lab.path("w1-up").exists() => return,
                Some("quarantined") => panic!("w1 quarantined\n{}", self.logs()),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "w1 did not come back: {state:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether w1's disk now holds the image.
    pub fn disk_holds_the_image(&self) -> bool {
        std::fs::read(self.lab.path("w1-disk.img")).unwrap()[..self.image.len()] == self.image[..]
    }
}
