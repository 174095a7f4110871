//! The controller's state machine, driven event by event with time as an input: the whole
//! repair, retries and quarantine, timeouts, the brakes, promotion failures. No sleeping.

use lazarus_controller::cluster::Role;
use lazarus_controller::repair::*;
use lazarus_proto::flag::FlagState;
use lazarus_proto::{BootId, FlagSummary, Phase, Status};

fn policy() -> RepairPolicy {
    RepairPolicy {
        failure_threshold: 3,
        recovery_threshold: 2,
        max_concurrent_repairs: 1,
        max_unhealthy: 2,
        retries: 2,
        poll_interval: 2,
        fence_timeout: 60,
        attach_timeout: 120,
        ready_timeout: 600,
        recover_timeout: 3600,
        reboot_timeout: 120,
        verify_timeout: 600,
        can_fence: vec!["w1".into(), "w2".into(), "w3".into(), "s1".into()],
        has_promotion_hook: true,
        fencing: lazarus_controller::cluster::Fencing::Required,
    }
}

fn cluster(nodes: &[(&str, Role)]) -> ClusterState {
    ClusterState {
        nodes: nodes
            .iter()
            .map(|(n, r)| {
                (
                    n.to_string(),
                    NodeState {
                        role: *r,
                        healthy: true,
                        ok_streak: 0,
                        fail_streak: 0,
                        repair: None,
                        since: 0,
                    },
                )
            })
            .collect(),
        paused: false,
    }
}

/// Feeds events in order; keeps the actions and transitions of the last one.
struct Run {
    state: ClusterState,
    policy: RepairPolicy,
    now: Time,
    last: Outcome,
    all_transitions: Vec<Transition>,
}

impl Run {
    fn new(state: ClusterState) -> Self {
        Self {
            state,
            policy: policy(),
            now: 1000,
            last: Outcome::default(),
            all_transitions: Vec::new(),
        }
    }

    fn on(&mut self, e: Event) -> &Outcome {
        let (s, o) = step(self.state.clone(), e, &self.policy, self.now);
        self.state = s;
        self.all_transitions.extend(o.transitions.clone());
        self.last = o;
        &self.last
    }

    fn at(&mut self, dt: Time) -> &mut Self {
        self.now += dt;
        self
    }

    fn step_of(&self, node: &str) -> Option<RepairStep> {
        self.state.nodes[node].repair.as_ref().map(|r| r.step)
    }

    fn plan_id(&self, node: &str) -> String {
        self.state.nodes[node]
            .repair
            .as_ref()
            .unwrap()
            .plan_id
            .clone()
    }

    fn fail(&mut self, node: &str, times: u32) {
        for _ in 0..times {
            self.on(Event::Health {
                node: node.into(),
                ok: false,
            });
        }
    }

    fn done(&mut self, node: &str, action: ActionKind) -> &Outcome {
        self.on(Event::Done {
            node: node.into(),
            action,
            result: Ok(()),
        })
    }

    /// `node` fails, is fenced and attached, and its agent announces itself (boot `BOOT`): the
    /// repair is waiting for its plan's progress.
    fn recovering(&mut self, node: &str) {
        self.fail(node, 3);
        self.done(node, ActionKind::Fence);
        self.done(node, ActionKind::Attach);
        self.on(Event::AgentReady {
            node: node.into(),
            boot_id: BOOT,
        });
    }
}

fn status(boot: BootId, phase: Phase, plan: &str, flag: FlagState) -> Status {
    Status {
        boot_id: boot,
        phase,
        step: None,
        bytes_done: 10,
        bytes_total: 10,
        flag: FlagSummary {
            state: flag,
            seq: 3,
            plan_id: plan.into(),
            error_code: 0,
            bytes_done: 10,
            timestamp: 1,
        },
        plan_id: Some(plan.into()),
        error: (phase == Phase::Failed).then(|| lazarus_proto::ErrorInfo {
            code: 504,
            message: "digest mismatch".into(),
        }),
        found_at_boot: None,
        unrestored: Vec::new(),
        copy: Default::default(),
    }
}

