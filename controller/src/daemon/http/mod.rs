//! The controller's HTTP API (JSON) and Prometheus `/metrics`. The `lazarus` CLI's `status`,
//! `watch`, `events`, `repair`, `fenced`, `release` and `logs` use it. Every error answer is
//! [`ErrorBody`] (`{"error": "…"}`), one line.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/status` | nodes with role, state, step, progress, since, last error; alerts |
//! | `GET /api/events[?node=N]` | the event log |
//! | `POST /api/repair/N[?force=true]`, `POST /api/release/N`, `POST /api/fenced/N` | operator decisions |
//! | `GET /api/logs/N` | the agent's recent log, fetched over the protocol |
//! | `GET /api/nodes/N` | one node as in `/api/status`, and its repair timeline (each step's start, duration, bytes, outcome) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /`, `GET /ui/app.js`, `GET /ui/style.css` | the web view ([`web`]): a read-only page that shows `/api/status` and `/api/nodes/N` |
//!
//! Where it listens ([`socket`], [`server`]): always a Unix socket (`[controller.api] socket`,
//! `/run/lazarus/api.sock` by default, mode 0660, group `group`), and over TCP only when
//! `listen` comes with a `token_file`. Who may ask what is decided by [`guard`] before any route:
//! a bearer token over TCP, `Host` and `Origin` checks against web pages, a JSON content type
//! for POSTs. The web view's three files are the one exception to the token: they are the same
//! public code in every binary and hold no data; the page asks `/api/*` for every fact, with the
//! token.
//!
//! The server is hyper on a tokio runtime of its own thread, confined to this module: at most
//! [`server::MAX_CONNECTIONS`] connections per listener (the oldest idle one is closed for a new
//! one), request
//! heads of at most [`server::MAX_HEAD`] bytes read within [`server::HEAD_TIMEOUT`], bodies of at
//! most [`server::MAX_BODY`], a read or write stalled for [`server::STALL_TIMEOUT`] closes the
//! connection ([`stall`]). Routes run on blocking threads, at most [`server::MAX_WORKING`] at
//! once, each within a deadline; `/api/logs` (which waits on an agent) has its own smaller
//! budget, so it never holds up the other routes.
//!
//! This module answers from what the event loop publishes and sends operator decisions as
//! events; it never changes the state itself.

pub mod guard;
pub mod server;
pub mod socket;
pub mod stall;
pub mod web;

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use lazarus_proto::{Request, Response};
use serde::Serialize;

use super::pool::AgentPool;
use super::shared::{lock, now, Shared};
use crate::api::{
    node_view, repairs_of, status_view, Accepted, ErrorBody, EventView, NodeDetail,
    MAX_REPAIRS_SHOWN,
};
use crate::cluster::Cluster;
use crate::repair::brakes::{operator_refusal, OperatorOp};
use crate::repair::{Event, RepairStep, Stage};
use crate::store::Store;

/// The newest events `/api/nodes/N` reads to find the node's repairs: the log of a large
/// cluster holds many other nodes' events, and a node page asks every second.
pub const NODE_PAGE_SCAN: usize = 100_000;

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("API socket {1}: {0}: {2}")]
    Socket(&'static str, PathBuf, std::io::Error),
    #[error("API socket group: reading /etc/group: {0}")]
    GroupFile(std::io::Error),
    #[error("API socket {0}: another controller is serving on it")]
    Live(PathBuf),
    #[error("API socket {0}: exists and is not a socket (not replaced)")]
    NotSocket(PathBuf),
    #[error("API socket group {0:?}: no such group in /etc/group")]
    Group(String),
    #[error("the API on {0} needs token_file: TCP is served only with a bearer token")]
    NoToken(std::net::SocketAddr),
    #[error(transparent)]
    Token(#[from] crate::api_token::TokenError),
    #[error("listening on {0} for the API: {1}")]
    Tcp(std::net::SocketAddr, std::io::Error),
    #[error("starting the API server: {0}")]
    Runtime(std::io::Error),
}

/// One answer: status code, body, content type.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub body: std::borrow::Cow<'static, str>,
    pub kind: &'static str,
}

