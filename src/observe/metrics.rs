//! The Prometheus registry. Per-request metrics are pre-resolved handles (one atomic add
//! each); per-backend gauges are filled from the pool, and `drover_requests_in_flight`
//! from the data plane's counter (`proxy::in_flight`), at scrape time so the hot path does
//! not maintain them twice.

use crate::balancing::{BackendState, Pool, StrategyKind};
use crate::in_flight::InFlight;
use crate::metric_names::*;
use crate::resilience::breaker::CircuitState;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::Ordering;

/// Latency buckets from 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// drover's own metrics, made once in `Shared` and rendered by the admin `/metrics`.
pub struct Metrics {
    /// The registry every drover metric is registered in (other modules add theirs).
    pub registry: Registry,
    /// Indexed by status class: 0 = failed before a status, 1..=5 = 1xx..5xx.
    pub requests_by_class: [IntCounter; 6],
    /// Whole-request time, in seconds, 0.5 ms to 30 s buckets.
    pub duration: Histogram,
    /// A view of `Shared::in_flight`, set at scrape time (`render`).
    in_flight: IntGauge,
    /// Upstream failures by `kind`: `connect` (no connection made) or `proxy` (failed
    /// after connecting).
    pub upstream_errors: IntCounterVec,
    /// Attempts resent to another backend (one per retry, not per request).
    pub retries: IntCounter,
    /// Requests answered 503 because no backend could be chosen.
    pub no_backend: IntCounter,
    backend_requests: IntCounterVec,
    backend_failures: IntCounterVec,
    backend_duration: HistogramVec,
    backend_in_flight: IntGaugeVec,
    backend_healthy: IntGaugeVec,
    backend_ewma: prometheus::GaugeVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    /// Worker restarts after an exit, per `worker` name; counted by the supervisor.
    pub worker_restarts: IntCounterVec,
    /// Worker processes alive; the supervisor increments on spawn, decrements on exit.
    pub workers_running: IntGauge,
    /// Workers in a crash loop; set from the supervisor's status at scrape time.
    pub workers_crash_looping: IntGauge,
    /// Reloads by `result`: `ok` or `invalid` (the file was rejected, old config kept).
    pub config_reloads: IntCounterVec,
    /// Mirror of `Shared::version`: 1 at start, +1 per applied reload.
    pub config_version: IntGauge,
    balancing_panic: IntGauge,
    balancing_strategy: IntGaugeVec,
    /// Health results by `result`: `pass`/`fail` (active probes) or `refused` (passive).
    pub health_checks: IntCounterVec,
    /// Requests waiting for a free backend; set by the pipeline as the queue changes.
    pub queue_length: IntGauge,
    /// Time a request spent queued before getting a backend, in seconds.
    pub queue_wait: Histogram,
    /// Requests the queue answered 503, by `reason`: `full` or `timeout`.
    pub queue_rejected: IntCounterVec,
    backend_selections: IntCounterVec,
    breaker_seen: std::sync::Mutex<std::collections::HashMap<(u64, usize), u64>>,
    /// Series of the resilience features: breakers, bulkheads, fallbacks, rate limits,
    /// retry budget and backoff, chaos faults.
    pub resilience: super::resilience_metrics::ResilienceMetrics,
    /// HDR latency recorders behind the sliding-window percentiles (`observe::latency`).
    pub latency: super::latency::Recorders,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are constants from `names.rs` and registered once; a clash is a programming
    // error caught by the unit test below.
    r.register(Box::new(c.clone()))
        .expect("metric registered twice");
    c
}

/// Counters of one backend, resolved once when the backend is created so the hot path
/// increments them without a label lookup. Backends with the same name (a restarted
/// worker) share the series, so counts continue across restarts.
pub struct BackendHandles {
    /// Requests sent to the backend, failed attempts included.
    pub requests: IntCounter,
    /// Requests or attempts that failed on this backend.
    pub failures: IntCounter,
    /// Upstream response time of finished requests, in seconds.
    pub duration: Histogram,
    /// Times each strategy chose the backend, indexed like `StrategyKind::ALL`.
    pub selections: [IntCounter; StrategyKind::COUNT],
    /// The backend's HDR recorder for sliding-window percentiles (shared by name).
    pub latency: std::sync::Arc<super::latency::Recorder>,
}

impl crate::balancing::backend::BackendStats for BackendHandles {
    fn selected(&self, strategy_index: usize) {
        if let Some(c) = self.selections.get(strategy_index) {
            c.inc();
        }
    }

    fn finished(&self, elapsed: std::time::Duration, success: bool) {
        self.requests.inc();
        self.duration.observe(elapsed.as_secs_f64());
        self.latency.record(elapsed);
        if !success {
            self.failures.inc();
        }
    }

    fn attempt_failed(&self) {
        self.requests.inc();
        self.failures.inc();
    }
}