const BOOT: BootId = BootId([7; 16]);

#[test]
fn a_failed_worker_is_fenced_replaced_repaired_and_returns_as_a_standby() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker), ("s1", Role::Standby)]));
    r.fail("w1", 2);
    assert_eq!(
        r.step_of("w1"),
        None,
        "two failures are under the threshold"
    );
    r.fail("w1", 1);
    assert_eq!(r.last.actions, vec![Action::Fence { node: "w1".into() }]);
    assert_eq!(r.step_of("w1"), Some(RepairStep::Fencing));
    let o = r.done("w1", ActionKind::Fence).clone();
    assert_eq!(
        o.actions,
        vec![Action::Promote {
            failed: "w1".into(),
            promoted: "s1".into()
        }]
    );
    let o = r.done("w1", ActionKind::Promote).clone();
    assert_eq!(o.actions, vec![Action::Attach { node: "w1".into() }]);
    assert_eq!(
        (r.state.nodes["s1"].role, r.state.nodes["w1"].role),
        (Role::Worker, Role::Standby)
    );
    r.done("w1", ActionKind::Attach);
    assert_eq!(r.step_of("w1"), Some(RepairStep::WaitingReady));
    let o = r
        .on(Event::AgentReady {
            node: "w1".into(),
            boot_id: BOOT,
        })
        .clone();
    let plan = r.plan_id("w1");
    assert!(
        matches!(&o.actions[..], [Action::Recover { node, plan_id, failure_time: 1000 }] if node == "w1" && *plan_id == plan)
    );
    assert_eq!(
        r.at(2).on(Event::Tick).actions,
        vec![Action::Poll { node: "w1".into() }]
    );
    r.on(Event::AgentStatus {
        node: "w1".into(),
        status: status(BOOT, Phase::Recovering, &plan, FlagState::Recovering),
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Recovering));
    let o = r
        .on(Event::AgentStatus {
            node: "w1".into(),
            status: status(BOOT, Phase::Recovered, &plan, FlagState::Recovered),
        })
        .clone();
    assert_eq!(o.actions, vec![Action::Detach { node: "w1".into() }]);
    assert_eq!(
        r.done("w1", ActionKind::Detach).actions,
        vec![Action::Reboot { node: "w1".into() }]
    );
    r.done("w1", ActionKind::Reboot);
    assert_eq!(r.step_of("w1"), Some(RepairStep::Verifying));
    r.on(Event::Health {
        node: "w1".into(),
        ok: true,
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Verifying));
    r.on(Event::Health {
        node: "w1".into(),
        ok: true,
    });
    assert_eq!(r.step_of("w1"), None);
    let w1 = &r.state.nodes["w1"];
    assert!(w1.healthy && w1.role == Role::Standby);
    let path: Vec<String> = r
        .all_transitions
        .iter()
        .filter(|t| t.node == "w1")
        .map(|t| t.to.to_string())
        .collect();
    assert_eq!(
        path,
        [
            "failing",
            "queued",
            "fencing",
            "promoting",
            "attaching",
            "waiting_ready",
            "recovering",
            "detaching",
            "rebooting",
            "verifying",
            "healthy"
        ]
    );
}

#[test]
fn recovered_counts_only_when_phase_flag_and_plan_agree() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.policy.has_promotion_hook = false;
    r.recovering("w1");
    let plan = r.plan_id("w1");
    for s in [
        status(BOOT, Phase::Recovered, &plan, FlagState::Recovering),
        status(BOOT, Phase::Recovered, "another-plan", FlagState::Recovered),
    ] {
        assert!(r
            .on(Event::AgentStatus {
                node: "w1".into(),
                status: s
            })
            .actions
            .is_empty());
        assert_eq!(r.step_of("w1"), Some(RepairStep::Recovering));
    }
    // Unreachable for a while, then back, recovered.
    r.on(Event::AgentUnreachable {
        node: "w1".into(),
        error: "connection refused".into(),
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Recovering));
    r.on(Event::AgentStatus {
        node: "w1".into(),
        status: status(BOOT, Phase::Recovered, &plan, FlagState::Recovered),
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Detaching));
}

