//! Alert rules, SLO error budgets and burn rates, and the scaling recommendation.
//!
//! Evaluated once a second by the sampler (`observe::live`), never per request. A rule is
//! a pure state machine ([`RuleState::step`], clock injected) moving inactive → pending
//! (condition true, `for` not yet elapsed) → firing → resolved, like Prometheus. Firing
//! and resolving are logged, put in the event ring, shown on the dashboard and sent to the
//! Alertmanager-compatible webhook with retries (`observe::webhook`).
//!
//! SLOs keep one (total, bad) pair per minute for their window (at most 30 days:
//! 43,200 pairs, 675 KiB per SLO, at most 16 SLOs) plus the current minute.

use super::live::Published;
use super::webhook::{self, Notification};
use crate::config::observability::{AlertRule, SloConfig, SloKind};
use crate::state::Shared;
use crate::supervisor::SlotStatus;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds of per-second totals kept for the 1 min and 5 min rates.
const RATE_SECONDS: usize = 300;
/// A worker is asked to stay under this much CPU (cores) on average.
const TARGET_CPU_PER_WORKER: f64 = 0.6;
/// Below this average CPU per worker, fewer workers are recommended.
const SCALE_DOWN_CPU: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    fn code(self) -> i64 {
        match self {
            AlertState::Inactive => 0,
            AlertState::Pending => 1,
            AlertState::Firing => 2,
            AlertState::Resolved => 3,
        }
    }
}

/// What a step changed that must be notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fired,
    Resolved,
}

/// The state of one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleState {
    pub state: AlertState,
    /// When the condition started holding (pending since).
    pub active_since: Option<Instant>,
    /// Wall-clock time the alert fired, for the webhook's `startsAt`.
    pub fired_at: Option<f64>,
}

impl Default for RuleState {
    fn default() -> Self {
        RuleState {
            state: AlertState::Inactive,
            active_since: None,
            fired_at: None,
        }
    }
}

impl RuleState {
    /// Advances with this second's condition. `holds` is `None` when the metric has no
    /// value (e.g. no traffic for a percentile): the state is kept as it is.
    pub fn step(
        &mut self,
        holds: Option<bool>,
        for_: Duration,
        now: Instant,
        wall: f64,
    ) -> Option<Transition> {
        let holds = holds?;
        match (self.state, holds) {
            (AlertState::Inactive | AlertState::Resolved, true) => {
                self.active_since = Some(now);
                if for_.is_zero() {
                    self.state = AlertState::Firing;
                    self.fired_at = Some(wall);
                    return Some(Transition::Fired);
                }
                self.state = AlertState::Pending;
                None
            }
            (AlertState::Pending, true) => {
                let since = self.active_since.unwrap_or(now);
                if now.duration_since(since) >= for_ {
                    self.state = AlertState::Firing;
                    self.fired_at = Some(wall);
                    return Some(Transition::Fired);
                }
                None
            }
            (AlertState::Pending, false) => {
                self.state = AlertState::Inactive;
                self.active_since = None;
                None
            }
            (AlertState::Firing, false) => {
                self.state = AlertState::Resolved;
                self.active_since = None;
                Some(Transition::Resolved)
            }
            (AlertState::Firing, true) | (AlertState::Inactive | AlertState::Resolved, false) => {
                None
            }
        }
    }
}

/// (total, bad) request counts.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    total: u64,
    bad: u64,
}

struct SloRuntime {
    cfg: SloConfig,
    /// Completed minutes, newest last, at most `window` minutes.
    minutes: VecDeque<Counts>,
    current: Counts,
    seconds_in_minute: u32,
}

impl SloRuntime {
    fn new(cfg: SloConfig) -> Self {
        SloRuntime {
            cfg,
            minutes: VecDeque::new(),
            current: Counts::default(),
            seconds_in_minute: 0,
        }
    }

