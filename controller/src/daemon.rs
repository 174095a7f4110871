//! `lazarus serve`: the controller daemon.
//!
//! One thread owns the state and runs [`repair::step`] on every event, committing the new state
//! and its transitions to the store *before* carrying out the actions. Health checks, `Ready`
//! announcements, timers and the outcomes of actions arrive as events on one channel; actions run
//! on their own threads and report back. A restart loads the committed state and resumes.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lazarus_proto::frame::{read_frame, write_frame, AnnounceOpener};
use lazarus_proto::{
    ClusterKey, NetworkPlan, NfsSource, Plan, Request, Response, RestoreFilesystem, RestoreSpec,
};

use crate::agent_client::AgentClient;
use crate::cluster::{Cluster, Node};
use crate::repair::{self, Action, ActionKind, ClusterState, Event, Policy, Transition};
use crate::store::Store;
use crate::{health, provider};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cluster key: {0}")]
    Key(#[from] lazarus_node::keyfile::KeyFileError),
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// What the API shows, refreshed after every event.
#[derive(Debug, Default)]
pub struct Shared {
    pub state: ClusterState,
    pub alerts: Vec<(u64, Option<String>, String)>,
    /// Where each node's agent answers (from its `Ready`).
    pub agents: HashMap<String, SocketAddr>,
    /// Nodes with a poll in flight: a slow agent gets one poll at a time, not one per tick.
    pub polling: std::collections::HashSet<String>,
    /// One connection per agent, reused and used by one caller at a time: two clients saying
    /// Hello at once would be given the same counter, and the second's command would be refused
    /// as a replay.
    pub clients: HashMap<String, Arc<Mutex<Option<AgentClient>>>>,
    pub metrics: Metrics,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub repairs_started: u64,
    pub repairs_succeeded: u64,
    pub repairs_quarantined: u64,
    /// Seconds spent per repair step, summed over all repairs.
    pub step_seconds: BTreeMap<String, u64>,
    /// The step each node is in and since when.
    pub current: BTreeMap<String, (String, u64)>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the daemon until the process is stopped.
pub fn serve(config: &Path, data_dir: &Path) -> Result<(), DaemonError> {
    let cluster = Arc::new(Cluster::load(config)?);
    let key = lazarus_node::keyfile::load(&cluster.controller.key_file)?;
    let store = Arc::new(Store::open(data_dir)?);
    let policy = Policy::from_cluster(&cluster);
    let mut state = store
        .load()?
        .unwrap_or_else(|| repair::initial(&cluster, now()));
    reconcile(&mut state, &cluster, now());
    store.commit(&state, &[])?;
    let shared = Arc::new(Mutex::new(Shared {
        state: state.clone(),
        ..Shared::default()
    }));
    let (tx, rx) = channel::<Event>();

    let ready = TcpListener::bind(cluster.controller.ready)
        .map_err(|e| DaemonError::Listen(cluster.controller.ready, e))?;
    let api = tiny_http::Server::http(cluster.controller.api).map_err(|e| {
        DaemonError::Listen(cluster.controller.api, std::io::Error::other(e.to_string()))
    })?;
    log::info!(
        "controller: API on {}, Ready on {}",
        cluster.controller.api,
        cluster.controller.ready
    );
    {
        let (cluster, key, shared, tx) = (cluster.clone(), key.clone(), shared.clone(), tx.clone());
        std::thread::spawn(move || ready_listener(ready, &cluster, &key, &shared, &tx));
    }
    {
        let (cluster, shared, tx) = (cluster.clone(), shared.clone(), tx.clone());
        std::thread::spawn(move || health_loop(&cluster, &shared, &tx));
    }
    {
        let (tx, every) = (tx.clone(), cluster.policy.poll_interval);
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            if tx.send(Event::Tick).is_err() {
                return;
            }
        });
    }
    {
        let (cluster, key, shared, tx, store) = (
            cluster.clone(),
            key.clone(),
            shared.clone(),
            tx.clone(),
            store.clone(),
        );
        std::thread::spawn(move || crate::api::serve(api, &cluster, &key, &shared, &tx, &store));
    }
    let _ = tx.send(Event::Resume);

    for event in rx {
        let time = now();
        let (next, outcome) = repair::step(state.clone(), event, &policy, time);
        // Write-ahead: the decision is durable before anything is done about it.
        if let Err(e) = store.commit(&next, &outcome.transitions) {
            log::error!("{e}; not acting on this event");
            continue;
        }
        state = next;
        {
            let mut sh = lock(&shared);
            sh.state = state.clone();
            count(&mut sh.metrics, &outcome.transitions, &state, time);
        }
        for t in &outcome.transitions {
            log::info!("{}: {} -> {} ({})", t.node, t.from, t.to, t.reason);
        }
        for action in outcome.actions {
            execute(action, &cluster, &key, &shared, &tx);
        }
    }
    Ok(())
}

