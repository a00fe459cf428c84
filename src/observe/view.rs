//! What the observer reads of the rest of drover once a second. The control thread
//! builds a [`View`] from the running state and hands it in, so `observe` depends on
//! the domain types it reads (pool, config, sessions) and never on the process-wide
//! `Shared` bundle or the supervisor.

use crate::balancing::Pool;
use crate::config::Config;
use crate::sessions::SessionService;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// A slot's state as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Slot number, the `N` of `worker-N` (`WORKER_ID` in the worker's environment).
    pub id: usize,
    /// The slot's image version label (`WorkerImage::version`).
    pub version: String,
    /// True while the worker is health-checked but held out of rotation.
    pub standby: bool,
    /// The running process; `None` while none is (starting, backoff, stopped).
    pub pid: Option<u32>,
    /// Port the current (or last) process was given; `None` before the first spawn.
    pub port: Option<u16>,
    /// Id of the pool backend for the current (or last) process; `None` before the first.
    pub backend_id: Option<u64>,
    /// `starting`, `running`, `backoff`, `draining`, `stopping` or `stopped`.
    pub phase: &'static str,
    /// Times the worker exited and was restarted.
    pub restarts: u64,
    /// True after too many quick exits in a row (see the supervisor's backoff).
    pub crash_looping: bool,
    /// How the last process ended (exit status, signal, or spawn error); `None` if none.
    pub last_exit: Option<String>,
    /// When the current (or last) process started, for `uptime_seconds`; not serialized.
    #[serde(skip)]
    pub since: Option<Instant>,
}

/// One second's look at the running state.
pub struct View<'a> {
    /// The running config at the time of the look.
    pub config: Arc<Config>,
    /// drover's metrics: status counters and latency recorders are read from here.
    pub metrics: &'a super::metrics::Metrics,
    /// The backends (members, in-flight counts, queue) being balanced over.
    pub pool: &'a Pool,
    /// Requests being proxied now.
    pub in_flight: i64,
    /// The running config's version (1 at start, +1 per applied reload).
    pub config_version: u64,
    /// True while `strategy: auto` is in charge.
    pub auto_strategy: bool,
    /// Sticky sessions, when enabled at start (per-worker counts for the dashboard).
    pub sessions: Option<&'a SessionService>,
    /// The supervisor's worker slots.
    pub slots: &'a [SlotStatus],
}
