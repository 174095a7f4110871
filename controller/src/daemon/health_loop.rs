//! The health loop: every `health_interval`, checks every node not under repair (and restored
//! nodes being verified) in parallel and sends each result to the event loop. Deciding what a
//! result means is the state machine's job.

use std::sync::mpsc::Sender;
use std::sync::Mutex;

use super::shared::{lock, Shared};
use crate::cluster::{Cluster, Node};
use crate::health;
use crate::repair::{Event, RepairStep};

/// Runs until the event loop is gone.
pub fn run(cluster: &Cluster, shared: &Mutex<Shared>, tx: &Sender<Event>) {
    loop {
        let checking: Vec<&Node> = {
            let sh = lock(shared);
            cluster
                .nodes
                .iter()
                .filter(|n| {
                    sh.state.nodes.get(n.name.as_str()).is_some_and(|s| {
                        s.repair
                            .as_ref()
                            .is_none_or(|r| r.step == RepairStep::Verifying)
                    })
                })
                .collect()
        };
        let timeout = cluster.policy.health_timeout;
        let results: Vec<(String, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = checking
                .iter()
                .map(|n| {
                    s.spawn(move || {
                        let result = health::check(&n.health, timeout);
                        if let Err(e) = &result {
                            log::debug!("{}: health check failed: {e}", n.name);
                        }
                        (n.name.to_string(), result.is_ok())
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (node, ok) in results {
            if tx.send(Event::Health { node, ok }).is_err() {
                return;
            }
        }
        std::thread::sleep(cluster.policy.health_interval);
    }
}
