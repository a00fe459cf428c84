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
    pub id: usize,
    pub version: String,
    /// True while the worker is health-checked but held out of rotation.
    pub standby: bool,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub backend_id: Option<u64>,
    pub phase: &'static str,
    pub restarts: u64,
    pub crash_looping: bool,
    pub last_exit: Option<String>,
    #[serde(skip)]
    pub since: Option<Instant>,
}

/// One second's look at the running state.
pub struct View<'a> {
    pub config: Arc<Config>,
    pub metrics: &'a super::metrics::Metrics,
    pub pool: &'a Pool,
    /// Requests being proxied now.
    pub in_flight: i64,
    /// The running config's version (1 at start, +1 per applied reload).
    pub config_version: u64,
    /// True while `strategy: auto` is in charge.
    pub auto_strategy: bool,
    pub sessions: Option<&'a SessionService>,
    /// The supervisor's worker slots.
    pub slots: &'a [SlotStatus],
}
