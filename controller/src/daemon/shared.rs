//! What the event loop publishes for the API to read: the committed state, the alerts and the
//! metrics, behind one mutex. The event loop writes the state and metrics, the executor adds
//! alerts.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::Alert;
use crate::repair::ClusterState;

use super::metrics::Metrics;

/// What the API shows, refreshed after every event.
#[derive(Debug, Default)]
pub struct Shared {
    pub state: ClusterState,
    pub alerts: Vec<Alert>,
    pub metrics: Metrics,
}

/// Locks `m`; a thread that panicked holding it left data that is still the latest we have.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
