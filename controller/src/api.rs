//! The JSON documents of the controller's local HTTP API: what the daemon's server
//! (`daemon::http`) answers and the CLI's client (`api_client`) reads. Plain data, built from the
//! repair state; no I/O, and no use of either side.

use lazarus_proto::CopyCounters;
use serde::{Deserialize, Serialize};

use crate::cluster::Role;
use crate::repair::{ClusterState, NodeState, RepairStep, Stage, Time, Transition};
use crate::store::LoggedEvent;

/// An alert for a human: when (Unix seconds), which node if one, what.
pub type Alert = (u64, Option<String>, String);

/// One node in `GET /api/status`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub role: Role,
    /// The node's stage in one word (`healthy`, `recovering`, …).
    pub state: String,
    pub step_attempt: u32,
    pub plan_id: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// When the node entered its current state (Unix seconds): the current step's start.
    pub since: u64,
    pub replaced_by: Option<String>,
    pub last_error: Option<String>,
    /// When the current step runs out of time, if it can.
    #[serde(default)]
    pub deadline: Option<u64>,
    /// Of a `recovering` node whose agent reported any: its copy counters (bytes of the disk
    /// `checked` against the index, of the image `fetched`, `written`; `source_stalled_since`,
    /// Unix seconds, while the image source gives nothing). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyCounters>,
}

/// `GET /api/status`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct StatusView {
    /// The controller's clock (Unix seconds), for "since" and durations shown elsewhere.
    #[serde(default)]
    pub now: u64,
    pub paused: bool,
    pub nodes: Vec<NodeView>,
    /// The 20 most recent alerts, newest first.
    pub alerts: Vec<Alert>,
}

/// One event in `GET /api/events`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct EventView {
    pub seq: u64,
    pub time: u64,
    pub node: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// The body of every error answer: `{"error": "…"}`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// The body of an accepted operator request: `{"accepted": true}`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: bool,
}

/// `GET /api/status` of `state` at `now` with `alerts` (oldest first).
pub fn status_view(state: &ClusterState, alerts: &[Alert], now: Time) -> StatusView {
    StatusView {
        now,
        paused: state.paused,
        nodes: state
            .nodes
            .iter()
            .map(|(name, n)| node_view(name, n))
            .collect(),
        alerts: alerts.iter().rev().take(20).cloned().collect(),
    }
}

/// One node of `GET /api/status`.
pub fn node_view(name: &str, n: &NodeState) -> NodeView {
    let r = n.repair.as_ref();
    NodeView {
        name: name.to_string(),
        role: n.role,
        state: n.stage().to_string(),
        step_attempt: r.map_or(0, |r| r.attempt),
        plan_id: r.map(|r| r.plan_id.clone()).filter(|p| !p.is_empty()),
        bytes_done: r.map_or(0, |r| r.bytes_done),
        bytes_total: r.map_or(0, |r| r.bytes_total),
        since: n.since,
        replaced_by: r.and_then(|r| r.replaced_by.clone()),
        last_error: r.and_then(|r| r.last_error.clone()),
        deadline: r.map(|r| r.deadline).filter(|&d| d != Time::MAX),
        copy: r
            .filter(|r| r.step == RepairStep::Recovering)
            .map(|r| r.copy)
            .filter(|c| *c != CopyCounters::default()),
    }
}

/// `GET /api/nodes/NODE`: one node as in `/api/status`, and its repairs drawn from the event
/// log, most recent last.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct NodeDetail {
    /// The controller's clock (Unix seconds).
    pub now: u64,
    pub node: NodeView,
    /// At most [`MAX_REPAIRS_SHOWN`] repairs, oldest first.
    pub repairs: Vec<RepairView>,
}

/// The repairs `GET /api/nodes/NODE` shows.
pub const MAX_REPAIRS_SHOWN: usize = 10;

/// How a repair ended.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RepairOutcome {
    /// Still going.
    Running,
    /// The restored node passed its health checks.
    Restored,
    /// Out of attempts: a human decides (it may still be there, or have been repaired again).
    Quarantined,
    /// An operator returned the node to service unrepaired.
    Released,
}

impl RepairOutcome {
    /// The name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restored => "restored",
            Self::Quarantined => "quarantined",
            Self::Released => "released",
        }
    }
}

/// One repair: from the failure (queued) to its end.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct RepairView {
    pub started: u64,
    pub ended: Option<u64>,
    pub outcome: RepairOutcome,
    /// Each step entered, in order; a step tried again appears again.
    pub steps: Vec<StepView>,
}

