//! The health scheduler: every node not under repair (and every restored node being verified)
//! is checked once per `health_interval`, on a schedule of its own, on the daemon's runtime.
//!
//! - **Per-node schedule.** Each node has one task with its own timer; the nodes' first checks
//!   are spread evenly over the first interval, so 10,000 checks a second arrive as a steady
//!   stream, not a burst. A slow node delays nobody: a node's check that is still running when its
//!   next one falls due skips that round ([`MissedTickBehavior::Skip`]), so at most one check of
//!   a node is in flight and the other nodes keep their interval.
//! - **Per-check deadline.** A check has `health_timeout` from its start to answer; at the
//!   deadline it fails on its own (the socket is dropped), whatever the other checks do.
//! - **Bounded concurrency.** At most [`MAX_CHECKS`] checks are in flight at once (fewer where
//!   the open-file limit is lower: [`check_bound`]), and of them at most [`MAX_EXEC_CHECKS`]
//!   `exec` checks (each a process and a thread of the blocking pool). A check that fails for
//!   want of a local resource (file descriptors, local ports) is counted as skipped, not as a
//!   failure of the node. A check that cannot start before its node's
//!   next round is skipped and counted ([`Checking::skipped`]), never reported as a failure: the
//!   node did nothing wrong.
//!
//! Results go to the event loop as [`Event::Health`]; what a result means is the state
//! machine's job. Which nodes are checked, the event loop says after each commit
//! ([`Checking::update`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cluster::{Cluster, HealthCheck};
use crate::health;
use crate::repair::{ClusterState, Event, RepairStep};

/// Health checks in flight at once, all nodes together.
pub const MAX_CHECKS: usize = 1024;
/// `exec` health checks running at once (within [`MAX_CHECKS`]).
pub const MAX_EXEC_CHECKS: usize = 64;
/// Open files kept for everything but health checks (agent connections, API connections,
/// `Ready` announcements, the store, commands' pipes).
pub const RESERVED_FILES: u64 = 768;

/// Health checks in flight at once under an open-file limit of `nofile`: [`MAX_CHECKS`], or what
/// the limit leaves after [`RESERVED_FILES`] (at least 16).
pub fn check_bound(nofile: u64) -> usize {
    let room = nofile.saturating_sub(RESERVED_FILES).max(16);
    usize::try_from(room).unwrap_or(MAX_CHECKS).min(MAX_CHECKS)
}

/// Which nodes are health-checked (by index in the cluster file), and counters.
#[derive(Debug)]
pub struct Checking {
    index: HashMap<String, usize>,
    wanted: Vec<AtomicBool>,
    /// Checks done since the start.
    pub done: AtomicU64,
    /// Rounds skipped because [`MAX_CHECKS`] checks were in flight until the next round.
    pub skipped: AtomicU64,
}

impl Checking {
    /// The nodes of `cluster`, each checked or not as `state` says.
    pub fn new(cluster: &Cluster, state: &ClusterState) -> Self {
        Self::from_names(cluster.nodes.iter().map(|n| n.name.to_string()), state)
    }

    /// The nodes `names` (in the cluster file's order), each checked or not as `state` says.
    pub fn from_names(names: impl IntoIterator<Item = String>, state: &ClusterState) -> Self {
        let index: HashMap<String, usize> =
            names.into_iter().enumerate().map(|(i, n)| (n, i)).collect();
        let this = Self {
            wanted: (0..index.len()).map(|_| AtomicBool::new(false)).collect(),
            index,
            done: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        };
        for node in this.index.keys() {
            this.update(node, state);
        }
        this
    }

    /// Whether `node` is health-checked now.
    pub fn is_wanted(&self, node: &str) -> bool {
        self.index.get(node).is_some_and(|&i| self.wanted(i))
    }

    /// Re-reads whether `node` is checked from `state` (after a commit that changed it).
    pub fn update(&self, node: &str, state: &ClusterState) {
        if let Some(&i) = self.index.get(node) {
            let wanted = state.nodes.get(node).is_some_and(|s| {
                s.repair
                    .as_ref()
                    .is_none_or(|r| r.step == RepairStep::Verifying)
            });
            self.wanted[i].store(wanted, Ordering::Relaxed);
        }
    }

    fn wanted(&self, i: usize) -> bool {
        self.wanted[i].load(Ordering::Relaxed)
    }
}

/// Starts one checking task per node on `rt`, at most `bound` checks in flight; each task ends
/// when the event loop is gone.
pub fn start_checks(
    rt: &Handle,
    cluster: Arc<Cluster>,
    checking: Arc<Checking>,
    tx: Sender<Event>,
    bound: usize,
) {
    let limit = Limits {
        checks: Arc::new(Semaphore::new(bound.clamp(1, MAX_CHECKS))),
        exec: Arc::new(Semaphore::new(MAX_EXEC_CHECKS)),
    };
    let interval = cluster.policy.health_interval;
    let count = cluster.nodes.len().max(1);
    let first = Instant::now();
    for i in 0..cluster.nodes.len() {
        // Spread the nodes' rounds evenly over one interval.
        let offset = interval.mul_f64(i as f64 / count as f64);
        rt.spawn(node_checks(
            cluster.clone(),
            i,
            first + offset,
            limit.clone(),
            checking.clone(),
            tx.clone(),
        ));
    }
}

/// The bounds on checks in flight.
#[derive(Clone)]
struct Limits {
    checks: Arc<Semaphore>,
    exec: Arc<Semaphore>,
}