impl Reply {
    fn json(code: u16, value: &impl Serialize) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self {
                code,
                body: body.into(),
                kind: JSON,
            },
            Err(e) => Self::error(500, format!("encoding the answer: {e}")),
        }
    }

    /// `{"error": message}` with `code`.
    pub fn error(code: u16, message: impl Into<String>) -> Self {
        let body = ErrorBody {
            error: message.into(),
        };
        Self {
            code,
            // A struct of one string always serializes.
            body: serde_json::to_string(&body).unwrap_or_default().into(),
            kind: JSON,
        }
    }
}

/// What a request asks, once its method and path are understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Status,
    Node(String),
    Metrics,
    Events(Option<String>),
    Operator(String, OperatorOp),
    Logs(String),
    /// A file of the web view.
    Page(&'static web::Page),
}

impl Route {
    /// The route of `method` and `path_and_query`, or the answer to a request for none.
    pub fn parse(method: &hyper::Method, path_and_query: &str) -> Result<Self, Reply> {
        use hyper::Method;
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let path = path.trim_end_matches('/');
        let node = |prefix: &str| {
            path.strip_prefix(prefix)
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .map(str::to_string)
        };
        let route = if *method == Method::GET {
            match path {
                "/api/status" => Some(Self::Status),
                "/metrics" => Some(Self::Metrics),
                "/api/events" => Some(Self::Events(
                    query.strip_prefix("node=").map(str::to_string),
                )),
                _ => node("/api/logs/")
                    .map(Self::Logs)
                    .or_else(|| node("/api/nodes/").map(Self::Node))
                    .or_else(|| web::page(&Method::GET, path_and_query).map(Self::Page)),
            }
        } else if *method == Method::POST {
            let force = query.split('&').any(|q| q == "force=true");
            node("/api/repair/")
                .map(|n| Self::Operator(n, OperatorOp::Repair { force }))
                .or_else(|| node("/api/release/").map(|n| Self::Operator(n, OperatorOp::Release)))
                .or_else(|| node("/api/fenced/").map(|n| Self::Operator(n, OperatorOp::Fenced)))
        } else {
            None
        };
        route.ok_or_else(|| Reply::error(404, "no such route"))
    }
}

/// What the API answers from.
pub struct Api {
    pub cluster: Arc<Cluster>,
    pub pool: Arc<AgentPool>,
    pub shared: Arc<Mutex<Shared>>,
    pub tx: Sender<Event>,
    pub store: Arc<Store>,
}

impl Api {
    /// Answers `route`; may block (the store, an agent), so it runs on a blocking thread.
    pub fn answer(&self, route: &Route) -> Reply {
        match route {
            Route::Status => {
                let sh = lock(&self.shared);
                Reply::json(200, &status_view(&sh.state, &sh.alerts, now()))
            }
            Route::Node(node) => self.node(node),
            Route::Metrics => {
                let sh = lock(&self.shared);
                Reply {
                    code: 200,
                    body: sh.metrics.render(&sh.state).into(),
                    kind: PROMETHEUS,
                }
            }
            Route::Events(node) => match self.store.events(node.as_deref()) {
                Ok(events) => {
                    let events: Vec<EventView> = events.into_iter().map(EventView::from).collect();
                    Reply::json(200, &events)
                }
                Err(e) => Reply::error(500, e.to_string()),
            },
            Route::Operator(node, op) => self.operator(node, *op),
            Route::Logs(node) => self.logs(node),
            Route::Page(page) => Reply {
                code: 200,
                body: page.body.into(),
                kind: page.kind,
            },
        }
    }

    /// `node` as `/api/status` shows it, with its repairs from the event log.
    fn node(&self, node: &str) -> Reply {
        let view = {
            let sh = lock(&self.shared);
            match sh.state.nodes.get(node) {
                Some(n) => node_view(node, n),
                None => return Reply::error(404, format!("no node {node}")),
            }
        };
        // Read after the state: a transition committed in between only adds a step the state
        // will show at the next poll. Backwards from the newest event, until the start of the
        // oldest repair shown, or NODE_PAGE_SCAN events.
        let enough = |events: &[crate::store::LoggedEvent]| {
            events
                .iter()
                .filter(|e| e.transition.to == Stage::Step(RepairStep::Queued))
                .count()
                >= MAX_REPAIRS_SHOWN
        };
        match self.store.recent_events(node, NODE_PAGE_SCAN, enough) {
            Ok(events) => {
                let transitions: Vec<_> = events.into_iter().map(|e| e.transition).collect();
                let now = now();
                Reply::json(
                    200,
                    &NodeDetail {
                        now,
                        repairs: repairs_of(&transitions, &view, now),
                        node: view,
                    },
                )
            }
            Err(e) => Reply::error(500, e.to_string()),
        }
    }

