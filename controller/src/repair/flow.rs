//! The progression of one repair: from a failed health check through fencing, promotion, the
//! rescue boot, the plan, detach and reboot to verification, with retries and quarantine.
//!
//! Everything here is a method of [`Flow`], the context of one call of `step`: the state being
//! changed, the policy, the time and the outcome being built. It decides; it never does I/O.
//! Whether a repair may start at all, the brakes answer.

use lazarus_proto::flag::FlagState;
use lazarus_proto::{BootId, CopyCounters, Phase, Status};

use super::brakes;
use super::types::{
    Action, ActionError, ActionKind, ByteProgress, ClusterState, Outcome, Repair, RepairPolicy,
    RepairStep, Stage, Time, Transition,
};
use crate::cluster::{Fencing, Role};

/// One event being decided: the state it changes, what it is decided with, what comes out.
pub(super) struct Flow<'p> {
    pub(super) state: ClusterState,
    pub(super) policy: &'p RepairPolicy,
    pub(super) now: Time,
    pub(super) out: Outcome,
}

impl Flow<'_> {
    /// The repair of `node` if it is at one of `steps`.
    pub(super) fn repair_at(&mut self, node: &str, steps: &[RepairStep]) -> Option<&mut Repair> {
        self.state
            .nodes
            .get_mut(node)?
            .repair
            .as_mut()
            .filter(|r| steps.contains(&r.step))
    }

    fn repair(&mut self, node: &str) -> Option<&mut Repair> {
        self.state.nodes.get_mut(node)?.repair.as_mut()
    }

    fn alert(&mut self, node: Option<&str>, message: String) {
        self.out.actions.push(Action::Alert {
            node: node.map(str::to_string),
            message,
        });
    }

    /// Logs a change of `node` from `from` to `to`; leaving `recovering`, with the bytes the
    /// agent last reported (the repair timeline shows them).
    pub(super) fn record(&mut self, node: &str, from: Stage, to: Stage, reason: String) {
        let bytes = (from == Stage::Step(RepairStep::Recovering))
            .then(|| self.state.nodes.get(node)?.repair.as_ref())
            .flatten()
            .filter(|r| r.bytes_total > 0)
            .map(|r| ByteProgress {
                done: r.bytes_done,
                total: r.bytes_total,
            });
        self.out.transitions.push(Transition {
            time: self.now,
            node: node.to_string(),
            from,
            to,
            reason,
            bytes,
        });
    }

    /// Moves `node`'s repair to `to`, with `to`'s deadline; progress resets the attempts.
    fn enter(&mut self, node: &str, to: RepairStep, reason: &str) {
        let deadline = self.now.saturating_add(self.policy.timeout(to));
        let now = self.now;
        let Some(n) = self.state.nodes.get_mut(node) else {
            return;
        };
        let from = n.stage();
        if let Some(r) = n.repair.as_mut() {
            if to.rank() > r.step.rank() {
                r.attempt = 0;
            }
            r.step = to;
            r.deadline = deadline;
        }
        n.since = now;
        let to = n.stage();
        self.record(node, from, to, reason.to_string());
    }

    /// Gives `node`'s current step a new deadline (the step's action was issued again).
    fn extend(&mut self, node: &str, step: RepairStep) {
        let deadline = self.now.saturating_add(self.policy.timeout(step));
        if let Some(r) = self.repair(node) {
            r.deadline = deadline;
        }
    }

    /// A health check's result: counts streaks, marks a node failed (queueing its repair) or
    /// healthy again, and ends a repair whose restored node passes its checks.
    pub(super) fn health(&mut self, node: &str, ok: bool) {
        let (now, policy) = (self.now, self.policy);
        let Some(n) = self.state.nodes.get_mut(node) else {
            return;
        };
        if ok {
            n.ok_streak += 1;
            n.fail_streak = 0;
        } else {
            n.fail_streak += 1;
            n.ok_streak = 0;
        }
        match n.repair.as_ref().map(|r| r.step) {
            Some(RepairStep::Verifying) if n.ok_streak >= policy.recovery_threshold => {
                let from = n.stage();
                // A worker a standby replaced is a standby now (set when it was promoted); one
                // that nobody replaced takes its own place again.
                let role = n.role;
                n.repair = None;
                n.healthy = true;
                n.since = now;
                self.record(
                    node,
                    from,
                    Stage::HEALTHY,
                    format!(
                        "restored node passed its health checks; back as a {}",
                        Stage::Role(role)
                    ),
                );
                self.out
                    .actions
                    .push(Action::Rejoined { node: node.into() });
                self.tick();
            }
            Some(_) => {} // under repair: checks do not count
            None if !ok && n.healthy && n.fail_streak >= policy.failure_threshold => {
                n.healthy = false;
                n.since = now;
                let reason = format!("{} consecutive failed health checks", n.fail_streak);
                self.record(node, Stage::HEALTHY, Stage::FAILING, reason);
                self.queue_repair(node, now);
                self.tick();
            }
            None if ok && !n.healthy && n.ok_streak >= policy.recovery_threshold => {
                n.healthy = true;
                n.since = now;
                self.record(
                    node,
                    Stage::FAILING,
                    Stage::HEALTHY,
                    "health checks pass again".into(),
                );
            }
            None => {}
        }
    }

    /// Starts a repair of `node` in `Queued`, for a failure at `failure_time`.
    pub(super) fn queue_repair(&mut self, node: &str, failure_time: Time) {
        let Some(n) = self.state.nodes.get_mut(node) else {
            return;
        };
        let from = n.stage();
        n.repair = Some(Repair::queued(failure_time));
        self.record(
            node,
            from,
            Stage::Step(RepairStep::Queued),
            "failed; a repair is queued".into(),
        );
    }

    /// Starts (or restarts) the repair of `node`: fence it if its provider can, else go on
    /// unfenced with an alert.
    pub(super) fn begin_repair(&mut self, node: &str, failure_time: Time, reason: &str) {
        let Some(n) = self.state.nodes.get(node) else {
            return;
        };
        if n.repair.is_none() {
            self.queue_repair(node, failure_time);
        }
        // From here the node is out of service, whatever its health checks said (an operator
        // may force the repair of a node that passes them).
        if let Some(n) = self.state.nodes.get_mut(node) {
            n.healthy = false;
            n.ok_streak = 0;
        }
        let Some(r) = self.repair(node) else {
            return;
        };
        r.failure_time = failure_time;
        r.attempt = 0;
        r.cycles = 0;
        r.last_error = None;
        if self.policy.can_fence.iter().any(|f| f == node) {
            self.enter(node, RepairStep::Fencing, reason);
            self.out.actions.push(Action::Fence { node: node.into() });
        } else if self.policy.fencing == Fencing::Required {
            self.enter(
                node,
                RepairStep::AwaitingFence,
                "its boot provider cannot power it off: waiting for `lazarus fenced`",
            );
            self.alert(
                Some(node),
                format!(
                    "{node} cannot be powered off by its boot provider: make sure it is off, \
                     then run `lazarus fenced {node}` (fencing = \"required\")"
                ),
            );
        } else {
            self.alert(
                Some(node),
                format!("{node} cannot be powered off by its boot provider; it is not fenced"),
            );
            self.after_fence(node);
        }
    }

    /// After fencing: promote a standby in a failed worker's place, then attach the rescue kernel.
    fn after_fence(&mut self, node: &str) {
        let Some(n) = self.state.nodes.get(node) else {
            return;
        };
        let was_worker = n.role == Role::Worker;
        let repair = n.repair.as_ref();
        let already = repair.and_then(|r| r.replaced_by.as_ref()).is_some();
        if was_worker && !already {
            let tried = repair.map(|r| r.tried.as_slice()).unwrap_or_default();
            // A standby another repair is promoting is reserved for it: never offered twice.
            let reserved: Vec<&String> = self
                .state
                .nodes
                .values()
                .filter_map(|n| n.repair.as_ref()?.promoting.as_ref())
                .collect();
            let candidate = self
                .state
                .nodes
                .iter()
                .find(|(k, n)| {
                    n.role == Role::Standby
                        && n.healthy
                        && n.repair.is_none()
                        && !tried.contains(k)
                        && !reserved.contains(k)
                })
                .map(|(k, _)| k.clone());
            match candidate {
                Some(standby) if self.policy.has_promotion_hook => {
                    if let Some(r) = self.repair(node) {
                        r.promoting = Some(standby.clone());
                    }
                    self.enter(node, RepairStep::Promoting, &format!("promoting {standby}"));
                    self.out.actions.push(Action::Promote {
                        failed: node.into(),
                        promoted: standby,
                    });
                    return;
                }
                Some(standby) => self.promote(node, &standby),
                None => self.alert(
                    Some(node),
                    format!("no healthy standby left to replace {node}; repairing it anyway"),
                ),
            }
        }
        self.attach(node, "attaching the rescue kernel");
    }

    /// Moves `node` to Attaching and asks for the rescue boot.
    fn attach(&mut self, node: &str, reason: &str) {
        self.enter(node, RepairStep::Attaching, reason);
        self.out.actions.push(Action::Attach { node: node.into() });
    }

    /// Records that `standby` now serves as the worker `failed` was; `failed` returns as a
    /// standby.
    fn promote(&mut self, failed: &str, standby: &str) {
        let now = self.now;
        if let Some(s) = self.state.nodes.get_mut(standby) {
            s.role = Role::Worker;
            s.since = now;
        }
        if let Some(n) = self.state.nodes.get_mut(failed) {
            n.role = Role::Standby;
            if let Some(r) = n.repair.as_mut() {
                r.replaced_by = Some(standby.into());
            }
        }
        self.record(
            standby,
            Stage::Role(Role::Standby),
            Stage::Role(Role::Worker),
            format!("promoted in place of {failed}"),
        );
    }

    /// Sends a new plan (a new plan id) to `node`'s agent.
    fn send_recover(&mut self, node: &str, reason: &str) {
        let now = self.now;
        let Some(r) = self.repair(node) else {
            return;
        };
        r.plans_sent += 1;
        r.sent_at = now;
        r.plan_id = format!("{node}-{}-{}", r.failure_time, r.plans_sent);
        let (plan_id, failure_time) = (r.plan_id.clone(), r.failure_time);
        self.enter(node, RepairStep::Recovering, reason);
        // A new plan starts from nothing: the last one's bytes are in the transition above.
        if let Some(r) = self.repair(node) {
            r.bytes_done = 0;
            r.bytes_total = 0;
            r.copy = CopyCounters::default();
        }
        self.out.actions.push(Action::Recover {
            node: node.into(),
            plan_id,
            failure_time,
        });
    }

    /// An agent announced itself: send the plan, or, if one runs already, ask how far it got.
    pub(super) fn agent_ready(&mut self, node: &str, boot_id: BootId) {
        // Ready can beat the attach command's own completion (a fast boot): the agent is up
        // either way.
        let steps = [
            RepairStep::Attaching,
            RepairStep::WaitingReady,
            RepairStep::Recovering,
        ];
        let Some(r) = self.repair_at(node, &steps) else {
            return;
        };
        r.boot_id = Some(boot_id);
        if r.step != RepairStep::Recovering {
            self.send_recover(node, "agent ready");
        } else {
            // A new boot while recovering: the agent restarted; the flag tells where it got.
            self.out.actions.push(Action::Poll { node: node.into() });
        }
    }

    /// An agent could not be reached while recovering: noted, and waited for until the step's
    /// deadline (a busy or rebooting agent comes back).
    pub(super) fn agent_unreachable(&mut self, node: &str, error: &ActionError) {
        if let Some(r) = self.repair_at(node, &[RepairStep::Recovering]) {
            r.last_error = Some(format!("agent unreachable: {error}"));
        }
    }

    /// An action finished: the repair moves on, or the step is retried.
    pub(super) fn done(&mut self, node: &str, action: ActionKind, result: Result<(), ActionError>) {
        if let (ActionKind::Promote, Ok(())) = (action, &result) {
            // A promotion that succeeded is a fact, whenever its answer arrives: the standby
            // serves now. Only a repair still at Promoting goes on to attach.
            let step = self.repair(node).map(|r| r.step);
            if let Some(standby) = self.repair(node).and_then(|r| r.promoting.take()) {
                self.promote(node, &standby);
                if step == Some(RepairStep::Promoting) {
                    self.attach(node, "attaching the rescue kernel");
                } else {
                    self.alert(
                        Some(node),
                        format!("{standby} was promoted in place of {node} after the repair had moved on"),
                    );
                }
            }
            return;
        }
        let Some(r) = self.repair_at(node, &[action.step()]) else {
            return;
        };
        if let (ActionKind::Reboot, Err(e)) = (action, &result) {
            // The agent may reboot (or a BMC power-cycle it) before its answer leaves: a lost
            // reply says nothing. The health check that follows judges the restored system.
            let reason = format!("Reboot unanswered ({e}); health-checking the restored system");
            if let Some(n) = self.state.nodes.get_mut(node) {
                n.ok_streak = 0;
            }
            self.enter(node, RepairStep::Verifying, &reason);
            return;
        }
        if let Err(e) = result {
            if action == ActionKind::Promote {
                // Try the next standby; the one whose hook failed stays a standby.
                if let Some(p) = r.promoting.take() {
                    r.tried.push(p);
                }
                self.alert(Some(node), format!("promotion hook failed: {e}"));
                self.after_fence(node);
                return;
            }
            r.last_error = Some(e.to_string());
            self.retry_or_quarantine(node, &format!("{action:?} failed: {e}"));
            return;
        }
        match action {
            ActionKind::Fence => {
                self.record_fenced(node);
                self.after_fence(node)
            }
            ActionKind::Promote => {} // handled above
            ActionKind::Attach => self.enter(
                node,
                RepairStep::WaitingReady,
                "rescue kernel attached; waiting for Ready",
            ),
            ActionKind::Recover => {}
            ActionKind::Detach => {
                self.enter(
                    node,
                    RepairStep::Rebooting,
                    "rescue media detached; rebooting",
                );
                self.out.actions.push(Action::Reboot { node: node.into() });
            }
            ActionKind::Reboot => {
                if let Some(n) = self.state.nodes.get_mut(node) {
                    n.ok_streak = 0;
                }
                self.enter(
                    node,
                    RepairStep::Verifying,
                    "rebooted into the restored system; health-checking",
                );
            }
        }
    }

    /// An agent's status while recovering: RECOVERED moves on to detach, FAILED is retried, an
    /// agent that lost the plan gets it again.
    pub(super) fn agent_status(&mut self, node: &str, status: Status) {
        let (now, poll_interval) = (self.now, self.policy.poll_interval);
        let Some(r) = self.repair_at(node, &[RepairStep::Recovering]) else {
            return;
        };
        if r.boot_id.is_some_and(|b| b != status.boot_id) {
            // A new boot of the agent: trust only the flag it read at start.
            r.boot_id = Some(status.boot_id);
        }
        r.bytes_done = status.bytes_done;
        r.bytes_total = status.bytes_total;
        r.copy = status.copy;
        let sent_at = r.sent_at;
        let ours = status.plan_id.as_deref() == Some(r.plan_id.as_str());
        let flag_ours = status.flag.plan_id == r.plan_id;
        let found_ours = status
            .found_at_boot
            .as_ref()
            .is_some_and(|f| f.plan_id == r.plan_id && f.state == FlagState::Recovered);
        match status.phase {
            // RECOVERED needs the phase and the flag to agree, for this plan.
            Phase::Recovered if ours && flag_ours && status.flag.state == FlagState::Recovered => {
                self.enter(node, RepairStep::Detaching, "agent reports RECOVERED");
                self.out.actions.push(Action::Detach { node: node.into() });
            }
            Phase::Ready if found_ours => {
                self.enter(
                    node,
                    RepairStep::Detaching,
                    "agent rebooted after writing RECOVERED",
                );
                self.out.actions.push(Action::Detach { node: node.into() });
            }
            // A poll may overtake the Recover it follows; resend only once the plan had time to
            // land.
            Phase::Ready if now >= sent_at + (2 * poll_interval).max(5) => self.send_recover(
                node,
                "agent is ready but not running our plan; sending it again",
            ),
            Phase::Failed if ours => {
                let e = status.error.map_or("unknown".into(), |e| {
                    format!("error {}: {}", e.code, e.message)
                });
                r.last_error = Some(e.clone());
                self.retry_or_quarantine(node, &format!("plan failed: {e}"));
            }
            _ => {}
        }
    }

    /// `lazarus repair NODE`: a node not under repair, or quarantined, is repaired from the start.
    /// `lazarus repair`: queued like a detected failure, so `max_concurrent_repairs` and the
    /// pause brake apply; a healthy node only when forced. Refused requests change nothing (the
    /// API has already said why).
    pub(super) fn operator_repair(&mut self, node: &str, force: bool) {
        if brakes::operator_refusal(&self.state, node, brakes::OperatorOp::Repair { force })
            .is_some()
        {
            return;
        }
        let failure_time = self
            .state
            .nodes
            .get(node)
            .and_then(|n| n.repair.as_ref())
            .map_or(self.now, |r| r.failure_time);
        self.queue_repair(node, failure_time);
        self.start_queued();
    }

    /// `lazarus fenced`: an operator confirms the node is off; the repair goes on.
    pub(super) fn operator_fenced(&mut self, node: &str) {
        if brakes::operator_refusal(&self.state, node, brakes::OperatorOp::Fenced).is_some() {
            return;
        }
        self.record_fenced(node);
        self.after_fence(node);
    }

    /// The node is known off: a standby may take its place.
    fn record_fenced(&mut self, node: &str) {
        if let Some(r) = self.repair(node) {
            r.fenced = true;
        }
    }

    /// `lazarus release`: back into service as a standby, unrepaired; only from quarantine or
    /// the queue, never while its disk may be being written.
    pub(super) fn operator_release(&mut self, node: &str) {
        if brakes::operator_refusal(&self.state, node, brakes::OperatorOp::Release).is_some() {
            return;
        }
        let now = self.now;
        let Some(n) = self.state.nodes.get_mut(node) else {
            return;
        };
        let from = n.stage();
        n.repair = None;
        n.role = Role::Standby;
        n.healthy = true;
        n.fail_streak = 0;
        n.since = now;
        self.record(node, from, Stage::HEALTHY, "released by an operator".into());
    }

    /// The controller restarted: the action of every repair's current step again (one in flight
    /// may have been lost), without counting an attempt.
    pub(super) fn resume(&mut self) {
        for (node, n) in &self.state.nodes {
            let Some(r) = &n.repair else { continue };
            let node = node.clone();
            self.out.actions.push(match r.step {
                RepairStep::Fencing => Action::Fence { node },
                RepairStep::Promoting => match &r.promoting {
                    Some(p) => Action::Promote {
                        failed: node,
                        promoted: p.clone(),
                    },
                    None => continue,
                },
                RepairStep::Attaching => Action::Attach { node },
                RepairStep::Recovering => Action::Poll { node },
                RepairStep::Detaching => Action::Detach { node },
                RepairStep::Rebooting => Action::Reboot { node },
                RepairStep::Queued
                | RepairStep::WaitingReady
                | RepairStep::Verifying
                | RepairStep::Quarantined
                | RepairStep::AwaitingFence => continue,
            });
        }
        self.tick();
    }

    /// Starts queued repairs the brakes allow; times out steps; polls recovering agents.
    pub(super) fn tick(&mut self) {
        if let Some((paused, message)) = brakes::pause_change(&self.state, self.policy) {
            self.state.paused = paused;
            self.alert(None, message);
        }
        self.start_queued();
        let names: Vec<String> = self.state.nodes.keys().cloned().collect();
        for node in names {
            let Some((step, deadline)) = self
                .state
                .nodes
                .get(&node)
                .and_then(|n| n.repair.as_ref())
                .map(|r| (r.step, r.deadline))
            else {
                continue;
            };
            if matches!(step, RepairStep::Queued | RepairStep::Quarantined) {
                continue;
            }
            if self.now >= deadline {
                self.retry_or_quarantine_as(&node, &format!("{step} timed out"), true);
            } else if step == RepairStep::Recovering {
                self.out.actions.push(Action::Poll { node });
            }
        }
    }

    /// Starts queued repairs while the brakes allow.
    fn start_queued(&mut self) {
        for (node, failure_time) in brakes::queued(&self.state) {
            if !brakes::may_start(&self.state, self.policy) {
                break;
            }
            self.begin_repair(&node, failure_time, "repair starts");
        }
    }

    /// Another attempt at the current step, or quarantine once the attempts are used up.
    fn retry_or_quarantine(&mut self, node: &str, reason: &str) {
        self.retry_or_quarantine_as(node, reason, false);
    }

    /// As [`Self::retry_or_quarantine`]; `timed_out` says the step ran out of time. A
    /// Recovering step that timed out boots the rescue kernel afresh (the one-shot boot was
    /// spent: a dead agent would otherwise be sent plans until every budget ran out), counted as
    /// a whole cycle like a restored system that never comes up healthy.
    fn retry_or_quarantine_as(&mut self, node: &str, reason: &str, timed_out: bool) {
        let Some(r) = self.repair(node) else {
            return;
        };
        r.attempt += 1;
        let reattach = timed_out && r.step == RepairStep::Recovering;
        if r.step == RepairStep::Verifying || reattach {
            r.cycles += 1;
            r.attempt = r.cycles;
        }
        r.last_error = Some(reason.to_string());
        let (attempt, step) = (r.attempt, r.step);
        if attempt > self.policy.retries {
            self.enter(
                node,
                RepairStep::Quarantined,
                &format!("quarantined: {reason}"),
            );
            self.alert(Some(node), format!("{node} quarantined: {reason}"));
            self.tick();
            return;
        }
        let retry = format!("retry {attempt}: {reason}");
        match step {
            RepairStep::Fencing => {
                self.out.actions.push(Action::Fence { node: node.into() });
                self.extend(node, step);
            }
            // The promotion is resolved before anything else: the hook runs again (hooks are
            // idempotent for one pair); a late success of an earlier run is still recorded.
            RepairStep::Promoting => {
                let standby = self.repair(node).and_then(|r| r.promoting.clone());
                if let Some(promoted) = standby {
                    self.out.actions.push(Action::Promote {
                        failed: node.into(),
                        promoted,
                    });
                }
                self.extend(node, step);
            }
            // Attach again (power-cycles into the rescue kernel); for a restored system that does
            // not come up healthy, that repairs it again from the start.
            RepairStep::Attaching | RepairStep::WaitingReady | RepairStep::Verifying => {
                self.attach(node, &retry)
            }
            RepairStep::Recovering if reattach => self.attach(node, &retry),
            RepairStep::Recovering => self.send_recover(node, &retry),
            RepairStep::Detaching => {
                self.out.actions.push(Action::Detach { node: node.into() });
                self.extend(node, step);
            }
            RepairStep::Rebooting => {
                self.out.actions.push(Action::Reboot { node: node.into() });
                self.extend(node, step);
            }
            RepairStep::Queued | RepairStep::Quarantined | RepairStep::AwaitingFence => {}
        }
    }
}