    fn max_minutes(&self) -> usize {
        (self.cfg.window.as_secs() / 60).max(1) as usize
    }

    fn push_second(&mut self, c: Counts) {
        self.current.total += c.total;
        self.current.bad += c.bad;
        self.seconds_in_minute += 1;
        if self.seconds_in_minute == 60 {
            if self.minutes.len() == self.max_minutes() {
                self.minutes.pop_front();
            }
            self.minutes.push_back(self.current);
            self.current = Counts::default();
            self.seconds_in_minute = 0;
        }
    }

    /// Counts of the last `minutes` minutes (plus the current partial one).
    fn over(&self, minutes: usize) -> Counts {
        let mut c = self.current;
        for m in self.minutes.iter().rev().take(minutes) {
            c.total += m.total;
            c.bad += m.bad;
        }
        c
    }

    fn budget(&self) -> f64 {
        1.0 - self.cfg.objective
    }

    /// Bad share over the window divided by the allowed share (1.0 = on budget pace).
    fn burn_rate(&self, minutes: usize) -> f64 {
        let c = self.over(minutes);
        if c.total == 0 {
            return 0.0;
        }
        (c.bad as f64 / c.total as f64) / self.budget()
    }

    fn budget_remaining(&self) -> f64 {
        let c = self.over(self.max_minutes());
        if c.total == 0 {
            return 1.0;
        }
        1.0 - (c.bad as f64 / c.total as f64) / self.budget()
    }

    fn status(&self) -> Value {
        let all = self.over(self.max_minutes());
        json!({
            "name": self.cfg.name,
            "kind": match self.cfg.kind { SloKind::Availability => "availability", SloKind::Latency(_) => "latency" },
            "threshold_seconds": match self.cfg.kind { SloKind::Latency(t) => Some(t.as_secs_f64()), _ => None },
            "objective": self.cfg.objective,
            "window_seconds": self.cfg.window.as_secs(),
            "requests": all.total,
            "bad": all.bad,
            "budget_remaining": self.budget_remaining(),
            "burn_rate_5m": self.burn_rate(5),
            "burn_rate_30m": self.burn_rate(30),
            "burn_rate_1h": self.burn_rate(60),
            "burn_rate_6h": self.burn_rate(360),
            "burn_rate_short": self.burn_rate(5),
            "burn_rate_long": self.burn_rate(60),
        })
    }
}

struct RuleRuntime {
    rule: AlertRule,
    state: RuleState,
    value: Option<f64>,
}

/// One second of input, computed by the sampler.
pub struct Sample<'a> {
    pub published: &'a Published,
    pub slots: &'a [SlotStatus],
    /// Requests and bad ones (5xx or failed) completed in the last second.
    pub total: u64,
    pub errors: u64,
    /// Per configured SLO (same order): requests slower than its threshold last second.
    pub slow: &'a [u64],
    pub latency_count: u64,
}

#[derive(Default)]
struct Inner {
    rules: Vec<RuleRuntime>,
    slos: Vec<SloRuntime>,
    /// Per second: (total, errors, queue length, worker CPU cores summed, workers).
    seconds: VecDeque<(u64, u64, usize, f64, usize)>,
    scaling: Value,
    config: Option<Arc<crate::config::Config>>,
}

struct AlertMetrics {
    state: IntGaugeVec,
    slo_budget: GaugeVec,
    slo_burn: GaugeVec,
    notifications: IntCounterVec,
}