#[test]
fn an_agent_reporting_failed_is_retried_with_new_plans_then_quarantined() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.recovering("w1");
    let mut plans = vec![r.plan_id("w1")];
    for attempt in 1..=2 {
        let plan = r.plan_id("w1");
        let o = r
            .on(Event::AgentStatus {
                node: "w1".into(),
                status: status(BOOT, Phase::Failed, &plan, FlagState::Failed),
            })
            .clone();
        assert!(
            matches!(&o.actions[..], [Action::Recover { .. }]),
            "attempt {attempt}: {o:?}"
        );
        plans.push(r.plan_id("w1"));
    }
    plans.dedup();
    assert_eq!(plans.len(), 3, "each retry sends a new plan id: {plans:?}");
    let plan = r.plan_id("w1");
    let o = r
        .on(Event::AgentStatus {
            node: "w1".into(),
            status: status(BOOT, Phase::Failed, &plan, FlagState::Failed),
        })
        .clone();
    assert_eq!(r.step_of("w1"), Some(RepairStep::Quarantined));
    assert!(o.actions.iter().any(|a| matches!(a, Action::Alert { message, .. } if message.contains("quarantined") && message.contains("digest mismatch"))));
    // Quarantine holds until an operator acts.
    assert!(r.at(100_000).on(Event::Tick).actions.is_empty());
    let mut released = Run::new(r.state.clone());
    r.on(Event::OperatorRepair {
        node: "w1".into(),
        force: false,
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Fencing));
    // Released from quarantine: back as a standby, unrepaired.
    released.on(Event::OperatorRelease { node: "w1".into() });
    assert_eq!(released.step_of("w1"), None);
    assert!(released.state.nodes["w1"].healthy);
}

#[test]
fn the_agents_copy_counters_are_kept_while_recovering_and_reset_with_a_new_plan() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.recovering("w1");
    let plan = r.plan_id("w1");
    let counters = lazarus_proto::CopyCounters {
        checked: 3 << 30,
        fetched: 24 << 20,
        written: 24 << 20,
        source_stalled_since: Some(1_800_000_000),
    };
    let mut copying = status(BOOT, Phase::Recovering, &plan, FlagState::Recovering);
    copying.copy = counters;
    let o = r
        .on(Event::AgentStatus {
            node: "w1".into(),
            status: copying,
        })
        .clone();
    assert!(
        o.transitions.is_empty() && o.actions.is_empty(),
        "counters alone decide nothing: {o:?}"
    );
    let repair = r.state.nodes["w1"].repair.clone().unwrap();
    assert_eq!(repair.copy, counters);
    let view = |r: &Run| lazarus_controller::api::node_view("w1", &r.state.nodes["w1"]);
    assert_eq!(view(&r).copy, Some(counters), "the API shows them");
    // Past the copy step they are no longer shown, though the repair still holds them.
    let mut past = Run::new(r.state.clone());
    past.state
        .nodes
        .get_mut("w1")
        .unwrap()
        .repair
        .as_mut()
        .unwrap()
        .step = RepairStep::Detaching;
    assert_eq!(view(&past).copy, None);
    // The plan fails: the next plan starts from zero, and the last one's counters are not
    // in the event log (live progress, not history).
    let mut failed = status(BOOT, Phase::Failed, &plan, FlagState::Failed);
    failed.copy = counters;
    let o = r
        .on(Event::AgentStatus {
            node: "w1".into(),
            status: failed,
        })
        .clone();
    assert!(matches!(&o.actions[..], [Action::Recover { .. }]), "{o:?}");
    let repair = r.state.nodes["w1"].repair.clone().unwrap();
    assert_ne!(repair.plan_id, plan);
    assert_eq!(repair.copy, lazarus_proto::CopyCounters::default());
    assert_eq!(view(&r).copy, None, "all zero: not shown");
    assert!(r
        .all_transitions
        .iter()
        .all(|t| !serde_json::to_string(t).unwrap().contains("fetched")));
}