/// Checks node `i` every interval from `first`, until the event loop is gone.
async fn node_checks(
    cluster: Arc<Cluster>,
    i: usize,
    first: Instant,
    limit: Limits,
    checking: Arc<Checking>,
    tx: Sender<Event>,
) {
    let (interval, timeout) = (
        cluster.policy.health_interval,
        cluster.policy.health_timeout,
    );
    let mut rounds = tokio::time::interval_at(first, interval);
    rounds.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let due = rounds.tick().await;
        if !checking.wanted(i) {
            continue;
        }
        let node = &cluster.nodes[i];
        // A check that cannot start before the next round gives its place to that round; its
        // deadline starts with the check, not with the wait.
        let permits = async {
            let exec = match node.health {
                HealthCheck::Exec { .. } => Some(limit.exec.acquire().await.ok()?),
                _ => None,
            };
            Some((limit.checks.acquire().await.ok()?, exec))
        };
        let Ok(Some(permits)) = tokio::time::timeout_at(due + interval, permits).await else {
            checking.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let result = health::check_async(&node.health, timeout).await;
        drop(permits);
        match &result {
            Err(e) if e.is_local() => {
                let n = checking.skipped.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    log::warn!(
                        "{}: health check not made: {e} (not held against the node; {} so far)",
                        node.name,
                        n + 1
                    );
                }
                continue;
            }
            Err(e) => log::debug!("{}: health check failed: {e}", node.name),
            Ok(()) => {}
        }
        checking.done.fetch_add(1, Ordering::Relaxed);
        let event = Event::Health {
            node: node.name.to_string(),
            ok: result.is_ok(),
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::TcpListener;
    use std::time::Duration;

    /// A cluster of `nodes` (name, health line), checked every 300 ms with a 250 ms timeout.
    fn cluster(nodes: &[(&str, String)]) -> Cluster {
        let mut text = "[controller]\nsigning_key = \"/nonexistent/c.key\"\n\
                        agent_keys = \"/nonexistent/agents\"\n\
                        [policy]\nhealth_interval = \"300ms\"\nhealth_timeout = \"250ms\"\n\
                        [nfs]\nserver = \"127.0.0.1\"\nexport = \"/export\"\n\
                        [images.w]\npath = \"w.img\"\nformat = \"raw\"\nsize = 1048576\n"
            .to_string();
        text.push_str(&format!("sha256 = \"{}\"\n", "00".repeat(32)));
        for (i, (name, health)) in nodes.iter().enumerate() {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\nrole = \"worker\"\nmacs = [\"52:54:00:00:50:{i:02x}\"]\n\
                 image = \"w\"\nhealth = {health}\nboot = {{ provider = \"manual\" }}\n\
                 rescue = {{ address = \"127.0.0.{}\", prefix_len = 8 }}\n\
                 disk = {{ path = \"/nonexistent\" }}\nallow_weak_selector = true\n",
                i + 1
            ));
        }
        Cluster::parse(&text, "cluster.toml").unwrap()
    }

    #[test]
    fn checks_in_flight_fit_under_the_open_file_limit() {
        assert_eq!(check_bound(1024), 256);
        assert_eq!(check_bound(100), 16);
        assert_eq!(check_bound(20_000), MAX_CHECKS);
        assert_eq!(check_bound(u64::MAX), MAX_CHECKS);
    }

    #[test]
    fn a_node_that_never_answers_fails_on_its_own_deadline_and_delays_no_other_node() {
        let live = TcpListener::bind("127.0.0.1:0").unwrap();
        // Accepts (the kernel does) and never answers: an HTTP check of it hangs.
        let mute = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = format!(
            "{{ kind = \"tcp\", target = \"{}\" }}",
            live.local_addr().unwrap()
        );
        let http = format!(
            "{{ kind = \"http\", url = \"http://{}/healthz\" }}",
            mute.local_addr().unwrap()
        );
        let cluster = Arc::new(cluster(&[("a", tcp.clone()), ("slow", http), ("b", tcp)]));
        let state = ClusterState::initial(&cluster, 0);
        let checking = Arc::new(Checking::new(&cluster, &state));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = rt.handle().clone();
        let driver = std::thread::spawn(move || {
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(3000)).await });
        });
        start_checks(&handle, cluster.clone(), checking.clone(), tx, MAX_CHECKS);
        driver.join().unwrap();
        let mut seen: BTreeMap<String, Vec<bool>> = BTreeMap::new();
        while let Ok(Event::Health { node, ok }) = rx.try_recv() {
            seen.entry(node).or_default().push(ok);
        }
        // Ten rounds of 300 ms in 3 s (one or two lost to a loaded machine). A loop that waited
        // for the slowest check before sleeping would manage 3 s / 550 ms = 5.
        for fast in ["a", "b"] {
            let results = &seen[fast];
            assert!(
                results.len() >= 8,
                "{fast}: {} checks in 3 s",
                results.len()
            );
            assert!(results.iter().all(|ok| *ok), "{fast}");
        }
        // The mute node fails each round at its own 250 ms deadline, round after round.
        let slow = &seen["slow"];
        assert!(slow.len() >= 7, "slow: {} checks in 3 s", slow.len());
        assert!(slow.iter().all(|ok| !*ok));
        assert_eq!(checking.skipped.load(Ordering::Relaxed), 0);
    }
}