pub struct Alerts {
    inner: Mutex<Inner>,
    metrics: AlertMetrics,
    pub(crate) webhook: Arc<webhook::Sender>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Alerts {
    pub fn new(r: &Registry) -> Self {
        use super::names::*;
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric registered twice");
            c
        }
        let notifications = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    ALERT_NOTIFICATIONS_TOTAL,
                    "Webhook notifications by result (delivered, failed after retries, dropped)",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        for res in ["delivered", "failed", "dropped"] {
            notifications.with_label_values(&[res]);
        }
        Alerts {
            inner: Mutex::new(Inner::default()),
            metrics: AlertMetrics {
                state: reg(
                    r,
                    IntGaugeVec::new(
                        Opts::new(
                            ALERT_STATE,
                            "Alert rule state: 0 inactive, 1 pending, 2 firing, 3 resolved",
                        ),
                        &["alertname", "severity"],
                    )
                    .expect("valid metric"),
                ),
                slo_budget: reg(
                    r,
                    GaugeVec::new(
                        Opts::new(
                            SLO_ERROR_BUDGET_REMAINING,
                            "Share of the SLO's error budget left over its window (negative = overspent)",
                        ),
                        &["slo"],
                    )
                    .expect("valid metric"),
                ),
                slo_burn: reg(
                    r,
                    GaugeVec::new(
                        Opts::new(
                            SLO_BURN_RATE,
                            "SLO burn rate over a window (1 = spending the budget exactly over the SLO window)",
                        ),
                        &["slo", "window"],
                    )
                    .expect("valid metric"),
                ),
                notifications: notifications.clone(),
            },
            webhook: Arc::new(webhook::Sender::new(notifications)),
        }
    }

