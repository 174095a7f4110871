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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::executor::Executor;
use super::health_loop::Checking;
use super::shared::{lock, now, Shared};
use crate::repair::{self, ClusterState, Event, RepairPolicy};
use crate::store::Store;

/// The most events decided in one batch (one commit).
pub const MAX_BATCH: usize = 8192;
/// The longest a state changed only in counters stays uncommitted.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The longest a changed state stays unpublished to the API.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Decides events until every sender is gone.
pub fn run(
    mut state: ClusterState,
    events: Receiver<Event>,
    policy: &RepairPolicy,
    store: &Store,
    shared: &Mutex<Shared>,
    executor: &Arc<Executor>,
    checking: &Checking,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Changed since the last commit / the last publication.
    let (mut unsaved, mut unpublished) = (false, false);
    let (mut saved_at, mut published_at) = (Instant::now(), Instant::now());
    loop {
        match events.recv_timeout(PUBLISH_EVERY) {
            Ok(event) => batch.push(event),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
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
            executor.execute(action);
        }
    }
}

/// Tells the health scheduler which nodes to check in `state`.
fn refresh(checking: &Checking, state: &ClusterState) {
    for node in state.nodes.keys() {
        checking.update(node, state);
    }
}