#[test]
fn release_is_refused_mid_repair_and_taken_from_quarantine_or_the_queue() {
    use lazarus_controller::repair::brakes::{operator_refusal, OperatorOp, OperatorRefusal};
    let mut r = to_rebooting();
    // Mid-repair (here: rebooting; the same for a disk being written): refused, nothing changes.
    assert!(matches!(
        operator_refusal(&r.state, "w1", OperatorOp::Release),
        Some(OperatorRefusal::ReleaseMidRepair { .. })
    ));
    r.on(Event::OperatorRelease { node: "w1".into() });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Rebooting));
    assert_eq!(
        operator_refusal(&r.state, "s1", OperatorOp::Release),
        Some(OperatorRefusal::NotUnderRepair("s1".into()))
    );
}

#[test]
fn an_operator_repair_respects_the_brakes_and_a_healthy_node_needs_force() {
    use lazarus_controller::repair::brakes::{operator_refusal, OperatorOp, OperatorRefusal};
    let mut r = Run::new(cluster(&[
        ("w1", Role::Worker),
        ("w2", Role::Worker),
        ("s1", Role::Standby),
    ]));
    // A healthy node: refused without --force, nothing starts.
    assert_eq!(
        operator_refusal(&r.state, "w2", OperatorOp::Repair { force: false }),
        Some(OperatorRefusal::Healthy("w2".into()))
    );
    r.on(Event::OperatorRepair {
        node: "w2".into(),
        force: false,
    });
    assert_eq!(r.step_of("w2"), None);
    // w1's repair runs; with max_concurrent_repairs = 1 a forced repair of w2 waits in the queue.
    r.fail("w1", 3);
    assert_eq!(r.step_of("w1"), Some(RepairStep::Fencing));
    r.on(Event::OperatorRepair {
        node: "w2".into(),
        force: true,
    });
    assert_eq!(r.step_of("w2"), Some(RepairStep::Queued));
    // A queued node may be released.
    r.on(Event::OperatorRelease { node: "w2".into() });
    assert_eq!(r.step_of("w2"), None);
}

#[test]
fn step_timeouts_retry_then_quarantine_without_sleeping() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.fail("w1", 3);
    r.done("w1", ActionKind::Fence);
    r.done("w1", ActionKind::Attach);
    for _ in 0..2 {
        let o = r.at(601).on(Event::Tick).clone();
        assert_eq!(
            o.actions,
            vec![Action::Attach { node: "w1".into() }],
            "no Ready: attach again"
        );
        r.done("w1", ActionKind::Attach);
    }
    r.at(601).on(Event::Tick);
    assert_eq!(r.step_of("w1"), Some(RepairStep::Quarantined));
    assert!(r.state.nodes["w1"]
        .repair
        .as_ref()
        .unwrap()
        .last_error
        .as_deref()
        .unwrap()
        .contains("waiting_ready timed out"));
}

#[test]
fn flapping_checks_do_not_start_a_repair() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    for _ in 0..5 {
        r.fail("w1", 2);
        r.on(Event::Health {
            node: "w1".into(),
            ok: true,
        });
    }
    assert_eq!(r.step_of("w1"), None);
    assert!(r.state.nodes["w1"].healthy);
}