    /// Rebuilds rules and SLOs when the config changed, keeping the state of rules and
    /// SLOs whose definition is unchanged.
    fn sync_config(&self, inner: &mut Inner, cfg: &Arc<crate::config::Config>) {
        if inner.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, cfg)) {
            return;
        }
        inner.config = Some(cfg.clone());
        let mut old_rules: HashMap<String, RuleRuntime> = inner
            .rules
            .drain(..)
            .map(|r| (r.rule.name.clone(), r))
            .collect();
        inner.rules = cfg
            .observability
            .alerts
            .rules
            .iter()
            .map(|rule| match old_rules.remove(&rule.name) {
                Some(r) if r.rule == *rule => r,
                _ => RuleRuntime {
                    rule: rule.clone(),
                    state: RuleState::default(),
                    value: None,
                },
            })
            .collect();
        let mut old_slos: HashMap<String, SloRuntime> = inner
            .slos
            .drain(..)
            .map(|s| (s.cfg.name.clone(), s))
            .collect();
        inner.slos = cfg
            .observability
            .slos
            .iter()
            .map(|s| match old_slos.remove(&s.name) {
                Some(r) if r.cfg == *s => r,
                _ => SloRuntime::new(s.clone()),
            })
            .collect();
        self.metrics.state.reset();
        self.metrics.slo_budget.reset();
        self.metrics.slo_burn.reset();
    }

    /// One evaluation; call once a second.
    pub fn evaluate(&self, shared: &Shared, s: &Sample<'_>, now: Instant) {
        let cfg = shared.config();
        let mut inner = lock(&self.inner);
        self.sync_config(&mut inner, &cfg);
        let p = s.published;
        let members = shared.pool.members();

        // Per-second history for 1 min / 5 min rates and the scaling advice.
        let worker_cpu: f64 = p
            .processes
            .iter()
            .filter(|(n, _)| n.starts_with("worker-"))
            .map(|(_, v)| v.cpu_cores)
            .sum();
        let running = s.slots.iter().filter(|w| w.pid.is_some()).count();
        if inner.seconds.len() == RATE_SECONDS {
            inner.seconds.pop_front();
        }
        inner.seconds.push_back((
            s.total,
            s.errors,
            shared.pool.queue.len(),
            worker_cpu,
            running,
        ));
        let over = |secs: usize| {
            inner
                .seconds
                .iter()
                .rev()
                .take(secs)
                .fold((0u64, 0u64), |a, x| (a.0 + x.0, a.1 + x.1))
        };
        let ratio = |(t, e): (u64, u64)| if t == 0 { 0.0 } else { e as f64 / t as f64 };
        let (t60, _) = over(60);
        let error_ratio_1m = ratio(over(60));
        let error_ratio_5m = ratio(over(300));
        let secs60 = inner.seconds.len().clamp(1, 60) as f64;

        for (i, slo) in inner.slos.iter_mut().enumerate() {
            let c = match slo.cfg.kind {
                SloKind::Availability => Counts {
                    total: s.total,
                    bad: s.errors,
                },
                SloKind::Latency(_) => Counts {
                    total: s.latency_count,
                    bad: s.slow.get(i).copied().unwrap_or(0),
                },
            };
            slo.push_second(c);
        }

        let lat = |o: Option<f64>, count: u64| if count == 0 { None } else { o };
        let l10 = &p.latency.ten_seconds;
        let l1m = &p.latency.one_minute;
        let l5m = &p.latency.five_minutes;
        let value_of = |expr: &str, slos: &[SloRuntime]| -> Option<f64> {
            if let Some(v) = targeted_value(shared, p, expr) {
                return v;
            }
            if let Some((m, name)) = expr.split_once(':') {
                let slo = slos.iter().find(|x| x.cfg.name == name)?;
                return Some(match m {
                    "burn_rate_5m" => slo.burn_rate(5),
                    "burn_rate_30m" => slo.burn_rate(30),
                    "burn_rate_1h" => slo.burn_rate(60),
                    "burn_rate_6h" => slo.burn_rate(360),
                    "error_budget_remaining" => slo.budget_remaining(),
                    _ => return None,
                });
            }
            Some(match expr {
                "rps" => p.rps,
                "rps_1m" => t60 as f64 / secs60,
                "error_ratio" => p.error_ratio,
                "error_ratio_1m" => error_ratio_1m,
                "error_ratio_5m" => error_ratio_5m,
                "p50_10s" => return lat(Some(l10.p50), l10.count),
                "p95_10s" => return lat(Some(l10.p95), l10.count),
                "p99_10s" => return lat(Some(l10.p99), l10.count),
                "p999_10s" => return lat(Some(l10.p999), l10.count),
                "p50_1m" => return lat(Some(l1m.p50), l1m.count),
                "p95_1m" => return lat(Some(l1m.p95), l1m.count),
                "p99_1m" => return lat(Some(l1m.p99), l1m.count),
                "p999_1m" => return lat(Some(l1m.p999), l1m.count),
                "p99_5m" => return lat(Some(l5m.p99), l5m.count),
                "in_flight" => p.in_flight as f64,
                "queue_length" => shared.pool.queue.len() as f64,
                "workers_healthy" => members.iter().filter(|b| b.in_rotation()).count() as f64,
                "workers_down" => s
                    .slots
                    .iter()
                    .filter(|w| {
                        !w.backend_id
                            .and_then(|id| members.iter().find(|b| b.id == id))
                            .is_some_and(|b| b.in_rotation())
                    })
                    .count() as f64,
                "workers_crash_looping" => {
                    s.slots.iter().filter(|w| w.crash_looping).count() as f64
                }
                "breakers_open" => members
                    .iter()
                    .filter(|b| !b.breaker.admits_traffic())
                    .count() as f64,
                _ => return None,
            })
        };

        let wall = p.time;
        let Inner { rules, slos, .. } = &mut *inner;
        let mut notes = Vec::new();
        for r in rules.iter_mut() {
            let v = value_of(&r.rule.expr, slos);
            r.value = v;
            let holds = v.map(|v| r.rule.op.holds(v, r.rule.threshold));
            if let Some(t) = r.state.step(holds, r.rule.for_, now, wall) {
                notes.push((t, r.rule.clone(), v.unwrap_or(f64::NAN), r.state.fired_at));
            }
            self.metrics
                .state
                .with_label_values(&[&r.rule.name, &r.rule.severity])
                .set(r.state.state.code());
        }
        for slo in slos.iter() {
            self.metrics
                .slo_budget
                .with_label_values(&[&slo.cfg.name])
                .set(slo.budget_remaining());
            for (w, m) in [("5m", 5), ("30m", 30), ("1h", 60), ("6h", 360)] {
                self.metrics
                    .slo_burn
                    .with_label_values(&[&slo.cfg.name, w])
                    .set(slo.burn_rate(m));
            }
        }
        inner.scaling = scaling_advice(shared, &cfg, p, s.slots, &inner.seconds);
        drop(inner);

        for (t, rule, value, fired_at) in notes {
            let firing = t == Transition::Fired;
            let msg = format!(
                "{} {}: {} {} {} (value {value:.4}){}",
                rule.name,
                if firing { "firing" } else { "resolved" },
                rule.expr,
                rule.op.as_str(),
                rule.threshold,
                if rule.summary.is_empty() {
                    String::new()
                } else {
                    format!(": {}", rule.summary)
                }
            );
            if firing {
                log::warn!(target: "alert", "{msg}");
            } else {
                log::info!(target: "alert", "{msg}");
            }
            shared.observe.event("alert", msg);
            if let Some(target) = &cfg.observability.alerts.webhook {
                self.webhook.send(
                    target.clone(),
                    Notification {
                        rule,
                        firing,
                        value,
                        starts_at: fired_at.unwrap_or(wall),
                        ends_at: if firing { None } else { Some(wall) },
                        instance: cfg.listen.to_string(),
                        admin: cfg.admin.listen.to_string(),
                    },
                    cfg.observability.alerts.webhook_retries,
                    cfg.observability.alerts.webhook_timeout,
                );
            }
        }
    }

    /// Every rule with its state and last value, pending and firing first.
    pub fn rules(&self) -> Vec<Value> {
        let inner = lock(&self.inner);
        inner
            .rules
            .iter()
            .map(|r| {
                json!({
                    "name": r.rule.name,
                    "state": r.state.state,
                    "expr": r.rule.expr,
                    "op": r.rule.op.as_str(),
                    "threshold": r.rule.threshold,
                    "for_seconds": r.rule.for_.as_secs_f64(),
                    "severity": r.rule.severity,
                    "summary": r.rule.summary,
                    "value": r.value,
                    "fired_at": r.state.fired_at,
                })
            })
            .collect()
    }

    /// Pending and firing alerts.
    pub fn active(&self) -> Vec<Value> {
        self.rules()
            .into_iter()
            .filter(|r| r["state"] == "pending" || r["state"] == "firing")
            .collect()
    }

    pub fn slo_status(&self) -> Vec<Value> {
        lock(&self.inner).slos.iter().map(|s| s.status()).collect()
    }

    pub fn scaling(&self) -> Value {
        lock(&self.inner).scaling.clone()
    }

    pub fn notifications(&self, result: &str) -> u64 {
        self.metrics
            .notifications
            .with_label_values(&[result])
            .get()
    }
}

