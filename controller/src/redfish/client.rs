//! The Redfish client: one BMC origin, the TLS trust for it, its credentials, and requests held
//! to that origin and to one operation's deadline.
//!
//! It must not send the credentials anywhere but the BMC's own origin (scheme, host and port of
//! `endpoint`): links (`@odata.id`, a task monitor's `Location`) elsewhere are refused before any
//! connection, and redirects are never followed. It must not speak plain http unless the cluster
//! file says `insecure_http = true`, nor let a retry, a poll or a silent BMC outlive the
//! operation's deadline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};
use ureq::http::Uri;

use super::RedfishError;

/// Tries of one request (503, connection errors) while the deadline allows.
const ATTEMPTS: u32 = 5;
/// The longest one HTTP exchange may take, whatever the operation's deadline.
const PER_REQUEST: Duration = Duration::from_secs(30);
/// Between two polls of a task monitor.
const TASK_POLL: Duration = Duration::from_secs(1);

/// How the BMC's TLS certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Trust {
    /// Against the public (Mozilla) roots: what a BMC with a certificate from a public CA needs.
    #[default]
    PublicRoots,
    /// Against the CA certificates (PEM) in this file, and only those: the usual case, a site CA
    /// that issued the BMCs' certificates (`ca_file`).
    CaFile(PathBuf),
    /// Not at all (`insecure = true`): anyone on the path can read the BMC's password.
    Insecure,
}

/// What [`Bmc::new`] needs: the cluster file's `redfish` provider options.
#[derive(Debug, Clone, Default)]
pub struct BmcOptions {
    /// `https://10.71.0.11` or `https://bmc-1.example:8443`: scheme, host and port only.
    pub endpoint: String,
    /// `/redfish/v1/Systems/1`.
    pub system: String,
    /// User name and password (HTTP basic authentication).
    pub auth: Option<(String, String)>,
    pub trust: Trust,
    /// Accept an `http://` endpoint (the password then travels in clear).
    pub insecure_http: bool,
}

/// An endpoint the provider will not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} is not a URL: {1}")]
    NotUrl(String, String),
    #[error("{0}: not an https:// URL")]
    Scheme(String),
    #[error(
        "{0}: plain http sends the BMC's password in clear: use https://, \
         or set insecure_http = true"
    )]
    PlainHttp(String),
    #[error("{0}: give only scheme, host and port (no user, path or query)")]
    Extra(String),
}

/// Scheme, host and port: where links may lead and credentials may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of a BMC `endpoint`; `http://` only with `insecure_http`.
    pub fn parse(endpoint: &str, insecure_http: bool) -> Result<Self, EndpointError> {
        let uri: Uri = endpoint.parse().map_err(|e: ureq::http::uri::InvalidUri| {
            EndpointError::NotUrl(endpoint.into(), e.to_string())
        })?;
        let origin = Self::of(&uri).ok_or_else(|| EndpointError::Scheme(endpoint.into()))?;
        let bare = uri.query().is_none()
            && matches!(uri.path(), "" | "/")
            && !uri.authority().is_some_and(|a| a.as_str().contains('@'));
        if !bare {
            return Err(EndpointError::Extra(endpoint.into()));
        }
        if !origin.https && !insecure_http {
            return Err(EndpointError::PlainHttp(endpoint.into()));
        }
        Ok(origin)
    }

    /// The origin of an absolute http(s) URL.
    fn of(uri: &Uri) -> Option<Self> {
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => true,
            s if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Self { https, host, port })
    }

    /// The URL of `link`: a path on this origin, or an absolute URL that stays on it.
    fn join(&self, link: &str) -> Result<String, RequestError> {
        let foreign = || RequestError::ForeignLink {
            link: link.into(),
            origin: self.to_string(),
        };
        let url = if link.starts_with('/') && !link.starts_with("//") {
            format!("{self}{link}")
        } else {
            link.to_string()
        };
        // Parsed again, whole: nothing in a path may move the request to another authority.
        let uri: Uri = url.parse().map_err(|_| foreign())?;
        match Self::of(&uri) {
            Some(o) if o == *self => Ok(url),
            _ => Err(foreign()),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// The HTTP methods the provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Patch => "PATCH",
        })
    }
}

/// One Redfish request that failed, after its retries.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("{method} {url}: 503 (BMC busy)")]
    Busy { method: Method, url: String },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: the operation's {} deadline passed{last}", humantime::format_duration(*budget))]
    Deadline {
        method: Method,
        url: String,
        budget: Duration,
        /// `"; last try: …"`, or empty.
        last: String,
    },
    #[error(
        "{link}: not on the BMC's origin {origin}, not followed (its credentials go nowhere else)"
    )]
    ForeignLink { link: String, origin: String },
    #[error("{method} {url}: HTTP {status} redirect to {location:?}, not followed")]
    Redirect {
        method: Method,
        url: String,
        status: u16,
        location: String,
    },
    #[error("task {url} ended {state}: {message}")]
    Task {
        url: String,
        state: String,
        message: String,
    },
}