impl Metrics {
    /// The handles for the backend called `name`, creating its labelled series on first
    /// use; called once per backend when it is made.
    pub fn backend_handles(&self, name: &str) -> BackendHandles {
        BackendHandles {
            requests: self.backend_requests.with_label_values(&[name]),
            failures: self.backend_failures.with_label_values(&[name]),
            duration: self.backend_duration.with_label_values(&[name]),
            selections: StrategyKind::ALL.map(|k| {
                self.backend_selections
                    .with_label_values(&[name, k.as_str()])
            }),
            latency: self.latency.for_backend(name),
        }
    }

    /// A fresh registry with every metric registered (status classes, reload results and
    /// queue reasons pre-created at 0).
    pub fn new() -> Self {
        let r = Registry::new();
        let requests = reg(
            &r,
            IntCounterVec::new(
                Opts::new(REQUESTS_TOTAL, "Requests answered, by status class"),
                &["class"],
            )
            .expect("valid metric"),
        );
        let classes = ["error", "1xx", "2xx", "3xx", "4xx", "5xx"];
        let requests_by_class = classes.map(|c| requests.with_label_values(&[c]));
        let m = Metrics {
            requests_by_class,
            duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        REQUEST_DURATION_SECONDS,
                        "Time from request to response end",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            in_flight: reg(
                &r,
                IntGauge::new(REQUESTS_IN_FLIGHT, "Requests being proxied now")
                    .expect("valid metric"),
            ),
            upstream_errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(UPSTREAM_ERRORS_TOTAL, "Upstream errors by kind"),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            retries: reg(
                &r,
                IntCounter::new(RETRIES_TOTAL, "Requests retried on another backend")
                    .expect("valid metric"),
            ),
            no_backend: reg(
                &r,
                IntCounter::new(
                    NO_BACKEND_TOTAL,
                    "Requests answered 503 because no backend was available",
                )
                .expect("valid metric"),
            ),
            backend_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(BACKEND_REQUESTS_TOTAL, "Requests sent to each backend"),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            backend_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(BACKEND_FAILURES_TOTAL, "Failed requests per backend"),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            backend_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        BACKEND_DURATION_SECONDS,
                        "Upstream response time per backend",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            backend_in_flight: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(BACKEND_IN_FLIGHT, "Requests in flight per backend"),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            backend_healthy: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(BACKEND_HEALTHY, "1 if the backend is in rotation"),
                    &["backend", "state"],
                )
                .expect("valid metric"),
            ),
            backend_ewma: reg(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        BACKEND_LATENCY_EWMA_SECONDS,
                        "Peak-EWMA latency per backend",
                    ),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            breaker_state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        BREAKER_STATE,
                        "Circuit breaker state per backend: 0 closed, 1 open, 2 half-open",
                    ),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            breaker_transitions: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        BREAKER_TRANSITIONS_TOTAL,
                        "Circuit breaker transitions per backend",
                    ),
                    &["backend", "to"],
                )
                .expect("valid metric"),
            ),
            worker_restarts: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        WORKER_RESTARTS_TOTAL,
                        "Worker processes restarted after exiting",
                    ),
                    &["worker"],
                )
                .expect("valid metric"),
            ),
            workers_running: reg(
                &r,
                IntGauge::new(WORKERS_RUNNING, "Worker processes running").expect("valid metric"),
            ),
            workers_crash_looping: reg(
                &r,
                IntGauge::new(WORKERS_CRASH_LOOPING, "Workers in a crash loop")
                    .expect("valid metric"),
            ),
            config_reloads: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(CONFIG_RELOADS_TOTAL, "Config reloads by result"),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            config_version: reg(
                &r,
                IntGauge::new(
                    CONFIG_VERSION,
                    "Version of the running config (1 at start, +1 per applied reload)",
                )
                .expect("valid metric"),
            ),
            balancing_panic: reg(
                &r,
                IntGauge::new(
                    BALANCING_PANIC,
                    "1 while too few backends are healthy and traffic spreads over all",
                )
                .expect("valid metric"),
            ),
            balancing_strategy: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(BALANCING_STRATEGY, "1 for the strategy in use"),
                    &["strategy"],
                )
                .expect("valid metric"),
            ),
            health_checks: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        HEALTH_CHECKS_TOTAL,
                        "Health check results: active probes (pass, fail) and connections a backend refused (refused, a passive check)",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            queue_length: reg(
                &r,
                IntGauge::new(QUEUE_LENGTH, "Requests waiting for a free backend")
                    .expect("valid metric"),
            ),
            queue_wait: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(QUEUE_WAIT_SECONDS, "Time requests waited in the queue")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            queue_rejected: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        QUEUE_REJECTED_TOTAL,
                        "Requests answered 503 by the queue, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            backend_selections: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        BACKEND_SELECTIONS_TOTAL,
                        "Times each strategy chose each backend",
                    ),
                    &["backend", "strategy"],
                )
                .expect("valid metric"),
            ),
            breaker_seen: Default::default(),
            resilience: super::resilience_metrics::ResilienceMetrics::new(&r),
            latency: Default::default(),
            registry: r,
        };
        for reason in ["full", "timeout"] {
            m.queue_rejected.with_label_values(&[reason]);
        }
        for c in ["ok", "invalid"] {
            m.config_reloads.with_label_values(&[c]);
        }
        m
    }

    /// The `drover_requests_total` counter for `status`'s class; anything outside
    /// 100..=599 (0: no response written) counts as `error`.
    pub fn status_class(&self, status: u16) -> &IntCounter {
        let i = (status / 100) as usize;
        &self.requests_by_class[if (1..=5).contains(&i) { i } else { 0 }]
    }

    /// Renders the text exposition, refreshing scrape-time gauges from the pool and the
    /// in-flight counter first.
    pub fn render(&self, pool: &Pool, in_flight: &InFlight) -> String {
        self.in_flight.set(in_flight.get());
        let members = pool.members();
        self.backend_in_flight.reset();
        self.backend_healthy.reset();
        self.backend_ewma.reset();
        self.breaker_state.reset();
        for b in members.iter() {
            let name = &*b.name;
            self.backend_in_flight
                .with_label_values(&[name])
                .set(b.inflight() as i64);
            let state = b.state();
            self.backend_healthy
                .with_label_values(&[name, state.as_str()])
                .set((state == BackendState::Healthy) as i64);
            self.backend_ewma
                .with_label_values(&[name])
                .set(b.latency_nanos() / 1e9);
            let bs = match b.breaker.state() {
                CircuitState::Closed => 0,
                CircuitState::Open => 1,
                CircuitState::HalfOpen => 2,
            };
            self.breaker_state.with_label_values(&[name]).set(bs);

            // Transition counts live on each breaker; carry them into the per-name
            // series by the delta since the last scrape of that breaker instance.
            let mut seen = self.breaker_seen.lock().unwrap_or_else(|p| p.into_inner());
            for (i, (to, counter)) in [
                ("open", &b.breaker.counts.opened),
                ("half_open", &b.breaker.counts.half_opened),
                ("closed", &b.breaker.counts.closed),
            ]
            .into_iter()
            .enumerate()
            {
                let total = counter.load(Ordering::Relaxed);
                let last = seen.entry((b.id, i)).or_insert(0);
                let c = self.breaker_transitions.with_label_values(&[name, to]);
                if total > *last {
                    c.inc_by(total - *last);
                    *last = total;
                }
            }
            drop(seen);
        }
        self.balancing_panic.set(pool.in_panic() as i64);
        let current = pool.strategy();
        for k in StrategyKind::ALL {
            self.balancing_strategy
                .with_label_values(&[k.as_str()])
                .set((k == current) as i64);
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_metric_once_and_renders() {
        let m = Metrics::new();
        m.status_class(204).inc();
        m.status_class(503).inc();
        m.status_class(0).inc();
        let pool = Pool::new(StrategyKind::RoundRobin, 0.5);
        let in_flight = InFlight::new();
        let text = m.render(&pool, &in_flight);
        assert!(
            text.contains("drover_requests_total{class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("drover_requests_total{class=\"5xx\"} 1"));
        assert!(text.contains("drover_requests_total{class=\"error\"} 1"));
        assert!(text.contains("drover_balancing_strategy{strategy=\"round_robin\"} 1"));
        let h = m.backend_handles("worker-7");
        h.requests.inc();
        h.selections[StrategyKind::Latency.index()].inc();
        let text = m.render(&pool, &in_flight);
        assert!(
            text.contains("drover_backend_requests_total{backend=\"worker-7\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "drover_backend_selections_total{backend=\"worker-7\",strategy=\"latency\"} 1"
        ));
    }

    #[test]
    fn in_flight_gauge_reads_the_counter_at_scrape_time() {
        let m = Metrics::new();
        let pool = Pool::new(StrategyKind::RoundRobin, 0.5);
        let in_flight = InFlight::new();
        let gauge = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("drover_requests_in_flight "))
                .map(str::to_string)
        };
        let text = m.render(&pool, &in_flight);
        assert!(
            text.contains("# TYPE drover_requests_in_flight gauge"),
            "{text}"
        );
        assert_eq!(gauge(&text).as_deref(), Some("drover_requests_in_flight 0"));
        let (a, _) = in_flight.enter();
        let (b, _) = in_flight.enter();
        let (c, _) = in_flight.enter();
        in_flight.leave(a);
        let text = m.render(&pool, &in_flight);
        assert_eq!(gauge(&text).as_deref(), Some("drover_requests_in_flight 2"));
        in_flight.leave(b);
        in_flight.leave(c);
        let text = m.render(&pool, &in_flight);
        assert_eq!(gauge(&text).as_deref(), Some("drover_requests_in_flight 0"));
    }
}
