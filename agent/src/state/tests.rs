//! Every event in every phase, the wire's refusal texts, and random event sequences checked
//! against the lifecycle's invariants.

use super::*;
use lazarus_proto::Phase::*;
use proptest::prelude::*;

const PHASES: [Phase; 6] = [Booting, Ready, Recovering, Recovered, Failed, Rebooting];

fn recover(plan_id: &str, valid: bool) -> Event {
    Event::Recover {
        plan_id: plan_id.into(),
        invalid: (!valid).then(|| "invalid plan: image size is 0".to_string()),
    }
}

/// The events of the exhaustive table, in its column order (the state's plan is `p1`).
fn events() -> [Event; 11] {
    [
        Event::Booted,
        Event::Query,
        Event::AckReady,
        recover("p1", true),
        recover("p1", false),
        recover("p2", true),
        recover("p2", false),
        Event::Abort,
        Event::Reboot,
        Event::Finished { recovered: true },
        Event::Finished { recovered: false },
    ]
}

/// An expected outcome: the next phase and action, or a refusal of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Go(Phase, Action),
    No(Refusal),
}

#[test]
fn every_event_in_every_phase() {
    use Action as A;
    use Refusal::*;
    use Want::*;
    // Columns: Booted, Query, AckReady, Recover p1 (the state's plan), p1 invalid, Recover p2,
    // p2 invalid, Abort, Reboot, Finished recovered, Finished failed.
    #[rustfmt::skip]
    let table: [(Phase, [Want; 11]); 6] = [
        (Booting, [
            Go(Ready, A::None), Go(Booting, A::None), No(BadRequest),
            No(WrongPhase), No(WrongPhase), No(WrongPhase), No(WrongPhase),
            No(WrongPhase), Go(Rebooting, A::Reboot), No(Internal), No(Internal),
        ]),
        (Ready, [
            No(Internal), Go(Ready, A::None), No(BadRequest),
            Go(Recovering, A::Start), No(BadRequest), Go(Recovering, A::Start), No(BadRequest),
            No(WrongPhase), Go(Rebooting, A::Reboot), No(Internal), No(Internal),
        ]),
        (Recovering, [
            No(Internal), Go(Recovering, A::None), No(BadRequest),
            Go(Recovering, A::None), Go(Recovering, A::None), No(Busy), No(Busy),
            Go(Recovering, A::Abort), No(WrongPhase), Go(Recovered, A::None), Go(Failed, A::None),
        ]),
        (Recovered, [
            No(Internal), Go(Recovered, A::None), No(BadRequest),
            Go(Recovered, A::None), Go(Recovered, A::None), Go(Recovering, A::Start), No(BadRequest),
            No(WrongPhase), Go(Rebooting, A::Reboot), No(Internal), No(Internal),
        ]),
        (Failed, [
            No(Internal), Go(Failed, A::None), No(BadRequest),
            Go(Recovering, A::Start), No(BadRequest), Go(Recovering, A::Start), No(BadRequest),
            No(WrongPhase), Go(Rebooting, A::Reboot), No(Internal), No(Internal),
        ]),
        (Rebooting, [
            No(Internal), Go(Rebooting, A::None), No(BadRequest),
            No(WrongPhase), No(WrongPhase), No(WrongPhase), No(WrongPhase),
            No(WrongPhase), Go(Rebooting, A::Reboot), No(Internal), No(Internal),
        ]),
    ];
    assert_eq!(table.map(|(p, _)| p), PHASES, "one row per phase, in order");
    for (phase, row) in table {
        let state = State {
            phase,
            plan_id: Some("p1".into()),
        };
        for (event, want) in events().iter().zip(row) {
            let got = match next(&state, event) {
                Ok((s, action)) => {
                    let plan = match event {
                        Event::Recover { plan_id, .. } if action == Action::Start => plan_id,
                        _ => "p1",
                    };
                    assert_eq!(s.plan_id.as_deref(), Some(plan), "{phase:?} {event:?}");
                    Want::Go(s.phase, action)
                }
                Err(r) => Want::No(r.kind),
            };
            assert_eq!(got, want, "{phase:?} {event:?}");
        }
    }
}

