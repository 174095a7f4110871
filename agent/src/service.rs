//! The agent's live state and the handling of authenticated requests: one [`Agent`] per boot,
//! shared by the protocol server's connections and the recovery thread.

use std::sync::{Arc, Mutex, MutexGuard};

use lazarus_proto::flag::{FlagRecord, FlagState};
use lazarus_proto::{
    BootId, ErrorInfo, ErrorReply, FlagSummary, Hello, Plan, Request, Response, Status, Step,
};

use crate::error::AgentError;
use crate::image::Progress;
use crate::logring::LogRing;
use crate::platform::Platform;
use crate::recovery::{self, Observer};
use crate::state::{self, Action, Event, Refused, State};
use lazarus_node::flag_store::FlagUpdate;

/// What the status reports; changed only under the lock.
#[derive(Debug, Clone)]
struct Live {
    state: State,
    step: Option<Step>,
    error: Option<ErrorInfo>,
    flag: FlagSummary,
    progress: Arc<Progress>,
    reboot_requested: bool,
    /// Backup entries the running or last plan did not restore.
    unrestored: Vec<String>,
}

impl Live {
    /// Applies `event` as [`state::next`] decides, with what the decision implies for the rest
    /// of the live status; the caller holds the lock, so the decision and its effect are one.
    fn apply(&mut self, event: &Event) -> Result<Action, Refused> {
        let (next, action) = state::next(&self.state, event)?;
        match action {
            Action::Start => {
                self.step = None;
                self.error = None;
                self.unrestored = Vec::new();
                self.progress = Arc::new(Progress::default());
            }
            Action::Reboot => self.reboot_requested = true,
            Action::None | Action::Abort => {}
        }
        self.state = next;
        LogRing::set_phase(&state::label(self.state.phase, self.step));
        Ok(action)
    }
}

/// The agent of one boot.
pub struct Agent {
    pub boot_id: BootId,
    platform: Arc<dyn Platform>,
    live: Mutex<Live>,
    logs: Option<&'static LogRing>,
    /// What the flag held at start, before it was cleared (for `Ready`).
    pub boot_flag: Option<FlagSummary>,
}

impl Agent {
    /// Boots to `Ready`: reads the start-up flag (reporting what it held) and clears a stale
    /// one, so an old RECOVERED never speaks for this boot.
    pub fn start(
        boot_id: BootId,
        platform: Arc<dyn Platform>,
        logs: Option<&'static LogRing>,
    ) -> Arc<Self> {
        let mut boot_flag = None;
        let mut flag = FlagRecord::default().summary();
        if let Some(site) = platform.boot_flag_device() {
            match site.open().and_then(|s| Ok((s.read()?, s))) {
                Ok((record, store)) => {
                    log::info!(
                        "flag at {site}: {} (plan {:?}, seq {})",
                        record.state.name(),
                        record.plan_id,
                        record.seq
                    );
                    boot_flag = Some(record.summary());
                    if record.state != FlagState::None {
                        // Cleared, but what the attempt reached is kept (image, size,
                        // checkpoint): a resume reads back from it (docs/copy-engine.md).
                        let cleared = FlagUpdate {
                            state: FlagState::None,
                            bytes_done: record.bytes_done,
                            bytes_total: record.bytes_total,
                            image_sha256: record.image_sha256,
                            ..FlagUpdate::default()
                        };
                        match store.write_guarded(&cleared) {
                            Ok(cleared) => flag = cleared.summary(),
                            Err(e) => log::error!("clearing the stale flag: {e}"),
                        }
                    } else {
                        flag = record.summary();
                    }
                }
                Err(e) => log::warn!("no readable flag at {site}: {e}"),
            }
        }
        let mut live = Live {
            state: State::booting(),
            step: None,
            error: None,
            flag,
            progress: Arc::new(Progress::default()),
            reboot_requested: false,
            unrestored: Vec::new(),
        };
        if let Err(refused) = live.apply(&Event::Booted) {
            log::error!("booting: {}", refused.message);
        }
        Arc::new(Self {
            boot_id,
            platform,
            live: Mutex::new(live),
            logs,
            boot_flag,
        })
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        match self.live.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let live = self.live();
        Status {
            boot_id: self.boot_id,
            phase: live.state.phase,
            step: live.step,
            bytes_done: live.progress.done(),
            bytes_total: live.progress.total(),
            flag: live.flag.clone(),
            plan_id: live.state.plan_id.clone(),
            error: live.error.clone(),
            found_at_boot: self.boot_flag.clone(),
            unrestored: live.unrestored.clone(),
            copy: live.progress.counters(),
        }
    }