/// Adds nodes new to the cluster file and drops ones no longer in it.
fn reconcile(state: &mut ClusterState, cluster: &Cluster, now: u64) {
    let fresh = repair::initial(cluster, now);
    state.nodes.retain(|k, _| fresh.nodes.contains_key(k));
    for (k, v) in fresh.nodes {
        state.nodes.entry(k).or_insert(v);
    }
}

fn count(m: &mut Metrics, transitions: &[Transition], state: &ClusterState, now: u64) {
    for t in transitions {
        if t.from == "queued" {
            m.repairs_started += 1;
        }
        if t.from == "verifying" && t.to == "healthy" {
            m.repairs_succeeded += 1;
        }
        if t.to == "quarantined" {
            m.repairs_quarantined += 1;
        }
        if let Some((step, since)) = m.current.insert(t.node.clone(), (t.to.clone(), t.time)) {
            if !matches!(step.as_str(), "healthy" | "failing") {
                *m.step_seconds.entry(step).or_default() += t.time.saturating_sub(since);
            }
        }
    }
    let _ = (state, now);
}

fn node<'a>(cluster: &'a Cluster, name: &str) -> Option<&'a Node> {
    cluster.node(name)
}

/// Builds the plan the agent of `node` runs.
pub fn plan_for(cluster: &Cluster, n: &Node, plan_id: &str, failure_time: u64) -> Option<Plan> {
    let image = cluster.images.get(&n.image)?;
    Some(Plan {
        plan_id: plan_id.to_string(),
        network: NetworkPlan {
            address: n.rescue.address,
            prefix_len: n.rescue.prefix_len,
            gateway: n.rescue.gateway,
            interface: n.rescue.interface.clone(),
        },
        nfs: NfsSource {
            server: cluster.nfs.server,
            export: cluster.nfs.export.clone(),
            version: cluster.nfs.version,
            options: cluster.nfs.options.clone(),
        },
        image: lazarus_proto::ImageSpec {
            path: image.path.clone(),
            format: image.format,
            size: image.size,
            sha256: image.sha256,
            layout: image.layout,
            bmap: image.bmap.clone(),
        },
        target: n.disk.clone(),
        flag: n.flag.clone(),
        restore: n.restore.as_ref().map(|r| RestoreSpec {
            backups_dir: cluster.nfs.backups.clone(),
            node: n.name.clone(),
            failure_time,
            filesystem: RestoreFilesystem {
                partition: r.partition,
                fstype: r.fstype,
                root: r.root.clone(),
            },
            paths: r.paths.clone(),
        }),
    })
}

/// Sends `request` to `n`'s agent over the node's one connection (made on first use, made again
/// once if a kept one has gone stale).
pub fn call_agent(
    shared: &Mutex<Shared>,
    key: &ClusterKey,
    n: &Node,
    request: &Request,
) -> Result<Response, String> {
    let slot = lock(shared)
        .clients
        .entry(n.name.to_string())
        .or_default()
        .clone();
    let mut client = lock(&slot);
    let addr = agent_addr(shared, n);
    for fresh in [false, true] {
        if fresh || client.is_none() {
            *client = Some(
                AgentClient::connect(&addr.to_string(), key.clone(), Duration::from_secs(10))
                    .map_err(|e| e.to_string())?,
            );
        }
        let Some(c) = client.as_mut() else { continue };
        match c.call(request) {
            Ok(r) => return Ok(r),
            // A refusal is an answer, not a broken connection.
            Err(e @ crate::agent_client::ClientError::Refused(..)) => return Err(e.to_string()),
            Err(e) if fresh => {
                *client = None;
                return Err(e.to_string());
            }
            Err(_) => *client = None,
        }
    }
    Err("no connection".into())
}

