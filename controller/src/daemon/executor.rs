//! The action executor: carries out each action the state machine asks for (a boot provider's
//! command, the promotion hook, a command to an agent) on the daemon's runtime and sends its
//! outcome back to the event loop as an event. It decides nothing.
//!
//! Concurrency is bounded per kind: at most [`MAX_AGENT_CALLS`] commands to agents and
//! [`MAX_COMMANDS`] operator commands (providers, hooks) run at once, each on the runtime's
//! blocking pool; the rest wait their turn in order. A node has at most one poll waiting or in
//! flight: a slow agent is not sent a new poll every tick. Alerts are recorded at once. Each action
//! keeps its own deadline (the step's timeout, the agent client's), so waiting for a turn never
//! lets a step run past its budget unnoticed: the state machine times the step out.

use std::collections::HashSet;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use lazarus_proto::{Request, Status};

use super::plan::plan_for;
use super::pool::AgentPool;
use super::shared::{lock, now, Shared};
use crate::agent_client::ClientError;
use crate::cluster::Cluster;
use crate::media::{Media, RepairUrls};
use crate::provider::{self, Op};
use crate::repair::{Action, ActionError, ActionKind, ClusterState, Event};
use crate::store::Store;

/// Commands to agents (recover, poll, reboot) in flight at once.
pub const MAX_AGENT_CALLS: usize = 128;
/// Operator commands (boot providers, hooks) running at once.
pub const MAX_COMMANDS: usize = 64;

/// What actions are carried out with.
pub struct Executor {
    pub cluster: Arc<Cluster>,
    pub pool: Arc<AgentPool>,
    pub shared: Arc<Mutex<Shared>>,
    pub tx: Sender<Event>,
    pub store: Arc<Store>,
    /// The per-repair media server, if configured.
    pub media: Option<Arc<Media>>,
    rt: Handle,
    agent_calls: Arc<Semaphore>,
    commands: Arc<Semaphore>,
    /// Nodes with a poll waiting for its turn or in flight: one at a time, not one per tick.
    polls: Mutex<HashSet<String>>,
}

impl Executor {
    /// An executor running actions on `rt`.
    pub fn new(
        cluster: Arc<Cluster>,
        pool: Arc<AgentPool>,
        shared: Arc<Mutex<Shared>>,
        tx: Sender<Event>,
        store: Arc<Store>,
        media: Option<Arc<Media>>,
        rt: Handle,
    ) -> Self {
        Self {
            cluster,
            pool,
            shared,
            tx,
            store,
            media,
            rt,
            agent_calls: Arc::new(Semaphore::new(MAX_AGENT_CALLS)),
            commands: Arc::new(Semaphore::new(MAX_COMMANDS)),
            polls: Mutex::default(),
        }
    }