/// The value of a per-process (`rss_bytes:worker-0`), per-backend
/// (`backend_p99_10s:any_backend`) or worker-reported (`app:NAME[:AGG][@BACKEND]`)
/// metric: `None` when `expr` is none of these, `Some(None)` when it has no value now.
fn targeted_value(shared: &Shared, p: &Published, expr: &str) -> Option<Option<f64>> {
    use crate::config::observability::{BACKEND_METRICS, PROCESS_METRICS};
    let (m, target) = expr.split_once(':')?;
    if m == "app" {
        return Some(shared.observe.custom.alert_value(target));
    }
    if PROCESS_METRICS.contains(&m) {
        let of = |s: &super::live::ProcessSample| match m {
            "cpu_cores" => s.cpu_cores,
            "rss_bytes" => s.stats.rss_bytes as f64,
            _ => s.stats.open_fds as f64,
        };
        return Some(if target == "any_worker" {
            p.processes
                .iter()
                .filter(|(n, _)| n.starts_with("worker-"))
                .map(|(_, s)| of(s))
                .reduce(f64::max)
        } else {
            p.processes.get(target).map(of)
        });
    }
    if !BACKEND_METRICS.contains(&m) {
        return None;
    }
    let of = |name: &str| -> Option<f64> {
        let lat = p.backends.get(name);
        let pct = |w: Option<&super::latency::Percentiles>,
                   q: fn(&super::latency::Percentiles) -> f64| {
            w.filter(|w| w.count > 0).map(q)
        };
        match m {
            "backend_rps" => p.backend_rps.get(name).copied(),
            "backend_in_flight" => p.backend_in_flight.get(name).map(|v| *v as f64),
            "backend_error_ratio" => p.backend_error_ratio.get(name).copied(),
            "backend_p50_10s" => pct(lat.map(|l| &l.ten_seconds), |w| w.p50),
            "backend_p99_10s" => pct(lat.map(|l| &l.ten_seconds), |w| w.p99),
            _ => pct(lat.map(|l| &l.one_minute), |w| w.p99),
        }
    };
    Some(if target == "any_backend" {
        p.backend_rps
            .keys()
            .chain(p.backends.keys())
            .filter_map(|n| of(n))
            .reduce(f64::max)
    } else {
        of(target)
    })
}

