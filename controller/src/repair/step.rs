//! [`step`]: one event decided, as a pure function of the state, the event, the policy and the
//! time. It only dispatches each event to the flow, which decides.

use super::flow::Flow;
use super::types::{ClusterState, Event, Outcome, RepairPolicy, Time};

/// Decides one event. Pure: same inputs, same outputs.
pub fn step(
    state: ClusterState,
    event: Event,
    policy: &RepairPolicy,
    now: Time,
) -> (ClusterState, Outcome) {
    let mut flow = Flow {
        state,
        policy,
        now,
        out: Outcome::default(),
    };
    match event {
        Event::Health { node, ok } => flow.health(&node, ok),
        Event::Tick => flow.tick(),
        Event::Done {
            node,
            action,
            result,
        } => flow.done(&node, action, result),
        Event::AgentReady { node, boot_id } => flow.agent_ready(&node, boot_id),
        Event::AgentStatus { node, status } => flow.agent_status(&node, status),
        Event::AgentUnreachable { node, error } => flow.agent_unreachable(&node, &error),
        Event::OperatorRepair { node, force } => flow.operator_repair(&node, force),
        Event::OperatorRelease { node } => flow.operator_release(&node),
        Event::OperatorFenced { node } => flow.operator_fenced(&node),
        Event::Resume => flow.resume(),
    }
    (flow.state, flow.out)
}
