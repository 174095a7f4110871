//! The CLI's side of the controller API: HTTP/1.1 (hyper's client) over the daemon's Unix socket,
//! or over TCP with a bearer token; one connection and one deadline per request, no proxy.
//!
//! An endpoint is `unix:/PATH` (the default, [`DEFAULT_API_SOCKET`]), or `http://HOST:PORT`
//! (`HOST:PORT` alone means the same), which needs a token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use lazarus_proto::CopyCounters;

use crate::api::{ErrorBody, EventView, NodeDetail, NodeView, StatusView};
use crate::api_token::{ApiToken, TokenError};
pub use crate::cluster::DEFAULT_API_SOCKET;

/// The CLI's `--api` unless given: the daemon's default socket.
pub const DEFAULT_API: &str = "unix:/run/lazarus/api.sock";

/// How long one request to the API may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read (the event log of a long-lived cluster is the largest).
const MAX_ANSWER: usize = 64 << 20;

/// Errors reaching the controller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("controller API {0:?}: give unix:/PATH or http://HOST:PORT")]
    Endpoint(String),
    #[error("controller API {0}: over TCP the API needs a token (--token-file FILE)")]
    NoToken(Endpoint),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("controller API {0}: connecting: {1} (is `lazarus serve` running?)")]
    Connect(Endpoint, std::io::Error),
    #[error("controller API {0}: {1}")]
    Http(Endpoint, String),
    #[error("controller API {0}: no answer within {secs} s", secs = TIMEOUT.as_secs())]
    Timeout(Endpoint),
    #[error("controller API {0}: HTTP {1}: {2}")]
    Status(Endpoint, u16, String),
    #[error("controller API {0}: {1}")]
    Decode(Endpoint, serde_json::Error),
    #[error("starting the API client: {0}")]
    Runtime(std::io::Error),
}

/// Where the API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::Endpoint(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            return Path::new(path)
                .is_absolute()
                .then(|| Self::Unix(path.into()))
                .ok_or_else(bad);
        }
        let authority = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        // HOST:PORT and nothing else: no path, no user, no scheme but http.
        let valid = authority
            .parse::<hyper::http::uri::Authority>()
            .is_ok_and(|a| a.port().is_some() && !authority.contains('@'));
        valid.then(|| Self::Tcp(authority.into())).ok_or_else(bad)
    }
}

/// A client of one controller API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    endpoint: Endpoint,
    token: Option<ApiToken>,
}

impl ApiClient {
    /// The API at `endpoint`; over TCP `token` is required.
    pub fn new(endpoint: Endpoint, token: Option<ApiToken>) -> Result<Self, ApiError> {
        if matches!(endpoint, Endpoint::Tcp(_)) && token.is_none() {
            return Err(ApiError::NoToken(endpoint));
        }
        Ok(Self { endpoint, token })
    }