#[test]
fn too_many_failures_at_once_pause_automatic_repair() {
    let mut r = Run::new(cluster(&[
        ("w1", Role::Worker),
        ("w2", Role::Worker),
        ("w3", Role::Worker),
        ("s1", Role::Standby),
    ]));
    r.policy.max_concurrent_repairs = 3;
    r.fail("w1", 3);
    assert_eq!(r.step_of("w1"), Some(RepairStep::Fencing));
    r.fail("w2", 3);
    assert_eq!(r.step_of("w2"), Some(RepairStep::Fencing));
    r.fail("w3", 3);
    assert!(r.state.paused);
    assert_eq!(
        r.step_of("w3"),
        Some(RepairStep::Queued),
        "a third failure waits"
    );
    assert!(r
        .last
        .actions
        .iter()
        .any(|a| matches!(a, Action::Alert { message, .. } if message.contains("paused"))));
    assert!(!r
        .last
        .actions
        .iter()
        .any(|a| matches!(a, Action::Fence { node } if node == "w3")));
}

#[test]
fn concurrent_repairs_are_limited_and_queued_ones_start_later() {
    let mut r = Run::new(cluster(&[
        ("w1", Role::Worker),
        ("w2", Role::Worker),
        ("s1", Role::Standby),
        ("s2", Role::Standby),
    ]));
    r.policy.has_promotion_hook = false;
    r.policy.max_unhealthy = 3;
    r.fail("w1", 3);
    r.fail("w2", 3);
    assert_eq!(
        (r.step_of("w1"), r.step_of("w2")),
        (Some(RepairStep::Fencing), Some(RepairStep::Queued))
    );
    // w1's fencing keeps failing: quarantined, it frees its slot.
    for _ in 0..=r.policy.retries {
        r.on(Event::Done {
            node: "w1".into(),
            action: ActionKind::Fence,
            result: Err("BMC unreachable".into()),
        });
    }
    assert_eq!(r.step_of("w1"), Some(RepairStep::Quarantined));
    r.on(Event::Tick);
    assert_eq!(r.step_of("w2"), Some(RepairStep::Fencing));
}

#[test]
fn a_failing_promotion_hook_tries_the_next_standby_then_alerts() {
    let mut r = Run::new(cluster(&[
        ("w1", Role::Worker),
        ("s1", Role::Standby),
        ("s2", Role::Standby),
    ]));
    r.fail("w1", 3);
    let o = r.done("w1", ActionKind::Fence).clone();
    let Action::Promote {
        promoted: first, ..
    } = &o.actions[0]
    else {
        panic!("{o:?}")
    };
    let first = first.clone();
    let o = r
        .on(Event::Done {
            node: "w1".into(),
            action: ActionKind::Promote,
            result: Err("exit 1".into()),
        })
        .clone();
    let Some(Action::Promote {
        promoted: second, ..
    }) = o
        .actions
        .iter()
        .find(|a| matches!(a, Action::Promote { .. }))
    else {
        panic!("{o:?}")
    };
    assert_ne!(*second, first);
    let o = r
        .on(Event::Done {
            node: "w1".into(),
            action: ActionKind::Promote,
            result: Err("exit 1".into()),
        })
        .clone();
    assert!(
        o.actions.iter().any(
            |a| matches!(a, Action::Alert { message, .. } if message.contains("no healthy standby"))
        ),
        "{o:?}"
    );
    assert!(
        o.actions.contains(&Action::Attach { node: "w1".into() }),
        "the repair proceeds: {o:?}"
    );
    assert_eq!(r.state.nodes[&first].role, Role::Standby);
}

#[test]
fn under_best_effort_a_node_without_power_control_is_not_fenced_but_still_repaired() {
    let mut r = Run::new(cluster(&[("w9", Role::Worker), ("s1", Role::Standby)]));
    r.policy.has_promotion_hook = false;
    r.policy.fencing = lazarus_controller::cluster::Fencing::BestEffort;
    r.fail("w9", 3);
    assert!(r
        .last
        .actions
        .iter()
        .any(|a| matches!(a, Action::Alert { message, .. } if message.contains("not fenced"))));
    assert!(r
        .last
        .actions
        .contains(&Action::Attach { node: "w9".into() }));
    assert_eq!(
        r.state.nodes["s1"].role,
        Role::Worker,
        "promoted without a hook"
    );
}

