//! Counts for `/metrics`, `/api/sessions` and the dashboard, and the periodic sweep.

use super::store::memory::now_ms;
use super::store::{SessionStore, StoreError, StoreStats};
use super::*;
use crate::resilience::breaker::CircuitState;

impl SessionService {
    /// Control-thread tick: sweeps the memory store and publishes gauges.
    pub fn tick(&self, sweep: bool) {
        let up = self.store_breaker.state() == CircuitState::Closed;
        self.metrics.store_up.set(up as i64);
        if let Backing::Memory(m) = &self.backing {
            if sweep {
                m.sweep_step(now_ms());
            }
            let st = m.stats_now();
            self.publish(&st);
        }
    }

    /// Publishes store statistics into the metrics (counters advance by the delta).
    pub fn publish(&self, st: &StoreStats) {
        self.metrics.active.set(st.active as i64);
        if let Ok(mut last) = self.last_stats.lock() {
            let (e, v) = *last;
            self.metrics.expired.inc_by(st.expired.saturating_sub(e));
            self.metrics.evicted.inc_by(st.evicted.saturating_sub(v));
            *last = (st.expired.max(e), st.evicted.max(v));
        }
        for (w, n) in &st.per_worker {
            self.metrics
                .per_backend
                .with_label_values(&[w])
                .set(*n as i64);
        }
        self.cache_per_worker(st);
    }

    pub(super) fn cache_per_worker(&self, st: &StoreStats) {
        if let Ok(mut pw) = self.per_worker_cache.lock() {
            pw.clone_from(&st.per_worker);
        }
    }

    /// Sessions per backend name, as last counted (for the dashboard).
    pub fn per_worker(&self) -> std::collections::BTreeMap<String, u64> {
        self.per_worker_cache
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Whole-store statistics for `/api/sessions` (bounded work on Redis).
    ///
    /// On Redis this scans the whole store. A count that fails or outlasts the store
    /// timeout (a big store, a cluster relearning its slots after a reshard) says nothing
    /// the request path must act on, so it does not feed the store breaker: three failed
    /// counts in a row used to open it and serve every request "unavailable". While the
    /// breaker is open (requests found the store failing) no count is attempted.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        match &self.backing {
            Backing::Memory(m) => Ok(m.stats_now()),
            Backing::Redis(r) => {
                if !self.store_up() {
                    self.store_error(&StoreError::CircuitOpen);
                    return Err(StoreError::CircuitOpen);
                }
                let st = match r.stats().await {
                    Ok(st) => st,
                    Err(e) => {
                        self.store_error(&e);
                        if !matches!(e, StoreError::Timeout) {
                            log::warn!("sessions: counting the store's sessions failed: {e}");
                        }
                        return Err(e);
                    }
                };
                self.cache_per_worker(&st);
                self.metrics.active.set(st.active as i64);
                for (w, n) in &st.per_worker {
                    self.metrics
                        .per_backend
                        .with_label_values(&[w])
                        .set(*n as i64);
                }
                Ok(st)
            }
        }
    }

    /// Whether the store's breaker is closed (calls to the store are attempted).
    pub fn store_up(&self) -> bool {
        self.store_breaker.state() == CircuitState::Closed
    }
}
