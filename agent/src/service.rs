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
use lazarus_node::flag_store::{FlagStore, FlagUpdate};

/// What the status reports; changed only under the lock.
#[derive(Debug, Clone)]
struct Live {
    state: State,
    step: Option<Step>,
    error: Option<ErrorInfo>,
    flag: FlagSummary,
    progress: Arc<Progress>,
    reboot_requested: bool,
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
        if let Some(path) = platform.boot_flag_device() {
            match FlagStore::open(&path).and_then(|s| Ok((s.read()?, s))) {
                Ok((record, store)) => {
                    log::info!(
                        "flag at {}: {} (plan {:?}, seq {})",
                        path.display(),
                        record.state.name(),
                        record.plan_id,
                        record.seq
                    );
                    boot_flag = Some(record.summary());
                    if record.state != FlagState::None {
                        match store.write(&FlagUpdate::state(FlagState::None)) {
                            Ok(cleared) => flag = cleared.summary(),
                            Err(e) => log::error!("clearing the stale flag: {e}"),
                        }
                    } else {
                        flag = record.summary();
                    }
                }
                Err(e) => log::warn!("no readable flag at {}: {e}", path.display()),
            }
        }
        let mut live = Live {
            state: State::booting(),
            step: None,
            error: None,
            flag,
            progress: Arc::new(Progress::default()),
            reboot_requested: false,
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
        }
    }

    /// Whether a `Reboot` was accepted (the server then stops and the platform reboots).
    pub fn reboot_requested(&self) -> bool {
        self.live().reboot_requested
    }

    /// Handles one authenticated request. `next_counter` is for `Hello`.
    pub fn handle(self: &Arc<Self>, request: Request, next_counter: u64) -> Response {
        let event = Event::of(&request, |plan| {
            recovery::validate(plan).map_err(|e| AgentError::from(e).to_string())
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
                next_counter,
                agent_version: env!("CARGO_PKG_VERSION").into(),
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
}
