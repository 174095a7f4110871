//! The agent's lifecycle, decided in one pure function, [`next`].
//!
//! ```text
//! Booting ──Booted──► Ready ──Recover──► Recovering(step) ──Finished──► Recovered | Failed
//!                                             ▲                              │         │
//!                                             └───────── Recover ────────────┴─────────┘
//!                                                        (a retry, or a new plan)
//! any phase but Recovering ──Reboot──► Rebooting (final)
//! ```
//!
//! This module only decides; the `service` module applies the decision under one lock (so two
//! requests can never both start a plan) and does what the [`Action`] says. The recovery writes
//! the flag *before* each step's side effects (write-ahead); that is [`crate::recovery`]'s job.

use lazarus_proto::{Phase, Plan, Refusal, Request, Step};

use crate::error::AgentError;

/// The agent's phase and the plan running or last run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub phase: Phase,
    pub plan_id: Option<String>,
}

impl State {
    /// Where every boot starts.
    pub fn booting() -> Self {
        Self {
            phase: Phase::Booting,
            plan_id: None,
        }
    }
}

/// Something that happens to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start-up is done: the flag was read (and a stale one cleared).
    Booted,
    /// `Hello`, `GetStatus` or `GetLogs`: a question, which never changes anything.
    Query,
    /// `AckReady` sent as a command (it is only ever the controller's answer to `Ready`).
    AckReady,
    /// `Recover(plan)`; `invalid` says why the plan cannot run, when it cannot.
    Recover {
        plan_id: String,
        invalid: Option<String>,
    },
    /// `Abort`.
    Abort,
    /// `Reboot`.
    Reboot,
    /// The running plan ended, recovered or failed.
    Finished { recovered: bool },
}

impl Event {
    /// The event an authenticated request is; `check` says why a plan cannot run.
    pub fn of(request: &Request, check: impl FnOnce(&Plan) -> Result<(), AgentError>) -> Self {
        match request {
            Request::Hello | Request::GetStatus | Request::GetLogs { .. } => Self::Query,
            Request::AckReady => Self::AckReady,
            Request::Recover(plan) => Self::Recover {
                plan_id: plan.plan_id.clone(),
                invalid: check(plan).err().map(|e| e.to_string()),
            },
            Request::Abort => Self::Abort,
            Request::Reboot => Self::Reboot,
        }
    }
}

/// What the agent must do once a transition is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing: answer with the status (or hello, or logs).
    None,
    /// Run the plan (on a thread of its own) and answer with the status.
    Start,
    /// Ask the running plan to stop at its next chunk.
    Abort,
    /// Answer, then sync and reboot.
    Reboot,
}

/// Why an event changes nothing: the refusal sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub kind: Refusal,
    pub message: String,
}

fn refuse(kind: Refusal, message: impl Into<String>) -> Result<(State, Action), Refused> {
    Err(Refused {
        kind,
        message: message.into(),
    })
}

/// Decides what `event` does in `state`: the next state and the action, or a refusal that
/// leaves the state as it was.
pub fn next(state: &State, event: &Event) -> Result<(State, Action), Refused> {
    use Phase::*;
    let go = |phase: Phase, action: Action| {
        Ok((
            State {
                phase,
                plan_id: state.plan_id.clone(),
            },
            action,
        ))
    };
    let same_plan = |id: &str| state.plan_id.as_deref() == Some(id);
    match event {
        Event::Booted => match state.phase {
            Booting => go(Ready, Action::None),
            _ => refuse(Refusal::Internal, "already booted"),
        },
        Event::Query => go(state.phase, Action::None),
        Event::AckReady => refuse(Refusal::BadRequest, "AckReady is not a command"),
        Event::Recover { plan_id, invalid } => match state.phase {
            Booting => refuse(Refusal::WrongPhase, "still booting"),
            Rebooting => refuse(Refusal::WrongPhase, "rebooting"),
            // The same plan again is answered with its progress or result, never re-run.
            Recovering | Recovered if same_plan(plan_id) => go(state.phase, Action::None),
            Recovering => refuse(
                Refusal::Busy,
                format!(
                    "plan {} is running",
                    state.plan_id.as_deref().unwrap_or("?")
                ),
            ),
            // A retry after a failure, or a new plan that rewrites the node.
            Ready | Failed | Recovered => match invalid {
                Some(why) => refuse(Refusal::BadRequest, why.clone()),
                None => Ok((
                    State {
                        phase: Recovering,
                        plan_id: Some(plan_id.clone()),
                    },
                    Action::Start,
                )),
            },
        },
        Event::Abort => match state.phase {
            Recovering => go(Recovering, Action::Abort),
            phase => refuse(Refusal::WrongPhase, format!("nothing to abort ({phase:?})")),
        },
        Event::Reboot => match state.phase {
            Recovering => refuse(Refusal::WrongPhase, "a plan is running; abort it first"),
            Booting | Ready | Recovered | Failed | Rebooting => go(Rebooting, Action::Reboot),
        },
        Event::Finished { recovered } => match state.phase {
            Recovering if *recovered => go(Recovered, Action::None),
            Recovering => go(Failed, Action::None),
            _ => refuse(Refusal::Internal, "no plan is running"),
        },
    }
}

/// The phase (and step) shown on every console line: `ready`, `recovering/copy_image`, ….
pub fn label(phase: Phase, step: Option<Step>) -> String {
    match (phase, step) {
        (Phase::Booting, _) => "booting".into(),
        (Phase::Ready, _) => "ready".into(),
        (Phase::Recovering, None) => "recovering".into(),
        (Phase::Recovering, Some(step)) => format!("recovering/{}", step_name(step)),
        (Phase::Recovered, _) => "recovered".into(),
        (Phase::Failed, _) => "failed".into(),
        (Phase::Rebooting, _) => "rebooting".into(),
    }
}

/// The snake_case name of a step, as on the wire in JSON.
pub fn step_name(step: Step) -> &'static str {
    match step {
        Step::ConfigureNetwork => "configure_network",
        Step::MountSource => "mount_source",
        Step::SelectDisk => "select_disk",
        Step::CopyImage => "copy_image",
        Step::RereadPartitions => "reread_partitions",
        Step::MountTarget => "mount_target",
        Step::RestoreFiles => "restore_files",
        Step::Sync => "sync",
    }
}

#[cfg(test)]
mod tests;
