//! The controller's decisions, as one pure function: [`step`] takes the cluster's state, an
//! event and the time, and returns the new state, the actions to carry out, and the transitions
//! to record. No I/O happens here; the daemon persists the new state *before* it acts, executes
//! the actions, and feeds their outcomes back as events. Timeouts are deadlines compared with the
//! `now` passed in, so they are tested without sleeping.
//!
//! A node's repair, step by step (DESIGN.md "The repair"):
//!
//! ```text
//! healthy ─fails─► Failed ─► Fencing ─► Promoting ─► Attaching ─► WaitingReady ─► Recovering
//!                     (queued by the brakes)                                          │
//! standby ◄─ Verifying ◄─ Rebooting ◄─ Detaching ◄────────────── flag RECOVERED ◄────┘
//! any step out of attempts ─► Quarantined (until `lazarus repair` or `lazarus release`)
//! ```

use std::collections::BTreeMap;

use lazarus_proto::flag::FlagState;
use lazarus_proto::{BootId, Phase, Status};
use serde::{Deserialize, Serialize};

use crate::cluster::Role;

/// Unix seconds.
pub type Time = u64;

/// A step of a repair. The names are persisted: append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairStep {
    /// Failed, waiting for the brakes to allow a repair.
    Queued,
    /// Powering the node off, so it cannot serve while its replacement does.
    Fencing,
    /// Running the promotion hook for a standby.
    Promoting,
    /// Making the node boot the rescue kernel.
    Attaching,
    /// Waiting for the agent's `Ready`.
    WaitingReady,
    /// The agent runs the plan.
    Recovering,
    /// Removing the rescue media / boot override.
    Detaching,
    /// The agent was told to reboot; waiting for the restored system.
    Rebooting,
    /// Health-checking the restored node.
    Verifying,
    /// Out of attempts; a human decides.
    Quarantined,
}

/// A repair in progress (or stopped in quarantine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub step: RepairStep,
    /// Attempts made at this step.
    pub attempt: u32,
    /// When the step times out.
    pub deadline: Time,
    /// The plan sent (or to send) to the agent.
    pub plan_id: String,
    /// When the failure was detected: backups older than this are restored.
    pub failure_time: Time,
    /// The standby that took this node's place, if any.
    pub replaced_by: Option<String>,
    /// Standbys whose promotion failed during this repair.
    pub tried: Vec<String>,
    /// The standby whose promotion hook is running.
    pub promoting: Option<String>,
    /// The agent boot being driven.
    pub boot_id: Option<BootId>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub last_error: Option<String>,
    /// Plans sent so far (each retry is a new plan id).
    pub plans_sent: u32,
    /// Whole repairs redone because the restored node failed its health checks.
    pub cycles: u32,
    /// When the current plan was sent.
    #[serde(default)]
    pub sent_at: Time,
}

/// How far along a step is: attempts count per step and are kept while a retry goes back to an
/// earlier step (Attaching ↔ WaitingReady), reset only by progress.
fn rank(step: &RepairStep) -> u8 {
    match step {
        RepairStep::Queued => 0,
        RepairStep::Fencing => 1,
        RepairStep::Promoting => 2,
        RepairStep::Attaching | RepairStep::WaitingReady => 3,
        RepairStep::Recovering => 4,
        RepairStep::Detaching => 5,
        RepairStep::Rebooting => 6,
        RepairStep::Verifying => 7,
        RepairStep::Quarantined => 8,
    }
}

/// What the controller knows of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub role: Role,
    pub healthy: bool,
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub repair: Option<Repair>,
    /// When the node last changed state.
    pub since: Time,
}

/// The cluster's state: every node, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeState>,
    /// Automatic repair is paused (too many failures at once).
    pub paused: bool,
}

/// What the step function needs of the cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub max_concurrent_repairs: u32,
    pub max_unhealthy: u32,
    pub retries: u32,
    pub poll_interval: Time,
    pub fence_timeout: Time,
    pub attach_timeout: Time,
    pub ready_timeout: Time,
    pub recover_timeout: Time,
    pub reboot_timeout: Time,
    pub verify_timeout: Time,
    /// Nodes whose boot provider can power them off.
    pub can_fence: Vec<String>,
    pub has_promotion_hook: bool,
}

