//! The CLI's side of the controller API: HTTP (ureq) to the daemon's local API, one deadline
//! per request, no proxy (the API is local).

use std::time::Duration;

use crate::api::{ErrorBody, EventView, StatusView};

/// How long one request to the API may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Errors reaching the controller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("controller API {0}: {1} (is `lazarus serve` running?)")]
    Request(String, Box<ureq::Error>),
    #[error("controller API {0}: HTTP {1}: {2}")]
    Status(String, u16, String),
    #[error("controller API {0}: reading the answer: {1}")]
    Body(String, Box<ureq::Error>),
    #[error("controller API {0}: {1}")]
    Decode(String, serde_json::Error),
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .build()
        .into()
}

/// `GET path`; returns the body of a 2xx answer.
pub fn get(api: &str, path: &str) -> Result<String, ApiError> {
    answer(api, agent().get(format!("http://{api}{path}")).call())
}

/// `POST path` with an empty body; returns the body of a 2xx answer.
pub fn post(api: &str, path: &str) -> Result<String, ApiError> {
    answer(
        api,
        agent().post(format!("http://{api}{path}")).send_empty(),
    )
}

fn answer(
    api: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String, ApiError> {
    let mut response = response.map_err(|e| ApiError::Request(api.into(), Box::new(e)))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| ApiError::Body(api.into(), Box::new(e)))?;
    if !(200..300).contains(&status) {
        // The API's errors are `{"error": "…"}`; anything else is shown as it came.
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map_or_else(|_| body.trim().to_string(), |b| b.error);
        return Err(ApiError::Status(api.into(), status, message));
    }
    Ok(body)
}

pub fn status(api: &str) -> Result<StatusView, ApiError> {
    let body = get(api, "/api/status")?;
    serde_json::from_str(&body).map_err(|e| ApiError::Decode(api.into(), e))
}

pub fn events(api: &str, node: Option<&str>) -> Result<Vec<EventView>, ApiError> {
    let path = node.map_or("/api/events".to_string(), |n| {
        format!("/api/events?node={n}")
    });
    let body = get(api, &path)?;
    serde_json::from_str(&body).map_err(|e| ApiError::Decode(api.into(), e))
}

/// `lazarus logs NODE`: the agent's recent log lines.
pub fn logs(api: &str, node: &str) -> Result<Vec<String>, ApiError> {
    let body = get(api, &format!("/api/logs/{node}"))?;
    serde_json::from_str(&body).map_err(|e| ApiError::Decode(api.into(), e))
}

/// `lazarus status` as a table.
pub fn render_status(s: &StatusView) -> String {
    let mut out = format!(
        "{:<12} {:<8} {:<14} {:>12} {:<20} {}\n",
        "NODE", "ROLE", "STATE", "PROGRESS", "SINCE", "LAST ERROR"
    );
    for n in &s.nodes {
        let progress = (n.bytes_done.saturating_mul(100))
            .checked_div(n.bytes_total)
            .map_or("-".to_string(), |p| format!("{p}%"));
        let since =
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(n.since))
                .to_string();
        let role = match n.role {
            crate::cluster::Role::Worker => "worker",
            crate::cluster::Role::Standby => "standby",
        };
        out.push_str(&format!(
            "{:<12} {:<8} {:<14} {:>12} {:<20} {}\n",
            n.name,
            role,
            n.state,
            progress,
            since,
            n.last_error.as_deref().unwrap_or("-")
        ));
    }
    if s.paused {
        out.push_str("automatic repair is PAUSED: too many nodes failed at once\n");
    }
    out.trim_end().to_string()
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
