//! The once-a-second sampler and what it publishes.
//!
//! The control thread's ticker calls [`Observer::sample`] every second. It harvests the
//! latency recorders into their windows, turns counters into rates, reads `/proc` for
//! drover and each worker, notices events (restarts, breaker trips, reloads, strategy
//! switches) by comparing with the previous second, feeds the history store, evaluates
//! alerts, and publishes one JSON snapshot that `/api/live`, `/api/stream` and the
//! dashboard serve. Nothing here runs on the request path.

use super::events::{unix_now, Events};
use super::history::{History, Rollup};
use super::latency::{new_histogram, Percentiles, Windows, QUANTILES, WINDOWS};
use super::procstat::{self, ProcStats};
use super::view::View;
use crate::balancing::StrategyKind;
use crate::metric_names::*;
use hdrhistogram::Histogram;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Events shown on the dashboard.
const LIVE_EVENTS: usize = 20;

/// Latency percentiles of one recorder, per window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyWindows {
    /// The last 10 complete seconds (JSON key `10s`).
    #[serde(rename = "10s")]
    pub ten_seconds: Percentiles,
    /// About the last minute (JSON key `1m`).
    #[serde(rename = "1m")]
    pub one_minute: Percentiles,
    /// About the last 5 minutes (JSON key `5m`).
    #[serde(rename = "5m")]
    pub five_minutes: Percentiles,
}

impl From<[Percentiles; 3]> for LatencyWindows {
    fn from(p: [Percentiles; 3]) -> Self {
        LatencyWindows {
            ten_seconds: p[0],
            one_minute: p[1],
            five_minutes: p[2],
        }
    }
}

/// What the last sample computed; read by `/api/status`, alerts and the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Published {
    /// Unix time of the sample, in seconds; 0 before the first one.
    pub time: f64,
    /// Requests answered per second since the previous sample (all status classes).
    pub rps: f64,
    /// Share of those that were 5xx or failed before a status; 0 with no traffic.
    pub error_ratio: f64,
    /// Requests being proxied at sample time.
    pub in_flight: i64,
    /// Whole-request duration percentiles, per window.
    pub latency: LatencyWindows,
    /// Upstream response time percentiles per backend name (names beyond 64 share
    /// `other`).
    pub backends: BTreeMap<String, LatencyWindows>,
    /// Last completed second, overall.
    pub last_second: Percentiles,
    /// Resource use of `drover` and of `worker-N` for each slot with a running process.
    pub processes: BTreeMap<String, ProcessSample>,
    /// Requests per second per backend name since the previous sample (backends sharing
    /// a name are summed).
    pub backend_rps: BTreeMap<String, f64>,
    /// Requests in flight per backend name at sample time.
    pub backend_in_flight: BTreeMap<String, u32>,
    /// Failed share of each backend's requests over the last second.
    pub backend_error_ratio: BTreeMap<String, f64>,
}

/// One process's resource use at a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessSample {
    /// The process sampled (drover's own pid for `drover`).
    pub pid: u32,
    /// Its cumulative CPU time, resident memory and open fds from `/proc` (flattened into
    /// the JSON object).
    #[serde(flatten)]
    pub stats: ProcStats,
    /// CPU used over the last second, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
}

struct Gauges {
    overall: GaugeVec,
    backend: GaugeVec,
    cpu: prometheus::CounterVec,
    rss: GaugeVec,
    fds: GaugeVec,
    history_series: IntGauge,
    events: IntCounterVec,
}

