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
    /// Per-route policies (`routes:`), matched by host and path prefix.
    pub routes: routes::RouteTable,
    /// The top-level `rate_limit` limiter; `None` when it is off. Routes inherit it
    /// unless they set their own.
    pub rate_limit: Option<Arc<rate_limit::RateLimiter>>,
    /// Pause before each retry (`proxy.retry_backoff`).
    pub backoff: retry::Backoff,
    /// Caps retries as a share of requests (`proxy.retry_budget`); shared across
    /// reloads while its policy is unchanged.
    pub budget: Arc<retry::RetryBudget>,
    /// `proxy.total_timeout`: a request's deadline to its response headers, retries
    /// included; `None` when 0 s (no deadline). A route's own value wins.
    pub total_timeout: Option<Duration>,
    /// Most share (0 to 1, default 0.5) of workers that open breakers may take out
    /// of rotation; the pool reads it (`circuit_breaker.max_ejected_share`).
    pub max_ejected_share: f64,
    /// `chaos.enabled`: whether the admin API may install faults and the proxy inject them.
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
