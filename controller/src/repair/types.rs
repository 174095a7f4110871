//! What the repair state machine reads and writes: the persisted state (nodes, repairs), the
//! events it is fed, the actions it asks for, the transitions it records, and the part of the
//! cluster file it needs ([`RepairPolicy`]). Plain data; the decisions live in `step`, `flow` and
//! `brakes`.
//!
//! [`ClusterState`] and [`Transition`] are stored in the controller's database as JSON: their
//! serde representation is append only (new fields get `#[serde(default)]`).

use std::collections::BTreeMap;
use std::fmt;

use lazarus_proto::{BootId, CopyCounters, Status};
use serde::{Deserialize, Serialize};

use crate::cluster::{BootProvider, Cluster, Fencing, Role};

/// Unix seconds.
pub type Time = u64;

/// A step of a repair. The names are persisted: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// `fencing = "required"` and the boot provider cannot power the node off: waiting for an
    /// operator to confirm it is off (`lazarus fenced NODE`) before a standby takes its place.
    AwaitingFence,
}

impl RepairStep {
    /// The step's name, as serialized (`waiting_ready`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Fencing => "fencing",
            Self::Promoting => "promoting",
            Self::Attaching => "attaching",
            Self::WaitingReady => "waiting_ready",
            Self::Recovering => "recovering",
            Self::Detaching => "detaching",
            Self::Rebooting => "rebooting",
            Self::Verifying => "verifying",
            Self::Quarantined => "quarantined",
            Self::AwaitingFence => "awaiting_fence",
        }
    }

    /// How far along a repair the step is: attempts count per step and are kept while a retry
    /// goes back to an earlier step (Attaching ↔ WaitingReady), reset only by progress.
    pub(super) fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Fencing | Self::AwaitingFence => 1,
            Self::Promoting => 2,
            Self::Attaching | Self::WaitingReady => 3,
            Self::Recovering => 4,
            Self::Detaching => 5,
            Self::Rebooting => 6,
            Self::Verifying => 7,
            Self::Quarantined => 8,
        }
    }
}

impl fmt::Display for RepairStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A node's health while it is not under repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// Failed checks, under the threshold or with the repair not queued yet.
    Failing,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
        })
    }
}

/// A node's state in one word: the `from` and `to` of a [`Transition`] and the STATE column of
/// `lazarus status`. Serialized as that word (`"healthy"`, `"waiting_ready"`, `"worker"`), the
/// way the event log has always stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stage {
    /// Not under repair.
    Health(Health),
    /// Under repair, at this step.
    Step(RepairStep),
    /// A role change: a standby promoted in a failed worker's place (`standby` → `worker`).
    Role(Role),
}

impl Stage {
    pub const HEALTHY: Self = Self::Health(Health::Healthy);
    pub const FAILING: Self = Self::Health(Health::Failing);
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Health(h) => h.fmt(f),
            Self::Step(s) => s.fmt(f),
            Self::Role(Role::Worker) => f.write_str("worker"),
            Self::Role(Role::Standby) => f.write_str("standby"),
        }
    }
}

impl From<RepairStep> for Stage {
    fn from(s: RepairStep) -> Self {
        Self::Step(s)
    }
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
    /// The node is confirmed off (by its provider or an operator).
    #[serde(default)]
    pub fenced: bool,
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
    /// The copy counters of the current plan, as the agent last reported them (bytes checked,
    /// fetched, written; since when the source is stalled). Live progress, not history: kept in
    /// the state record with `bytes_done` (committed with the next decision, or within
    /// `FLUSH_EVERY`), never in the event log; reset when a new plan is sent.
    #[serde(default)]
    pub copy: CopyCounters,
}