    /// Hands an operator's decision about `node` to the event loop, or says at once why it is
    /// refused (the state machine refuses it too, should the state change in between).
    fn operator(&self, node: &str, op: OperatorOp) -> Reply {
        if self.cluster.node(node).is_none() {
            return Reply::error(404, format!("no node {node}"));
        }
        if let Some(why) = operator_refusal(&lock(&self.shared).state, node, op) {
            return Reply::error(409, why.to_string());
        }
        let event = match op {
            OperatorOp::Repair { force } => Event::OperatorRepair {
                node: node.into(),
                force,
            },
            OperatorOp::Release => Event::OperatorRelease { node: node.into() },
            OperatorOp::Fenced => Event::OperatorFenced { node: node.into() },
        };
        let _ = self.tx.send(event);
        Reply::json(202, &Accepted { accepted: true })
    }

    /// The recent log of `node`'s agent.
    fn logs(&self, node: &str) -> Reply {
        let Some(n) = self.cluster.node(node) else {
            return Reply::error(404, format!("no node {node}"));
        };
        match self.pool.call(n, &Request::GetLogs { since: 0 }) {
            Ok(Response::Logs(l)) => {
                let lines: Vec<&str> = l.lines.iter().map(|l| l.message.as_str()).collect();
                Reply::json(200, &lines)
            }
            Ok(other) => Reply::error(502, format!("unexpected reply from the agent: {other:?}")),
            Err(e) => Reply::error(502, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn error_bodies_are_json_with_the_message_as_is() {
        let r = Reply::error(404, "no node \"x\\y\"\n");
        assert_eq!((r.code, r.kind), (404, JSON));
        let back: ErrorBody = serde_json::from_str(&r.body).unwrap();
        assert_eq!(back.error, "no node \"x\\y\"\n");
    }

    #[test]
    fn routes_are_parsed_by_method_and_path() {
        let ok = |m: Method, p: &str| Route::parse(&m, p).ok();
        assert_eq!(ok(Method::GET, "/api/status/"), Some(Route::Status));
        assert_eq!(ok(Method::GET, "/metrics"), Some(Route::Metrics));
        assert_eq!(
            ok(Method::GET, "/api/events?node=w1"),
            Some(Route::Events(Some("w1".into())))
        );
        assert_eq!(
            ok(Method::GET, "/api/logs/w1"),
            Some(Route::Logs("w1".into()))
        );
        assert_eq!(
            ok(Method::GET, "/api/nodes/w1"),
            Some(Route::Node("w1".into()))
        );
        for p in ["/", "/?x=1", "/ui/app.js", "/ui/style.css"] {
            assert!(matches!(ok(Method::GET, p), Some(Route::Page(_))), "{p}");
        }
        assert_eq!(
            ok(Method::POST, "/api/repair/w1?force=true"),
            Some(Route::Operator(
                "w1".into(),
                OperatorOp::Repair { force: true }
            ))
        );
        assert_eq!(
            ok(Method::POST, "/api/fenced/w1"),
            Some(Route::Operator("w1".into(), OperatorOp::Fenced))
        );
        for (m, p) in [
            (Method::POST, "/api/status"),
            (Method::GET, "/api/repair/w1"),
            (Method::DELETE, "/api/release/w1"),
            (Method::GET, "/api/logs/"),
            (Method::GET, "/api/logs/a/b"),
            (Method::GET, "/api/nodes/"),
            (Method::POST, "/"),
            (Method::GET, "/ui/"),
            (Method::GET, "/ui/../app.js"),
            (Method::GET, "/index.html"),
        ] {
            let r = Route::parse(&m, p).unwrap_err();
            assert_eq!(r.code, 404, "{m} {p}");
        }
    }
}