/// How many workers drover would want, and why: CPU per worker against a target,
/// queueing, and the in-flight limit, averaged over the last minute.
fn scaling_advice(
    shared: &Shared,
    cfg: &crate::config::Config,
    p: &Published,
    slots: &[SlotStatus],
    seconds: &VecDeque<(u64, u64, usize, f64, usize)>,
) -> Value {
    let current = cfg.workers.count;
    if current == 0 {
        return json!({ "current_workers": 0, "recommended_workers": null, "reason": "no forked workers (upstreams only)" });
    }
    let last: Vec<_> = seconds.iter().rev().take(60).collect();
    let n = last.len().max(1) as f64;
    let cpu_per_worker = last
        .iter()
        .map(|s| if s.4 > 0 { s.3 / s.4 as f64 } else { 0.0 })
        .sum::<f64>()
        / n;
    let queued_share = last.iter().filter(|s| s.2 > 0).count() as f64 / n;
    let mut want = ((current as f64 * cpu_per_worker) / TARGET_CPU_PER_WORKER).ceil() as usize;
    let mut reasons = vec![format!(
        "workers use {:.0}% CPU on average over the last {}s (target {:.0}%)",
        cpu_per_worker * 100.0,
        last.len(),
        TARGET_CPU_PER_WORKER * 100.0
    )];
    if queued_share > 0.2 {
        want = want.max(current + 1);
        reasons.push(format!(
            "requests queued for a free worker in {:.0}% of the last seconds",
            queued_share * 100.0
        ));
    }
    let limit = cfg.balancing.max_inflight_per_backend;
    if limit > 0 {
        let avg_inflight = p.in_flight.max(0) as f64;
        let need = (avg_inflight / (limit as f64 * 0.8)).ceil() as usize;
        if need > want {
            want = need;
            reasons.push(format!(
                "{avg_inflight:.0} requests in flight against {limit} per worker"
            ));
        }
    }
    let crash = slots.iter().filter(|s| s.crash_looping).count();
    if crash > 0 {
        reasons.push(format!(
            "{crash} worker(s) crash-looping: more workers will not help"
        ));
    }
    let recommended = if want < current && cpu_per_worker > SCALE_DOWN_CPU {
        current // not idle enough to shrink: avoid flapping
    } else {
        want.clamp(1, crate::config::MAX_WORKERS)
    };
    let action = match recommended.cmp(&current) {
        std::cmp::Ordering::Greater => "scale_up",
        std::cmp::Ordering::Less => "scale_down",
        std::cmp::Ordering::Equal => "keep",
    };
    let _ = shared.auto_strategy.load(Ordering::Relaxed);
    json!({
        "current_workers": current,
        "recommended_workers": recommended,
        "action": action,
        "cpu_per_worker": cpu_per_worker,
        "queued_share": queued_share,
        "reason": reasons.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_goes_pending_then_firing_then_resolved() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let for_ = Duration::from_secs(30);
        let mut r = RuleState::default();
        assert_eq!(r.step(Some(true), for_, s(0), 0.0), None);
        assert_eq!(r.state, AlertState::Pending);
        assert_eq!(r.step(Some(true), for_, s(29), 0.0), None);
        assert_eq!(r.state, AlertState::Pending);
        // No data keeps the state.
        assert_eq!(r.step(None, for_, s(29), 0.0), None);
        assert_eq!(
            r.step(Some(true), for_, s(30), 30.0),
            Some(Transition::Fired)
        );
        assert_eq!(r.state, AlertState::Firing);
        assert_eq!(r.fired_at, Some(30.0));
        assert_eq!(r.step(Some(true), for_, s(40), 0.0), None);
        assert_eq!(
            r.step(Some(false), for_, s(41), 0.0),
            Some(Transition::Resolved)
        );
        assert_eq!(r.state, AlertState::Resolved);
        assert_eq!(r.step(Some(false), for_, s(42), 0.0), None);
        assert_eq!(r.state, AlertState::Resolved);
    }

    #[test]
    fn a_blip_shorter_than_for_never_fires() {
        let t0 = Instant::now();
        let for_ = Duration::from_secs(10);
        let mut r = RuleState::default();
        r.step(Some(true), for_, t0, 0.0);
        assert_eq!(
            r.step(Some(false), for_, t0 + Duration::from_secs(5), 0.0),
            None
        );
        assert_eq!(r.state, AlertState::Inactive);
        // The clock restarts with the next breach.
        r.step(Some(true), for_, t0 + Duration::from_secs(6), 0.0);
        assert_eq!(
            r.step(Some(true), for_, t0 + Duration::from_secs(15), 0.0),
            None
        );
        assert_eq!(
            r.step(Some(true), for_, t0 + Duration::from_secs(16), 0.0),
            Some(Transition::Fired)
        );
        // for: 0 fires at once.
        let mut z = RuleState::default();
        assert_eq!(
            z.step(Some(true), Duration::ZERO, t0, 0.0),
            Some(Transition::Fired)
        );
    }

    #[test]
    fn slo_burn_rate_and_budget() {
        let mut slo = SloRuntime::new(SloConfig {
            name: "a".into(),
            kind: SloKind::Availability,
            objective: 0.99,
            window: Duration::from_secs(3600),
        });
        // 10 minutes at 1% errors: burning exactly at budget pace.
        for _ in 0..600 {
            slo.push_second(Counts { total: 100, bad: 1 });
        }
        assert!(
            (slo.burn_rate(5) - 1.0).abs() < 1e-9,
            "{}",
            slo.burn_rate(5)
        );
        assert!((slo.budget_remaining() - 0.0).abs() < 1e-9);
        // 5 minutes at 10% errors: the short window burns 10x, the hour ~4x.
        for _ in 0..300 {
            slo.push_second(Counts {
                total: 100,
                bad: 10,
            });
        }
        assert!(
            (slo.burn_rate(5) - 10.0).abs() < 1e-9,
            "{}",
            slo.burn_rate(5)
        );
        let hour = (600.0 * 1.0 + 300.0 * 10.0) / 900.0;
        assert!((slo.burn_rate(60) - hour).abs() < 1e-9);
        assert!(slo.budget_remaining() < 0.0);
        // The window is bounded: 2 hours of pushes keep 60 minutes.
        for _ in 0..7200 {
            slo.push_second(Counts { total: 1, bad: 0 });
        }
        assert_eq!(slo.minutes.len(), 60);
        assert_eq!(slo.budget_remaining(), 1.0);
    }
}
