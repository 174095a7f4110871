//! The counters behind `/metrics`, updated from the transitions of every event, and their
//! Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::health_loop::Checking;

use crate::repair::{ClusterState, RepairStep, Stage, Time, Transition};

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub repairs_started: u64,
    pub repairs_succeeded: u64,
    pub repairs_quarantined: u64,
    /// Seconds spent per repair step, summed over all repairs.
    pub step_seconds: BTreeMap<RepairStep, u64>,
    /// What each node is doing and since when.
    pub current: BTreeMap<String, (Stage, Time)>,
    /// The health scheduler's counters, once it runs.
    pub health: Option<Arc<Checking>>,
}

impl Metrics {
    /// Counts what `transitions` started, finished and spent.
    pub fn count(&mut self, transitions: &[Transition]) {
        for t in transitions {
            if t.from == Stage::Step(RepairStep::Queued) {
                self.repairs_started += 1;
            }
            if t.from == Stage::Step(RepairStep::Verifying) && t.to == Stage::HEALTHY {
                self.repairs_succeeded += 1;
            }
            if t.to == Stage::Step(RepairStep::Quarantined) {
                self.repairs_quarantined += 1;
            }
            let left = self.current.insert(t.node.clone(), (t.to, t.time));
            if let Some((Stage::Step(step), since)) = left {
                *self.step_seconds.entry(step).or_default() += t.time.saturating_sub(since);
            }
        }
    }

    /// The Prometheus text exposition of the counters and of `state`'s nodes per stage.
    pub fn render(&self, state: &ClusterState) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        };
        counter(
            "lazarus_repairs_started_total",
            "Repairs started.",
            self.repairs_started,
        );
        counter(
            "lazarus_repairs_succeeded_total",
            "Repairs that returned a node to service.",
            self.repairs_succeeded,
        );
        counter(
            "lazarus_repairs_failed_total",
            "Repairs that ended in quarantine.",
            self.repairs_quarantined,
        );
        if let Some(h) = &self.health {
            counter(
                "lazarus_health_checks_total",
                "Health checks done.",
                h.done.load(Ordering::Relaxed),
            );
            counter(
                "lazarus_health_checks_skipped_total",
                "Health check rounds skipped: every check slot busy until the node's next round.",
                h.skipped.load(Ordering::Relaxed),
            );
        }
        out.push_str(
            "# HELP lazarus_step_seconds_total Seconds spent in each repair step, all repairs.\n\
             # TYPE lazarus_step_seconds_total counter\n",
        );
        for (step, secs) in &self.step_seconds {
            let _ = writeln!(out, "lazarus_step_seconds_total{{step=\"{step}\"}} {secs}");
        }
        out.push_str("# HELP lazarus_nodes Nodes per state.\n# TYPE lazarus_nodes gauge\n");
        let mut per: BTreeMap<String, u64> = BTreeMap::new();
        for n in state.nodes.values() {
            *per.entry(n.stage().to_string()).or_default() += 1;
        }
        for (stage, count) in per {
            let _ = writeln!(out, "lazarus_nodes{{state=\"{stage}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;

    fn t(node: &str, from: Stage, to: Stage, time: Time) -> Transition {
        Transition {
            time,
            node: node.into(),
            from,
            to,
            reason: String::new(),
            bytes: None,
        }
    }

    #[test]
    fn a_repair_is_counted_once_with_the_seconds_of_each_step() {
        let step = Stage::Step;
        let mut m = Metrics::default();
        m.count(&[
            t("w1", Stage::HEALTHY, Stage::FAILING, 0),
            t("w1", Stage::FAILING, step(RepairStep::Queued), 0),
            t("w1", step(RepairStep::Queued), step(RepairStep::Fencing), 1),
            t(
                "s1",
                Stage::Role(Role::Standby),
                Stage::Role(Role::Worker),
                3,
            ),
            t(
                "w1",
                step(RepairStep::Fencing),
                step(RepairStep::Verifying),
                4,
            ),
            t("w1", step(RepairStep::Verifying), Stage::HEALTHY, 10),
            t("s1", Stage::HEALTHY, Stage::FAILING, 20),
        ]);
        assert_eq!(
            (
                m.repairs_started,
                m.repairs_succeeded,
                m.repairs_quarantined
            ),
            (1, 1, 0)
        );
        assert_eq!(
            m.step_seconds
                .iter()
                .map(|(s, n)| (s.name(), *n))
                .collect::<Vec<_>>(),
            [("queued", 1), ("fencing", 3), ("verifying", 6)],
            "roles and health are not repair steps"
        );
        let text = m.render(&ClusterState::default());
        assert!(
            text.contains("lazarus_repairs_succeeded_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lazarus_step_seconds_total{step=\"verifying\"} 6\n"),
            "{text}"
        );
    }
}
