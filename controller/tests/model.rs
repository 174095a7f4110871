//! A model-based test of the whole repair state machine: proptest generates clusters (2-6
//! workers, 0-3 standbys, brakes and budgets) and sequences of events — health results for any
//! node, time passing, late, duplicated and out-of-place `Done`s, agent announcements and
//! statuses (with the current plan or another), unreachable agents, operator repairs and
//! releases, controller restarts (the state serialized and read back, then `Resume`) — and checks
//! the invariants after every step. Then the world goes quiet (providers answer, agents are
//! gone, nodes stay dead, time runs) and every repair must end within its budgets.

use std::collections::BTreeMap;

use lazarus_controller::cluster::{Fencing, Role};
use lazarus_controller::repair::brakes::active_repairs;
use lazarus_controller::repair::*;
use lazarus_proto::flag::FlagState;
use lazarus_proto::{BootId, FlagSummary, Phase, Status};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Ev {
    Health(usize, bool),
    Tick(Time),
    Done(usize, ActionKind, bool),
    Ready(usize, u8),
    Status(usize, u8, Phase, FlagState, bool),
    Unreachable(usize),
    Repair(usize, bool),
    Release(usize),
    Fenced(usize),
    Restart,
}

fn kind() -> impl Strategy<Value = ActionKind> {
    prop_oneof![
        Just(ActionKind::Fence),
        Just(ActionKind::Promote),
        Just(ActionKind::Attach),
        Just(ActionKind::Recover),
        Just(ActionKind::Detach),
        Just(ActionKind::Reboot),
    ]
}

fn event() -> impl Strategy<Value = Ev> {
    let node = 0usize..9;
    prop_oneof![
        6 => (node.clone(), prop::bool::weighted(0.3)).prop_map(|(n, ok)| Ev::Health(n, ok)),
        3 => prop_oneof![Just(1 as Time), Just(30), Just(700), Just(4000)].prop_map(Ev::Tick),
        4 => (node.clone(), kind(), prop::bool::weighted(0.8)).prop_map(|(n, k, ok)| Ev::Done(n, k, ok)),
        2 => (node.clone(), 0u8..3).prop_map(|(n, b)| Ev::Ready(n, b)),
        3 => (
            node.clone(),
            0u8..3,
            prop_oneof![Just(Phase::Recovering), Just(Phase::Recovered), Just(Phase::Failed), Just(Phase::Ready)],
            prop_oneof![Just(FlagState::Recovering), Just(FlagState::Recovered), Just(FlagState::Failed), Just(FlagState::None)],
            prop::bool::weighted(0.8),
        )
            .prop_map(|(n, b, p, f, current)| Ev::Status(n, b, p, f, current)),
        1 => node.clone().prop_map(Ev::Unreachable),
        1 => (node.clone(), any::<bool>()).prop_map(|(n, f)| Ev::Repair(n, f)),
        1 => node.clone().prop_map(Ev::Release),
        1 => node.clone().prop_map(Ev::Fenced),
        1 => Just(Ev::Restart),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    workers: usize,
    standbys: usize,
    policy: RepairPolicy,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        2usize..=6,
        0usize..=3,
        1u32..=3,
        1u32..=6,
        1u32..=3,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(prop::bool::weighted(0.7), 9),
    )
        .prop_map(
            |(workers, standbys, concurrent, max_unhealthy, retries, hook, best_effort, fences)| {
                let names: Vec<String> = (0..workers)
                    .map(|i| format!("w{i}"))
                    .chain((0..standbys).map(|i| format!("s{i}")))
                    .zip(fences)
                    .filter_map(|(n, can)| can.then_some(n))
                    .collect();
                Setup {
                    workers,
                    standbys,
                    policy: RepairPolicy {
                        failure_threshold: 2,
                        recovery_threshold: 2,
                        max_concurrent_repairs: concurrent,
                        max_unhealthy,
                        retries,
                        poll_interval: 2,
                        fence_timeout: 60,
                        attach_timeout: 120,
                        ready_timeout: 600,
                        recover_timeout: 3600,
                        reboot_timeout: 120,
                        verify_timeout: 600,
                        can_fence: names,
                        has_promotion_hook: hook,
                        fencing: if best_effort {
                            Fencing::BestEffort
                        } else {
                            Fencing::Required
                        },
                    },
                }
            },
        )
}

