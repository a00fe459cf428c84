//! File format of the resilience settings: routes, rate limits, retry backoff and
//! budget, chaos. Validated into runtime types by `crate::config::resilience`.

use super::duration::Dur;
use super::file::CircuitBreakerFile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One route: requests matched by host and/or path prefix (longest prefix wins, a route
/// naming a host beats one that does not) get this route's limits and fallback.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteFile {
    /// Unique name, used in metrics, logs, `/api/breakers` (`route:NAME`) and chaos.
    pub name: String,
    /// Path prefix, matched on segment boundaries (`/api` matches `/api` and `/api/x`,
    /// not `/apix`). Default `/`.
    pub path_prefix: Option<String>,
    /// Host (without port, case-insensitive); null matches any host.
    pub host: Option<String>,
    /// A breaker over this route's requests; null = none. Same keys as `circuit_breaker`.
    pub circuit_breaker: Option<CircuitBreakerFile>,
    /// What a tripped (or saturated) route answers with; null = 503.
    pub fallback: Option<FallbackFile>,
    /// Overrides `proxy.connect_timeout` / `proxy.read_timeout` / `proxy.total_timeout`.
    pub connect_timeout: Option<Dur>,
    /// Overrides `proxy.read_timeout` (longest wait for one upstream read); null = inherit.
    pub read_timeout: Option<Dur>,
    /// Overrides `proxy.total_timeout` (bound on time to response headers, retries included);
    /// null = inherit.
    pub total_timeout: Option<Dur>,
    /// Bulkhead: most requests of this route in flight at once; 0 = unlimited. Excess
    /// gets 503 with Retry-After.
    pub max_concurrent: u32,
    /// Overrides the top-level `rate_limit` for this route.
    pub rate_limit: Option<RateLimitFile>,
}

/// A route's `fallback:`: a static answer, or other upstreams to proxy to instead.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackFile {
    /// Static answer: status, headers and body.
    pub status: u16,
    /// Headers of the static answer; Content-Length is not allowed (drover sets it).
    pub headers: BTreeMap<String, String>,
    /// Body of the static answer (default empty).
    pub body: String,
    /// Or proxy to these `host:port` addresses instead (round robin); when set, the
    /// static fields are not used.
    pub upstreams: Vec<String>,
}

impl Default for FallbackFile {
    fn default() -> Self {
        FallbackFile {
            status: 503,
            headers: BTreeMap::new(),
            body: String::new(),
            upstreams: Vec::new(),
        }
    }
}

/// `rate_limit:` (top level or per route): a token bucket per client key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitFile {
    /// Sustained rate per client; 0 = no limit.
    pub requests_per_second: f64,
    /// Requests a client may send at once above the sustained rate.
    pub burst: u32,
    /// `client_ip`, `header:NAME` (falls back to the client IP when absent) or `all`
    /// (one shared budget).
    pub key: String,
    /// Clients tracked at once (table slots, rounded up to a power of two). Memory is
    /// fixed at 8 bytes per slot; beyond it, clients share slots (and so budgets).
    pub max_clients: u32,
    /// `local` (this instance's own buckets) or `redis`: one budget shared by every
    /// drover using the Redis of `sessions.redis` (one atomic script per decision), with
    /// this instance's local buckets while Redis is unreachable.
    pub store: String,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        RateLimitFile {
            requests_per_second: 0.0,
            burst: 20,
            key: "client_ip".into(),
            max_clients: 65536,
            store: "local".into(),
        }
    }
}

/// `proxy.retry_backoff:`: the wait before each retry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBackoffFile {
    /// Backoff before retry n is a random time in [0, min(max, base × 2^(n-1))]
    /// ("full jitter"). 0s retries at once.
    pub base: Dur,
    /// Cap on one backoff (default 200 ms; at least `base`).
    pub max: Dur,
}

impl Default for RetryBackoffFile {
    fn default() -> Self {
        RetryBackoffFile {
            base: Dur::ms(10),
            max: Dur::ms(200),
        }
    }
}

/// `proxy.retry_budget:`: caps retries so they cannot multiply load during an outage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetFile {
    /// Retries may be at most this share of requests over the window...
    pub ratio: f64,
    /// ...plus this many retries per second, so a quiet proxy can still retry.
    pub min_per_second: u32,
    /// Rolling window the shares are counted over (default 10 s, at least 100 ms).
    pub window: Dur,
}

impl Default for RetryBudgetFile {
    fn default() -> Self {
        RetryBudgetFile {
            ratio: 0.2,
            min_per_second: 10,
            window: Dur::secs(10),
        }
    }
}

/// `chaos:`: the fault-injection switch; off by default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosFile {
    /// Enables the `/api/chaos/*` fault-injection endpoints (token required).
    pub enabled: bool,
}