/// The `Authorization` header value; never printed.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A BMC endpoint and one system behind it, ready to talk to.
#[derive(Debug, Clone)]
pub struct Bmc {
    pub(super) origin: Origin,
    pub(super) system: String,
    auth: Option<Secret>,
    agent: ureq::Agent,
}

impl Bmc {
    /// Checks the endpoint and loads the CA file; no request is made yet.
    pub fn new(options: &BmcOptions) -> Result<Self, RedfishError> {
        let origin = Origin::parse(
            options.endpoint.trim_end_matches('/'),
            options.insecure_http,
        )?;
        let tls = match &options.trust {
            Trust::PublicRoots => ureq::tls::TlsConfig::builder(),
            Trust::Insecure => ureq::tls::TlsConfig::builder().disable_verification(true),
            Trust::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|source| RedfishError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let mut roots = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(RedfishError::CaPem {
                                path: path.clone(),
                                message: e.to_string(),
                            })
                        }
                    }
                }
                if roots.is_empty() {
                    return Err(RedfishError::CaPem {
                        path: path.clone(),
                        message: "no PEM certificate in it".into(),
                    });
                }
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            }
        };
        let agent = ureq::Agent::config_builder()
            .https_only(origin.https)
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .timeout_global(Some(PER_REQUEST))
            .tls_config(tls.build())
            .build()
            .into();
        let auth = options
            .auth
            .as_ref()
            .map(|(u, p)| Secret(format!("Basic {}", BASE64.encode(format!("{u}:{p}")))));
        Ok(Self {
            origin,
            system: options.system.clone(),
            auth,
            agent,
        })
    }

    /// The BMC's origin (`https://10.71.0.11:443`).
    pub fn origin(&self) -> String {
        self.origin.to_string()
    }

    /// Starts an operation: every request, retry and poll made through it ends by `budget`.
    pub fn within(&self, budget: Duration) -> Operation<'_> {
        let now = Instant::now();
        // A budget past what an Instant can hold (a typo of a timeout) is a year.
        let deadline = now
            .checked_add(budget)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
            .unwrap_or(now);
        Operation {
            bmc: self,
            deadline,
            budget,
        }
    }
}

/// A status, a body and a `Location`.
pub(super) struct Answer {
    pub status: u16,
    pub body: Value,
    location: Option<String>,
}

/// One operation on a BMC (power off and wait, attach, detach…) and its single deadline.
#[derive(Debug)]
pub struct Operation<'a> {
    pub(super) bmc: &'a Bmc,
    deadline: Instant,
    pub(super) budget: Duration,
}