impl Repair {
    /// A repair just queued, for a failure detected at `failure_time`.
    pub(super) fn queued(failure_time: Time) -> Self {
        Self {
            step: RepairStep::Queued,
            attempt: 0,
            deadline: Time::MAX,
            plan_id: String::new(),
            failure_time,
            replaced_by: None,
            tried: Vec::new(),
            promoting: None,
            fenced: false,
            boot_id: None,
            bytes_done: 0,
            bytes_total: 0,
            last_error: None,
            plans_sent: 0,
            cycles: 0,
            sent_at: 0,
            copy: CopyCounters::default(),
        }
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

impl NodeState {
    /// The node's state in one word, as `lazarus status` shows it.
    pub fn stage(&self) -> Stage {
        match &self.repair {
            Some(r) => Stage::Step(r.step),
            None if self.healthy => Stage::HEALTHY,
            None => Stage::FAILING,
        }
    }
}

/// The cluster's state: every node, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeState>,
    /// Automatic repair is paused (too many failures at once).
    pub paused: bool,
}

impl ClusterState {
    /// The initial state of a cluster file's nodes: every node healthy in its configured role.
    pub fn initial(cluster: &Cluster, now: Time) -> Self {
        Self {
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

    /// Adds nodes new to the cluster file and drops ones no longer in it.
    pub fn reconcile(&mut self, cluster: &Cluster, now: Time) {
        let fresh = Self::initial(cluster, now);
        self.nodes.retain(|k, _| fresh.nodes.contains_key(k));
        for (k, v) in fresh.nodes {
            self.nodes.entry(k).or_insert(v);
        }
    }
}

/// What the step function needs of the cluster file (`[policy]` and the nodes' providers), with
/// durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPolicy {
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
    /// Whether a node must be confirmed off before a standby takes its place.
    pub fencing: Fencing,
}

impl RepairPolicy {
    pub fn from_cluster(c: &Cluster) -> Self {
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
                    BootProvider::Command { power_off, .. } => power_off.is_some(),
                    BootProvider::Redfish { .. } => true,
                    BootProvider::Manual => false,
                })
                .map(|n| n.name.to_string())
                .collect(),
            has_promotion_hook: c.promotion.is_some(),
            fencing: p.fencing,
        }
    }

    /// How long `step` may take; a step without a deadline gets `Time::MAX`.
    pub fn timeout(&self, step: RepairStep) -> Time {
        match step {
            RepairStep::Fencing => self.fence_timeout,
            // The promotion hook shares the attach budget.
            RepairStep::Promoting | RepairStep::Attaching | RepairStep::Detaching => {
                self.attach_timeout
            }
            RepairStep::WaitingReady => self.ready_timeout,
            RepairStep::Recovering => self.recover_timeout,
            RepairStep::Rebooting => self.reboot_timeout,
            RepairStep::Verifying => self.verify_timeout,
            RepairStep::Queued | RepairStep::Quarantined | RepairStep::AwaitingFence => Time::MAX,
        }
    }
}

/// Why an action failed, as the text the repair records (`last_error`, the event log): the error
/// itself stays with the thread that ran the action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ActionError(pub String);

impl ActionError {
    /// The message of `e` (whose `Display` names its source).
    pub fn of(e: &dyn std::error::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<&str> for ActionError {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for ActionError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Something that happened.
// An agent's `Status` (about 230 bytes) makes `AgentStatus` the large variant; events are few
// and short-lived (one per poll), so boxing it would only add an allocation per poll.
#[allow(clippy::large_enum_variant)]
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
        result: Result<(), ActionError>,
    },
    /// An agent announced itself and was matched to `node`.
    AgentReady { node: String, boot_id: BootId },
    /// An agent answered a poll.
    AgentStatus { node: String, status: Status },
    /// An agent could not be reached.
    AgentUnreachable { node: String, error: ActionError },
    /// `lazarus repair NODE [--force]`: queue a repair (the brakes apply); a healthy node only
    /// with `force`.
    OperatorRepair { node: String, force: bool },
    /// `lazarus release NODE`: back into service as a standby, unrepaired.
    OperatorRelease { node: String },
    /// `lazarus fenced NODE`: an operator confirms the node is powered off.
    OperatorFenced { node: String },
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

impl ActionKind {
    /// The step a repair is at while this action runs.
    pub fn step(self) -> RepairStep {
        match self {
            Self::Fence => RepairStep::Fencing,
            Self::Promote => RepairStep::Promoting,
            Self::Attach => RepairStep::Attaching,
            Self::Recover => RepairStep::Recovering,
            Self::Detach => RepairStep::Detaching,
            Self::Reboot => RepairStep::Rebooting,
        }
    }
}

/// Something for the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Power `node` off through its boot provider.
    Fence { node: String },
    /// Run the promotion hook: `promoted` takes `failed`'s place.
    Promote { failed: String, promoted: String },
    /// Run the `[standby]` hook: the restored `node` has rejoined as a standby.
    Rejoined { node: String },
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
    pub from: Stage,
    pub to: Stage,
    pub reason: String,
    /// How far the agent had written the image when the step this transition leaves ended
    /// (`recovering` only, once the agent reported a size); absent elsewhere and in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<ByteProgress>,
}

/// Bytes of an image written of its size, as the agent last reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteProgress {
    pub done: u64,
    pub total: u64,
}

