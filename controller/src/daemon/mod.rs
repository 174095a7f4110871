//! `lazarus serve`: the controller daemon, wired from its parts.
//!
//! One thread owns the state ([`event_loop`]) and runs [`crate::repair::step`] on every event,
//! committing the new state and the transitions of a batch of events to the store *before*
//! carrying out their actions. Health checks ([`health_loop`]), `Ready` announcements
//! ([`ready`]), timers and the outcomes of actions ([`executor`]) arrive as events on one
//! channel. Health checks, the timer and actions run on one tokio runtime (the "core": one
//! thread for sockets and timers, a bounded blocking pool for commands and agent calls), each
//! kind with its own bound on concurrency, and report back. Agents are reached through one pool of connections ([`pool`]). The HTTP API
//! ([`http`]) reads what the event loop publishes ([`shared`]) and sends operator decisions as
//! events. A restart loads the committed state and resumes.
//!
//! This module only starts the threads; no submodule uses it.

pub mod event_loop;
pub mod executor;
pub mod health_loop;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod pool;
pub mod ready;
pub mod shared;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use crate::cluster::{Cluster, ClusterError};
use crate::repair::{ClusterState, Event, RepairPolicy};
use crate::store::{StateStoreError, Store};

use self::executor::Executor;
use self::pool::AgentPool;
use self::shared::{now, Shared};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Store(#[from] StateStoreError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeysError),
    #[error("listening on {0} for Ready: {1}")]
    ListenReady(SocketAddr, std::io::Error),
    #[error(transparent)]
    Api(#[from] http::HttpError),
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    #[error("media folder {0}: {1}")]
    MediaDir(std::path::PathBuf, std::io::Error),
    #[error("per-repair rescue ISOs: {0}")]
    IsoTools(lazarus_initramfs::iso::IsoError),
    #[error("node {0}: {1}")]
    Provider(lazarus_proto::NodeName, crate::provider::ProviderError),
    #[error("starting the core runtime: {0}")]
    Runtime(std::io::Error),
}

/// Raises the soft open-file limit to the hard one (a service manager's soft default, 1,024, is
/// what 1,024 health checks in flight would need alone) and returns the soft limit in force.
fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            log::warn!("raising the open-file limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The core runtime: one thread for the sockets and timers of health checks and the poll timer,
/// and a blocking pool sized for the executor's bounds, `exec` health checks and the host-name
/// lookups of `http` checks.
fn core_runtime() -> Result<tokio::runtime::Handle, DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("lazarus-core")
        .max_blocking_threads(
            executor::MAX_AGENT_CALLS + executor::MAX_COMMANDS + health_loop::MAX_EXEC_CHECKS + 16,
        )
        .build()
        .map_err(DaemonError::Runtime)?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("lazarus-core".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(DaemonError::Runtime)?;
    Ok(handle)
}

/// Runs the daemon until the process is stopped.
pub fn serve(config: &Path, data_dir: &Path) -> Result<(), DaemonError> {
    let cluster = Arc::new(Cluster::load(config)?);
    for node in &cluster.nodes {
        crate::provider::check(node).map_err(|e| DaemonError::Provider(node.name.clone(), e))?;
    }
    let keys = crate::keys::Keys::load(&cluster)?;
    let store = Arc::new(Store::open(data_dir)?);
    let policy = RepairPolicy::from_cluster(&cluster);
    let mut state = store
        .load()?
        .unwrap_or_else(|| ClusterState::initial(&cluster, now()));
    state.reconcile(&cluster, now());
    store.commit(&state, &[])?;
    let shared = Arc::new(Mutex::new(Shared {
        state: state.clone(),
        ..Shared::default()
    }));
    // Keys of repairs under way survive a restart; those of repairs that ended are dropped.
    for (node, key) in store.repair_keys()? {
        if state.nodes.get(&node).is_some_and(|s| s.repair.is_some()) {
            keys.set_repair(&node, key);
        } else {
            store.set_repair_key(&node, None)?;
        }
    }
    let pool = Arc::new(AgentPool::new(keys));
    let (tx, rx) = channel::<Event>();

    let ready = TcpListener::bind(cluster.controller.ready)
        .map_err(|e| DaemonError::ListenReady(cluster.controller.ready, e))?;
    let api = &cluster.controller.api;
    http::server::start(
        http::Api {
            cluster: cluster.clone(),
            pool: pool.clone(),
            shared: shared.clone(),
            tx: tx.clone(),
            store: store.clone(),
        },
        api,
    )?;
    match api.listen {
        Some(tcp) => log::info!(
            "controller: API on {} and {tcp} (token), Ready on {}",
            api.socket.display(),
            cluster.controller.ready
        ),
        None => log::info!(
            "controller: API on {}, Ready on {}",
            api.socket.display(),
            cluster.controller.ready
        ),
    }
    let media = match &cluster.controller.media {
        Some(section) => {
            let media = Arc::new(
                crate::media::Media::new(section, data_dir)
                    .map_err(|e| DaemonError::MediaDir(section.dir.clone(), e))?,
            );
            if cluster
                .nodes
                .iter()
                .any(|n| n.repair_media().contains(&"{rescue_iso_url}"))
            {
                lazarus_initramfs::iso::check_tools().map_err(DaemonError::IsoTools)?;
            }
            let addr = media.serve(section.listen)?;
            log::info!(
                "controller: rescue media of {} at http://{addr}/media/{}",
                section.dir.display(),
                if section.rescue.is_some() {
                    ", per-repair media at /r/"
                } else {
                    ""
                }
            );
            Some(media)
        }
        None => None,
    };
    {
        let listener = Arc::new(ready::ReadyListener::new(
            cluster.clone(),
            pool.clone(),
            store.clone(),
            tx.clone(),
            media.clone(),
        )?);
        std::thread::spawn(move || listener.listen(ready));
    }
    let core = core_runtime()?;
    let checking = Arc::new(health_loop::Checking::new(&cluster, &state));
    shared::lock(&shared).metrics.health = Some(checking.clone());
    let bound = health_loop::check_bound(raise_nofile());
    log::info!("controller: at most {bound} health checks in flight");
    health_loop::start_checks(&core, cluster.clone(), checking.clone(), tx.clone(), bound);
    {
        let (tx, every) = (tx.clone(), cluster.policy.poll_interval);
        core.spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if tx.send(Event::Tick).is_err() {
                    return;
                }
            }
        });
    }
    let _ = tx.send(Event::Resume);
    let executor = Arc::new(Executor::new(
        cluster,
        pool,
        shared.clone(),
        tx,
        store.clone(),
        media,
        core,
    ));
    event_loop::run(
        state,
        rx,
        &policy,
        &store,
        &shared,
        &checking,
        |committed| executor.revoke_ended(committed),
        |action| executor.execute(action),
    );
    Ok(())
}