fn names(s: &Setup) -> Vec<String> {
    (0..s.workers)
        .map(|i| format!("w{i}"))
        .chain((0..s.standbys).map(|i| format!("s{i}")))
        .collect()
}

fn initial(s: &Setup) -> ClusterState {
    let mut nodes = BTreeMap::new();
    for (i, name) in names(s).into_iter().enumerate() {
        nodes.insert(
            name,
            NodeState {
                role: if i < s.workers {
                    Role::Worker
                } else {
                    Role::Standby
                },
                healthy: true,
                ok_streak: 0,
                fail_streak: 0,
                repair: None,
                since: 0,
            },
        );
    }
    ClusterState {
        nodes,
        paused: false,
    }
}

fn status(boot: BootId, phase: Phase, flag: FlagState, plan: &str) -> Status {
    Status {
        boot_id: boot,
        phase,
        step: None,
        bytes_done: 1,
        bytes_total: 2,
        flag: FlagSummary {
            state: flag,
            seq: 1,
            plan_id: plan.into(),
            error_code: if flag == FlagState::Failed { 504 } else { 0 },
            bytes_done: 1,
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

/// The invariants that hold after every step.
fn check(state: &ClusterState, policy: &RepairPolicy) -> Result<(), String> {
    // A standby is being promoted for at most one worker at a time.
    let mut claims: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, n) in &state.nodes {
        if let Some(s) = n.repair.as_ref().and_then(|r| r.promoting.as_ref()) {
            claims.entry(s.as_str()).or_default().push(name);
        }
    }
    for (standby, by) in &claims {
        if by.len() > 1 {
            return Err(format!(
                "{standby} is being promoted for several workers: {by:?}"
            ));
        }
    }
    // No node is both in service and being repaired (past the queue).
    for (name, n) in &state.nodes {
        if let Some(r) = &n.repair {
            if r.step != RepairStep::Queued && n.healthy {
                return Err(format!("{name} is under repair ({}) and healthy", r.step));
            }
        }
    }
    // The concurrency brake.
    let active = active_repairs(state);
    if active > policy.max_concurrent_repairs {
        return Err(format!(
            "{active} repairs past the queue, max_concurrent_repairs = {}",
            policy.max_concurrent_repairs
        ));
    }
    Ok(())
}

struct Sim {
    state: ClusterState,
    policy: RepairPolicy,
    now: Time,
    names: Vec<String>,
    violations: Vec<String>,
}

impl Sim {
    fn on(&mut self, e: Event) -> Outcome {
        let before = self.state.clone();
        let (s, o) = step(self.state.clone(), e, &self.policy, self.now);
        self.state = s;
        // Every promotion asked for names a standby no other repair holds.
        for a in &o.actions {
            if let Action::Promote { failed, promoted } = a {
                let held_by_another = before.nodes.iter().any(|(name, n)| {
                    name != failed
                        && n.repair.as_ref().and_then(|r| r.promoting.as_ref()) == Some(promoted)
                });
                self.violations.extend(held_by_another.then(|| {
                    format!("{promoted} offered to {failed} while another repair promotes it")
                }));
                let fenced = self.state.nodes[failed]
                    .repair
                    .as_ref()
                    .is_some_and(|r| r.fenced);
                if self.policy.fencing == Fencing::Required && !fenced {
                    self.violations.push(format!(
                        "{promoted} promoted in place of {failed}, which is not confirmed off"
                    ));
                }
                let p = &before.nodes[promoted];
                let rerun = before.nodes[failed]
                    .repair
                    .as_ref()
                    .and_then(|r| r.promoting.as_ref())
                    == Some(promoted);
                if !rerun && (p.role != Role::Standby || p.repair.is_some() || !p.healthy) {
                    self.violations.push(format!(
                        "{promoted} promoted for {failed} but it is no healthy standby: {p:?}"
                    ));
                }
            }
        }
        o
    }

    fn node(&self, i: usize) -> String {
        self.names[i % self.names.len()].clone()
    }

    fn plan(&self, node: &str) -> String {
        self.state.nodes[node]
            .repair
            .as_ref()
            .map_or_else(|| "none".into(), |r| r.plan_id.clone())
    }

    fn apply(&mut self, ev: &Ev) {
        let e = match ev.clone() {
            Ev::Health(i, ok) => Event::Health {
                node: self.node(i),
                ok,
            },
            Ev::Tick(dt) => {
                self.now += dt;
                Event::Tick
            }
            Ev::Done(i, action, ok) => Event::Done {
                node: self.node(i),
                action,
                result: if ok {
                    Ok(())
                } else {
                    Err("provider failed".into())
                },
            },
            Ev::Ready(i, b) => Event::AgentReady {
                node: self.node(i),
                boot_id: BootId([b; 16]),
            },
            Ev::Status(i, b, phase, flag, current) => {
                let node = self.node(i);
                let plan = if current {
                    self.plan(&node)
                } else {
                    "stale-plan".into()
                };
                Event::AgentStatus {
                    node,
                    status: status(BootId([b; 16]), phase, flag, &plan),
                }
            }
            Ev::Unreachable(i) => Event::AgentUnreachable {
                node: self.node(i),
                error: "connection refused".into(),
            },
            Ev::Repair(i, force) => Event::OperatorRepair {
                node: self.node(i),
                force,
            },
            Ev::Release(i) => Event::OperatorRelease { node: self.node(i) },
            Ev::Fenced(i) => Event::OperatorFenced { node: self.node(i) },
            Ev::Restart => {
                let text = serde_json::to_string(&self.state).unwrap();
                self.state = serde_json::from_str(&text).unwrap();
                Event::Resume
            }
        };
        self.on(e);
    }

    /// The world goes quiet: providers answer, agents are gone, nodes stay dead, time runs.
    fn quiet(&mut self) -> Result<(), String> {
        for _ in 0..400 {
            let ended = self.state.nodes.values().all(|n| match &n.repair {
                None => true,
                Some(r) => {
                    r.step == RepairStep::Quarantined
                        || r.step == RepairStep::AwaitingFence
                        || (r.step == RepairStep::Queued
                            && (self.state.paused || active_repairs(&self.state) > 0))
                }
            });
            if ended {
                return Ok(());
            }
            self.now += 700;
            let mut pending = self.on(Event::Tick).actions;
            for _ in 0..20 {
                let mut next = Vec::new();
                for a in pending {
                    let e = match a {
                        Action::Fence { node } => done(node, ActionKind::Fence),
                        Action::Promote { failed, .. } => done(failed, ActionKind::Promote),
                        Action::Attach { node } => done(node, ActionKind::Attach),
                        Action::Detach { node } => done(node, ActionKind::Detach),
                        Action::Recover { node, .. }
                        | Action::Poll { node }
                        | Action::Reboot { node } => Event::AgentUnreachable {
                            node,
                            error: "gone".into(),
                        },
                        _ => continue,
                    };
                    next.extend(self.on(e).actions);
                }
                for name in self.names.clone() {
                    next.extend(
                        self.on(Event::Health {
                            node: name,
                            ok: false,
                        })
                        .actions,
                    );
                }
                check(&self.state, &self.policy)?;
                if let Some(v) = self.violations.first() {
                    return Err(v.clone());
                }
                if next.is_empty() {
                    break;
                }
                pending = next;
            }
        }
        Err(format!("repairs never ended: {:#?}", self.state))
    }
}

fn done(node: String, action: ActionKind) -> Event {
    Event::Done {
        node,
        action,
        result: Ok(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_repair_state_machine_keeps_its_invariants_and_every_repair_ends(
        s in setup(),
        events in prop::collection::vec(event(), 1..120),
    ) {
        let mut sim = Sim {
            state: initial(&s),
            policy: s.policy.clone(),
            now: 1000,
            names: names(&s),
            violations: Vec::new(),
        };
        for (i, ev) in events.iter().enumerate() {
            sim.apply(ev);
            if let Err(e) = check(&sim.state, &sim.policy) {
                prop_assert!(false, "after event {i} ({ev:?}): {e}");
            }
            if let Some(v) = sim.violations.first() {
                prop_assert!(false, "after event {i} ({ev:?}): {v}");
            }
        }
        if let Err(e) = sim.quiet() {
            prop_assert!(false, "{e}");
        }
    }
}
