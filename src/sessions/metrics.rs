//! Session metrics, registered into drover's registry. Hot-path counters are resolved
//! handles; store-wide figures (active, per backend, expired, evicted) are published
//! from the control thread's tick.

use crate::metric_names::*;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Handles to the session series in drover's registry; built once per service.
pub struct SessionMetrics {
    /// Sessions in the store, set from store statistics (the memory store's tick, Redis stats
    /// calls).
    pub active: IntGauge,
    /// Records written for the first time (a client gets one when its cookie comes back or the
    /// worker sets data).
    pub created: IntCounter,
    /// Records removed on expiry; advanced by the store counter's delta at each publish.
    pub expired: IntCounter,
    /// Records evicted because the memory store was at its cap; advanced by delta at each publish.
    pub evicted: IntCounter,
    /// Sessions re-pinned because their backend left rotation.
    pub migrated: IntCounter,
    /// Indexed like `cookie::Rejection`: malformed, bad_signature, expired, and
    /// `unknown`: a genuine cookie naming an id rotated away by a regenerate.
    pub rejected: [IntCounter; 4],
    /// Sessions pinned to each backend name (label `backend`), as last counted.
    pub per_backend: IntGaugeVec,
    /// Failed shared-store calls by `kind`: `timeout`, `circuit_open`, `backend` or `locked`.
    pub store_errors: IntCounterVec,
    /// Duration of each shared-store call, in seconds (buckets 0.1 ms to 1 s).
    pub store_duration: Histogram,
    /// 1 while the store's breaker is closed, else 0; set on every tick.
    pub store_up: IntGauge,
    /// Writers that ran without the session's lock because the previous writer held it past
    /// `lock_timeout`.
    pub lock_timeouts: IntCounter,
    /// Updates not saved: the compare-and-set found another write first, or the store was
    /// unavailable.
    pub write_conflicts: IntCounter,
    /// Worker updates refused: too large, or not a valid header value.
    pub data_refused: IntCounter,
    /// Writes that `WAIT` did not see reach `durability.replicas` replicas in time.
    pub writes_unreplicated: IntCounter,
    /// Writes whose store call failed (not sent, timed out, errored): not saved, or
    /// saved without drover knowing.
    pub writes_failed: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // A second registration (a second service in one process, as in unit tests) keeps
    // the first; the handles still count.
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).expect("valid metric"))
}

impl SessionMetrics {
    /// Creates and registers every series in `r`. A series already registered keeps the first
    /// registration; the returned handles count anyway.
    pub fn new(r: &Registry) -> Self {
        let rejected = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    SESSIONS_REJECTED_TOTAL,
                    "Session cookies ignored, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        SessionMetrics {
            active: reg(
                r,
                IntGauge::new(SESSIONS_ACTIVE, "Sessions in the store").expect("valid metric"),
            ),
            created: counter(r, SESSIONS_CREATED_TOTAL, "Sessions created"),
            expired: counter(r, SESSIONS_EXPIRED_TOTAL, "Sessions removed on expiry"),
            evicted: counter(
                r,
                SESSIONS_EVICTED_TOTAL,
                "Sessions evicted because the memory store was at its cap",
            ),
            migrated: counter(
                r,
                SESSIONS_MIGRATED_TOTAL,
                "Sessions re-pinned because their backend left rotation",
            ),
            rejected: ["malformed", "bad_signature", "expired", "unknown"]
                .map(|k| rejected.with_label_values(&[k])),
            per_backend: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(SESSIONS_PER_BACKEND, "Sessions pinned to each backend"),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            store_errors: reg(
                r,
                IntCounterVec::new(
                    Opts::new(SESSION_STORE_ERRORS_TOTAL, "Failed session store calls"),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            store_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        SESSION_STORE_DURATION_SECONDS,
                        "Duration of shared session store calls",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            store_up: reg(
                r,
                IntGauge::new(
                    SESSION_STORE_UP,
                    "1 while the session store answers (its breaker is closed)",
                )
                .expect("valid metric"),
            ),
            lock_timeouts: counter(
                r,
                SESSION_LOCK_TIMEOUTS_TOTAL,
                "Serialised requests that ran without the session's lock because the previous writer held it past lock_timeout",
            ),
            write_conflicts: counter(
                r,
                SESSION_WRITE_CONFLICTS_TOTAL,
                "Session updates not saved: another request wrote the session after this one read it (a lost update detected), or the store was unavailable",
            ),
            data_refused: counter(
                r,
                SESSION_DATA_REFUSED_TOTAL,
                "Session updates from workers refused (too large or not a header value)",
            ),
            writes_failed: counter(
                r,
                SESSION_WRITES_FAILED_TOTAL,
                "Session writes whose store call failed (breaker open, timeout, error): not saved, or saved without drover knowing",
            ),
            writes_unreplicated: counter(
                r,
                SESSION_WRITES_UNREPLICATED_TOTAL,
                "Session writes applied on the Redis master but not acknowledged by sessions.redis.durability.replicas replicas within its timeout",
            ),
        }
    }
}