#[test]
fn an_agent_that_rebooted_after_recovered_is_recognised_by_its_boot_flag() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.recovering("w1");
    let plan = r.plan_id("w1");
    let mut s = status(BootId([9; 16]), Phase::Ready, "", FlagState::None);
    s.plan_id = None;
    s.found_at_boot = Some(FlagSummary {
        state: FlagState::Recovered,
        seq: 4,
        plan_id: plan,
        error_code: 0,
        bytes_done: 1,
        timestamp: 1,
    });
    r.on(Event::AgentStatus {
        node: "w1".into(),
        status: s,
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Detaching));
}

#[test]
fn a_restored_node_that_stays_unhealthy_is_repaired_again_then_quarantined() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.policy.has_promotion_hook = false;
    r.fail("w1", 3);
    r.done("w1", ActionKind::Fence);
    for cycle in 0..=2 {
        rescued_and_detached(&mut r, "w1");
        r.done("w1", ActionKind::Reboot);
        assert_eq!(
            r.step_of("w1"),
            Some(RepairStep::Verifying),
            "cycle {cycle}"
        );
        r.fail("w1", 5);
        r.at(601).on(Event::Tick);
    }
    assert_eq!(r.step_of("w1"), Some(RepairStep::Quarantined));
}

#[test]
fn resuming_reissues_each_steps_action_without_counting_an_attempt() {
    let mut r = Run::new(cluster(&[
        ("w1", Role::Worker),
        ("w2", Role::Worker),
        ("s1", Role::Standby),
    ]));
    r.policy.max_concurrent_repairs = 2;
    r.policy.max_unhealthy = 3;
    r.fail("w1", 3);
    r.fail("w2", 3);
    r.done("w2", ActionKind::Fence);
    // w1 is fencing, w2 promoting s1: a restarted controller does both again.
    let o = r.on(Event::Resume).clone();
    assert!(
        o.actions.contains(&Action::Fence { node: "w1".into() }),
        "{o:?}"
    );
    assert!(
        o.actions.contains(&Action::Promote {
            failed: "w2".into(),
            promoted: "s1".into()
        }),
        "{o:?}"
    );
    assert_eq!(r.state.nodes["w1"].repair.as_ref().unwrap().attempt, 0);
}

#[test]
fn a_poll_overtaking_the_recover_does_not_resend_the_plan_at_once() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.recovering("w1");
    let plan = r.plan_id("w1");
    let mut ready = status(BOOT, Phase::Ready, "", FlagState::None);
    ready.plan_id = None;
    assert!(r
        .on(Event::AgentStatus {
            node: "w1".into(),
            status: ready.clone()
        })
        .actions
        .is_empty());
    assert_eq!(r.plan_id("w1"), plan);
    let o = r
        .at(10)
        .on(Event::AgentStatus {
            node: "w1".into(),
            status: ready,
        })
        .clone();
    assert!(matches!(&o.actions[..], [Action::Recover { .. }]), "{o:?}");
    assert_ne!(r.plan_id("w1"), plan);
}

/// Drives w1 of a w1/s1 cluster to the point where the agent is asked to reboot.
fn to_rebooting() -> Run {
    let mut r = Run::new(cluster(&[("w1", Role::Worker), ("s1", Role::Standby)]));
    r.fail("w1", 3);
    r.done("w1", ActionKind::Fence);
    r.done("w1", ActionKind::Promote);
    rescued_and_detached(&mut r, "w1");
    assert_eq!(r.step_of("w1"), Some(RepairStep::Rebooting));
    r
}