/// How a step ended.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The node is at this step now.
    Running,
    /// The repair moved on.
    Done,
    /// It failed or ran out of time, and the repair went to this step (or an earlier one) again.
    Retried,
    /// It failed with no attempts left: quarantine.
    Failed,
    /// An operator ended it (released the node, or repaired it again from quarantine).
    Stopped,
}

impl StepOutcome {
    /// The name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// One step of a repair.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct StepView {
    /// The step, as its name (`attaching`, `recovering`, …).
    pub step: RepairStep,
    pub start: u64,
    pub end: Option<u64>,
    /// Up to its end, or up to now if it runs.
    pub seconds: u64,
    /// Of a `recovering` step: the image bytes written, and its size (0 when unknown).
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub outcome: StepOutcome,
    /// Why the step began.
    pub reason: String,
    /// Why it ended (the reason of the next transition).
    pub ended_by: Option<String>,
}

/// Where a step sits in a repair's forward order: a move to a later step is progress, to the
/// same or an earlier one a retry.
fn order(step: RepairStep) -> u8 {
    match step {
        RepairStep::Queued => 0,
        RepairStep::Fencing | RepairStep::AwaitingFence => 1,
        RepairStep::Promoting => 2,
        RepairStep::Attaching => 3,
        RepairStep::WaitingReady => 4,
        RepairStep::Recovering => 5,
        RepairStep::Detaching => 6,
        RepairStep::Rebooting => 7,
        RepairStep::Verifying => 8,
        RepairStep::Quarantined => 9,
    }
}

/// The repairs of one node, oldest first, from its transitions (oldest first) and, for the step
/// it is at now, its live state: the bytes of a running `recovering` step come from the last
/// status the agent reported, as in `/api/status`.
pub fn repairs_of(transitions: &[Transition], node: &NodeView, now: Time) -> Vec<RepairView> {
    let mut done: Vec<RepairView> = Vec::new();
    let mut current: Option<RepairView> = None;
    for t in transitions {
        let to_step = match t.to {
            Stage::Role(_) => continue, // a role change is not a step of this node's repair
            Stage::Step(s) => Some(s),
            Stage::Health(_) => None,
        };
        if let Some(repair) = current.as_mut() {
            if let Some(open) = repair.steps.last_mut().filter(|s| s.end.is_none()) {
                let from = open.step;
                open.end = Some(t.time);
                open.seconds = t.time.saturating_sub(open.start);
                open.ended_by = Some(t.reason.clone());
                open.outcome = match (from, to_step) {
                    (_, Some(RepairStep::Quarantined)) => StepOutcome::Failed,
                    (RepairStep::Quarantined, _) => StepOutcome::Stopped,
                    (RepairStep::Verifying, None) => StepOutcome::Done,
                    (_, None | Some(RepairStep::Queued)) => StepOutcome::Stopped,
                    (f, Some(to)) if order(to) > order(f) => StepOutcome::Done,
                    _ => StepOutcome::Retried,
                };
                if let Some(b) = t.bytes {
                    (open.bytes_done, open.bytes_total) = (b.done, b.total);
                }
            }
        }
        let ends = matches!(to_step, None | Some(RepairStep::Queued));
        if ends {
            if let Some(mut repair) = current.take() {
                let last = repair.steps.last().map(|s| s.step);
                repair.ended = Some(t.time);
                repair.outcome = match (last, to_step) {
                    (Some(RepairStep::Quarantined), _) => RepairOutcome::Quarantined,
                    (Some(RepairStep::Verifying), None) => RepairOutcome::Restored,
                    _ => RepairOutcome::Released,
                };
                done.push(repair);
            }
        }
        let Some(step) = to_step else { continue };
        let repair = current.get_or_insert_with(|| RepairView {
            started: t.time,
            ended: None,
            outcome: RepairOutcome::Running,
            steps: Vec::new(),
        });
        repair.steps.push(StepView {
            step,
            start: t.time,
            end: None,
            seconds: 0,
            bytes_done: 0,
            bytes_total: 0,
            outcome: StepOutcome::Running,
            reason: t.reason.clone(),
            ended_by: None,
        });
    }
    if let Some(mut repair) = current {
        if let Some(open) = repair.steps.last_mut().filter(|s| s.end.is_none()) {
            open.seconds = now.saturating_sub(open.start);
            if open.step == RepairStep::Recovering && node.state == open.step.name() {
                (open.bytes_done, open.bytes_total) = (node.bytes_done, node.bytes_total);
            }
            if open.step == RepairStep::Quarantined {
                repair.outcome = RepairOutcome::Quarantined;
            }
        }
        done.push(repair);
    }
    let skip = done.len().saturating_sub(MAX_REPAIRS_SHOWN);
    done.drain(..skip);
    done
}

