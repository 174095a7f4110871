//! `lazarus agent …`: talk to one agent directly (operators and tests).

use std::path::Path;
use std::time::Duration;

use lazarus_proto::{Phase, Plan, Request, Response, Status};

use crate::agent_client::{AgentClient, ClientError};

/// Errors of the agent commands.
#[derive(Debug, thiserror::Error)]
pub enum AgentCmdError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("reading plan {0}: {1}")]
    PlanRead(String, std::io::Error),
    #[error("plan {0}: {1}")]
    PlanParse(String, String),
    #[error("plan {plan} failed: error {code}: {message}")]
    Failed {
        plan: String,
        code: u32,
        message: String,
    },
}

/// Reads a plan file (TOML).
pub fn read_plan(path: &Path) -> Result<Plan, AgentCmdError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| AgentCmdError::PlanRead(shown.clone(), e))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        let at = line.map_or(String::new(), |l| format!("line {l}: "));
        AgentCmdError::PlanParse(shown, format!("{at}{}", e.message()))
    })
}

/// One status in text or JSON.
pub fn render_status(s: &Status, json: bool) -> String {
    if json {
        return serde_json::to_string(s).unwrap_or_default();
    }
    let pct = (s.bytes_done.saturating_mul(100))
        .checked_div(s.bytes_total)
        .unwrap_or(0);
    let phase = match s.step {
        Some(step) if s.phase == Phase::Recovering || s.phase == Phase::Failed => {
            format!("{:?} ({step:?})", s.phase)
        }
        _ => format!("{:?}", s.phase),
    };
    let unrestored = if s.unrestored.is_empty() {
        String::new()
    } else {
        format!("\nnot restored: {}", s.unrestored.join(", "))
    };
    let c = &s.copy;
    let mut copy = if c.checked + c.fetched + c.written > 0 {
        format!(
            "\ncopy:      {} checked, {} fetched, {} written (bytes)",
            c.checked, c.fetched, c.written
        )
    } else {
        String::new()
    };
    if let Some(since) = c.source_stalled_since {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(since);
        copy.push_str(&format!(
            "\nsource stalled since {} (waiting for it)",
            humantime::format_rfc3339_seconds(at)
        ));
    }
    format!(
        "boot:      {}\nphase:     {}\nplan:      {}\nprogress:  {} / {} bytes ({pct}%){copy}\nflag:      {} (seq {}, plan {:?}, code {})\nerror:     {}{unrestored}",
        s.boot_id,
        phase.to_lowercase(),
        s.plan_id.as_deref().unwrap_or("-"),
        s.bytes_done,
        s.bytes_total,
        s.flag.state.name(),
        s.flag.seq,
        s.flag.plan_id,
        s.flag.error_code,
        s.error.as_ref().map_or("-".to_string(), |e| format!("{} {}", e.code, e.message)),
    )
}

/// `lazarus agent recover`: sends the plan; with `wait`, polls until it ends and fails unless
/// it recovered.
pub fn recover(
    client: &mut AgentClient,
    plan: Plan,
    wait: bool,
    json: bool,
) -> Result<String, AgentCmdError> {
    let id = plan.plan_id.clone();
    let mut status = client.status_of(&Request::Recover(Box::new(plan)))?;
    if !wait {
        return Ok(render_status(&status, json));
    }
    while status.phase == Phase::Recovering {
        std::thread::sleep(Duration::from_millis(200));
        status = client.status_of(&Request::GetStatus)?;
    }
    if status.phase == Phase::Failed {
        let e = status.error.unwrap_or(lazarus_proto::ErrorInfo {
            code: 0,
            message: "unknown".into(),
        });
        return Err(AgentCmdError::Failed {
            plan: id,
            code: e.code,
            message: e.message,
        });
    }
    Ok(render_status(&status, json))
}

/// `lazarus agent logs`: every line the agent still holds.
pub fn logs(client: &mut AgentClient) -> Result<String, AgentCmdError> {
    let mut since = 0;
    let mut out = String::new();
    while let Response::Logs(logs) = client.call(&Request::GetLogs { since })? {
        for l in &logs.lines {
            let level = ["", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .get(usize::from(l.level))
                .unwrap_or(&"?");
            out.push_str(&format!(
                "[{:>6}.{:03}] {level:<5} {}\n",
                l.time_ms / 1000,
                l.time_ms % 1000,
                l.message
            ));
        }
        if logs.lines.is_empty() || logs.next == since {
            break;
        }
        since = logs.next;
    }
    Ok(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_proto::{BootId, CopyCounters};

    #[test]
    fn the_text_status_shows_the_copy_counters_and_a_stalled_source() {
        let mut s = Status {
            boot_id: BootId([1; 16]),
            phase: Phase::Recovering,
            step: Some(lazarus_proto::Step::CopyImage),
            bytes_done: 5,
            bytes_total: 10,
            flag: lazarus_proto::flag::FlagRecord::default().summary(),
            plan_id: Some("p".into()),
            error: None,
            found_at_boot: None,
            unrestored: Vec::new(),
            copy: CopyCounters::default(),
        };
        assert!(!render_status(&s, false).contains("copy:"));
        s.copy = CopyCounters {
            checked: 1,
            fetched: 2,
            written: 3,
            source_stalled_since: Some(1_800_000_000),
        };
        let text = render_status(&s, false);
        assert!(
            text.contains("copy:      1 checked, 2 fetched, 3 written (bytes)"),
            "{text}"
        );
        assert!(
            text.contains("source stalled since 2027-01-15T08:00:00Z"),
            "{text}"
        );
    }
}