impl Policy {
    pub fn from_cluster(c: &crate::cluster::Cluster) -> Self {
        let p = &c.policy;
        let t = &p.timeouts;
        Self {
            failure_threshold: p.failure_threshold,
            recovery_threshold: p.recovery_threshold,
            max_concurrent_repairs: p.max_concurrent_repairs,
            max_unhealthy: p.max_unhealthy,
            retries: p.retries,
            poll_interval: p.poll_interval.as_secs().max(1),
            fence_timeout: t.fence.as_secs(),
            attach_timeout: t.attach.as_secs(),
            ready_timeout: t.ready.as_secs(),
            recover_timeout: t.recover.as_secs(),
            reboot_timeout: t.reboot.as_secs(),
            verify_timeout: t.verify.as_secs(),
            can_fence: c
                .nodes
                .iter()
                .filter(|n| match &n.boot {
                    crate::cluster::BootProvider::Command { power_off, .. } => power_off.is_some(),
                    crate::cluster::BootProvider::Redfish { .. } => true,
                    crate::cluster::BootProvider::Manual => false,
                })
                .map(|n| n.name.to_string())
                .collect(),
            has_promotion_hook: c.promotion.is_some(),
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A health check's result.
    Health { node: String, ok: bool },
    /// Time passed (deadlines, polls, queued repairs).
    Tick,
    /// An action the daemon carried out finished.
    Done {
        node: String,
        action: ActionKind,
        result: Result<(), String>,
    },
    /// An agent announced itself and was matched to `node`.
    AgentReady { node: String, boot_id: BootId },
    /// An agent answered a poll.
    AgentStatus { node: String, status: Status },
    /// An agent could not be reached.
    AgentUnreachable { node: String, error: String },
    /// `lazarus repair NODE`.
    OperatorRepair { node: String },
    /// `lazarus release NODE`: back into service as a standby, unrepaired.
    OperatorRelease { node: String },
    /// The controller (re)started: re-issue the action of every repair's current step, since
    /// one in flight when it stopped may have been lost. Attempts are not counted.
    Resume,
}

/// The kinds of action whose completion comes back as [`Event::Done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Fence,
    Promote,
    Attach,
    Recover,
    Detach,
    Reboot,
}

/// Something for the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Power `node` off through its boot provider.
    Fence { node: String },
    /// Run the promotion hook: `promoted` takes `failed`'s place.
    Promote { failed: String, promoted: String },
    /// Make `node` boot the rescue kernel (one-shot) and power-cycle it.
    Attach { node: String },
    /// Send `Recover` with plan `plan_id` to the agent of `node`.
    Recover {
        node: String,
        plan_id: String,
        failure_time: Time,
    },
    /// Ask `node`'s agent for its status.
    Poll { node: String },
    /// Remove the rescue media / boot override of `node`.
    Detach { node: String },
    /// Tell `node`'s agent to reboot.
    Reboot { node: String },
    /// Tell a human.
    Alert {
        node: Option<String>,
        message: String,
    },
}

/// A state change, for the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub time: Time,
    pub node: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// The outcome of one event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub transitions: Vec<Transition>,
}

/// A node's state in one word, as shown by `lazarus status`.
pub fn label(n: &NodeState) -> String {
    match &n.repair {
        Some(r) => serde_plain(&r.step),
        None if n.healthy => "healthy".into(),
        None => "failing".into(),
    }
}

fn serde_plain(step: &RepairStep) -> String {
    serde_json::to_value(step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{step:?}"))
}

/// The initial state of a cluster file's nodes: every node healthy in its configured role.
pub fn initial(cluster: &crate::cluster::Cluster, now: Time) -> ClusterState {
    ClusterState {
        nodes: cluster
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.to_string(),
                    NodeState {
                        role: n.role,
                        healthy: true,
                        ok_streak: 0,
                        fail_streak: 0,
                        repair: None,
                        since: now,
                    },
                )
            })
            .collect(),
        paused: false,
    }
}

