//! The controller's local HTTP API (JSON) and Prometheus `/metrics`. The `lazarus` CLI's
//! `status`, `events`, `repair`, `release` and `logs` use it.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/status` | nodes with role, state, step, progress, since, last error; alerts |
//! | `GET /api/events[?node=N]` | the event log |
//! | `POST /api/repair/N`, `POST /api/release/N` | operator decisions |
//! | `GET /api/logs/N` | the agent's recent log, fetched over the protocol |
//! | `GET /metrics` | Prometheus text |

use std::sync::mpsc::Sender;
use std::sync::Mutex;

use lazarus_proto::{ClusterKey, Request, Response};
use serde::Serialize;

use crate::cluster::{Cluster, Role};
use crate::daemon::Shared;
use crate::repair::{self, Event};
use crate::store::Store;

/// One node in `GET /api/status`.
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub role: Role,
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
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq, Eq)]
pub struct StatusView {
    pub paused: bool,
    pub nodes: Vec<NodeView>,
    pub alerts: Vec<(u64, Option<String>, String)>,
}

/// One event in `GET /api/events`.
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq, Eq)]
pub struct EventView {
    pub seq: u64,
    pub time: u64,
    pub node: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

pub fn status_view(sh: &Shared) -> StatusView {
    StatusView {
        paused: sh.state.paused,
        nodes: sh
            .state
            .nodes
            .iter()
            .map(|(name, n)| {
                let r = n.repair.as_ref();
                NodeView {
                    name: name.clone(),
                    role: n.role,
                    state: repair::label(n),
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
        alerts: sh.alerts.iter().rev().take(20).cloned().collect(),
    }
}

fn metrics(sh: &Shared) -> String {
    let m = &sh.metrics;
    let mut out = String::new();
    out.push_str("# HELP lazarus_repairs_started_total Repairs started.\n# TYPE lazarus_repairs_started_total counter\n");
    out.push_str(&format!(
        "lazarus_repairs_started_total {}\n",
        m.repairs_started
    ));
    out.push_str("# HELP lazarus_repairs_succeeded_total Repairs that returned a node to service.\n# TYPE lazarus_repairs_succeeded_total counter\n");
    out.push_str(&format!(
        "lazarus_repairs_succeeded_total {}\n",
        m.repairs_succeeded
    ));
    out.push_str("# HELP lazarus_repairs_failed_total Repairs that ended in quarantine.\n# TYPE lazarus_repairs_failed_total counter\n");
    out.push_str(&format!(
        "lazarus_repairs_failed_total {}\n",
        m.repairs_quarantined
    ));
    out.push_str("# HELP lazarus_step_seconds_total Seconds spent in each repair step, all repairs.\n# TYPE lazarus_step_seconds_total counter\n");
    for (step, secs) in &m.step_seconds {
        out.push_str(&format!(
            "lazarus_step_seconds_total{{step=\"{step}\"}} {secs}\n"
        ));
    }
    out.push_str("# HELP lazarus_nodes Nodes per state.\n# TYPE lazarus_nodes gauge\n");
    let mut per: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for n in sh.state.nodes.values() {
        *per.entry(repair::label(n)).or_default() += 1;
    }
    for (state, count) in per {
        out.push_str(&format!("lazarus_nodes{{state=\"{state}\"}} {count}\n"));
    }
    out
}

/// Serves the API until the process ends.
pub fn serve(
    server: tiny_http::Server,
    cluster: &Cluster,
    key: &ClusterKey,
    shared: &Mutex<Shared>,
    tx: &Sender<Event>,
    store: &Store,
) {
    for req in server.incoming_requests() {
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
        let method = req.method().clone();
        let json = |v: &dyn erased::Json| (200, v.to_json(), "application/json");
        let (code, body, kind): (u16, String, &str) = match (method, path.trim_end_matches('/')) {
            (tiny_http::Method::Get, "/api/status") => {
                let view = status_view(&shared.lock().unwrap_or_else(|p| p.into_inner()));
                json(&view)
            }
            (tiny_http::Method::Get, "/metrics") => (
                200,
                metrics(&shared.lock().unwrap_or_else(|p| p.into_inner())),
                "text/plain; version=0.0.4",
            ),
            (tiny_http::Method::Get, "/api/events") => {
                let node = query.strip_prefix("node=");
                match store.events(node) {
                    Ok(v) => {
                        let v: Vec<EventView> = v
                            .into_iter()
                            .map(|e| EventView {
                                seq: e.seq,
                                time: e.transition.time,
                                node: e.transition.node,
                                from: e.transition.from,
                                to: e.transition.to,
                                reason: e.transition.reason,
                            })
                            .collect();
                        json(&v)
                    }
                    Err(e) => (
                        500,
                        format!("{{\"error\":{:?}}}", e.to_string()),
                        "application/json",
                    ),
                }
            }
            (tiny_http::Method::Post, p)
                if p.starts_with("/api/repair/") || p.starts_with("/api/release/") =>
            {
                let (verb, node) = p
                    .trim_start_matches("/api/")
                    .split_once('/')
                    .unwrap_or(("", ""));
                if cluster.node(node).is_none() {
                    (
                        404,
                        format!("{{\"error\":\"no node {node}\"}}"),
                        "application/json",
                    )
                } else {
                    let event = if verb == "repair" {
                        Event::OperatorRepair { node: node.into() }
                    } else {
                        Event::OperatorRelease { node: node.into() }
                    };
                    let _ = tx.send(event);
                    (202, "{\"accepted\":true}".into(), "application/json")
                }
            }
            (tiny_http::Method::Get, p) if p.starts_with("/api/logs/") => {
                let node = p.trim_start_matches("/api/logs/");
                match cluster.node(node) {
                    None => (
                        404,
                        format!("{{\"error\":\"no node {node}\"}}"),
                        "application/json",
                    ),
                    Some(n) => match crate::daemon::call_agent(
                        shared,
                        key,
                        n,
                        &Request::GetLogs { since: 0 },
                    ) {
                        Ok(Response::Logs(l)) => json(
                            &l.lines
                                .iter()
                                .map(|l| l.message.clone())
                                .collect::<Vec<_>>(),
                        ),
                        Ok(_) => (
                            502,
                            "{\"error\":\"unexpected reply\"}".into(),
                            "application/json",
                        ),
                        Err(e) => (502, format!("{{\"error\":{:?}}}", e), "application/json"),
                    },
                }
            }
            _ => (
                404,
                "{\"error\":\"no such route\"}".into(),
                "application/json",
            ),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes()).ok();
        let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
        if let Some(h) = header {
            resp = resp.with_header(h);
        }
        let _ = req.respond(resp);
    }
}

mod erased {
    /// Anything the API answers with as JSON.
    pub trait Json {
        fn to_json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self)
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
        }
    }
}
