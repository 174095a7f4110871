//! The agent's live state and the handling of authenticated requests: one [`Agent`] per boot,
//! shared by the protocol server's connections and the recovery thread.

use std::sync::{Arc, Mutex, MutexGuard};

use lazarus_proto::flag::{FlagRecord, FlagState};
use lazarus_proto::{
    BootId, ErrorInfo, ErrorReply, FlagSummary, Hello, Phase, Plan, Request, Response, Status, Step,
};

use crate::image::Progress;
use crate::logring::LogRing;
use crate::platform::Platform;
use crate::recovery::{self, Observer};
use crate::state::{decide, Verdict};
use lazarus_node::flag_store::{FlagStore, FlagUpdate};

/// What the status reports; changed only under the lock.
#[derive(Debug, Clone)]
struct Live {
    phase: Phase,
    step: Option<Step>,
    plan_id: Option<String>,
    error: Option<ErrorInfo>,
    flag: FlagSummary,
    progress: Arc<Progress>,
    reboot_requested: bool,
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
    /// Starts in `Ready`: reads the start-up flag (reporting what it held) and clears a stale
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
        LogRing::set_phase("ready");
        Arc::new(Self {
            boot_id,
            platform,
            live: Mutex::new(Live {
                phase: Phase::Ready,
                step: None,
                plan_id: None,
                error: None,
                flag,
                progress: Arc::new(Progress::default()),
                reboot_requested: false,
            }),
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
            phase: live.phase,
            step: live.step,
            bytes_done: live.progress.done(),
            bytes_total: live.progress.total(),
            flag: live.flag.clone(),
            plan_id: live.plan_id.clone(),
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
        let verdict = {
            let live = self.live();
            decide(live.phase, live.plan_id.as_deref(), &request)
        };
        match (verdict, request) {
            (Verdict::Refuse(kind, message), _) => Response::Error(ErrorReply { kind, message }),
            (Verdict::Reply, Request::Hello) => Response::Hello(Hello {
                boot_id: self.boot_id,
                next_counter,
                agent_version: env!("CARGO_PKG_VERSION").into(),
            }),
            (Verdict::Reply, Request::GetLogs { since }) => Response::Logs(
                self.logs
                    .map(|l| l.since(since))
                    .unwrap_or(lazarus_proto::Logs {
                        lines: Vec::new(),
                        next: since,
                    }),
            ),
            (Verdict::Start, Request::Recover(plan)) => {
                if let Err(e) = recovery::validate(&plan) {
                    log::warn!("refusing plan {}: {e}", plan.plan_id);
                    return Response::Error(ErrorReply {
                        kind: lazarus_proto::Refusal::BadRequest,
                        message: crate::error::AgentError::Plan(e).to_string(),
                    });
                }
                self.start_plan(*plan);
                Response::Status(self.status())
            }
            (Verdict::Abort, _) => {
                log::warn!("abort requested");
                self.live().progress.abort();
                Response::Status(self.status())
            }
            (Verdict::Reboot, _) => {
                {
                    let mut live = self.live();
                    live.phase = Phase::Rebooting;
                    live.reboot_requested = true;
                    LogRing::set_phase("rebooting");
                }
                log::info!("reboot requested");
                Response::Status(self.status())
            }
            _ => Response::Status(self.status()),
        }
    }

    fn start_plan(self: &Arc<Self>, plan: Plan) {
        let progress = Arc::new(Progress::default());
        {
            let mut live = self.live();
            live.phase = Phase::Recovering;
            live.step = None;
            live.plan_id = Some(plan.plan_id.clone());
            live.error = None;
            live.progress = progress.clone();
        }
        log::info!("starting plan {}", plan.plan_id);
        let agent = self.clone();
        std::thread::spawn(move || {
            let platform = agent.platform.clone();
            let outcome = recovery::recover(platform.as_ref(), &plan, &progress, agent.as_ref());
            let mut live = agent.live();
            match outcome {
                Ok(_) => {
                    live.phase = Phase::Recovered;
                    live.error = None;
                    LogRing::set_phase("recovered");
                }
                Err(e) => {
                    live.phase = Phase::Failed;
                    live.error = Some(e.info());
                    LogRing::set_phase("failed");
                }
            }
        });
    }
}

/// The snake_case name of a step, as on the wire in JSON.
fn step_name(step: Step) -> &'static str {
    match step {
        Step::ConfigureNetwork => "configure_network",
        Step::MountSource => "mount_source",
        Step::SelectDisk => "select_disk",
        Step::CopyImage => "copy_image",
        Step::RereadPartitions => "reread_partitions",
        Step::MountTarget => "mount_target",
        Step::RestoreFiles => "restore_files",
        Step::Sync => "sync",
    }
}

impl Observer for Agent {
    fn step(&self, step: Step) {
        LogRing::set_phase(&format!("recovering/{}", step_name(step)));
        log::info!("step {step:?}");
        self.live().step = Some(step);
    }

    fn flag(&self, record: &FlagRecord) {
        log::info!("flag: {} (seq {})", record.state.name(), record.seq);
        self.live().flag = record.summary();
    }
}