    /// Carries out `action` once its kind has a free slot; its outcome comes back as an event.
    pub fn execute(self: &Arc<Self>, action: Action) {
        let limit = match &action {
            Action::Alert { .. } => {
                // Nothing to wait for: recorded here and now.
                let _ = self.run(action);
                return;
            }
            Action::Recover { .. } | Action::Poll { .. } | Action::Reboot { .. } => {
                self.agent_calls.clone()
            }
            Action::Fence { .. }
            | Action::Attach { .. }
            | Action::Detach { .. }
            | Action::Rejoined { .. }
            | Action::Promote { .. } => self.commands.clone(),
        };
        let poll = match &action {
            Action::Poll { node } => {
                if !lock(&self.polls).insert(node.clone()) {
                    return;
                }
                Some(node.clone())
            }
            _ => None,
        };
        let this = self.clone();
        self.rt.spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            let worker = this.clone();
            let event = tokio::task::spawn_blocking(move || worker.run(action)).await;
            if let Some(node) = poll {
                lock(&this.polls).remove(&node);
            }
            if let Ok(Some(event)) = event {
                let _ = this.tx.send(event);
            }
        });
    }

    /// Carries out `action`; `None` when no event follows (an alert, a node no longer in the
    /// cluster file, a poll already in flight).
    fn run(&self, action: Action) -> Option<Event> {
        let t = &self.cluster.policy.timeouts;
        match action {
            Action::Alert { node, message } => {
                log::error!(
                    "ALERT{}: {message}",
                    node.as_ref().map_or(String::new(), |n| format!(" {n}"))
                );
                self.alert(node, message);
                None
            }
            Action::Fence { node } => {
                self.provide(node, ActionKind::Fence, Op::PowerOff, t.fence, &[])
            }
            Action::Attach { node } => {
                // The agent of the coming boot announces where it answers.
                self.pool.forget_addr(&node);
                match self.repair_medium(&node) {
                    Ok(urls) => self.provide(node, ActionKind::Attach, Op::Attach, t.attach, &urls),
                    Err(error) => {
                        log::error!("{node}: {error}");
                        Some(Event::Done {
                            node,
                            action: ActionKind::Attach,
                            result: Err(error),
                        })
                    }
                }
            }
            Action::Detach { node } => {
                self.provide(node, ActionKind::Detach, Op::Detach, t.attach, &[])
            }
            Action::Rejoined { node } => {
                if let Some(hook) = &self.cluster.standby {
                    let env = [("LAZARUS_NODE", node.as_str())];
                    if let Err(e) = crate::command::run(&hook.command, &env, hook.timeout) {
                        let message = format!("standby hook failed for {node}: {e}");
                        log::error!("ALERT {node}: {message}");
                        self.alert(Some(node), message);
                    }
                }
                None
            }
            Action::Promote { failed, promoted } => {
                let result = match &self.cluster.promotion {
                    Some(p) => crate::command::run(
                        &p.command,
                        &[
                            ("LAZARUS_FAILED", failed.as_str()),
                            ("LAZARUS_PROMOTED", promoted.as_str()),
                        ],
                        p.timeout,
                    )
                    .map_err(|e| ActionError::of(&e)),
                    None => Ok(()),
                };
                Some(Event::Done {
                    node: failed,
                    action: ActionKind::Promote,
                    result,
                })
            }
            Action::Recover {
                node,
                plan_id,
                failure_time,
            } => {
                let n = self.cluster.node(&node)?;
                let plan = plan_for(&self.cluster, n, &plan_id, failure_time)?;
                let answer = self.pool.status(n, &Request::Recover(Box::new(plan)));
                Some(agent_answer(node, answer))
            }
            Action::Poll { node } => {
                let n = self.cluster.node(&node)?;
                let answer = self.pool.poll(n)?;
                Some(agent_answer(node, answer))
            }
            Action::Reboot { node } => {
                let n = self.cluster.node(&node)?;
                let result = self
                    .pool
                    .status(n, &Request::Reboot)
                    .map(|_| ())
                    .map_err(|e| ActionError::of(&e));
                Some(Event::Done {
                    node,
                    action: ActionKind::Reboot,
                    result,
                })
            }
        }
    }

    /// Runs `op` through `node`'s boot provider. A manual provider's request becomes an alert
    /// and the step proceeds (for `attach`, the agent's `Ready` is what moves the repair on).
    fn provide(
        &self,
        node: String,
        kind: ActionKind,
        op: Op,
        timeout: Duration,
        urls: &[(&str, String)],
    ) -> Option<Event> {
        let n = self.cluster.node(&node)?;
        let result = match provider::run(n, op, timeout, urls) {
            Ok(Some(request)) => {
                log::warn!("OPERATOR {node}: {request}");
                self.alert(Some(node.clone()), request);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(ActionError::of(&e)),
        };
        Some(Event::Done {
            node,
            action: kind,
            result,
        })
    }

    /// The URLs of `node`'s per-repair medium, made now with the repair's agent key, if its
    /// provider uses one. The key is made at the repair's first attach and recorded in the store
    /// before any medium holds it; a retried attach of the same repair keeps it (an agent of an
    /// earlier attempt that comes up late still speaks it) but gets a fresh URL.
    fn repair_medium(&self, node: &str) -> Result<RepairUrls, ActionError> {
        let Some(n) = self.cluster.node(node) else {
            return Ok(Vec::new());
        };
        if n.repair_media().is_empty() {
            return Ok(Vec::new());
        }
        let media = self.media.as_ref().ok_or_else(|| {
            ActionError::from("per-repair media are not configured ([controller.media.rescue])")
        })?;
        let keys = self.pool.keys();
        let key = match keys.repair(node) {
            Some(key) => key,
            None => {
                let mut bytes = [0u8; 32];
                lazarus_node::random::fill(&mut bytes).map_err(|e| ActionError::of(&e))?;
                let key = lazarus_proto::AgentKey::from_bytes(bytes);
                self.store
                    .set_repair_key(node, Some(&key))
                    .map_err(|e| ActionError::of(&e))?;
                keys.set_repair(node, key.clone());
                key
            }
        };
        media.issue(n, &key).map_err(|e| ActionError::of(&e))
    }

    /// Revokes the keys of repairs that have ended in `state` (committed): removed from the
    /// store first, then from memory; their media die and their agents' connections close.
    pub fn revoke_ended(&self, state: &ClusterState) {
        for node in self.pool.keys().repair_nodes() {
            let under_repair = state.nodes.get(&node).is_some_and(|s| s.repair.is_some());
            if under_repair {
                continue;
            }
            if let Err(e) = self.store.set_repair_key(&node, None) {
                log::error!("{node}: removing the ended repair's key from the store: {e}");
            }
            self.pool.keys().revoke_repair(&node);
            self.pool.forget(&node);
            if let Some(media) = &self.media {
                media.withdraw(&node);
            }
            log::info!("{node}: the repair's agent key is revoked");
        }
    }

    fn alert(&self, node: Option<String>, message: String) {
        lock(&self.shared).alerts.push((now(), node, message));
    }
}

/// An agent's answer as an event: its status, or that it could not be reached.
fn agent_answer(node: String, answer: Result<Status, ClientError>) -> Event {
    match answer {
        Ok(status) => Event::AgentStatus { node, status },
        Err(e) => Event::AgentUnreachable {
            node,
            error: ActionError::of(&e),
        },
    }
}