impl From<LoggedEvent> for EventView {
    fn from(e: LoggedEvent) -> Self {
        let Transition {
            time,
            node,
            from,
            to,
            reason,
            bytes: _,
        } = e.transition;
        Self {
            seq: e.seq,
            time,
            node,
            from: from.to_string(),
            to: to.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repair::{ByteProgress, Health};

    const W: Stage = Stage::HEALTHY;

    fn step(s: RepairStep) -> Stage {
        Stage::Step(s)
    }

    fn t(time: Time, from: Stage, to: Stage, reason: &str) -> Transition {
        Transition {
            time,
            node: "w1".into(),
            from,
            to,
            reason: reason.into(),
            bytes: None,
        }
    }

    fn node(state: &str, done: u64, total: u64) -> NodeView {
        NodeView {
            name: "w1".into(),
            role: Role::Standby,
            state: state.into(),
            step_attempt: 0,
            plan_id: None,
            bytes_done: done,
            bytes_total: total,
            since: 0,
            replaced_by: None,
            last_error: None,
            deadline: None,
            copy: None,
        }
    }

    /// (step, start, end, seconds, bytes done, outcome) of each step.
    fn steps(r: &RepairView) -> Vec<(RepairStep, u64, Option<u64>, u64, u64, StepOutcome)> {
        r.steps
            .iter()
            .map(|s| (s.step, s.start, s.end, s.seconds, s.bytes_done, s.outcome))
            .collect()
    }

    #[test]
    fn a_whole_repair_has_each_step_with_its_time_bytes_and_outcome() {
        use RepairStep::*;
        use StepOutcome::*;
        let mut leaving_recovery = t(30, step(Recovering), step(Detaching), "RECOVERED");
        leaving_recovery.bytes = Some(ByteProgress {
            done: 64,
            total: 64,
        });
        let mut failed_plan = t(
            20,
            step(Recovering),
            step(Recovering),
            "retry 1: plan failed",
        );
        failed_plan.bytes = Some(ByteProgress { done: 8, total: 64 });
        let log = [
            t(1, W, Stage::FAILING, "2 consecutive failed health checks"),
            t(
                1,
                Stage::FAILING,
                step(Queued),
                "failed; a repair is queued",
            ),
            t(2, step(Queued), step(Fencing), "repair starts"),
            t(3, step(Fencing), step(Promoting), "promoting s1"),
            // The standby's own promotion is logged under its name; a role change of this node
            // (none here) would not be a step.
            t(
                3,
                Stage::Role(Role::Standby),
                Stage::Role(Role::Worker),
                "x",
            ),
            t(5, step(Promoting), step(Attaching), "attaching"),
            t(6, step(Attaching), step(WaitingReady), "attached"),
            t(5 + 4, step(WaitingReady), step(Recovering), "agent ready"),
            failed_plan,
            leaving_recovery,
            t(31, step(Detaching), step(Rebooting), "detached"),
            t(40, step(Rebooting), step(Verifying), "rebooted"),
            t(42, step(Verifying), W, "back as a standby"),
        ];
        let repairs = repairs_of(&log, &node("healthy", 0, 0), 100);
        assert_eq!(repairs.len(), 1);
        let r = &repairs[0];
        assert_eq!(
            (r.started, r.ended, r.outcome),
            (1, Some(42), RepairOutcome::Restored)
        );
        assert_eq!(
            steps(r),
            [
                (Queued, 1, Some(2), 1, 0, Done),
                (Fencing, 2, Some(3), 1, 0, Done),
                (Promoting, 3, Some(5), 2, 0, Done),
                (Attaching, 5, Some(6), 1, 0, Done),
                (WaitingReady, 6, Some(9), 3, 0, Done),
                (Recovering, 9, Some(20), 11, 8, Retried),
                (Recovering, 20, Some(30), 10, 64, Done),
                (Detaching, 30, Some(31), 1, 0, Done),
                (Rebooting, 31, Some(40), 9, 0, Done),
                (Verifying, 40, Some(42), 2, 0, Done),
            ]
        );
        assert_eq!(r.steps[5].reason, "agent ready");
        assert_eq!(r.steps[5].ended_by.as_deref(), Some("retry 1: plan failed"));
        assert_eq!(r.steps[6].bytes_total, 64);
    }

    #[test]
    fn a_running_step_runs_to_now_with_the_live_bytes() {
        use RepairStep::*;
        let log = [
            t(10, W, step(Queued), "queued"),
            t(10, step(Queued), step(Attaching), "starts"),
            t(12, step(Attaching), step(Recovering), "agent ready"),
        ];
        let repairs = repairs_of(&log, &node("recovering", 3, 12), 20);
        let r = &repairs[0];
        assert_eq!((r.ended, r.outcome), (None, RepairOutcome::Running));
        let last = r.steps.last().unwrap();
        assert_eq!(
            (last.step, last.end, last.seconds, last.outcome),
            (Recovering, None, 8, StepOutcome::Running)
        );
        assert_eq!((last.bytes_done, last.bytes_total), (3, 12));
    }

    #[test]
    fn quarantine_release_and_a_new_repair_are_told_apart() {
        use RepairStep::*;
        let log = [
            t(1, W, step(Queued), "queued"),
            t(2, step(Queued), step(Attaching), "starts"),
            t(
                9,
                step(Attaching),
                step(Quarantined),
                "quarantined: attach failed",
            ),
            // An operator repairs it again: a second repair, the first ends quarantined.
            t(
                20,
                step(Quarantined),
                step(Queued),
                "failed; a repair is queued",
            ),
            t(21, step(Queued), step(Attaching), "starts"),
            t(22, step(Attaching), step(WaitingReady), "attached"),
            t(
                25,
                step(WaitingReady),
                step(Attaching),
                "retry 1: waiting_ready timed out",
            ),
            t(26, step(Attaching), step(Quarantined), "quarantined"),
            t(
                30,
                step(Quarantined),
                Stage::Health(Health::Healthy),
                "released",
            ),
            t(40, W, step(Queued), "queued"),
        ];
        let repairs = repairs_of(&log, &node("queued", 0, 0), 45);
        let outcomes: Vec<RepairOutcome> = repairs.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                RepairOutcome::Quarantined,
                RepairOutcome::Quarantined,
                RepairOutcome::Running
            ]
        );
        let first: Vec<StepOutcome> = repairs[0].steps.iter().map(|s| s.outcome).collect();
        assert_eq!(
            first,
            [StepOutcome::Done, StepOutcome::Failed, StepOutcome::Stopped]
        );
        let second: Vec<StepOutcome> = repairs[1].steps.iter().map(|s| s.outcome).collect();
        assert_eq!(
            second,
            [
                StepOutcome::Done,
                StepOutcome::Done,
                StepOutcome::Retried,
                StepOutcome::Failed,
                StepOutcome::Stopped
            ]
        );
        assert_eq!(repairs[1].ended, Some(30));
        assert_eq!(repairs[2].steps[0].seconds, 5);
        // A node whose log starts mid-repair (an older log) still gets its steps.
        let repairs = repairs_of(&log[5..7], &node("waiting_ready", 0, 0), 30);
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].steps.len(), 2);
    }

    #[test]
    fn only_the_last_repairs_are_shown() {
        let mut log = Vec::new();
        for i in 0..(MAX_REPAIRS_SHOWN as u64 + 5) {
            log.push(t(i * 10, W, step(RepairStep::Queued), "queued"));
            log.push(t(i * 10 + 1, step(RepairStep::Queued), W, "released"));
        }
        let repairs = repairs_of(&log, &node("healthy", 0, 0), 1000);
        assert_eq!(repairs.len(), MAX_REPAIRS_SHOWN);
        assert_eq!(repairs[0].started, 50);
        assert!(repairs.iter().all(|r| r.outcome == RepairOutcome::Released));
    }

    #[test]
    fn outcome_names_are_their_serialized_form() {
        use RepairOutcome as R;
        use StepOutcome as S;
        for o in [R::Running, R::Restored, R::Quarantined, R::Released] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
        }
        for o in [S::Running, S::Done, S::Retried, S::Failed, S::Stopped] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
        }
    }

    #[test]
    fn step_names_in_the_timeline_are_the_status_words() {
        let log = [t(1, W, step(RepairStep::WaitingReady), "r")];
        let json = serde_json::to_value(repairs_of(&log, &node("waiting_ready", 0, 0), 2)).unwrap();
        assert_eq!(json[0]["steps"][0]["step"], "waiting_ready");
        assert_eq!(json[0]["steps"][0]["outcome"], "running");
        assert_eq!(json[0]["outcome"], "running");
    }
}