    /// The API on the Unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: Endpoint::Unix(path.into()),
            token: None,
        }
    }

    /// The API at `endpoint` (`unix:/PATH` or `http://HOST:PORT`), with the token of
    /// `token_file` if one is given.
    pub fn from_args(endpoint: &str, token_file: Option<&Path>) -> Result<Self, ApiError> {
        let token = token_file.map(ApiToken::load).transpose()?;
        Self::new(endpoint.parse()?, token)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET path`; returns the body of a 2xx answer.
    pub fn get(&self, path: &str) -> Result<String, ApiError> {
        self.request(Method::GET, path)
    }

    /// `POST path` with an empty JSON document; returns the body of a 2xx answer.
    pub fn post(&self, path: &str) -> Result<String, ApiError> {
        self.request(Method::POST, path)
    }

    pub fn status(&self) -> Result<StatusView, ApiError> {
        let body = self.get("/api/status")?;
        serde_json::from_str(&body).map_err(|e| ApiError::Decode(self.endpoint.clone(), e))
    }

    /// `GET /api/nodes/NODE`: one node and its repair timeline.
    pub fn node(&self, node: &str) -> Result<NodeDetail, ApiError> {
        let body = self.get(&format!("/api/nodes/{node}"))?;
        serde_json::from_str(&body).map_err(|e| ApiError::Decode(self.endpoint.clone(), e))
    }

    pub fn events(&self, node: Option<&str>) -> Result<Vec<EventView>, ApiError> {
        let path = node.map_or("/api/events".to_string(), |n| {
            format!("/api/events?node={n}")
        });
        let body = self.get(&path)?;
        serde_json::from_str(&body).map_err(|e| ApiError::Decode(self.endpoint.clone(), e))
    }

    /// `lazarus logs NODE`: the agent's recent log lines.
    pub fn logs(&self, node: &str) -> Result<Vec<String>, ApiError> {
        let body = self.get(&format!("/api/logs/{node}"))?;
        serde_json::from_str(&body).map_err(|e| ApiError::Decode(self.endpoint.clone(), e))
    }

    /// One request on a connection of its own, within [`TIMEOUT`].
    fn request(&self, method: Method, path: &str) -> Result<String, ApiError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ApiError::Runtime)?;
        let (status, body) = rt
            .block_on(async { tokio::time::timeout(TIMEOUT, self.exchange(method, path)).await })
            .map_err(|_| ApiError::Timeout(self.endpoint.clone()))??;
        if !(200..300).contains(&status) {
            // The API's errors are `{"error": "…"}`; anything else is shown as it came.
            let message = serde_json::from_str::<ErrorBody>(&body)
                .map_or_else(|_| body.trim().to_string(), |b| b.error);
            return Err(ApiError::Status(self.endpoint.clone(), status, message));
        }
        Ok(body)
    }

    async fn exchange(&self, method: Method, path: &str) -> Result<(u16, String), ApiError> {
        let connect = |e| ApiError::Connect(self.endpoint.clone(), e);
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Tcp(a) => a.as_str(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, host);
        if method == Method::POST {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, t.bearer());
        }
        let body = if method == Method::POST { "{}" } else { "" };
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.http(e))?;
        match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(connect)?;
                self.send(TokioIo::new(s), req).await
            }
            Endpoint::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a.as_str())
                    .await
                    .map_err(connect)?;
                self.send(TokioIo::new(s), req).await
            }
        }
    }

    async fn send<T>(&self, io: T, req: Request<Full<Bytes>>) -> Result<(u16, String), ApiError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.http(e))?;
        let conn = tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| self.http(e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| self.http(e))?
            .to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    fn http(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::Http(self.endpoint.clone(), e.to_string())
    }
}

/// Unix seconds as RFC 3339 (UTC, seconds).
fn time(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

/// The header of the node table.
fn table_header() -> String {
    format!(
        "{:<12} {:<8} {:<14} {:>12} {:<20} {}\n",
        "NODE", "ROLE", "STATE", "PROGRESS", "SINCE", "LAST ERROR"
    )
}

/// One node's row of the node table.
fn table_row(n: &NodeView) -> String {
    let progress = (n.bytes_done.saturating_mul(100))
        .checked_div(n.bytes_total)
        .map_or("-".to_string(), |p| format!("{p}%"));
    let role = match n.role {
        crate::cluster::Role::Worker => "worker",
        crate::cluster::Role::Standby => "standby",
    };
    format!(
        "{:<12} {:<8} {:<14} {:>12} {:<20} {}\n",
        n.name,
        role,
        n.state,
        progress,
        time(n.since),
        n.last_error.as_deref().unwrap_or("-")
    )
}

/// One node's row of the node table, and under it, for a node copying its image, a line with
/// its copy counters (`copy: checked 1.9 GiB, fetched 24.0 MiB, written 24.0 MiB`).
fn table_rows(n: &NodeView) -> String {
    let mut out = table_row(n);
    if let Some(copy) = n.copy.as_ref().and_then(copy_summary) {
        out.push_str(&format!("{:<12} copy: {copy}\n", ""));
    }
    out
}

/// What a copy did so far, in one line: the counters that are not zero
/// (`checked 1.9 GiB, fetched 24.0 MiB, written 24.0 MiB`), then, while the image source gives
/// nothing, `source stalled since 10:12:03 UTC`. `None` when there is nothing to say.
pub fn copy_summary(c: &CopyCounters) -> Option<String> {
    let parts: Vec<String> = [
        ("checked", c.checked),
        ("fetched", c.fetched),
        ("written", c.written),
    ]
    .iter()
    .filter(|(_, b)| *b > 0)
    .map(|(what, b)| format!("{what} {}", size(*b)))
    .collect();
    let mut out = parts.join(", ");
    if let Some(since) = c.source_stalled_since {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&format!("source stalled since {}", clock(since)));
    }
    (!out.is_empty()).then_some(out)
}

/// Bytes in binary units with one decimal, as the web view shows them: `512 B`, `1.5 KiB`,
/// `24.0 MiB`, `1.9 GiB`.
pub fn size(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1 << 10 {
        return format!("{b} B");
    }
    let mut unit = 0;
    while unit + 1 < UNITS.len() && b >= 1 << (10 * (unit + 2)) {
        unit += 1;
    }
    format!(
        "{:.1} {}",
        b as f64 / (1u64 << (10 * (unit + 1))) as f64,
        UNITS[unit]
    )
}

/// The time of day of Unix seconds `t`, UTC: `10:12:03 UTC`.
fn clock(t: u64) -> String {
    let s = t % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// `lazarus status` as a table.
pub fn render_status(s: &StatusView) -> String {
    let mut out = table_header();
    for n in &s.nodes {
        out.push_str(&table_rows(n));
    }
    if s.paused {
        out.push_str("automatic repair is PAUSED: too many nodes failed at once\n");
    }
    out.trim_end().to_string()
}

/// `lazarus status NODE`: the node's row, then each repair in the event log (oldest first) with
/// its steps: start, duration, bytes, outcome and why each ended. The web view draws the same
/// document.
pub fn render_node(d: &NodeDetail) -> String {
    let mut out = table_header();
    out.push_str(&table_rows(&d.node));
    if d.repairs.is_empty() {
        out.push_str("\nno repair in the event log");
    }
    for r in &d.repairs {
        let end = r.ended.unwrap_or(d.now);
        out.push_str(&format!(
            "\nrepair started {}: {}, {}{}\n{:<15} {:<20} {:>9} {:>21} {:<8} {}\n",
            time(r.started),
            r.outcome.name(),
            seconds(end.saturating_sub(r.started)),
            if r.ended.is_none() { " so far" } else { "" },
            "STEP",
            "START",
            "DURATION",
            "BYTES",
            "OUTCOME",
            "ENDED BY"
        ));
        for s in &r.steps {
            let bytes = if s.bytes_total > 0 {
                format!("{}/{}", size(s.bytes_done), size(s.bytes_total))
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "{:<15} {:<20} {:>9} {:>21} {:<8} {}\n",
                s.step.name(),
                time(s.start),
                seconds(s.seconds),
                bytes,
                s.outcome.name(),
                s.ended_by.as_deref().unwrap_or("-")
            ));
        }
    }
    out.trim_end().to_string()
}

/// Seconds, as `75 s`.
fn seconds(s: u64) -> String {
    format!("{s} s")
}

/// The progress bars `lazarus watch` shows under the table, one per node writing its disk.
pub fn render_progress(s: &StatusView) -> String {
    const WIDTH: u64 = 40;
    let mut out = String::new();
    for n in s
        .nodes
        .iter()
        .filter(|n| n.bytes_total > 0 && n.state == "recovering")
    {
        let done = n.bytes_done.min(n.bytes_total);
        let filled = usize::try_from(done * WIDTH / n.bytes_total).unwrap_or(0);
        out.push_str(&format!(
            "{:<12} [{}{}] {}%\n",
            n.name,
            "#".repeat(filled),
            ".".repeat(WIDTH as usize - filled),
            done * 100 / n.bytes_total
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_a_socket_path_or_an_http_host_and_port() {
        let e = |s: &str| s.parse::<Endpoint>().ok();
        assert_eq!(
            e("unix:/run/lazarus/api.sock"),
            Some(Endpoint::Unix("/run/lazarus/api.sock".into()))
        );
        assert_eq!(
            e("http://127.0.0.1:7470"),
            Some(Endpoint::Tcp("127.0.0.1:7470".into()))
        );
        assert_eq!(
            e("http://ctl:7470/"),
            Some(Endpoint::Tcp("ctl:7470".into()))
        );
        assert_eq!(e("[::1]:7470"), Some(Endpoint::Tcp("[::1]:7470".into())));
        for bad in [
            "unix:relative.sock",
            "https://ctl:7470",
            "http://ctl",
            "http://u:p@ctl:7470",
            "http://ctl:7470/api",
            "",
        ] {
            assert_eq!(e(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cli_default_is_the_daemon_default_socket() {
        assert_eq!(DEFAULT_API, format!("unix:{DEFAULT_API_SOCKET}"));
    }

    #[test]
    fn a_node_shows_each_repair_step_with_its_bytes_and_outcome() {
        use crate::api::{NodeDetail, RepairOutcome, RepairView, StepOutcome, StepView};
        use crate::repair::RepairStep;
        let step = |step, start, seconds, bytes: u64, outcome| StepView {
            step,
            start,
            end: Some(start + seconds),
            seconds,
            bytes_done: bytes,
            bytes_total: bytes,
            outcome,
            reason: "r".into(),
            ended_by: Some("why".into()),
        };
        let d = NodeDetail {
            now: 100,
            node: NodeView {
                name: "w1".into(),
                role: crate::cluster::Role::Standby,
                state: "healthy".into(),
                step_attempt: 0,
                plan_id: None,
                bytes_done: 0,
                bytes_total: 0,
                since: 60,
                replaced_by: None,
                last_error: None,
                deadline: None,
                copy: None,
            },
            repairs: vec![RepairView {
                started: 0,
                ended: Some(60),
                outcome: RepairOutcome::Restored,
                steps: vec![
                    step(RepairStep::Attaching, 0, 5, 0, StepOutcome::Done),
                    step(RepairStep::Recovering, 5, 50, 3 << 20, StepOutcome::Done),
                ],
            }],
        };
        let text = render_node(&d);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("w1 "), "{text}");
        assert!(
            lines[3].starts_with("repair started 1970-01-01T00:00:00Z: restored, 60 s"),
            "{text}"
        );
        let recovering: Vec<&str> = lines[6].split_whitespace().collect();
        assert_eq!(
            recovering,
            [
                "recovering",
                "1970-01-01T00:00:05Z",
                "50",
                "s",
                "3.0",
                "MiB/3.0",
                "MiB",
                "done",
                "why"
            ],
            "{text}"
        );
        let empty = NodeDetail {
            repairs: Vec::new(),
            ..d
        };
        assert!(render_node(&empty).ends_with("no repair in the event log"));
    }

    #[test]
    fn sizes_are_shown_in_binary_units_with_one_decimal() {
        for (b, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (24 << 20, "24.0 MiB"),
            ((19 << 30) / 10, "1.9 GiB"),
            (3 << 40, "3.0 TiB"),
            (u64::MAX, "16777216.0 TiB"),
        ] {
            assert_eq!(size(b), want, "{b}");
        }
    }

    #[test]
    fn copy_counters_read_compactly_and_say_when_the_source_stalled() {
        let c = |checked, fetched, written, stalled| CopyCounters {
            checked,
            fetched,
            written,
            source_stalled_since: stalled,
        };
        assert_eq!(copy_summary(&c(0, 0, 0, None)), None, "nothing to say");
        assert_eq!(
            copy_summary(&c((19 << 30) / 10, 24 << 20, 24 << 20, None)).unwrap(),
            "checked 1.9 GiB, fetched 24.0 MiB, written 24.0 MiB"
        );
        // A full copy checks nothing: the zero counter is left out.
        assert_eq!(
            copy_summary(&c(0, 12 << 20, 11 << 20, None)).unwrap(),
            "fetched 12.0 MiB, written 11.0 MiB"
        );
        // 1_800_000_000 is 2027-01-15T08:00:00Z; 3723 s later is 09:02:03.
        assert_eq!(
            copy_summary(&c(0, 5 << 20, 4 << 20, Some(1_800_003_723))).unwrap(),
            "fetched 5.0 MiB, written 4.0 MiB; source stalled since 09:02:03 UTC"
        );
        assert_eq!(
            copy_summary(&c(0, 0, 0, Some(1_800_000_000))).unwrap(),
            "source stalled since 08:00:00 UTC"
        );
    }

    #[test]
    fn the_table_shows_a_copying_nodes_counters_under_its_row_and_nothing_for_others() {
        let node = |name: &str, state: &str, copy| NodeView {
            name: name.into(),
            role: crate::cluster::Role::Worker,
            state: state.into(),
            step_attempt: 0,
            plan_id: None,
            bytes_done: 3 << 20,
            bytes_total: 12 << 20,
            since: 0,
            replaced_by: None,
            last_error: None,
            deadline: None,
            copy,
        };
        let s = StatusView {
            now: 10,
            paused: false,
            nodes: vec![
                node(
                    "w1",
                    "recovering",
                    Some(CopyCounters {
                        checked: 8 << 20,
                        fetched: 2 << 20,
                        written: 1 << 20,
                        source_stalled_since: Some(7),
                    }),
                ),
                node("w2", "healthy", None),
            ],
            alerts: Vec::new(),
        };
        let text = render_status(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].starts_with("w1 "), "{text}");
        assert_eq!(
            lines[2],
            format!(
                "{:<12} copy: checked 8.0 MiB, fetched 2.0 MiB, written 1.0 MiB; source stalled since 00:00:07 UTC",
                ""
            )
        );
        assert!(lines[3].starts_with("w2 "), "{text}");
        let d = NodeDetail {
            now: 10,
            node: s.nodes[0].clone(),
            repairs: Vec::new(),
        };
        assert_eq!(render_node(&d).lines().nth(2), Some(lines[2]));
        let d = NodeDetail {
            node: s.nodes[1].clone(),
            ..d
        };
        assert!(!render_node(&d).contains("copy:"));
    }

    #[test]
    fn tcp_needs_a_token_the_socket_does_not() {
        let e = ApiClient::new(Endpoint::Tcp("127.0.0.1:7470".into()), None).unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        assert!(ApiClient::new(Endpoint::Unix("/x".into()), None).is_ok());
    }
}
