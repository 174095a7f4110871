//! The brakes: how many repairs may run at once (`max_concurrent_repairs`) and when automatic
//! repair pauses (more than `max_unhealthy` nodes failing or under repair at once: a network
//! fault must not wipe a cluster). Queued repairs start here, oldest name first, when the brakes
//! allow; what a repair then does is [`super::flow`]'s business.

use super::flow::Flow;
use super::types::{Action, ClusterState, RepairStep, Time};

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

impl Flow<'_> {
    /// Pauses or resumes automatic repair (with an alert either way), then starts the queued
    /// repairs the concurrency limit allows.
    pub(super) fn apply_brakes(&mut self) {
        let max_unhealthy = self.policy.max_unhealthy;
        let too_many = unhealthy(&self.state) > max_unhealthy;
        if too_many != self.state.paused {
            self.state.paused = too_many;
            let message = if too_many {
                format!(
                    "{} nodes unhealthy at once (more than {max_unhealthy}): automatic repair paused",
                    unhealthy(&self.state),
                )
            } else {
                "failures back under the limit: automatic repair resumed".into()
            };
            self.out.actions.push(Action::Alert {
                node: None,
                message,
            });
        }
        if self.state.paused {
            return;
        }
        let queued: Vec<(String, Time)> = self
            .state
            .nodes
            .iter()
            .filter_map(|(k, n)| {
                n.repair
                    .as_ref()
                    .filter(|r| r.step == RepairStep::Queued)
                    .map(|r| (k.clone(), r.failure_time))
            })
            .collect();
        for (node, failure_time) in queued {
            if active_repairs(&self.state) >= self.policy.max_concurrent_repairs {
                break;
            }
            self.begin_repair(&node, failure_time, "repair starts");
        }
    }
}
