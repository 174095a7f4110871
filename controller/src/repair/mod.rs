//! The controller's decisions, as one pure function: [`step`] takes the cluster's state, an
//! event and the time, and returns the new state, the actions to carry out, and the transitions
//! to record. No I/O happens here; the daemon persists the new state *before* it acts, executes
//! the actions, and feeds their outcomes back as events. Timeouts are deadlines compared with the
//! `now` passed in, so they are tested without sleeping.
//!
//! A node's repair, step by step (DESIGN.md "The repair"):
//!
//! ```text
//! healthy ─fails─► Failed ─► Fencing ─► Promoting ─► Attaching ─► WaitingReady ─► Recovering
//!                     (queued by the brakes)                                          │
//! standby ◄─ Verifying ◄─ Rebooting ◄─ Detaching ◄────────────── flag RECOVERED ◄────┘
//! any step out of attempts ─► Quarantined (until `lazarus repair` or `lazarus release`)
//! ```
//!
//! - [`types`]: the state, events, actions and transitions (plain data; the state and the
//!   transitions are persisted);
//! - [`step`](mod@step): the pure function, dispatching each event;
//! - `flow`: one repair's progression, retries and quarantine, as methods of a context struct;
//! - [`brakes`]: concurrency and the pause when too many nodes fail at once (queries only).
//!
//! Uses go one way: `step` → `flow` → `brakes` → `types`.

pub mod brakes;
mod flow;
pub mod step;
pub mod types;

pub use step::step;
pub use types::{
    Action, ActionError, ActionKind, ByteProgress, ClusterState, Event, Health, NodeState, Outcome,
    Repair, RepairPolicy, RepairStep, Stage, Time, Transition,
};
