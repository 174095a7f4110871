//! The event loop: the one thread that owns the cluster state. It takes the events waiting on
//! its channel as one batch (at most [`MAX_BATCH`]), runs [`repair::step`] on each in order,
//! commits the resulting state and all the batch's transitions to the store in one transaction
//! *before* anything is done about them (write-ahead), publishes the state for the API, and only
//! then hands the batch's actions to the executor.
//!
//! Batching is what lets 10,000 health results a second through one redb transaction at a time:
//! a round of checks is many events and one commit. It keeps the write-ahead rule because no
//! action leaves this loop before the commit that holds the decision it came from; an action
//! whose commit failed is dropped (the state is reloaded from the store, and the step's deadline
//! or `Resume` issues it again).
//!
//! A batch that changed only counters (health streaks, an agent's progress) asks for no action
//! and records no transition; its state is committed with the next batch that does, or after
//! [`FLUSH_EVERY`] at the latest. A crash in between loses at most that much streak and progress
//! counting, never a decision. The state the API reads is published after every batch with a
//! transition, and at least every [`PUBLISH_EVERY`] otherwise (copying 10,000 nodes per health
//! result would cost more than the checks).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::health_loop::Checking;
use super::shared::{lock, now, Shared};
use crate::repair::{self, Action, ClusterState, Event, RepairPolicy};
use crate::store::Store;

/// The most events decided in one batch (one commit).
pub const MAX_BATCH: usize = 8192;
/// The longest a state changed only in counters stays uncommitted.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The longest a changed state stays unpublished to the API.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Decides events until every sender is gone, handing each action to `act` (the executor) once
/// the decision it came from is committed, and each committed state with transitions to
/// `committed` first (the executor revokes the keys of repairs that ended); commits what is left
/// unsaved before returning.
#[allow(clippy::too_many_arguments)]
pub fn run(
    mut state: ClusterState,
    events: Receiver<Event>,
    policy: &RepairPolicy,
    store: &Store,
    shared: &Mutex<Shared>,
    checking: &Checking,
    mut committed: impl FnMut(&ClusterState),
    mut act: impl FnMut(Action),
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Changed since the last commit / the last publication.
    let (mut unsaved, mut unpublished) = (false, false);
    let (mut saved_at, mut published_at) = (Instant::now(), Instant::now());
    loop {
        match events.recv_timeout(PUBLISH_EVERY) {
            Ok(event) => batch.push(event),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if unsaved {
                    if let Err(e) = store.commit(&state, &[]) {
                        log::error!("{e}");
                    }
                }
                return;
            }
        }
        while batch.len() < MAX_BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let mut transitions = Vec::new();
        let mut actions = Vec::new();
        unsaved |= !batch.is_empty();
        unpublished |= !batch.is_empty();
        for event in batch.drain(..) {
            let (next, outcome) = repair::step(state, event, policy, now());
            state = next;
            transitions.extend(outcome.transitions);
            actions.extend(outcome.actions);
        }
        let decided = !transitions.is_empty() || !actions.is_empty();
        if unsaved && (decided || saved_at.elapsed() >= FLUSH_EVERY) {
            // Write-ahead: the decisions are durable before anything is done about them.
            if let Err(e) = store.commit(&state, &transitions) {
                log::error!("{e}; not acting on {} actions", actions.len());
                match store.load() {
                    Ok(Some(committed)) => state = committed,
                    Ok(None) => {}
                    Err(e) => log::error!("reloading the committed state: {e}"),
                }
                refresh(checking, &state);
                continue;
            }
            unsaved = false;
            saved_at = Instant::now();
            if !transitions.is_empty() {
                refresh(checking, &state);
                committed(&state);
            }
        }
        if unpublished && (!transitions.is_empty() || published_at.elapsed() >= PUBLISH_EVERY) {
            let mut sh = lock(shared);
            sh.state = state.clone();
            sh.metrics.count(&transitions);
            unpublished = false;
            published_at = Instant::now();
        }
        for t in &transitions {
            log::info!("{}: {} -> {} ({})", t.node, t.from, t.to, t.reason);
        }
        for action in actions {
            act(action);
        }
    }
}

/// Tells the health scheduler which nodes to check in `state`.
fn refresh(checking: &Checking, state: &ClusterState) {
    for node in state.nodes.keys() {
        checking.update(node, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Fencing, Role};
    use crate::repair::{NodeState, RepairStep, Stage};

    fn policy() -> RepairPolicy {
        RepairPolicy {
            failure_threshold: 3,
            recovery_threshold: 2,
            max_concurrent_repairs: 5,
            max_unhealthy: 10,
            retries: 2,
            poll_interval: 2,
            fence_timeout: 60,
            attach_timeout: 120,
            ready_timeout: 600,
            recover_timeout: 3600,
            reboot_timeout: 120,
            verify_timeout: 600,
            can_fence: (0..20).map(|i| format!("w{i}")).collect(),
            has_promotion_hook: true,
            fencing: Fencing::Required,
        }
    }

    fn node(role: Role) -> NodeState {
        NodeState {
            role,
            healthy: true,
            ok_streak: 0,
            fail_streak: 0,
            repair: None,
            since: 0,
        }
    }

    #[test]
    fn a_batch_of_events_is_committed_before_any_of_its_actions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut state = ClusterState::default();
        for i in 0..20 {
            state.nodes.insert(format!("w{i}"), node(Role::Worker));
        }
        for i in 0..5 {
            state.nodes.insert(format!("s{i}"), node(Role::Standby));
        }
        store.commit(&state, &[]).unwrap();
        let checking = Checking::from_names(state.nodes.keys().cloned(), &state);
        let (tx, rx) = std::sync::mpsc::channel();
        // Three rounds of checks of 25 nodes, w3 and w7 failing, all waiting as one batch.
        for _ in 0..3 {
            for name in state.nodes.keys() {
                let ok = name != "w3" && name != "w7";
                tx.send(Event::Health {
                    node: name.clone(),
                    ok,
                })
                .unwrap();
            }
        }
        drop(tx);
        let shared = Mutex::new(Shared::default());
        let mut acted = Vec::new();
        run(
            state,
            rx,
            &policy(),
            &store,
            &shared,
            &checking,
            |_| {},
            |action| {
                // What is acted on is already in the store: the state and the transition.
                let committed = store.load().unwrap().unwrap();
                if let Action::Fence { node } = &action {
                    let step = committed.nodes[node].repair.as_ref().map(|r| r.step);
                    assert_eq!(step, Some(RepairStep::Fencing), "{node}");
                    assert!(store
                        .events(Some(node))
                        .unwrap()
                        .iter()
                        .any(|e| { e.transition.to == Stage::Step(RepairStep::Fencing) }));
                }
                acted.push(action);
            },
        );
        let fenced: Vec<_> = acted
            .iter()
            .filter_map(|a| match a {
                Action::Fence { node } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(fenced, ["w3", "w7"]);
        // One batch, one commit: the log holds both repairs' transitions, in order.
        let log = store.events(None).unwrap();
        assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            log.iter()
                .filter(|e| e.transition.to == Stage::FAILING)
                .count(),
            2
        );
        // The streak counters of healthy nodes were saved too (on the way out at the latest).
        let saved = store.load().unwrap().unwrap();
        assert_eq!(saved.nodes["w0"].ok_streak, 3);
        // The health scheduler no longer checks the nodes under repair.
        assert!(!checking.is_wanted("w3") && checking.is_wanted("w0"));
        assert_eq!(
            lock(&shared).state,
            saved,
            "the API sees what was committed"
        );
    }
}