impl Gauges {
    fn register(r: &Registry) -> Self {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric registered twice");
            c
        }
        Gauges {
            overall: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        REQUEST_DURATION_PERCENTILE_SECONDS,
                        "Request duration percentile over a sliding window (HDR histogram, <1% error)",
                    ),
                    &["window", "percentile"],
                )
                .expect("valid metric"),
            ),
            backend: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        BACKEND_DURATION_PERCENTILE_SECONDS,
                        "Upstream response time percentile per backend over a sliding window",
                    ),
                    &["backend", "window", "percentile"],
                )
                .expect("valid metric"),
            ),
            cpu: reg(
                r,
                prometheus::CounterVec::new(
                    Opts::new(
                        PROCESS_CPU_SECONDS_TOTAL,
                        "CPU time used by drover and by each worker slot (user + system)",
                    ),
                    &["process"],
                )
                .expect("valid metric"),
            ),
            rss: reg(
                r,
                GaugeVec::new(
                    Opts::new(PROCESS_RESIDENT_MEMORY_BYTES, "Resident memory per process"),
                    &["process"],
                )
                .expect("valid metric"),
            ),
            fds: reg(
                r,
                GaugeVec::new(
                    Opts::new(PROCESS_OPEN_FDS, "Open file descriptors per process"),
                    &["process"],
                )
                .expect("valid metric"),
            ),
            history_series: reg(
                r,
                IntGauge::new(HISTORY_SERIES, "Series held by the in-memory history store")
                    .expect("valid metric"),
            ),
            events: reg(
                r,
                IntCounterVec::new(
                    Opts::new(OBSERVE_EVENTS_TOTAL, "Notable events by kind"),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// State the sampler carries from one second to the next.
struct SamplerState {
    overall: Windows,
    backends: BTreeMap<Arc<str>, Windows>,
    scratch: Histogram<u32>,
    last: Option<Instant>,
    prev_total: u64,
    prev_errors: u64,
    prev_backend_requests: HashMap<u64, u64>,
    /// Per process name: (pid, cpu seconds) at the last sample.
    prev_cpu: HashMap<String, (u32, f64)>,
    prev_slots: HashMap<usize, (u64, bool)>,
    prev_breakers: HashMap<u64, (u64, u64)>,
    prev_version: u64,
    prev_invalid_reloads: u64,
    prev_strategy: Option<StrategyKind>,
    /// Per backend id: busy nanoseconds at the last sample (capacity planning).
    prev_busy: HashMap<u64, u64>,
    /// Per backend id: failures at the last sample.
    prev_failures: HashMap<u64, u64>,
}

/// The sampler and everything it feeds; one per process, in `Shared::observe`.
pub struct Observer {
    /// Recent notable events for the dashboard and `/api/events`.
    pub events: Events,
    /// Worker-reported metrics (`X-Drover-Metric` response header).
    pub custom: super::custom::CustomMetrics,
    /// Time series of the sampled values, pushed each second; saved to `runtime_dir` and
    /// restored at start (`save_history`, `load_history`).
    pub history: Mutex<History>,
    /// Alert rules, SLOs and the scaling advice, evaluated at the end of each sample.
    pub alerts: super::alerts::Alerts,
    /// Capacity planning over the last seconds (`observe::capacity`).
    pub capacity: Mutex<super::capacity::Estimator>,
    state: Mutex<SamplerState>,
    published: Mutex<Arc<Published>>,
    live: Mutex<Arc<str>>,
    gauges: Gauges,
}

/// Every breaker (workers' and routes') for the dashboard: state, why it last opened,
/// time until it lets a probe through, adaptive baseline, recent transitions.
fn breakers_snapshot(
    cfg: &crate::config::Config,
    members: &[Arc<crate::balancing::Backend>],
) -> Value {
    use crate::resilience::breaker::Breaker;
    let one = |name: &str, scope: &str, b: &Breaker| {
        let s = b.snapshot();
        json!({
            "name": name,
            "scope": scope,
            "state": s.state.as_str(),
            "trips_in_a_row": s.trips_in_a_row,
            "open_remaining_ms": s.open_remaining.map(|d| d.as_millis() as u64),
            "last_trip_reason": s.last_reason.map(|r| r.to_string()),
            "last_trip_kind": s.last_reason.map(|r| r.label()),
            "window": { "requests": s.window.total, "failures": s.window.a },
            "baseline_failure_ratio": s.baseline.map(|b| b.failure_ratio),
            "transitions": b.recent_transitions().iter().rev().take(5).map(|t| json!({
                "at": t.at, "from": t.from, "to": t.to, "reason": t.reason,
            })).collect::<Vec<_>>(),
        })
    };
    let mut out: Vec<Value> = members
        .iter()
        .filter(|b| b.breaker.policy().enabled)
        .map(|b| one(&b.name, "worker", &b.breaker))
        .collect();
    for r in cfg.resilience.routes.iter() {
        if let Some(b) = &r.breaker {
            out.push(one(&format!("route:{}", r.name), "route", b));
        }
    }
    Value::Array(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Observer {
    /// Makes the observer, registering its gauges and the alerts' series into
    /// `metrics.registry` (so once per registry: a second call panics).
    pub fn new(metrics: &super::metrics::Metrics) -> Self {
        Observer {
            events: Events::default(),
            custom: Default::default(),
            history: Mutex::new(History::new()),
            alerts: super::alerts::Alerts::new(&metrics.registry),
            capacity: Mutex::new(Default::default()),
            state: Mutex::new(SamplerState {
                overall: Windows::new(metrics.latency.overall.clone()),
                backends: BTreeMap::new(),
                scratch: new_histogram(),
                last: None,
                prev_total: 0,
                prev_errors: 0,
                prev_backend_requests: HashMap::new(),
                prev_cpu: HashMap::new(),
                prev_slots: HashMap::new(),
                prev_breakers: HashMap::new(),
                prev_version: 1,
                prev_invalid_reloads: 0,
                prev_strategy: None,
                prev_busy: HashMap::new(),
                prev_failures: HashMap::new(),
            }),
            published: Mutex::new(Arc::new(Published::default())),
            live: Mutex::new(Arc::from("{}")),
            gauges: Gauges::register(&metrics.registry),
        }
    }

    /// The capacity estimate for a target rate (default: the configured one, else the
    /// current rate) and p99 (default: `observability.capacity.target_p99`).
    pub fn capacity_estimate(
        &self,
        cfg: &crate::config::Config,
        target_rps: Option<f64>,
        target_p99: Option<std::time::Duration>,
    ) -> super::capacity::Estimate {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        lock(&self.capacity).estimate(
            target_rps.or(cfg.observability.capacity.target_rps),
            target_p99
                .unwrap_or(cfg.observability.capacity.target_p99)
                .as_secs_f64()
                .max(0.001),
            cores,
        )
    }

    /// Loads the history the previous process left in `runtime_dir` (at start).
    pub fn load_history(&self, runtime_dir: &std::path::Path) {
        let path = runtime_dir.join(super::history::FILE);
        match History::load(&path) {
            Ok(h) => {
                log::info!(
                    "history: {} series restored from {}",
                    h.len(),
                    path.display()
                );
                lock(&self.history).merge(h);
            }
            Err(super::history::HistoryFileError::File(e)) if e.is_not_found() => {}
            Err(e) => log::warn!("history: {} not restored: {e}", path.display()),
        }
    }

    /// Writes the history to `runtime_dir` (every minute, and at a graceful stop).
    pub fn save_history(&self, runtime_dir: &std::path::Path) {
        let path = runtime_dir.join(super::history::FILE);
        let bytes = lock(&self.history).encode();
        if let Err(e) = crate::private_fs::write_private(&path, &bytes) {
            log::warn!("history: {} not saved: {e}", path.display());
        }
    }

    /// The last published sample.
    pub fn published(&self) -> Arc<Published> {
        lock(&self.published).clone()
    }

    /// The last dashboard snapshot, as JSON text.
    pub fn live_json(&self) -> Arc<str> {
        lock(&self.live).clone()
    }

    /// Records an event: ring, counter and log.
    pub fn event(&self, kind: &'static str, message: String) {
        log::info!(target: "event", "{kind}: {message}");
        self.gauges.events.with_label_values(&[kind]).inc();
        self.events.push(kind, message);
    }

    /// One sample; call once a second from the control thread.
    pub fn sample(&self, v: &View<'_>) {
        let slots = v.slots;
        let now = Instant::now();
        let t = unix_now();
        let mut st = lock(&self.state);
        let dt = st
            .last
            .map(|l| now.duration_since(l).as_secs_f64())
            .unwrap_or(1.0)
            .max(0.001);
        st.last = Some(now);
        let m = &v.metrics;

        // Latency windows.
        st.overall.tick();
        for (name, rec) in m.latency.backends() {
            st.backends
                .entry(name)
                .or_insert_with(|| Windows::new(rec))
                .tick();
        }
        let SamplerState {
            overall,
            backends,
            scratch,
            ..
        } = &mut *st;
        let slow: Vec<u64> = v
            .config
            .observability
            .slos
            .iter()
            .map(|s| match s.kind {
                crate::config::observability::SloKind::Latency(t) => overall.last_second_above(t),
                crate::config::observability::SloKind::Availability => 0,
            })
            .collect();
        let overall_p = overall.percentiles(scratch);
        let last_second = overall.last_second();
        let mut backend_p = BTreeMap::new();
        self.gauges.backend.reset();
        for (name, w) in backends.iter() {
            let p = w.percentiles(scratch);
            for ((wname, _), wp) in WINDOWS.iter().zip(p.iter()) {
                if wp.count == 0 {
                    continue;
                }
                for (qname, q) in QUANTILES {
                    self.gauges
                        .backend
                        .with_label_values(&[&**name, wname, qname])
                        .set(wp.quantile(q));
                }
            }
            backend_p.insert(name.to_string(), LatencyWindows::from(p));
        }
        self.gauges.overall.reset();
        for ((wname, _), wp) in WINDOWS.iter().zip(overall_p.iter()) {
            if wp.count == 0 {
                continue;
            }
            for (qname, q) in QUANTILES {
                self.gauges
                    .overall
                    .with_label_values(&[wname, qname])
                    .set(wp.quantile(q));
            }
        }

        // Rates.
        let by_class: Vec<u64> = m.requests_by_class.iter().map(|c| c.get()).collect();
        let total: u64 = by_class.iter().sum();
        let errors = by_class[0] + by_class[5];
        let d_total = total.saturating_sub(st.prev_total);
        let d_errors = errors.saturating_sub(st.prev_errors);
        st.prev_total = total;
        st.prev_errors = errors;
        let rps = d_total as f64 / dt;
        let error_ratio = if d_total > 0 {
            d_errors as f64 / d_total as f64
        } else {
            0.0
        };
        let members = v.pool.members();
        let mut backend_rps: BTreeMap<String, f64> = BTreeMap::new();
        let mut backend_inflight: BTreeMap<String, u32> = BTreeMap::new();
        let mut seen = HashMap::with_capacity(members.len());
        let mut seen_failures = HashMap::with_capacity(members.len());
        let mut backend_counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for b in members.iter() {
            let r = b.requests();
            let f = b.failures();
            let prev = st.prev_backend_requests.get(&b.id).copied().unwrap_or(0);
            let prev_f = st.prev_failures.get(&b.id).copied().unwrap_or(0);
            seen.insert(b.id, r);
            seen_failures.insert(b.id, f);
            *backend_rps.entry(b.name.to_string()).or_default() +=
                r.saturating_sub(prev) as f64 / dt;
            *backend_inflight.entry(b.name.to_string()).or_default() += b.inflight();
            let c = backend_counts.entry(b.name.to_string()).or_default();
            c.0 += r.saturating_sub(prev);
            c.1 += f.saturating_sub(prev_f);
        }
        st.prev_backend_requests = seen;
        st.prev_failures = seen_failures;
        let backend_error_ratio: BTreeMap<String, f64> = backend_counts
            .into_iter()
            .map(|(n, (r, f))| (n, if r == 0 { 0.0 } else { f as f64 / r as f64 }))
            .collect();

        // Processes.
        let mut processes = BTreeMap::new();
        let mut sample_process = |st: &mut SamplerState, name: String, pid: Option<u32>| {
            let Some(stats) = procstat::read(pid) else {
                return;
            };
            let pid = pid.unwrap_or(std::process::id());
            let prev = st.prev_cpu.insert(name.clone(), (pid, stats.cpu_seconds));
            // A new pid in the slot starts from zero CPU: count all of it.
            let delta = match prev {
                Some((p, c)) if p == pid => (stats.cpu_seconds - c).max(0.0),
                Some(_) => stats.cpu_seconds,
                None => stats.cpu_seconds,
            };
            self.gauges.cpu.with_label_values(&[&name]).inc_by(delta);
            self.gauges
                .rss
                .with_label_values(&[&name])
                .set(stats.rss_bytes as f64);
            self.gauges
                .fds
                .with_label_values(&[&name])
                .set(stats.open_fds as f64);
            let cpu_cores = if prev.is_some() { delta / dt } else { 0.0 };
            processes.insert(
                name,
                ProcessSample {
                    pid,
                    stats,
                    cpu_cores,
                },
            );
        };
        sample_process(&mut st, "drover".into(), None);
        for s in slots {
            if let Some(pid) = s.pid {
                sample_process(&mut st, format!("worker-{}", s.id), Some(pid));
            }
        }

        // Capacity: each backend's completed requests, busy time and CPU this second.
        {
            let now_ns = crate::balancing::backend::now_nanos();
            let mut second = super::capacity::PoolSecond {
                drover_cpu_cores: processes.get("drover").map(|p| p.cpu_cores).unwrap_or(0.0),
                requests: d_total,
                ..Default::default()
            };
            let mut busy_seen = HashMap::with_capacity(members.len());
            for b in members.iter().filter(|b| b.in_rotation()) {
                let busy = b.busy_nanos(now_ns);
                // A backend seen for the first time counts from its start, like its requests.
                let prev = st.prev_busy.get(&b.id).copied().unwrap_or(0);
                busy_seen.insert(b.id, busy);
                let w = second.workers.entry(b.name.to_string()).or_default();
                w.requests += backend_rps
                    .get(&*b.name)
                    .map(|r| (r * dt).round() as u64)
                    .unwrap_or(0);
                w.busy_seconds += busy.saturating_sub(prev) as f64 / 1e9 / dt;
                w.cpu_cores = processes.get(&*b.name).map(|p| p.cpu_cores).unwrap_or(0.0);
            }
            st.prev_busy = busy_seen;
            lock(&self.capacity).push(second);
        }

        self.notice_events(&mut st, v, &members);
        drop(st);

        let in_flight = v.in_flight;
        let published = Arc::new(Published {
            time: t,
            rps,
            error_ratio,
            in_flight,
            latency: overall_p.into(),
            backends: backend_p,
            last_second,
            processes,
            backend_rps,
            backend_in_flight: backend_inflight.clone(),
            backend_error_ratio,
        });

        {
            let ts = t as u64;
            let mut h = lock(&self.history);
            h.push("rps", Rollup::Mean, ts, rps);
            h.push("error_ratio", Rollup::Mean, ts, error_ratio);
            let nan = |p: &Percentiles, v: f64| if p.count == 0 { f64::NAN } else { v };
            h.push("p50", Rollup::Max, ts, nan(&last_second, last_second.p50));
            h.push("p95", Rollup::Max, ts, nan(&last_second, last_second.p95));
            h.push("p99", Rollup::Max, ts, nan(&last_second, last_second.p99));
            h.push("in_flight", Rollup::Mean, ts, in_flight as f64);
            if let Some(d) = published.processes.get("drover") {
                h.push("drover_cpu_cores", Rollup::Mean, ts, d.cpu_cores);
                h.push(
                    "drover_rss_bytes",
                    Rollup::Max,
                    ts,
                    d.stats.rss_bytes as f64,
                );
            }
            for (name, v) in &published.backend_rps {
                h.push(&format!("backend_rps/{name}"), Rollup::Mean, ts, *v);
            }
            for (name, v) in &backend_inflight {
                h.push(
                    &format!("backend_in_flight/{name}"),
                    Rollup::Mean,
                    ts,
                    *v as f64,
                );
            }
            for (name, v) in self.custom.tick(now) {
                let rollup = if v.is_finite() {
                    Rollup::Max
                } else {
                    Rollup::Mean
                };
                h.push(&format!("app/{name}"), rollup, ts, v);
            }
            self.gauges.history_series.set(h.len() as i64);
        }

        self.alerts.evaluate(
            v,
            self,
            &super::alerts::Sample {
                published: &published,
                slots,
                total: d_total,
                errors: d_errors,
                slow: &slow,
                latency_count: last_second.count,
            },
            now,
        );
        let live = self.live_snapshot(v, &published);
        *lock(&self.published) = published;
        *lock(&self.live) = Arc::from(live.to_string());
    }

    fn notice_events(
        &self,
        st: &mut SamplerState,
        v: &View<'_>,
        members: &[Arc<crate::balancing::Backend>],
    ) {
        for s in v.slots {
            let (restarts, looping) = st.prev_slots.get(&s.id).copied().unwrap_or((0, false));
            if s.restarts > restarts {
                self.event(
                    "restart",
                    format!(
                        "worker-{} restarted ({} restarts; last exit: {})",
                        s.id,
                        s.restarts,
                        s.last_exit.as_deref().unwrap_or("?")
                    ),
                );
            }
            if s.crash_looping && !looping {
                self.event("crash_loop", format!("worker-{} is crash-looping", s.id));
            }
            st.prev_slots.insert(s.id, (s.restarts, s.crash_looping));
        }
        let mut seen = HashMap::with_capacity(members.len());
        for b in members {
            let opened = b.breaker.counts.opened.load(Ordering::Relaxed);
            let closed = b.breaker.counts.closed.load(Ordering::Relaxed);
            let (po, pc) = st.prev_breakers.get(&b.id).copied().unwrap_or((0, 0));
            if opened > po {
                self.event("breaker", format!("{}: circuit breaker opened", b.name));
            }
            if closed > pc {
                self.event("breaker", format!("{}: circuit breaker closed", b.name));
            }
            seen.insert(b.id, (opened, closed));
        }
        st.prev_breakers = seen;
        let version = v.config_version;
        if version != st.prev_version {
            self.event("reload", format!("config reloaded: version {version}"));
            st.prev_version = version;
        }
        let invalid = v
            .metrics
            .config_reloads
            .with_label_values(&["invalid"])
            .get();
        if invalid > st.prev_invalid_reloads {
            self.event(
                "reload",
                "config reload rejected: the file is invalid (running config kept)".into(),
            );
            st.prev_invalid_reloads = invalid;
        }
        let strategy = v.pool.strategy();
        // Before the first sample the strategy is the one the config started with.
        let prev = st
            .prev_strategy
            .unwrap_or_else(|| v.config.balancing.strategy.initial());
        if prev != strategy {
            self.event("strategy", format!("strategy {prev} -> {strategy}"));
        }
        st.prev_strategy = Some(strategy);
    }

    fn live_snapshot(&self, v: &View<'_>, p: &Published) -> Value {
        let slots = v.slots;
        let members = v.pool.members();
        let sessions = v.sessions.map(|s| s.per_worker());
        let workers: Vec<Value> = slots
            .iter()
            .map(|w| {
                let name = format!("worker-{}", w.id);
                let b = w
                    .backend_id
                    .and_then(|id| members.iter().find(|b| b.id == id));
                let proc_ = p.processes.get(&name);
                json!({
                    "id": w.id,
                    "name": name,
                    "pid": w.pid,
                    "phase": w.phase,
                    "state": b.map(|b| b.state().as_str()).unwrap_or("down"),
                    "healthy": b.map(|b| b.in_rotation()).unwrap_or(false),
                    "in_flight": b.map(|b| b.inflight()).unwrap_or(0),
                    "rps": p.backend_rps.get(&name).copied().unwrap_or(0.0),
                    "p99": p.backends.get(&name).map(|l| l.ten_seconds.p99),
                    "breaker": b.map(|b| b.breaker.state().as_str()).unwrap_or("closed"),
                    "restarts": w.restarts,
                    "sessions": sessions.as_ref().map(|m| m.get(&name).copied().unwrap_or(0)),
                    "crash_looping": w.crash_looping,
                    "cpu_cores": proc_.map(|s| s.cpu_cores),
                    "rss_bytes": proc_.map(|s| s.stats.rss_bytes),
                    "open_fds": proc_.map(|s| s.stats.open_fds),
                })
            })
            .collect();
        let remotes: Vec<Value> = members
            .iter()
            .filter(|b| b.worker_id.is_none())
            .map(|b| {
                json!({
                    "name": &*b.name,
                    "state": b.state().as_str(),
                    "in_flight": b.inflight(),
                    "rps": p.backend_rps.get(&*b.name).copied().unwrap_or(0.0),
                    "breaker": b.breaker.state().as_str(),
                })
            })
            .collect();
        json!({
            "time": p.time,
            "rps": p.rps,
            "error_ratio": p.error_ratio,
            "in_flight": p.in_flight,
            "latency": p.latency,
            "last_second": p.last_second,
            "strategy": v.pool.strategy().as_str(),
            "strategy_auto": v.auto_strategy,
            "strategies": StrategyKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "config_version": v.config_version,
            "queue_length": v.pool.queue.len(),
            "panic_mode": v.pool.in_panic(),
            "drover": p.processes.get("drover"),
            "workers": workers,
            "upstreams": remotes,
            "events": self.events.recent(LIVE_EVENTS),
            "alerts": self.alerts.active(),
            "slos": self.alerts.slo_status(),
            "scaling": self.alerts.scaling(),
            "capacity": self.capacity_estimate(&v.config, None, None),
            "app_metrics": self.custom.summary(),
            "breakers": breakers_snapshot(&v.config, &members),
        })
    }
}