#[test]
fn a_lost_reboot_reply_is_judged_by_the_health_check_not_quarantined() {
    let mut r = to_rebooting();
    r.on(Event::Done {
        node: "w1".into(),
        action: ActionKind::Reboot,
        result: Err("connecting to 10.0.0.5:7460: Connection refused".into()),
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Verifying));
    for _ in 0..2 {
        r.on(Event::Health {
            node: "w1".into(),
            ok: true,
        });
    }
    assert_eq!(
        r.step_of("w1"),
        None,
        "the healthy node is not repaired further"
    );
    assert!(
        r.last
            .actions
            .contains(&Action::Rejoined { node: "w1".into() }),
        "the [standby] hook is asked for: {:?}",
        r.last.actions
    );
    let w1 = &r.state.nodes["w1"];
    assert!(w1.healthy && w1.role == Role::Standby);
}

#[test]
fn a_lost_reboot_reply_from_a_node_that_never_comes_up_is_repaired_again() {
    let mut r = to_rebooting();
    r.on(Event::Done {
        node: "w1".into(),
        action: ActionKind::Reboot,
        result: Err("connection reset".into()),
    });
    assert_eq!(r.step_of("w1"), Some(RepairStep::Verifying));
    let o = r.at(601).on(Event::Tick).clone();
    assert_eq!(
        o.actions,
        vec![Action::Attach { node: "w1".into() }],
        "past the verify timeout the node is attached again, not declared healthy"
    );
}

#[test]
fn one_standby_is_promoted_for_one_worker_only_when_two_fail_at_once() {
    let mut r = Run::new(cluster(&[
        ("w1", Role::Worker),
        ("w2", Role::Worker),
        ("s1", Role::Standby),
    ]));
    r.policy.max_concurrent_repairs = 2;
    r.policy.max_unhealthy = 3;
    r.fail("w1", 3);
    r.fail("w2", 3);
    let mut promotes = Vec::new();
    for node in ["w1", "w2"] {
        let o = r.done(node, ActionKind::Fence).clone();
        promotes.extend(o.actions.into_iter().filter_map(|a| match a {
            Action::Promote { failed, promoted } => Some((failed, promoted)),
            _ => None,
        }));
    }
    assert_eq!(
        promotes,
        vec![("w1".to_string(), "s1".to_string())],
        "s1 was offered twice"
    );
    assert_eq!(r.step_of("w2"), Some(RepairStep::Attaching));
    r.done("w1", ActionKind::Promote);
    assert_eq!(r.state.nodes["s1"].role, Role::Worker);
    assert_eq!(
        r.state.nodes["w2"].role,
        Role::Worker,
        "w2 has no replacement: it keeps its role"
    );
}

#[test]
fn a_promotion_that_times_out_is_run_again_never_skipped_and_a_late_success_counts() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker), ("s1", Role::Standby)]));
    r.fail("w1", 3);
    r.done("w1", ActionKind::Fence);
    assert_eq!(r.step_of("w1"), Some(RepairStep::Promoting));
    let timeout = 600; // well past any step's deadline
    let o = r.at(timeout).on(Event::Tick).clone();
    assert_eq!(
        o.actions,
        vec![Action::Promote {
            failed: "w1".into(),
            promoted: "s1".into()
        }],
        "a promotion timeout must not go on to attach"
    );
    // Out of attempts: quarantined with the promotion unresolved...
    for _ in 0..3 {
        r.at(timeout).on(Event::Tick);
    }
    assert_eq!(r.step_of("w1"), Some(RepairStep::Quarantined));
    assert_eq!(r.state.nodes["s1"].role, Role::Standby);
    // ...and the hook's late success is recorded: s1 serves now.
    r.done("w1", ActionKind::Promote);
    assert_eq!(r.state.nodes["s1"].role, Role::Worker);
    assert_eq!(r.step_of("w1"), Some(RepairStep::Quarantined));
}