impl Operation<'_> {
    /// Sleeps `d`, or until the deadline; false if the deadline has passed.
    pub(super) fn pause(&self, d: Duration) -> bool {
        let left = self.deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(d.min(left));
        Instant::now() < self.deadline
    }

    /// One request, retried on 503 and connection errors within the deadline. A 202 with a
    /// `Location` (a task monitor) is polled until the task ends. Redirects are errors.
    pub(super) fn request(
        &self,
        method: Method,
        link: &str,
        body: Option<&Value>,
    ) -> Result<Answer, RequestError> {
        let answer = self.exchange(method, link, body)?;
        match (&answer.location, answer.status) {
            (Some(monitor), 202) if method != Method::Get => self.follow_task(monitor),
            _ => Ok(answer),
        }
    }

    fn follow_task(&self, monitor: &str) -> Result<Answer, RequestError> {
        loop {
            // Refused before the first poll if the monitor is elsewhere.
            let url = self.bmc.origin.join(monitor)?;
            if !self.pause(TASK_POLL) {
                return Err(self.deadline_error(Method::Get, &url, "; the task was still running"));
            }
            let answer = self.exchange(Method::Get, monitor, None)?;
            if answer.status == 202 {
                continue;
            }
            let state = answer.body["TaskState"].as_str().unwrap_or("");
            if matches!(state, "Exception" | "Killed" | "Cancelled") {
                let messages: Vec<&str> = answer.body["Messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["Message"].as_str())
                    .collect();
                return Err(RequestError::Task {
                    url,
                    state: state.into(),
                    message: if messages.is_empty() {
                        message(&answer.body)
                    } else {
                        messages.join("; ")
                    },
                });
            }
            return Ok(answer);
        }
    }

    fn deadline_error(&self, method: Method, url: &str, last: &str) -> RequestError {
        RequestError::Deadline {
            method,
            url: url.into(),
            budget: self.budget,
            last: last.into(),
        }
    }

    /// One exchange with retries; no task following.
    fn exchange(
        &self,
        method: Method,
        link: &str,
        body: Option<&Value>,
    ) -> Result<Answer, RequestError> {
        let url = self.bmc.origin.join(link)?;
        let mut last = RequestError::Busy {
            method,
            url: url.clone(),
        };
        for attempt in 0..ATTEMPTS {
            if attempt > 0 && !self.pause(Duration::from_millis(500 << attempt.min(4))) {
                let cause = match &last {
                    RequestError::Transport { source, .. } => source.to_string(),
                    _ => "503 (BMC busy)".into(),
                };
                return Err(self.deadline_error(method, &url, &format!("; last try: {cause}")));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.deadline_error(method, &url, ""));
            }
            let limit = left.min(PER_REQUEST);
            let timed_out = |e: &ureq::Error| {
                matches!(e, ureq::Error::Timeout(_)) && (limit == left || self.overdue())
            };
            match self.send(method, &url, body, limit) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let location = resp
                        .headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if status == 503 {
                        last = RequestError::Busy {
                            method,
                            url: url.clone(),
                        };
                        continue;
                    }
                    if (300..400).contains(&status) {
                        return Err(RequestError::Redirect {
                            method,
                            url,
                            status,
                            location: location.unwrap_or_default(),
                        });
                    }
                    let text = match resp.body_mut().read_to_string() {
                        Ok(text) => text,
                        Err(e) if timed_out(&e) => {
                            return Err(self.deadline_error(method, &url, "; reading the answer"))
                        }
                        Err(e) => {
                            last = RequestError::Transport {
                                method,
                                url: url.clone(),
                                source: Box::new(e),
                            };
                            continue;
                        }
                    };
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Ok(Answer {
                        status,
                        body,
                        location,
                    });
                }
                Err(e) if timed_out(&e) => {
                    return Err(self.deadline_error(method, &url, "; the BMC did not answer"))
                }
                Err(e) => {
                    let again = retryable(&e);
                    last = RequestError::Transport {
                        method,
                        url: url.clone(),
                        source: Box::new(e),
                    };
                    if !again {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn overdue(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let agent = &self.bmc.agent;
        let auth = self.bmc.auth.as_ref().map(|s| s.0.as_str());
        if method == Method::Get {
            let mut r = agent.get(url).header("Accept", "application/json");
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            return r.config().timeout_global(Some(limit)).build().call();
        }
        let mut r = match method {
            Method::Patch => agent.patch(url),
            _ => agent.post(url),
        }
        .header("Content-Type", "application/json")
        .header("Accept", "application/json");
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let bytes = serde_json::to_vec(body.unwrap_or(&json!({}))).unwrap_or_default();
        r.config().timeout_global(Some(limit)).build().send(bytes)
    }

    /// A request that must answer 2xx; returns the body.
    pub(super) fn ok(
        &self,
        method: Method,
        link: &str,
        body: Option<&Value>,
    ) -> Result<Value, RequestError> {
        let answer = self.request(method, link, body)?;
        if (200..300).contains(&answer.status) {
            Ok(answer.body)
        } else {
            Err(RequestError::Status {
                method,
                path: link.to_string(),
                status: answer.status,
                message: message(&answer.body),
            })
        }
    }
}

/// Whether another try may succeed: a refused, reset or slow connection may; a certificate that
/// does not verify (rustls reports it as invalid data) or a malformed answer will not.
fn retryable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Timeout(_) => true,
        _ => false,
    }
}

/// A Redfish error's message, or the body.
pub(super) fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_https_origins_unless_plain_http_is_allowed() {
        let o = Origin::parse("https://10.71.0.11", false).unwrap();
        assert_eq!(o.to_string(), "https://10.71.0.11:443");
        assert_eq!(
            Origin::parse("HTTPS://BMC-1.example:8443/", false)
                .unwrap()
                .to_string(),
            "https://bmc-1.example:8443"
        );
        assert!(matches!(
            Origin::parse("http://10.71.0.11", false),
            Err(EndpointError::PlainHttp(_))
        ));
        assert!(Origin::parse("http://10.71.0.11", true).is_ok());
        for bad in [
            "https://u:p@10.71.0.11",
            "https://10.71.0.11/redfish",
            "https://10.71.0.11?x=1",
        ] {
            assert!(
                matches!(Origin::parse(bad, false), Err(EndpointError::Extra(_))),
                "{bad}"
            );
        }
        for bad in ["ftp://10.71.0.11", "10.71.0.11", "/redfish/v1"] {
            assert!(Origin::parse(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_stay_on_the_bmc_origin() {
        let o = Origin::parse("https://bmc:8443", false).unwrap();
        assert_eq!(
            o.join("/redfish/v1/Systems/1").unwrap(),
            "https://bmc:8443/redfish/v1/Systems/1"
        );
        assert!(o.join("https://BMC:8443/redfish/v1").is_ok());
        let v6 = Origin::parse("https://[fd00::11]:8443", false).unwrap();
        assert_eq!(
            v6.join("/redfish/v1").unwrap(),
            "https://[fd00::11]:8443/redfish/v1"
        );
        assert!(v6.join("https://[fd00::12]:8443/redfish/v1").is_err());
        for foreign in [
            "https://bmc/redfish/v1",
            "http://bmc:8443/redfish/v1",
            "https://other:8443/redfish/v1",
            "//other/redfish/v1",
            "redfish/v1",
            "https://bmc:8443@other/redfish/v1",
            "/redfish v1",
            "",
        ] {
            let e = o.join(foreign).unwrap_err();
            assert!(
                matches!(e, RequestError::ForeignLink { .. }),
                "{foreign}: {e}"
            );
        }
    }
}
