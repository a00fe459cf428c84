//! Prometheus series of the resilience features, registered into drover's registry.
//!
//! Event counters (rejections, fallbacks, denied retries, injected faults) are counted
//! where they happen; they are off the success path, so a label lookup there is fine.
//! Breaker states and transition counts live on the breakers (atomics) and are copied
//! into series at scrape time by [`ResilienceMetrics::refresh`].

use crate::balancing::Pool;
use crate::metric_names::*;
use crate::resilience::breaker::{Breaker, TripReason};
use crate::resilience::routes::RouteLimit;
use crate::resilience::Resilience;
use prometheus::{Counter, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// The resilience series; part of `Metrics`, registered once into its registry.
pub struct ResilienceMetrics {
    breaker_trips: IntCounterVec,
    route_breaker_state: IntGaugeVec,
    route_breaker_transitions: IntCounterVec,
    route_in_flight: IntGaugeVec,
    /// `{route, reason}`: bulkhead, breaker_open.
    pub route_rejected: IntCounterVec,
    /// `{route, kind}`: static, upstream.
    pub route_fallback: IntCounterVec,
    /// `{scope}`: `global` or the route name.
    pub rate_limited: IntCounterVec,
    rate_limit_table_bytes: IntGaugeVec,
    /// `{reason}`: budget, deadline.
    pub retries_denied: IntCounterVec,
    /// Seconds spent sleeping in backoff before retries, summed over all requests.
    pub retry_backoff: Counter,
    /// `{kind, target}`.
    pub chaos_injected: IntCounterVec,
    /// Last seen transition counts per (breaker id, series), to add only the delta.
    seen: Mutex<HashMap<(u64, usize), u64>>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric registered twice");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl ResilienceMetrics {
    /// Registers every series into `r` (`retries_denied` reasons pre-created at 0).
    /// Panics if they are already registered there.
    pub fn new(r: &Registry) -> Self {
        let m = ResilienceMetrics {
            breaker_trips: counter_vec(
                r,
                BREAKER_TRIPS_TOTAL,
                "Circuit breaker openings by breaker (worker-N or route:NAME) and reason",
                &["breaker", "reason"],
            ),
            route_breaker_state: gauge_vec(
                r,
                ROUTE_BREAKER_STATE,
                "Route circuit breaker state: 0 closed, 1 open, 2 half-open",
                &["route"],
            ),
            route_breaker_transitions: counter_vec(
                r,
                ROUTE_BREAKER_TRANSITIONS_TOTAL,
                "Route circuit breaker transitions",
                &["route", "to"],
            ),
            route_in_flight: gauge_vec(
                r,
                ROUTE_IN_FLIGHT,
                "Requests in flight per route (bulkhead occupancy)",
                &["route"],
            ),
            route_rejected: counter_vec(
                r,
                ROUTE_REJECTED_TOTAL,
                "Requests a route turned away, by reason (bulkhead, breaker_open)",
                &["route", "reason"],
            ),
            route_fallback: counter_vec(
                r,
                ROUTE_FALLBACK_TOTAL,
                "Requests answered by a route's fallback, by kind (static, upstream)",
                &["route", "kind"],
            ),
            rate_limited: counter_vec(
                r,
                RATE_LIMITED_TOTAL,
                "Requests answered 429 by a rate limit (scope: global or route name)",
                &["scope"],
            ),
            rate_limit_table_bytes: gauge_vec(
                r,
                RATE_LIMIT_TABLE_BYTES,
                "Memory of each rate limiter's client table (fixed at config load)",
                &["scope"],
            ),
            retries_denied: counter_vec(
                r,
                RETRIES_DENIED_TOTAL,
                "Retries not made, by reason (budget, deadline)",
                &["reason"],
            ),
            retry_backoff: reg(
                r,
                Counter::new(
                    RETRY_BACKOFF_SECONDS_TOTAL,
                    "Time spent in backoff before retries",
                )
                .expect("valid metric"),
            ),
            chaos_injected: counter_vec(
                r,
                CHAOS_INJECTED_TOTAL,
                "Faults injected by chaos hooks, by kind and target",
                &["kind", "target"],
            ),
            seen: Mutex::default(),
        };
        for reason in ["budget", "deadline"] {
            m.retries_denied.with_label_values(&[reason]);
        }
        m
    }

    /// Adds `total - last seen` for series `slot` of breaker `b`.
    fn delta(
        &self,
        seen: &mut HashMap<(u64, usize), u64>,
        b: &Breaker,
        slot: usize,
        total: u64,
    ) -> u64 {
        let last = seen.entry((b.id, slot)).or_insert(0);
        let d = total.saturating_sub(*last);
        *last = total.max(*last);
        d
    }

    fn sync_trips(&self, seen: &mut HashMap<(u64, usize), u64>, name: &str, b: &Breaker) {
        for (i, reason) in TripReason::LABELS.iter().enumerate() {
            let total = b.counts.trips[i].load(Ordering::Relaxed);
            let d = self.delta(seen, b, 10 + i, total);
            let c = self.breaker_trips.with_label_values(&[name, reason]);
            if d > 0 {
                c.inc_by(d);
            }
        }
    }

    /// Copies breaker states and counts into their series; called before each scrape.
    pub fn refresh(&self, res: &Resilience, pool: &Pool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for b in pool.members().iter() {
            self.sync_trips(&mut seen, &b.name, &b.breaker);
        }
        self.route_breaker_state.reset();
        self.route_in_flight.reset();
        self.rate_limit_table_bytes.reset();
        if let Some(l) = &res.rate_limit {
            self.rate_limit_table_bytes
                .with_label_values(&["global"])
                .set(l.table_bytes() as i64);
        }
        for r in res.routes.iter() {
            let name = &*r.name;
            self.route_in_flight
                .with_label_values(&[name])
                .set(r.state.inflight() as i64);
            if let RouteLimit::On(l) = &r.rate_limit {
                self.rate_limit_table_bytes
                    .with_label_values(&[name])
                    .set(l.table_bytes() as i64);
            }
            let Some(b) = &r.breaker else { continue };
            self.route_breaker_state
                .with_label_values(&[name])
                .set(b.state().as_gauge());
            for (i, (to, counter)) in [
                ("open", &b.counts.opened),
                ("half_open", &b.counts.half_opened),
                ("closed", &b.counts.closed),
            ]
            .into_iter()
            .enumerate()
            {
                let d = self.delta(&mut seen, b, i, counter.load(Ordering::Relaxed));
                let c = self
                    .route_breaker_transitions
                    .with_label_values(&[name, to]);
                if d > 0 {
                    c.inc_by(d);
                }
            }
            self.sync_trips(&mut seen, &format!("route:{name}"), b);
        }
    }
}