#[test]
fn refusals_say_why_as_on_the_wire() {
    let at = |phase| State {
        phase,
        plan_id: Some("p1".into()),
    };
    let message = |phase, event: &Event| next(&at(phase), event).unwrap_err().message;
    assert_eq!(message(Booting, &recover("p1", true)), "still booting");
    assert_eq!(message(Rebooting, &recover("p1", true)), "rebooting");
    assert_eq!(
        message(Recovering, &recover("p2", true)),
        "plan p1 is running"
    );
    assert_eq!(
        message(Recovering, &Event::Reboot),
        "a plan is running; abort it first"
    );
    assert_eq!(message(Ready, &Event::Abort), "nothing to abort (Ready)");
    assert_eq!(
        message(Ready, &Event::AckReady),
        "AckReady is not a command"
    );
    assert_eq!(
        message(Failed, &recover("p2", false)),
        "invalid plan: image size is 0"
    );
}

#[test]
fn requests_map_to_events() {
    let text = include_str!("../../../docs/plan.example.toml");
    let plan: Plan = toml::from_str(text).expect("example plan parses");
    let id = plan.plan_id.clone();
    let request = Request::Recover(Box::new(plan));
    assert_eq!(
        Event::of(&request, |_| Ok(())),
        Event::Recover {
            plan_id: id.clone(),
            invalid: None
        }
    );
    assert_eq!(
        Event::of(&request, |_| {
            Err(crate::error::AgentError::Plan(
                crate::error::PlanError::EmptyPlanId,
            ))
        }),
        Event::Recover {
            plan_id: id,
            invalid: Some("invalid plan: plan id is empty".into())
        }
    );
    for (request, event) in [
        (Request::Hello, Event::Query),
        (Request::GetStatus, Event::Query),
        (Request::GetLogs { since: 3 }, Event::Query),
        (Request::AckReady, Event::AckReady),
        (Request::Abort, Event::Abort),
        (Request::Reboot, Event::Reboot),
    ] {
        assert_eq!(Event::of(&request, |_| unreachable!()), event);
    }
}

#[test]
fn console_labels_name_phase_and_step() {
    assert_eq!(label(Ready, None), "ready");
    assert_eq!(label(Recovering, None), "recovering");
    assert_eq!(
        label(Recovering, Some(Step::CopyImage)),
        "recovering/copy_image"
    );
    assert_eq!(label(Failed, Some(Step::CopyImage)), "failed");
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Booted),
        Just(Event::Query),
        Just(Event::AckReady),
        (prop::sample::select(vec!["p1", "p2", "p3"]), any::<bool>())
            .prop_map(|(id, valid)| recover(id, valid)),
        Just(Event::Abort),
        Just(Event::Reboot),
        any::<bool>().prop_map(|recovered| Event::Finished { recovered }),
    ]
}

proptest! {
    /// Random sequences (late, duplicated and out-of-order `Finished`, repeated plans, reboots
    /// at any time) from a fresh boot: the invariants hold after every step.
    #[test]
    fn the_lifecycle_keeps_its_invariants(events in prop::collection::vec(any_event(), 0..60)) {
        let mut state = State::booting();
        // The model: whether a plan is running (started and not finished).
        let mut running = false;
        let mut rebooting = false;
        for event in &events {
            let before = state.clone();
            match next(&state, event) {
                Err(_) => {
                    // A refusal changes nothing (the caller keeps `state`).
                    prop_assert!(!matches!(event, Event::Query));
                }
                Ok((after, action)) => {
                    match action {
                        Action::Start => {
                            // Never two recoveries at once, never an invalid plan, never after a
                            // reboot was accepted.
                            prop_assert!(!running && !rebooting);
                            let Event::Recover { plan_id, invalid } = event else {
                                return Err(TestCaseError::fail("Start without Recover"));
                            };
                            prop_assert!(invalid.is_none());
                            prop_assert_eq!(after.plan_id.as_deref(), Some(plan_id.as_str()));
                            running = true;
                        }
                        Action::Abort => prop_assert!(running),
                        Action::Reboot => {
                            // Reboot only when no plan runs.
                            prop_assert!(!running);
                            prop_assert_ne!(before.phase, Recovering);
                            rebooting = true;
                        }
                        Action::None => {}
                    }
                    // RECOVERED (or FAILED) only as the end of a plan that ran.
                    if after.phase != before.phase && matches!(after.phase, Recovered | Failed) {
                        prop_assert!(running);
                        prop_assert_eq!(before.phase, Recovering);
                        prop_assert_eq!(
                            event,
                            &Event::Finished { recovered: after.phase == Recovered }
                        );
                        running = false;
                    }
                    if matches!(event, Event::Query) {
                        prop_assert_eq!(&after, &before);
                    }
                    state = after;
                }
            }
            prop_assert_eq!(state.phase == Recovering, running);
            prop_assert_eq!(state.phase == Rebooting, rebooting);
            if matches!(state.phase, Recovering | Recovered | Failed) {
                prop_assert!(state.plan_id.is_some());
            }
        }
    }
}
