//! Rate limits shared by every drover through Redis (`rate_limit.store: redis`).
//!
//! The same GCRA as the local table (`rate_limit.rs`), kept in Redis: one key per
//! bucket (`{prefix}rl:{scope}:{bucket}`) holding the bucket's theoretical arrival time
//! in µs of Redis' own clock, and one Lua script per decision that reads it, decides and
//! writes it back atomically, so any number of instances spend one budget. The key
//! expires when its bucket is full again, so idle clients cost Redis nothing.
//!
//! When Redis does not answer (down, slow, its breaker open), the decision falls back to
//! this instance's local buckets for the same policy: each instance then admits up to
//! the configured rate on its own (the combined rate can be N times the limit for the
//! duration of the outage), and nobody is refused because Redis is down.

use super::breaker::{Breaker, BreakerPolicy};
use super::rate_limit::{Buckets, Decision, RateLimiter};
use crate::redis_link::{LuaScript, RedisLink};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// KEYS[1] = bucket; ARGV = interval µs, tolerance µs.
/// Returns {1, remaining, 0, 0} or {0, 0, retry_after µs, reset µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local nxt = tat + interval
local ahead = nxt - now
if ahead > tolerance then
  return {0, 0, ahead - tolerance, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor(ahead / 1000) + 1)
return {1, math.floor((tolerance - ahead) / interval), 0, 0}
";

/// The Redis side of `rate_limit.store: redis`: one per process, made on first use
/// (`Shared::shared_limits`), with its own breaker so a failing Redis is skipped fast.
pub struct SharedLimits {
    link: Arc<RedisLink>,
    script: LuaScript,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    allowed: IntCounter,
    denied: IntCounter,
    fallback: IntCounter,
}

impl SharedLimits {
    /// Uses `link`; registers `drover_rate_limit_shared_decisions_total{result}`.
    pub fn new(link: Arc<RedisLink>, registry: &Registry) -> Self {
        let decisions = IntCounterVec::new(
            Opts::new(
                crate::metric_names::RATE_LIMIT_SHARED_TOTAL,
                "Shared rate-limit decisions: allowed or denied by Redis, or made by the local buckets because Redis did not answer (fallback)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(decisions.clone()));
        let breaker = Breaker::new(BreakerPolicy {
            enabled: true,
            consecutive_failures: 3,
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(1),
            half_open_probes: 1,
            ..BreakerPolicy::disabled()
        });
        breaker.set_name("shared-rate-limit");
        let cfg = link.config();
        SharedLimits {
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            script: LuaScript::new(GCRA),
            breaker,
            allowed: decisions.with_label_values(&["allowed"]),
            denied: decisions.with_label_values(&["denied"]),
            fallback: decisions.with_label_values(&["fallback"]),
            link,
        }
    }

    /// The decision for a request charged to `b` under `l`'s policy: every bucket must
    /// allow (a bucket charged before another refused keeps the charge, as locally).
    pub async fn check(&self, l: &RateLimiter, b: Buckets) -> Decision {
        let d = match self.one(l, b.first).await {
            Some(Decision::Allow { remaining }) => match b.second {
                None => Some(Decision::Allow { remaining }),
                Some(k) => self.one(l, k).await.map(|d| match d {
                    Decision::Allow { remaining: r } => Decision::Allow {
                        remaining: remaining.min(r),
                    },
                    deny => deny,
                }),
            },
            other => other,
        };
        match d {
            Some(d @ Decision::Allow { .. }) => {
                self.allowed.inc();
                d
            }
            Some(d) => {
                self.denied.inc();
                d
            }
            None => {
                self.fallback.inc();
                l.check_buckets(b)
            }
        }
    }

    /// One bucket in Redis; `None` when Redis did not answer.
    async fn one(&self, l: &RateLimiter, bucket: u64) -> Option<Decision> {
        let mut permit = self.breaker.try_acquire()?;
        let start = Instant::now();
        let r = self.ask(l, bucket).await;
        let failed = r.is_none();
        self.breaker
            .record_at(&mut permit, failed, start.elapsed(), Instant::now());
        self.breaker.release(&mut permit);
        r
    }

    async fn ask(&self, l: &RateLimiter, bucket: u64) -> Option<Decision> {
        let scope = l.policy.shared.as_deref()?;
        let mut con = self.link.conn().ok()?;
        let key = if self.link.is_cluster() {
            format!("{}rl:{{{scope}:{bucket:016x}}}", self.prefix)
        } else {
            format!("{}rl:{scope}:{bucket:016x}", self.prefix)
        };
        let (interval, tolerance) = l.gcra_us();
        let (i, t) = (interval.to_string(), tolerance.to_string());
        let keys = [key.as_bytes()];
        let args = [i.as_bytes(), t.as_bytes()];
        let call = self
            .script
            .run::<(i64, i64, i64, i64)>(&mut con, &keys, &args);
        let (ok, remaining, retry, reset) = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                log::debug!("rate limit: Redis: {e}");
                return None;
            }
            Err(_) => return None,
        };
        Some(if ok == 1 {
            Decision::Allow {
                remaining: remaining.clamp(0, u32::MAX as i64) as u32,
            }
        } else {
            Decision::Deny {
                retry_after: Duration::from_micros(retry.max(0) as u64),
                reset: Duration::from_micros(reset.max(0) as u64),
            }
        })
    }
}
