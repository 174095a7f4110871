//! The CLI's side of the controller API: plain HTTP/1.0 over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::api::{EventView, StatusView};

/// Errors reaching the controller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("controller API {0}: {1} (is `lazarus serve` running?)")]
    Connect(String, std::io::Error),
    #[error("controller API {0}: HTTP {1}: {2}")]
    Status(String, u16, String),
    #[error("controller API {0}: {1}")]
    Decode(String, String),
}

/// Sends one request; returns the body of a 2xx answer.
pub fn request(api: &str, method: &str, path: &str) -> Result<String, ApiError> {
    let mut s = TcpStream::connect(api).map_err(|e| ApiError::Connect(api.into(), e))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {api}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| ApiError::Connect(api.into(), e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| ApiError::Connect(api.into(), e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&code) {
        return Err(ApiError::Status(api.into(), code, body.trim().to_string()));
    }
    Ok(body.to_string())
}

pub fn status(api: &str) -> Result<StatusView, ApiError> {
    let body = request(api, "GET", "/api/status")?;
    serde_json::from_str(&body).map_err(|e| ApiError::Decode(api.into(), e.to_string()))
}

pub fn events(api: &str, node: Option<&str>) -> Result<Vec<EventView>, ApiError> {
    let path = node.map_or("/api/events".to_string(), |n| {
        format!("/api/events?node={n}")
    });
    let body = request(api, "GET", &path)?;
    serde_json::from_str(&body).map_err(|e| ApiError::Decode(api.into(), e.to_string()))
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
