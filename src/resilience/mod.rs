//! Resilience: keeping traffic off what is failing and keeping drover serving anyway.
//!
//! - `breaker`: circuit breaker state machine (per worker and per route).
//! - `classify`: what counts as a failure.
//! - `window`: lock-free rolling window of counts (breaker ratios, retry budget).
//! - `rate_limit`: per-client GCRA buckets; `shared_limit`: the same through Redis.

pub mod adaptive;
pub mod breaker;
pub mod chaos;
pub mod classify;
pub mod rate_limit;
pub mod retry;
pub mod routes;
pub mod shared_limit;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

/// The bundle the data plane reads from the running config: the route table, the
/// top-level rate limiter, retry pacing and budget. `config` builds it from the file on
/// every load; [`Resilience::adopt_live_state`] carries live state (breakers, limiters,
/// budget, in-flight counts) over from the running one where the settings did not change.
#[derive(Debug)]
pub struct Resilience {
    pub routes: routes::RouteTable,
    pub rate_limit: Option<Arc<rate_limit::RateLimiter>>,
    pub backoff: retry::Backoff,
    pub budget: Arc<retry::RetryBudget>,
    pub total_timeout: Option<Duration>,
    pub max_ejected_share: f64,
    pub chaos_enabled: bool,
}

impl Resilience {
    /// Keeps `prev`'s live limiter, budget and route state where the policy is unchanged,
    /// so a reload neither resets counts nor forgets open breakers.
    pub fn adopt_live_state(&mut self, prev: &Resilience) {
        self.routes.adopt(&prev.routes);
        if let (Some(a), Some(b)) = (&self.rate_limit, &prev.rate_limit) {
            if a.policy == b.policy {
                self.rate_limit = Some(b.clone());
            }
        }
        if self.budget.policy == prev.budget.policy {
            self.budget = prev.budget.clone();
        }
    }
}