/// Decides one event. Pure: same inputs, same outputs.
pub fn step(
    mut state: ClusterState,
    event: Event,
    policy: &Policy,
    now: Time,
) -> (ClusterState, Outcome) {
    let mut out = Outcome::default();
    match event {
        Event::Health { node, ok } => health(&mut state, &node, ok, policy, now, &mut out),
        Event::Tick => tick(&mut state, policy, now, &mut out),
        Event::Done {
            node,
            action,
            result,
        } => done(&mut state, &node, action, result, policy, now, &mut out),
        Event::AgentReady { node, boot_id } => {
            // Ready can beat the attach command's own completion (a fast boot): the agent is up
            // either way.
            let steps = [
                RepairStep::Attaching,
                RepairStep::WaitingReady,
                RepairStep::Recovering,
            ];
            if let Some(r) = repair_at(&mut state, &node, &steps) {
                r.boot_id = Some(boot_id);
                if r.step != RepairStep::Recovering {
                    send_recover(&mut state, &node, policy, now, "agent ready", &mut out);
                } else {
                    // A new boot while recovering: the agent restarted; the flag tells where it got.
                    out.actions.push(Action::Poll { node: node.clone() });
                }
            }
        }
        Event::AgentStatus { node, status } => {
            agent_status(&mut state, &node, status, policy, now, &mut out)
        }
        Event::AgentUnreachable { node, error } => {
            if let Some(r) = repair_at(&mut state, &node, &[RepairStep::Recovering]) {
                // Keep waiting until the step's deadline: a busy or rebooting agent comes back.
                r.last_error = Some(format!("agent unreachable: {error}"));
            }
        }
        Event::OperatorRepair { node } => {
            if let Some(n) = state.nodes.get(&node) {
                let step = n.repair.as_ref().map(|r| r.step.clone());
                match step {
                    Some(RepairStep::Quarantined) | None => {
                        let failure_time = n.repair.as_ref().map_or(now, |r| r.failure_time);
                        begin_repair(
                            &mut state,
                            &node,
                            failure_time,
                            policy,
                            now,
                            "operator asked for a repair",
                            &mut out,
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        Event::Resume => {
            for (node, n) in &state.nodes {
                let Some(r) = &n.repair else { continue };
                let node = node.clone();
                out.actions.push(match r.step {
                    RepairStep::Fencing => Action::Fence { node },
                    RepairStep::Promoting => match &r.promoting {
                        Some(p) => Action::Promote {
                            failed: node,
                            promoted: p.clone(),
                        },
                        None => continue,
                    },
                    RepairStep::Attaching => Action::Attach { node },
                    RepairStep::Recovering => Action::Poll { node },
                    RepairStep::Detaching => Action::Detach { node },
                    RepairStep::Rebooting => Action::Reboot { node },
                    RepairStep::Queued
                    | RepairStep::WaitingReady
                    | RepairStep::Verifying
                    | RepairStep::Quarantined => continue,
                });
            }
            tick(&mut state, policy, now, &mut out);
        }
        Event::OperatorRelease { node } => {
            if let Some(n) = state.nodes.get_mut(&node) {
                if n.repair.is_some() {
                    let from = label(n);
                    n.repair = None;
                    n.role = Role::Standby;
                    n.healthy = true;
                    n.fail_streak = 0;
                    n.since = now;
                    out.transitions.push(Transition {
                        time: now,
                        node,
                        from,
                        to: "healthy".into(),
                        reason: "released by an operator".into(),
                    });
                }
            }
        }
    }
    (state, out)
}

fn transition(
    state: &mut ClusterState,
    node: &str,
    to: RepairStep,
    deadline: Time,
    now: Time,
    reason: &str,
    out: &mut Outcome,
) {
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    let from = label(n);
    if let Some(r) = n.repair.as_mut() {
        if rank(&to) > rank(&r.step) {
            r.attempt = 0;
        }
        r.step = to;
        r.deadline = deadline;
    }
    n.since = now;
    out.transitions.push(Transition {
        time: now,
        node: node.to_string(),
        from,
        to: label(n),
        reason: reason.to_string(),
    });
}

fn repair_at<'a>(
    state: &'a mut ClusterState,
    node: &str,
    steps: &[RepairStep],
) -> Option<&'a mut Repair> {
    state
        .nodes
        .get_mut(node)?
        .repair
        .as_mut()
        .filter(|r| steps.contains(&r.step))
}

fn active_repairs(state: &ClusterState) -> u32 {
    state
        .nodes
        .values()
        .filter(|n| {
            n.repair
                .as_ref()
                .is_some_and(|r| !matches!(r.step, RepairStep::Queued | RepairStep::Quarantined))
        })
        .count() as u32
}

fn unhealthy(state: &ClusterState) -> u32 {
    state
        .nodes
        .values()
        .filter(|n| !n.healthy || n.repair.is_some())
        .count() as u32
}

fn health(
    state: &mut ClusterState,
    node: &str,
    ok: bool,
    policy: &Policy,
    now: Time,
    out: &mut Outcome,
) {
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    if ok {
        n.ok_streak += 1;
        n.fail_streak = 0;
    } else {
        n.fail_streak += 1;
        n.ok_streak = 0;
    }
    match n.repair.as_ref().map(|r| r.step.clone()) {
        Some(RepairStep::Verifying) if n.ok_streak >= policy.recovery_threshold => {
            let from = label(n);
            n.repair = None;
            n.healthy = true;
            n.role = Role::Standby;
            n.since = now;
            out.transitions.push(Transition {
                time: now,
                node: node.into(),
                from,
                to: "healthy".into(),
                reason: "restored node passed its health checks; back as a standby".into(),
            });
            tick(state, policy, now, out);
        }
        Some(_) => {} // under repair: checks do not count
        None if !ok && n.healthy && n.fail_streak >= policy.failure_threshold => {
            n.healthy = false;
            n.since = now;
            out.transitions.push(Transition {
                time: now,
                node: node.into(),
                from: "healthy".into(),
                to: "failing".into(),
                reason: format!("{} consecutive failed health checks", n.fail_streak),
            });
            queue_repair(state, node, now, out);
            tick(state, policy, now, out);
        }
        None if ok && !n.healthy && n.ok_streak >= policy.recovery_threshold => {
            n.healthy = true;
            n.since = now;
            out.transitions.push(Transition {
                time: now,
                node: node.into(),
                from: "failing".into(),
                to: "healthy".into(),
                reason: "health checks pass again".into(),
            });
        }
        None => {}
    }
}

fn queue_repair(state: &mut ClusterState, node: &str, now: Time, out: &mut Outcome) {
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    let from = label(n);
    n.repair = Some(Repair {
        step: RepairStep::Queued,
        attempt: 0,
        deadline: Time::MAX,
        plan_id: String::new(),
        failure_time: now,
        replaced_by: None,
        tried: Vec::new(),
        promoting: None,
        boot_id: None,
        bytes_done: 0,
        bytes_total: 0,
        last_error: None,
        plans_sent: 0,
        cycles: 0,
        sent_at: 0,
    });
    out.transitions.push(Transition {
        time: now,
        node: node.into(),
        from,
        to: "queued".into(),
        reason: "failed; a repair is queued".into(),
    });
}

/// Starts queued repairs the brakes allow; times out steps; polls recovering agents.
fn tick(state: &mut ClusterState, policy: &Policy, now: Time, out: &mut Outcome) {
    let too_many = unhealthy(state) > policy.max_unhealthy;
    if too_many != state.paused {
        state.paused = too_many;
        out.actions.push(Action::Alert {
            node: None,
            message: if too_many {
                format!(
                    "{} nodes unhealthy at once (more than {}): automatic repair paused",
                    unhealthy(state),
                    policy.max_unhealthy
                )
            } else {
                "failures back under the limit: automatic repair resumed".into()
            },
        });
    }
    if !state.paused {
        let queued: Vec<(String, Time)> = state
            .nodes
            .iter()
            .filter_map(|(k, n)| {
                n.repair
                    .as_ref()
                    .filter(|r| r.step == RepairStep::Queued)
                    .map(|r| (k.clone(), r.failure_time))
            })
            .collect();
        for (node, failure_time) in queued {
            if active_repairs(state) >= policy.max_concurrent_repairs {
                break;
            }
            begin_repair(
                state,
                &node,
                failure_time,
                policy,
                now,
                "repair starts",
                out,
            );
        }
    }
    let names: Vec<String> = state.nodes.keys().cloned().collect();
    for node in names {
        let Some(r) = state.nodes.get(&node).and_then(|n| n.repair.clone()) else {
            continue;
        };
        if matches!(r.step, RepairStep::Queued | RepairStep::Quarantined) {
            continue;
        }
        if now >= r.deadline {
            retry_or_quarantine(
                state,
                &node,
                &format!("{} timed out", serde_plain(&r.step)),
                policy,
                now,
                out,
            );
        } else if r.step == RepairStep::Recovering {
            out.actions.push(Action::Poll { node });
        }
    }
}

fn begin_repair(
    state: &mut ClusterState,
    node: &str,
    failure_time: Time,
    policy: &Policy,
    now: Time,
    reason: &str,
    out: &mut Outcome,
) {
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    if n.repair.is_none() {
        queue_repair(state, node, failure_time, out);
    }
    let Some(r) = state.nodes.get_mut(node).and_then(|n| n.repair.as_mut()) else {
        return;
    };
    r.failure_time = failure_time;
    r.attempt = 0;
    r.cycles = 0;
    r.last_error = None;
    if policy.can_fence.iter().any(|f| f == node) {
        transition(
            state,
            node,
            RepairStep::Fencing,
            now + policy.fence_timeout,
            now,
            reason,
            out,
        );
        out.actions.push(Action::Fence { node: node.into() });
    } else {
        out.actions.push(Action::Alert {
            node: Some(node.into()),
            message: format!("{node} cannot be powered off by its boot provider; it is not fenced"),
        });
        after_fence(state, node, policy, now, out);
    }
}

/// After fencing: promote a standby in a failed worker's place, then attach the rescue kernel.
fn after_fence(
    state: &mut ClusterState,
    node: &str,
    policy: &Policy,
    now: Time,
    out: &mut Outcome,
) {
    let was_worker = state
        .nodes
        .get(node)
        .is_some_and(|n| n.role == Role::Worker);
    let already = state
        .nodes
        .get(node)
        .and_then(|n| n.repair.as_ref())
        .and_then(|r| r.replaced_by.clone());
    if was_worker && already.is_none() {
        let tried = state
            .nodes
            .get(node)
            .and_then(|n| n.repair.as_ref())
            .map(|r| r.tried.clone())
            .unwrap_or_default();
        let candidate = state
            .nodes
            .iter()
            .find(|(k, n)| {
                n.role == Role::Standby && n.healthy && n.repair.is_none() && !tried.contains(k)
            })
            .map(|(k, _)| k.clone());
        match candidate {
            Some(standby) if policy.has_promotion_hook => {
                if let Some(r) = state.nodes.get_mut(node).and_then(|n| n.repair.as_mut()) {
                    r.promoting = Some(standby.clone());
                }
                transition(
                    state,
                    node,
                    RepairStep::Promoting,
                    now + policy.attach_timeout,
                    now,
                    &format!("promoting {standby}"),
                    out,
                );
                out.actions.push(Action::Promote {
                    failed: node.into(),
                    promoted: standby,
                });
                return;
            }
            Some(standby) => promote(state, node, &standby, now, out),
            None => out.actions.push(Action::Alert {
                node: Some(node.into()),
                message: format!("no healthy standby left to replace {node}; repairing it anyway"),
            }),
        }
    }
    attach(state, node, policy, now, "attaching the rescue kernel", out);
}

/// Moves `node` to Attaching and asks for the rescue boot.
fn attach(
    state: &mut ClusterState,
    node: &str,
    policy: &Policy,
    now: Time,
    reason: &str,
    out: &mut Outcome,
) {
    transition(
        state,
        node,
        RepairStep::Attaching,
        now + policy.attach_timeout,
        now,
        reason,
        out,
    );
    out.actions.push(Action::Attach { node: node.into() });
}

/// Records that `standby` now serves as the worker `failed` was; `failed` returns as a standby.
fn promote(state: &mut ClusterState, failed: &str, standby: &str, now: Time, out: &mut Outcome) {
    if let Some(s) = state.nodes.get_mut(standby) {
        s.role = Role::Worker;
        s.since = now;
    }
    if let Some(n) = state.nodes.get_mut(failed) {
        n.role = Role::Standby;
        if let Some(r) = n.repair.as_mut() {
            r.replaced_by = Some(standby.into());
        }
    }
    out.transitions.push(Transition {
        time: now,
        node: standby.into(),
        from: "standby".into(),
        to: "worker".into(),
        reason: format!("promoted in place of {failed}"),
    });
}

fn send_recover(
    state: &mut ClusterState,
    node: &str,
    policy: &Policy,
    now: Time,
    reason: &str,
    out: &mut Outcome,
) {
    let Some(r) = state.nodes.get_mut(node).and_then(|n| n.repair.as_mut()) else {
        return;
    };
    r.plans_sent += 1;
    r.sent_at = now;
    r.plan_id = format!("{node}-{}-{}", r.failure_time, r.plans_sent);
    let (plan_id, failure_time) = (r.plan_id.clone(), r.failure_time);
    transition(
        state,
        node,
        RepairStep::Recovering,
        now + policy.recover_timeout,
        now,
        reason,
        out,
    );
    out.actions.push(Action::Recover {
        node: node.into(),
        plan_id,
        failure_time,
    });
}

fn done(
    state: &mut ClusterState,
    node: &str,
    action: ActionKind,
    result: Result<(), String>,
    policy: &Policy,
    now: Time,
    out: &mut Outcome,
) {
    let expected = match action {
        ActionKind::Fence => RepairStep::Fencing,
        ActionKind::Promote => RepairStep::Promoting,
        ActionKind::Attach => RepairStep::Attaching,
        ActionKind::Recover => RepairStep::Recovering,
        ActionKind::Detach => RepairStep::Detaching,
        ActionKind::Reboot => RepairStep::Rebooting,
    };
    let Some(r) = repair_at(state, node, &[expected]) else {
        return;
    };
    if let Err(e) = result {
        if action == ActionKind::Promote {
            // Try the next standby; the one whose hook failed stays a standby.
            if let Some(p) = r.promoting.take() {
                r.tried.push(p);
            }
            out.actions.push(Action::Alert {
                node: Some(node.into()),
                message: format!("promotion hook failed: {e}"),
            });
            after_fence(state, node, policy, now, out);
            return;
        }
        r.last_error = Some(e.clone());
        retry_or_quarantine(
            state,
            node,
            &format!("{action:?} failed: {e}"),
            policy,
            now,
            out,
        );
        return;
    }
    match action {
        ActionKind::Fence => after_fence(state, node, policy, now, out),
        ActionKind::Promote => {
            let standby = state
                .nodes
                .get_mut(node)
                .and_then(|n| n.repair.as_mut())
                .and_then(|r| r.promoting.take());
            if let Some(s) = standby {
                promote(state, node, &s, now, out);
            }
            attach(state, node, policy, now, "attaching the rescue kernel", out);
        }
        ActionKind::Attach => transition(
            state,
            node,
            RepairStep::WaitingReady,
            now + policy.ready_timeout,
            now,
            "rescue kernel attached; waiting for Ready",
            out,
        ),
        ActionKind::Recover => {}
        ActionKind::Detach => {
            transition(
                state,
                node,
                RepairStep::Rebooting,
                now + policy.reboot_timeout,
                now,
                "rescue media detached; rebooting",
                out,
            );
            out.actions.push(Action::Reboot { node: node.into() });
        }
        ActionKind::Reboot => {
            if let Some(n) = state.nodes.get_mut(node) {
                n.ok_streak = 0;
            }
            transition(
                state,
                node,
                RepairStep::Verifying,
                now + policy.verify_timeout,
                now,
                "rebooted into the restored system; health-checking",
                out,
            );
        }
    }
}

fn agent_status(
    state: &mut ClusterState,
    node: &str,
    status: Status,
    policy: &Policy,
    now: Time,
    out: &mut Outcome,
) {
    let Some(r) = repair_at(state, node, &[RepairStep::Recovering]) else {
        return;
    };
    if r.boot_id.is_some_and(|b| b != status.boot_id) {
        // A new boot of the agent: trust only the flag it read at start.
        r.boot_id = Some(status.boot_id);
    }
    r.bytes_done = status.bytes_done;
    r.bytes_total = status.bytes_total;
    let sent_at = r.sent_at;
    let ours = status.plan_id.as_deref() == Some(r.plan_id.as_str());
    let flag_ours = status.flag.plan_id == r.plan_id;
    let found_ours = status
        .found_at_boot
        .as_ref()
        .is_some_and(|f| f.plan_id == r.plan_id && f.state == FlagState::Recovered);
    match status.phase {
        // RECOVERED needs the phase and the flag to agree, for this plan.
        Phase::Recovered if ours && flag_ours && status.flag.state == FlagState::Recovered => {
            transition(
                state,
                node,
                RepairStep::Detaching,
                now + policy.attach_timeout,
                now,
                "agent reports RECOVERED",
                out,
            );
            out.actions.push(Action::Detach { node: node.into() });
        }
        Phase::Ready if found_ours => {
            transition(
                state,
                node,
                RepairStep::Detaching,
                now + policy.attach_timeout,
                now,
                "agent rebooted after writing RECOVERED",
                out,
            );
            out.actions.push(Action::Detach { node: node.into() });
        }
        // A poll may overtake the Recover it follows; resend only once the plan had time to land.
        Phase::Ready if now >= sent_at + (2 * policy.poll_interval).max(5) => send_recover(
            state,
            node,
            policy,
            now,
            "agent is ready but not running our plan; sending it again",
            out,
        ),
        Phase::Failed if ours => {
            let e = status.error.map_or("unknown".into(), |e| {
                format!("error {}: {}", e.code, e.message)
            });
            if let Some(r) = state.nodes.get_mut(node).and_then(|n| n.repair.as_mut()) {
                r.last_error = Some(e.clone());
            }
            retry_or_quarantine(state, node, &format!("plan failed: {e}"), policy, now, out);
        }
        _ => {}
    }
}

fn retry_or_quarantine(
    state: &mut ClusterState,
    node: &str,
    reason: &str,
    policy: &Policy,
    now: Time,
    out: &mut Outcome,
) {
    let Some(r) = state.nodes.get_mut(node).and_then(|n| n.repair.as_mut()) else {
        return;
    };
    r.attempt += 1;
    if r.step == RepairStep::Verifying {
        r.cycles += 1;
        r.attempt = r.cycles;
    }
    r.last_error = Some(reason.to_string());
    if r.attempt > policy.retries {
        transition(
            state,
            node,
            RepairStep::Quarantined,
            Time::MAX,
            now,
            &format!("quarantined: {reason}"),
            out,
        );
        out.actions.push(Action::Alert {
            node: Some(node.into()),
            message: format!("{node} quarantined: {reason}"),
        });
        tick(state, policy, now, out);
        return;
    }
    let attempt = r.attempt;
    let step = r.step.clone();
    match step {
        RepairStep::Fencing => {
            out.actions.push(Action::Fence { node: node.into() });
            extend(state, node, now + policy.fence_timeout);
        }
        // Attach again (power-cycles into the rescue kernel); for a restored system that does not
        // come up healthy, that repairs it again from the start.
        RepairStep::Promoting
        | RepairStep::Attaching
        | RepairStep::WaitingReady
        | RepairStep::Verifying => {
            attach(
                state,
                node,
                policy,
                now,
                &format!("retry {attempt}: {reason}"),
                out,
            );
        }
        RepairStep::Recovering => {
            send_recover(
                state,
                node,
                policy,
                now,
                &format!("retry {attempt}: {reason}"),
                out,
            );
        }
        RepairStep::Detaching => {
            out.actions.push(Action::Detach { node: node.into() });
            extend(state, node, now + policy.attach_timeout);
        }
        RepairStep::Rebooting => {
            out.actions.push(Action::Reboot { node: node.into() });
            extend(state, node, now + policy.reboot_timeout);
        }
        RepairStep::Queued | RepairStep::Quarantined => {}
    }
}

fn extend(state: &mut ClusterState, node: &str, deadline: Time) {
    if let Some(r) = state.nodes.get_mut(node).and_then(|n| n.repair.as_mut()) {
        r.deadline = deadline;
    }
}