    /// Whether a `Reboot` was accepted (the server then stops and the platform reboots).
    pub fn reboot_requested(&self) -> bool {
        self.live().reboot_requested
    }

    /// Handles one authenticated request. `session` is the one the server opened for a `Hello`
    /// on its connection (commands then count from 1).
    pub fn handle(self: &Arc<Self>, request: Request, session: u64) -> Response {
        let event = Event::of(&request, |plan| {
            recovery::validate(plan).map_err(AgentError::from)
        });
        let action = match self.live().apply(&event) {
            Ok(action) => action,
            Err(Refused { kind, message }) => {
                if let (Request::Recover(plan), lazarus_proto::Refusal::BadRequest) =
                    (&request, kind)
                {
                    log::warn!("refusing plan {}: {message}", plan.plan_id);
                }
                return Response::Error(ErrorReply { kind, message });
            }
        };
        match (action, request) {
            (Action::None, Request::Hello) => Response::Hello(Hello {
                boot_id: self.boot_id,
                next_counter: 1,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                session,
            }),
            (Action::None, Request::GetLogs { since }) => Response::Logs(
                self.logs
                    .map(|l| l.since(since))
                    .unwrap_or(lazarus_proto::Logs {
                        lines: Vec::new(),
                        next: since,
                    }),
            ),
            (Action::Start, Request::Recover(plan)) => {
                self.run_plan(*plan);
                Response::Status(self.status())
            }
            (Action::Abort, _) => {
                log::warn!("abort requested");
                self.live().progress.abort();
                Response::Status(self.status())
            }
            (Action::Reboot, _) => {
                log::info!("reboot requested");
                Response::Status(self.status())
            }
            _ => Response::Status(self.status()),
        }
    }

    /// Runs `plan` on a thread of its own; the state already says `Recovering`.
    fn run_plan(self: &Arc<Self>, plan: Plan) {
        log::info!("starting plan {}", plan.plan_id);
        let progress = self.live().progress.clone();
        let agent = self.clone();
        std::thread::spawn(move || {
            let platform = agent.platform.clone();
            let outcome = recovery::recover(platform.as_ref(), &plan, &progress, agent.as_ref());
            let mut live = agent.live();
            live.error = outcome.as_ref().err().map(AgentError::info);
            let finished = Event::Finished {
                recovered: outcome.is_ok(),
            };
            if let Err(refused) = live.apply(&finished) {
                log::error!("plan {} ended: {}", plan.plan_id, refused.message);
            }
        });
    }
}

impl Observer for Agent {
    fn step(&self, step: Step) {
        {
            let mut live = self.live();
            live.step = Some(step);
            LogRing::set_phase(&state::label(live.state.phase, live.step));
        }
        log::info!("step {step:?}");
    }

    fn flag(&self, record: &FlagRecord) {
        log::info!("flag: {} (seq {})", record.state.name(), record.seq);
        self.live().flag = record.summary();
    }

