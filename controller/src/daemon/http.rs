//! The controller's local HTTP API server (JSON) and Prometheus `/metrics`. The `lazarus` CLI's
//! `status`, `watch`, `events`, `repair`, `release` and `logs` use it. Every error answer is
//! [`ErrorBody`] (`{"error": "…"}`).
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

use lazarus_proto::{Request, Response};
use serde::Serialize;
use tiny_http::Method;

use super::pool::AgentPool;
use super::shared::{lock, Shared};
use crate::api::{status_view, Accepted, ErrorBody, EventView};
use crate::cluster::Cluster;
use crate::repair::brakes::{operator_refusal, OperatorOp};
use crate::repair::Event;
use crate::store::Store;

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// One answer: status code, body, content type.
struct Reply {
    code: u16,
    body: String,
    kind: &'static str,
}

impl Reply {
    fn json(code: u16, value: &impl Serialize) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self {
                code,
                body,
                kind: JSON,
            },
            Err(e) => Self::error(500, format!("encoding the answer: {e}")),
        }
    }

    fn error(code: u16, message: impl Into<String>) -> Self {
        let body = ErrorBody {
            error: message.into(),
        };
        Self {
            code,
            // A struct of one string always serializes.
            body: serde_json::to_string(&body).unwrap_or_default(),
            kind: JSON,
        }
    }
}

/// What the API answers from.
pub struct Api<'a> {
    pub cluster: &'a Cluster,
    pub pool: &'a AgentPool,
    pub shared: &'a Mutex<Shared>,
    pub tx: &'a Sender<Event>,
    pub store: &'a Store,
}

impl Api<'_> {
    /// Serves `server` until the process ends.
    pub fn serve(&self, server: &tiny_http::Server) {
        for req in server.incoming_requests() {
            let reply = self.answer(req.method(), req.url());
            let mut resp =
                tiny_http::Response::from_string(reply.body).with_status_code(reply.code);
            if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.kind) {
                resp = resp.with_header(h);
            }
            let _ = req.respond(resp);
        }
    }

    fn answer(&self, method: &Method, url: &str) -> Reply {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        match (method, path.trim_end_matches('/')) {
            (Method::Get, "/api/status") => {
                let sh = lock(self.shared);
                Reply::json(200, &status_view(&sh.state, &sh.alerts))
            }
            (Method::Get, "/metrics") => {
                let sh = lock(self.shared);
                Reply {
                    code: 200,
                    body: sh.metrics.render(&sh.state),
                    kind: PROMETHEUS,
                }
            }
            (Method::Get, "/api/events") => match self.store.events(query.strip_prefix("node=")) {
                Ok(events) => {
                    let events: Vec<EventView> = events.into_iter().map(EventView::from).collect();
                    Reply::json(200, &events)
                }
                Err(e) => Reply::error(500, e.to_string()),
            },
            (Method::Post, p) => match p.strip_prefix("/api/repair/") {
                Some(node) => {
                    let force = query.split('&').any(|q| q == "force=true");
                    self.operator(node, OperatorOp::Repair { force })
                }
                None => match p.strip_prefix("/api/release/") {
                    Some(node) => self.operator(node, OperatorOp::Release),
                    None => match p.strip_prefix("/api/fenced/") {
                        Some(node) => self.operator(node, OperatorOp::Fenced),
                        None => Reply::error(404, "no such route"),
                    },
                },
            },
            (Method::Get, p) => match p.strip_prefix("/api/logs/") {
                Some(node) => self.logs(node),
                None => Reply::error(404, "no such route"),
            },
            _ => Reply::error(404, "no such route"),
        }
    }

    /// Hands an operator's decision about `node` to the event loop, or says at once why it is
    /// refused (the state machine refuses it too, should the state change in between).
    fn operator(&self, node: &str, op: OperatorOp) -> Reply {
        if self.cluster.node(node).is_none() {
            return Reply::error(404, format!("no node {node}"));
        }
        if let Some(why) = operator_refusal(&lock(self.shared).state, node, op) {
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

    #[test]
    fn error_bodies_are_json_with_the_message_as_is() {
        let r = Reply::error(404, "no node \"x\\y\"\n");
        assert_eq!((r.code, r.kind), (404, JSON));
        let back: ErrorBody = serde_json::from_str(&r.body).unwrap();
        assert_eq!(back.error, "no node \"x\\y\"\n");
    }
}
