//! The JSON documents of the controller's local HTTP API: what the daemon's server
//! (`daemon::http`) answers and the CLI's client (`api_client`) reads. Plain data, built from the
//! repair state; no I/O, and no use of either side.

use serde::{Deserialize, Serialize};

use crate::cluster::Role;
use crate::repair::{ClusterState, Transition};
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
    pub since: u64,
    pub replaced_by: Option<String>,
    pub last_error: Option<String>,
}

/// `GET /api/status`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct StatusView {
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

/// `GET /api/status` of `state` with `alerts` (oldest first).
pub fn status_view(state: &ClusterState, alerts: &[Alert]) -> StatusView {
    StatusView {
        paused: state.paused,
        nodes: state
            .nodes
            .iter()
            .map(|(name, n)| {
                let r = n.repair.as_ref();
                NodeView {
                    name: name.clone(),
                    role: n.role,
                    state: n.stage().to_string(),
                    step_attempt: r.map_or(0, |r| r.attempt),
                    plan_id: r.map(|r| r.plan_id.clone()).filter(|p| !p.is_empty()),
                    bytes_done: r.map_or(0, |r| r.bytes_done),
                    bytes_total: r.map_or(0, |r| r.bytes_total),
                    since: n.since,
                    replaced_by: r.and_then(|r| r.replaced_by.clone()),
                    last_error: r.and_then(|r| r.last_error.clone()),
                }
            })
            .collect(),
        alerts: alerts.iter().rev().take(20).cloned().collect(),
    }
}

impl From<LoggedEvent> for EventView {
    fn from(e: LoggedEvent) -> Self {
        let Transition {
            time,
            node,
            from,
            to,
            reason,
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
