//! The brakes: how many repairs may run at once (`max_concurrent_repairs`) and when automatic
//! repair pauses (more than `max_unhealthy` nodes failing or under repair at once: a network
//! fault must not wipe a cluster). Questions about a state, answered without changing it; the
//! flow starts the repairs they allow.

use super::types::{ClusterState, RepairPolicy, RepairStep, Time};

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
