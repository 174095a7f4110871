//! The agent's lifecycle, decided in one pure function.
//!
//! ```text
//! Booting → Ready → Recovering(step) → Recovered | Failed → Rebooting
//!                        ▲                  │         │
//!                        └──── Recover ─────┴─────────┘   (a retry, or a new plan)
//! ```
//!
//! The runner writes the flag *before* each step's side effects (write-ahead); this module only
//! says what a request may do in a phase.

use lazarus_proto::{Phase, Refusal, Request};

/// What to do with an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answer with the current status (or hello, or logs); change nothing.
    Reply,
    /// Start running the plan.
    Start,
    /// Ask the running plan to stop.
    Abort,
    /// Reply, then sync and reboot.
    Reboot,
    /// Refuse with this reason.
    Refuse(Refusal, String),
}

/// Decides a request given the phase and the id of the plan running or last run.
pub fn decide(phase: Phase, current_plan: Option<&str>, request: &Request) -> Verdict {
    use Phase::*;
    match request {
        Request::Hello | Request::GetStatus | Request::GetLogs { .. } => Verdict::Reply,
        Request::AckReady => {
            Verdict::Refuse(Refusal::BadRequest, "AckReady is not a command".into())
        }
        Request::Recover(plan) => match phase {
            Booting => Verdict::Refuse(Refusal::WrongPhase, "still booting".into()),
            Rebooting => Verdict::Refuse(Refusal::WrongPhase, "rebooting".into()),
            Ready | Failed => Verdict::Start,
            Recovering if current_plan == Some(plan.plan_id.as_str()) => Verdict::Reply,
            Recovering => Verdict::Refuse(
                Refusal::Busy,
                format!("plan {} is running", current_plan.unwrap_or("?")),
            ),
            // The same plan again is answered with its result; a new plan rewrites the node.
            Recovered if current_plan == Some(plan.plan_id.as_str()) => Verdict::Reply,
            Recovered => Verdict::Start,
        },
        Request::Abort => match phase {
            Recovering => Verdict::Abort,
            _ => Verdict::Refuse(Refusal::WrongPhase, format!("nothing to abort ({phase:?})")),
        },
        Request::Reboot => match phase {
            Recovering => Verdict::Refuse(
                Refusal::WrongPhase,
                "a plan is running; abort it first".into(),
            ),
            Booting | Ready | Recovered | Failed | Rebooting => Verdict::Reboot,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_proto::*;

    fn plan(id: &str) -> Request {
        let text = include_str!("../../docs/plan.example.toml");
        let mut plan: Plan = toml::from_str(text).expect("example plan parses");
        plan.plan_id = id.into();
        Request::Recover(Box::new(plan))
    }

    #[test]
    fn every_request_in_every_phase() {
        use Phase::*;
        let phases = [Booting, Ready, Recovering, Recovered, Failed, Rebooting];
        for phase in phases {
            for cur in [None, Some("p1")] {
                assert_eq!(decide(phase, cur, &Request::GetStatus), Verdict::Reply);
                assert_eq!(decide(phase, cur, &Request::Hello), Verdict::Reply);
                assert_eq!(
                    decide(phase, cur, &Request::GetLogs { since: 0 }),
                    Verdict::Reply
                );
                assert!(matches!(
                    decide(phase, cur, &Request::AckReady),
                    Verdict::Refuse(Refusal::BadRequest, _)
                ));
            }
        }
        let table = [
            (
                Booting,
                plan("p1"),
                Verdict::Refuse(Refusal::WrongPhase, "still booting".into()),
            ),
            (Ready, plan("p1"), Verdict::Start),
            (Recovering, plan("p1"), Verdict::Reply),
            (
                Recovering,
                plan("p2"),
                Verdict::Refuse(Refusal::Busy, "plan p1 is running".into()),
            ),
            (Recovered, plan("p1"), Verdict::Reply),
            (Recovered, plan("p2"), Verdict::Start),
            (Failed, plan("p1"), Verdict::Start),
            (Failed, plan("p2"), Verdict::Start),
            (
                Rebooting,
                plan("p1"),
                Verdict::Refuse(Refusal::WrongPhase, "rebooting".into()),
            ),
            (Recovering, Request::Abort, Verdict::Abort),
            (
                Recovering,
                Request::Reboot,
                Verdict::Refuse(
                    Refusal::WrongPhase,
                    "a plan is running; abort it first".into(),
                ),
            ),
            (Recovered, Request::Reboot, Verdict::Reboot),
            (Failed, Request::Reboot, Verdict::Reboot),
            (Ready, Request::Reboot, Verdict::Reboot),
        ];
        for (phase, req, want) in table {
            assert_eq!(decide(phase, Some("p1"), &req), want, "{phase:?} {req:?}");
        }
        for phase in [Booting, Ready, Recovered, Failed, Rebooting] {
            assert!(matches!(
                decide(phase, Some("p1"), &Request::Abort),
                Verdict::Refuse(Refusal::WrongPhase, _)
            ));
        }
    }
}