    fn unrestored(&self, entries: &[String]) {
        self.live().unrestored = entries.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::fake::{Call, Failure, Fake, What};
    use lazarus_proto::{Phase, Refusal};

    const BACKUP_TIME: u64 = 1_700_000_000;

    fn fake() -> Fake {
        Fake::new(
            lazarus_testkit::noise((1 << 20) + 77, 9),
            2 << 20,
            "node-3",
            BACKUP_TIME,
        )
    }

    /// Polls until the plan is no longer running.
    fn finished(agent: &Agent) -> Status {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let status = agent.status();
            if status.phase != Phase::Recovering {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "still recovering");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn recover(agent: &Arc<Agent>, plan: &Plan) -> Response {
        agent.handle(Request::Recover(Box::new(plan.clone())), 0)
    }

    #[test]
    fn a_plan_sent_twice_runs_once_and_reports_recovered() {
        let fake = Arc::new(fake());
        let agent = Agent::start(BootId([7; 16]), fake.clone(), None);
        assert_eq!(agent.status().phase, Phase::Ready);
        let plan = fake.plan(BACKUP_TIME + 1);
        for _ in 0..2 {
            assert!(matches!(recover(&agent, &plan), Response::Status(_)));
        }
        let status = finished(&agent);
        assert_eq!(
            (status.phase, status.error, status.flag.state),
            (Phase::Recovered, None, FlagState::Recovered)
        );
        let runs = fake
            .trace()
            .iter()
            .filter(|w| **w == What::Call(Call::ConfigureNetwork))
            .count();
        assert_eq!(runs, 1, "the same plan id ran twice");
        // Reboot ends the boot; nothing starts after it.
        assert!(matches!(
            agent.handle(Request::Reboot, 0),
            Response::Status(Status {
                phase: Phase::Rebooting,
                ..
            })
        ));
        assert!(agent.reboot_requested());
        assert!(matches!(
            recover(&agent, &plan),
            Response::Error(ErrorReply {
                kind: Refusal::WrongPhase,
                ..
            })
        ));
    }

    #[test]
    fn a_failed_plan_reports_its_code_and_a_retry_runs_again() {
        let mut fake = fake();
        fake.fail = Some((Call::ConfigureNetwork, 1, Failure::Error));
        let fake = Arc::new(fake);
        let agent = Agent::start(BootId([8; 16]), fake.clone(), None);
        let mut plan = fake.plan(BACKUP_TIME + 1);
        plan.flag = lazarus_proto::FlagLocation::Path(fake.flag.display().to_string());
        recover(&agent, &plan);
        let status = finished(&agent);
        assert_eq!(status.phase, Phase::Failed);
        assert_eq!(status.error.map(|e| e.code), Some(203));
        assert_eq!(
            (status.flag.state, status.flag.error_code),
            (FlagState::Failed, 203)
        );
        recover(&agent, &plan);
        let status = finished(&agent);
        assert_eq!((status.phase, status.error), (Phase::Recovered, None));
    }

    #[test]
    fn many_recovers_sent_at_once_start_exactly_one_plan() {
        let fake = Arc::new(fake());
        let agent = Agent::start(BootId([10; 16]), fake.clone(), None);
        // The first plan to start is held at its first step, so every other request arrives
        // while it runs; half the senders repeat one plan id, half send plans of their own.
        fake.hold(true);
        let threads = 16;
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let senders: Vec<_> = (0..threads)
            .map(|i| {
                let (agent, barrier) = (agent.clone(), barrier.clone());
                let mut plan = fake.plan(BACKUP_TIME + 1);
                plan.plan_id = if i % 2 == 0 {
                    "same".into()
                } else {
                    format!("own-{i}")
                };
                std::thread::spawn(move || {
                    barrier.wait();
                    recover(&agent, &plan)
                })
            })
            .collect();
        let replies: Vec<Response> = senders.into_iter().map(|t| t.join().unwrap()).collect();
        let running = agent.status().plan_id.expect("a plan runs");
        fake.hold(false);
        let status = finished(&agent);
        assert_eq!(status.phase, Phase::Recovered);
        assert_eq!(status.plan_id.as_deref(), Some(running.as_str()));
        let runs = fake
            .trace()
            .iter()
            .filter(|w| **w == What::Call(Call::ConfigureNetwork))
            .count();
        assert_eq!(runs, 1, "{threads} concurrent Recovers ran {runs} plans");
        // Every other sender was told a plan runs (Busy), or got the running plan's status.
        for reply in replies {
            match reply {
                Response::Status(s) => assert_eq!(s.plan_id.as_deref(), Some(running.as_str())),
                Response::Error(ErrorReply { kind, .. }) => assert_eq!(kind, Refusal::Busy),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_status_lists_backup_entries_that_were_not_restored() {
        let fake = Arc::new(fake());
        fake.add_backup_with_specials(BACKUP_TIME + 1);
        let agent = Agent::start(BootId([11; 16]), fake.clone(), None);
        recover(&agent, &fake.plan(BACKUP_TIME + 2));
        let status = finished(&agent);
        assert_eq!(status.phase, Phase::Recovered);
        assert_eq!(status.unrestored, ["etc/pipe (fifo)"]);
        // A new plan starts with an empty list.
        let mut plan = fake.plan(BACKUP_TIME + 1);
        plan.plan_id = "fake-2".into();
        recover(&agent, &plan);
        let status = finished(&agent);
        assert_eq!(status.phase, Phase::Recovered);
        assert!(status.unrestored.is_empty(), "{:?}", status.unrestored);
    }

    #[test]
    fn an_invalid_plan_is_refused_and_changes_nothing() {
        let fake = Arc::new(fake());
        let agent = Agent::start(BootId([9; 16]), fake.clone(), None);
        let mut plan = fake.plan(BACKUP_TIME + 1);
        plan.image.size = 0;
        match recover(&agent, &plan) {
            Response::Error(ErrorReply { kind, message }) => {
                assert_eq!(kind, Refusal::BadRequest);
                assert_eq!(message, "invalid plan: image size is 0");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(agent.status().phase, Phase::Ready);
        assert!(fake.trace().is_empty());
    }
}