#[test]
fn a_recovering_timeout_boots_the_rescue_kernel_afresh_and_ends_in_quarantine() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker), ("s1", Role::Standby)]));
    r.fail("w1", 3);
    r.done("w1", ActionKind::Fence);
    r.done("w1", ActionKind::Promote);
    let mut attaches = 0;
    for _ in 0..10 {
        r.done("w1", ActionKind::Attach);
        r.on(Event::AgentReady {
            node: "w1".into(),
            boot_id: BOOT,
        });
        if r.step_of("w1") != Some(RepairStep::Recovering) {
            break;
        }
        // The agent dies mid-plan: nothing more is heard until the step's budget runs out.
        let o = r.at(3601).on(Event::Tick).clone();
        if o.actions.contains(&Action::Attach { node: "w1".into() }) {
            attaches += 1;
        } else {
            assert!(
                !o.actions
                    .iter()
                    .any(|a| matches!(a, Action::Recover { .. })),
                "a plan was re-sent to a silent agent: {o:?}"
            );
        }
        if r.step_of("w1") == Some(RepairStep::Quarantined) {
            break;
        }
    }
    assert_eq!(
        attaches, 2,
        "re-attached within the retry budget (retries = 2)"
    );
    assert_eq!(r.step_of("w1"), Some(RepairStep::Quarantined));
}

#[test]
fn under_required_fencing_no_standby_replaces_a_node_until_an_operator_confirms_it_off() {
    use lazarus_controller::repair::brakes::{operator_refusal, OperatorOp, OperatorRefusal};
    let mut r = Run::new(cluster(&[("w9", Role::Worker), ("s1", Role::Standby)]));
    r.fail("w9", 3);
    assert_eq!(r.step_of("w9"), Some(RepairStep::AwaitingFence));
    assert!(
        !r.last
            .actions
            .iter()
            .any(|a| matches!(a, Action::Promote { .. } | Action::Attach { .. })),
        "{:?}",
        r.last.actions
    );
    assert!(r.last.actions.iter().any(
        |a| matches!(a, Action::Alert { message, .. } if message.contains("lazarus fenced w9"))
    ));
    // Time alone changes nothing: it waits for a person.
    assert!(r.at(100_000).on(Event::Tick).actions.is_empty());
    assert_eq!(r.state.nodes["s1"].role, Role::Standby);
    assert_eq!(
        operator_refusal(&r.state, "s1", OperatorOp::Fenced),
        Some(OperatorRefusal::NotAwaitingFence("s1".into()))
    );
    let o = r.on(Event::OperatorFenced { node: "w9".into() }).clone();
    assert_eq!(
        o.actions,
        vec![Action::Promote {
            failed: "w9".into(),
            promoted: "s1".into()
        }]
    );
}

#[test]
fn a_repaired_worker_that_nobody_replaced_takes_its_own_place_again() {
    let mut r = Run::new(cluster(&[("w1", Role::Worker)]));
    r.fail("w1", 3);
    r.done("w1", ActionKind::Fence);
    assert_eq!(
        r.state.nodes["w1"].role,
        Role::Worker,
        "no standby took its place"
    );
    rescued_and_detached(&mut r, "w1");
    r.done("w1", ActionKind::Reboot);
    for _ in 0..2 {
        r.on(Event::Health {
            node: "w1".into(),
            ok: true,
        });
    }
    assert_eq!(r.step_of("w1"), None);
    assert_eq!(
        r.state.nodes["w1"].role,
        Role::Worker,
        "a worker with no replacement must not come back as a standby, leaving its slot empty"
    );
}

/// `node`'s rescue kernel attached, its agent Ready, the plan RECOVERED, the media detached.
fn rescued_and_detached(r: &mut Run, node: &str) {
    r.done(node, ActionKind::Attach);
    r.on(Event::AgentReady {
        node: node.into(),
        boot_id: BOOT,
    });
    let plan = r.plan_id(node);
    r.on(Event::AgentStatus {
        node: node.into(),
        status: status(BOOT, Phase::Recovered, &plan, FlagState::Recovered),
    });
    r.done(node, ActionKind::Detach);
}
