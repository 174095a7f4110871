//! The event loop: the one thread that owns the cluster state. For each event it runs
//! [`repair::step`], commits the new state and its transitions to the store *before* anything is
//! done about them (write-ahead), publishes the state for the API, and hands the actions to the
//! executor.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use super::executor::Executor;
use super::shared::{lock, now, Shared};
use crate::repair::{self, ClusterState, Event, RepairPolicy};
use crate::store::Store;

/// Decides events until every sender is gone.
pub fn run(
    mut state: ClusterState,
    events: Receiver<Event>,
    policy: &RepairPolicy,
    store: &Store,
    shared: &Mutex<Shared>,
    executor: &Arc<Executor>,
) {
    for event in events {
        let (next, outcome) = repair::step(state.clone(), event, policy, now());
        // Write-ahead: the decision is durable before anything is done about it.
        if let Err(e) = store.commit(&next, &outcome.transitions) {
            log::error!("{e}; not acting on this event");
            continue;
        }
        state = next;
        {
            let mut sh = lock(shared);
            sh.state = state.clone();
            sh.metrics.count(&outcome.transitions);
        }
        for t in &outcome.transitions {
            log::info!("{}: {} -> {} ({})", t.node, t.from, t.to, t.reason);
        }
        executor.revoke_ended(&state);
        for action in outcome.actions {
            executor.execute(action);
        }
    }
}