/// The outcome of one event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub transitions: Vec<Transition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: [RepairStep; 10] = [
        RepairStep::Queued,
        RepairStep::Fencing,
        RepairStep::Promoting,
        RepairStep::Attaching,
        RepairStep::WaitingReady,
        RepairStep::Recovering,
        RepairStep::Detaching,
        RepairStep::Rebooting,
        RepairStep::Verifying,
        RepairStep::Quarantined,
    ];

    #[test]
    fn stage_names_are_their_serialized_form_and_read_back() {
        let mut stages: Vec<Stage> = STEPS.iter().map(|&s| Stage::Step(s)).collect();
        stages.extend([
            Stage::HEALTHY,
            Stage::FAILING,
            Stage::Role(Role::Worker),
            Stage::Role(Role::Standby),
        ]);
        for stage in stages {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{stage}\""));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
        }
    }

    #[test]
    fn a_state_stored_before_the_copy_counters_loads_with_them_at_zero() {
        // A repair record as the controller stored it before `copy` existed.
        let old = r#"{"nodes":{"w1":{"role":"worker","healthy":false,"ok_streak":0,"fail_streak":3,
            "repair":{"step":"recovering","attempt":0,"deadline":2000,"plan_id":"w1-1-1",
            "failure_time":1,"replaced_by":null,"tried":[],"promoting":null,"fenced":true,
            "boot_id":null,"bytes_done":5,"bytes_total":10,"last_error":null,"plans_sent":1,
            "cycles":0,"sent_at":100},"since":100}},"paused":false}"#;
        let state: ClusterState = serde_json::from_str(old).unwrap();
        let r = state.nodes["w1"].repair.clone().unwrap();
        assert_eq!((r.step, r.bytes_done), (RepairStep::Recovering, 5));
        assert_eq!(r.copy, CopyCounters::default());
        // And what is stored now reads back whole.
        let mut now = state.clone();
        now.nodes
            .get_mut("w1")
            .unwrap()
            .repair
            .as_mut()
            .unwrap()
            .copy = CopyCounters {
            checked: 1,
            fetched: 2,
            written: 3,
            source_stalled_since: Some(4),
        };
        let json = serde_json::to_string(&now).unwrap();
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), now);
    }

    #[test]
    fn transitions_logged_as_strings_read_back_typed() {
        let old = r#"{"time":7,"node":"w1","from":"waiting_ready","to":"recovering","reason":"r"}"#;
        let t: Transition = serde_json::from_str(old).unwrap();
        assert_eq!(
            (t.from, t.to),
            (
                Stage::Step(RepairStep::WaitingReady),
                Stage::Step(RepairStep::Recovering)
            )
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), old);
        let promoted = r#"{"time":7,"node":"s1","from":"standby","to":"worker","reason":"r"}"#;
        let t: Transition = serde_json::from_str(promoted).unwrap();
        assert_eq!(t.to, Stage::Role(Role::Worker));
        let wrote = r#"{"time":9,"node":"w1","from":"recovering","to":"detaching","reason":"r","bytes":{"done":5,"total":5}}"#;
        let t: Transition = serde_json::from_str(wrote).unwrap();
        assert_eq!(t.bytes, Some(ByteProgress { done: 5, total: 5 }));
        assert_eq!(serde_json::to_string(&t).unwrap(), wrote);
    }

    #[test]
    fn every_step_but_queued_and_quarantined_has_a_finite_timeout() {
        let p = RepairPolicy {
            failure_threshold: 1,
            recovery_threshold: 1,
            max_concurrent_repairs: 1,
            max_unhealthy: 1,
            retries: 1,
            poll_interval: 1,
            fence_timeout: 1,
            attach_timeout: 2,
            ready_timeout: 3,
            recover_timeout: 4,
            reboot_timeout: 5,
            verify_timeout: 6,
            can_fence: Vec::new(),
            has_promotion_hook: false,
            fencing: crate::cluster::Fencing::Required,
        };
        for s in STEPS {
            let finite = !matches!(s, RepairStep::Queued | RepairStep::Quarantined);
            assert_eq!(p.timeout(s) < Time::MAX, finite, "{s}");
        }
    }
}