fn status_of(r: Result<Response, String>) -> Result<lazarus_proto::Status, String> {
    match r? {
        Response::Status(s) => Ok(s),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

fn agent_addr(shared: &Mutex<Shared>, n: &Node) -> SocketAddr {
    lock(shared)
        .agents
        .get(n.name.as_str())
        .copied()
        .unwrap_or_else(|| SocketAddr::new(n.rescue.address, lazarus_proto::AGENT_PORT))
}

/// Carries out one action on its own thread; its outcome comes back as an event.
fn execute(
    action: Action,
    cluster: &Arc<Cluster>,
    key: &ClusterKey,
    shared: &Arc<Mutex<Shared>>,
    tx: &Sender<Event>,
) {
    let (cluster, key, shared, tx) = (cluster.clone(), key.clone(), shared.clone(), tx.clone());
    std::thread::spawn(move || {
        let t = &cluster.policy.timeouts;
        let event = match action {
            Action::Alert { node, message } => {
                log::error!(
                    "ALERT{}: {message}",
                    node.as_ref().map_or(String::new(), |n| format!(" {n}"))
                );
                lock(&shared).alerts.push((now(), node, message));
                return;
            }
            Action::Fence { node: name } => {
                let Some(n) = node(&cluster, &name) else {
                    return;
                };
                let result = provider::run(n, provider::Op::PowerOff, t.fence)
                    .map(|m| manual(&shared, &name, m));
                Event::Done {
                    node: name,
                    action: ActionKind::Fence,
                    result,
                }
            }
            Action::Promote { failed, promoted } => {
                let result = match &cluster.promotion {
                    Some(p) => run_hook(&p.command, &failed, &promoted, p.timeout),
                    None => Ok(()),
                };
                Event::Done {
                    node: failed,
                    action: ActionKind::Promote,
                    result,
                }
            }
            Action::Attach { node: name } => {
                let Some(n) = node(&cluster, &name) else {
                    return;
                };
                lock(&shared).agents.remove(&name);
                let result = provider::run(n, provider::Op::Attach, t.attach)
                    .map(|m| manual(&shared, &name, m));
                Event::Done {
                    node: name,
                    action: ActionKind::Attach,
                    result,
                }
            }
            Action::Detach { node: name } => {
                let Some(n) = node(&cluster, &name) else {
                    return;
                };
                let result = provider::run(n, provider::Op::Detach, t.attach)
                    .map(|m| manual(&shared, &name, m));
                Event::Done {
                    node: name,
                    action: ActionKind::Detach,
                    result,
                }
            }
            Action::Recover {
                node: name,
                plan_id,
                failure_time,
            } => {
                let Some(n) = node(&cluster, &name) else {
                    return;
                };
                let Some(plan) = plan_for(&cluster, n, &plan_id, failure_time) else {
                    return;
                };
                match status_of(call_agent(
                    &shared,
                    &key,
                    n,
                    &Request::Recover(Box::new(plan)),
                )) {
                    Ok(status) => Event::AgentStatus { node: name, status },
                    Err(error) => Event::AgentUnreachable { node: name, error },
                }
            }
            Action::Poll { node: name } => {
                let Some(n) = node(&cluster, &name) else {
                    return;
                };
                if !lock(&shared).polling.insert(name.clone()) {
                    return;
                }
                let answer = status_of(call_agent(&shared, &key, n, &Request::GetStatus));
                lock(&shared).polling.remove(&name);
                match answer {
                    Ok(status) => Event::AgentStatus { node: name, status },
                    Err(error) => Event::AgentUnreachable { node: name, error },
                }
            }
            Action::Reboot { node: name } => {
                let Some(n) = node(&cluster, &name) else {
                    return;
                };
                let result = status_of(call_agent(&shared, &key, n, &Request::Reboot)).map(|_| ());
                Event::Done {
                    node: name,
                    action: ActionKind::Reboot,
                    result,
                }
            }
        };
        let _ = tx.send(event);
    });
}

/// A manual provider's request becomes an alert; the step then proceeds (for `attach`, the agent's
/// `Ready` is what moves the repair on).
fn manual(shared: &Mutex<Shared>, node: &str, message: Option<String>) {
    if let Some(m) = message {
        log::warn!("OPERATOR {node}: {m}");
        lock(shared).alerts.push((now(), Some(node.to_string()), m));
    }
}

fn run_hook(
    command: &[String],
    failed: &str,
    promoted: &str,
    timeout: Duration,
) -> Result<(), String> {
    crate::command::run(
        command,
        &[("LAZARUS_FAILED", failed), ("LAZARUS_PROMOTED", promoted)],
        timeout,
    )
}

/// Health-checks every node not under repair (and restored nodes being verified), each interval.
fn health_loop(cluster: &Cluster, shared: &Mutex<Shared>, tx: &Sender<Event>) {
    loop {
        let checking: Vec<&Node> = {
            let sh = lock(shared);
            cluster
                .nodes
                .iter()
                .filter(|n| {
                    sh.state.nodes.get(n.name.as_str()).is_some_and(|s| {
                        s.repair
                            .as_ref()
                            .is_none_or(|r| r.step == repair::RepairStep::Verifying)
                    })
                })
                .collect()
        };
        let results: Vec<(String, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = checking
                .iter()
                .map(|n| {
                    s.spawn(|| {
                        (
                            n.name.to_string(),
                            health::check(&n.health, cluster.policy.health_timeout).is_ok(),
                        )
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (node, ok) in results {
            if tx.send(Event::Health { node, ok }).is_err() {
                return;
            }
        }
        std::thread::sleep(cluster.policy.health_interval);
    }
}

/// Accepts `Ready` announcements, matches them to nodes by MAC or system UUID, acknowledges.
fn ready_listener(
    listener: TcpListener,
    cluster: &Cluster,
    key: &ClusterKey,
    shared: &Mutex<Shared>,
    tx: &Sender<Event>,
) {
    let mut opener = AnnounceOpener::default();
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let peer = s.peer_addr().ok();
        let frame = match read_frame(&mut s) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("Ready from {peer:?}: {e}");
                continue;
            }
        };
        let (boot_id, body, reply) = match opener.open(key, &frame) {
            Ok(x) => x,
            Err(e) => {
                log::warn!("ignoring an announcement from {peer:?}: {e}");
                continue;
            }
        };
        let Response::Ready(ready) = body else {
            continue;
        };
        let _ = reply.seal_ack(key).map(|ack| write_frame(&mut s, &ack));
        let matched = cluster.nodes.iter().find(|n| {
            let by_mac = n.macs.iter().any(|m| ready.identity.macs.contains(m));
            let by_uuid = n.system_uuid.as_ref().is_some_and(|u| {
                ready
                    .identity
                    .system_uuid
                    .as_ref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(u))
            });
            by_mac || by_uuid
        });
        let Some(n) = matched else {
            log::warn!(
                "Ready from an unknown machine {peer:?} (MACs {:?})",
                ready.identity.macs
            );
            continue;
        };
        let ip: IpAddr = ready
            .identity
            .address
            .or(peer.map(|p| p.ip()))
            .unwrap_or(n.rescue.address);
        log::info!("{}: agent ready at {ip} (boot {boot_id})", n.name);
        lock(shared).agents.insert(
            n.name.to_string(),
            SocketAddr::new(ip, lazarus_proto::AGENT_PORT),
        );
        if tx
            .send(Event::AgentReady {
                node: n.name.to_string(),
                boot_id,
            })
            .is_err()
        {
            return;
        }
    }
}
