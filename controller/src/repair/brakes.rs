//! The brakes: how many repairs may run at once (`max_concurrent_repairs`) and when automatic
//! repair pauses (more than `max_unhealthy` nodes failing or under repair at once: a network
//! fault must not wipe a cluster). Questions about a state, answered without changing it; the
//! flow starts the repairs they allow.

use super::types::{ClusterState, RepairPolicy, RepairStep, Time};

/// What an operator asks of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorOp {
    /// `lazarus repair NODE [--force]`.
    Repair { force: bool },
    /// `lazarus release NODE`.
    Release,
    /// `lazarus fenced NODE`.
    Fenced,
}

/// Why an operator's request is refused now (the API answers it as the error, one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorRefusal {
    #[error("no node {0}")]
    NoNode(String),
    #[error("{0} is not under repair: there is nothing to release")]
    NotUnderRepair(String),
    #[error("{node} is {step}: only a quarantined or queued node can be released (its disk may be mid-write)")]
    ReleaseMidRepair { node: String, step: RepairStep },
    #[error("{0} is healthy: `lazarus repair {0} --force` repairs it anyway")]
    Healthy(String),
    #[error("{node} is already being repaired ({step})")]
    AlreadyRepairing { node: String, step: RepairStep },
    #[error("{0} is not waiting for an operator to confirm it is off")]
    NotAwaitingFence(String),
}

/// `Some(why)` when `op` on `node` must be refused in `state`.
pub fn operator_refusal(
    state: &ClusterState,
    node: &str,
    op: OperatorOp,
) -> Option<OperatorRefusal> {
    let Some(n) = state.nodes.get(node) else {
        return Some(OperatorRefusal::NoNode(node.into()));
    };
    let step = n.repair.as_ref().map(|r| r.step);
    match (op, step) {
        (OperatorOp::Release, None) => Some(OperatorRefusal::NotUnderRepair(node.into())),
        (OperatorOp::Release, Some(RepairStep::Quarantined | RepairStep::Queued)) => None,
        (OperatorOp::Release, Some(step)) => Some(OperatorRefusal::ReleaseMidRepair {
            node: node.into(),
            step,
        }),
        (OperatorOp::Repair { force }, None) if n.healthy && !force => {
            Some(OperatorRefusal::Healthy(node.into()))
        }
        (OperatorOp::Repair { .. }, None | Some(RepairStep::Quarantined)) => None,
        (OperatorOp::Repair { .. }, Some(step)) => Some(OperatorRefusal::AlreadyRepairing {
            node: node.into(),
            step,
        }),
        (OperatorOp::Fenced, Some(RepairStep::AwaitingFence)) => None,
        (OperatorOp::Fenced, _) => Some(OperatorRefusal::NotAwaitingFence(node.into())),
    }
}

/// Repairs past the queue and not quarantined.
pub fn active_repairs(state: &ClusterState) -> u32 {
    let active = state.nodes.values().filter(|n| {
        n.repair
            .as_ref()
            .is_some_and(|r| !matches!(r.step, RepairStep::Queued | RepairStep::Quarantined))
    });
    u32::try_from(active.count()).unwrap_or(u32::MAX)
}

/// Nodes failing or under repair.
pub fn unhealthy(state: &ClusterState) -> u32 {
    let unhealthy = state
        .nodes
        .values()
        .filter(|n| !n.healthy || n.repair.is_some());
    u32::try_from(unhealthy.count()).unwrap_or(u32::MAX)
}

/// `Some((paused, alert))` when automatic repair must pause or may resume now.
pub fn pause_change(state: &ClusterState, policy: &RepairPolicy) -> Option<(bool, String)> {
    let unhealthy = unhealthy(state);
    let too_many = unhealthy > policy.max_unhealthy;
    (too_many != state.paused).then(|| {
        let message = if too_many {
            format!(
                "{unhealthy} nodes unhealthy at once (more than {}): automatic repair paused",
                policy.max_unhealthy
            )
        } else {
            "failures back under the limit: automatic repair resumed".into()
        };
        (too_many, message)
    })
}

/// Queued repairs, in node name order, with their failure times.
pub fn queued(state: &ClusterState) -> Vec<(String, Time)> {
    state
        .nodes
        .iter()
        .filter_map(|(k, n)| {
            n.repair
                .as_ref()
                .filter(|r| r.step == RepairStep::Queued)
                .map(|r| (k.clone(), r.failure_time))
        })
        .collect()
}

/// Whether one more repair may start now.
pub fn may_start(state: &ClusterState, policy: &RepairPolicy) -> bool {
    !state.paused && active_repairs(state) < policy.max_concurrent_repairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;
    use crate::repair::types::{NodeState, Repair};

    fn node(healthy: bool, step: Option<RepairStep>) -> NodeState {
        NodeState {
            role: Role::Worker,
            healthy,
            ok_streak: 0,
            fail_streak: 0,
            repair: step.map(|s| Repair {
                step: s,
                ..Repair::queued(0)
            }),
            since: 0,
        }
    }

    fn policy(max_concurrent_repairs: u32, max_unhealthy: u32) -> RepairPolicy {
        RepairPolicy {
            failure_threshold: 1,
            recovery_threshold: 1,
            max_concurrent_repairs,
            max_unhealthy,
            retries: 1,
            poll_interval: 1,
            fence_timeout: 1,
            attach_timeout: 1,
            ready_timeout: 1,
            recover_timeout: 1,
            reboot_timeout: 1,
            verify_timeout: 1,
            can_fence: Vec::new(),
            has_promotion_hook: false,
            fencing: crate::cluster::Fencing::Required,
        }
    }

    #[test]
    fn queued_and_quarantined_repairs_are_not_active_but_count_as_unhealthy() {
        let mut state = ClusterState::default();
        for (name, n) in [
            ("a", node(true, None)),
            ("b", node(false, None)),
            ("c", node(false, Some(RepairStep::Queued))),
            ("d", node(false, Some(RepairStep::Quarantined))),
            ("e", node(false, Some(RepairStep::Recovering))),
        ] {
            state.nodes.insert(name.into(), n);
        }
        assert_eq!((active_repairs(&state), unhealthy(&state)), (1, 4));
        assert_eq!(queued(&state), [("c".to_string(), 0)]);
        assert!(may_start(&state, &policy(2, 9)));
        assert!(!may_start(&state, &policy(1, 9)), "one runs, one allowed");
        let (paused, message) = pause_change(&state, &policy(2, 3)).unwrap();
        assert!(paused && message.contains("4 nodes unhealthy"), "{message}");
        state.paused = true;
        assert!(!may_start(&state, &policy(2, 3)), "paused");
        assert_eq!(pause_change(&state, &policy(2, 3)), None, "no change");
        let (paused, _) = pause_change(&state, &policy(2, 4)).unwrap();
        assert!(!paused, "back under the limit");
    }
}
