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
//!
//! One file per concern: `rules` (the state machine), `slo` (error budgets and burn
//! rates), `signals` (a rule's metric evaluated against the second's snapshot, tied to
//! the names `config::observability` accepts) and `advice` (the scaling recommendation);
//! this file runs them every second and notifies.

mod advice;
mod rules;
mod signals;
mod slo;

pub use rules::{AlertState, RuleState, Transition};

use super::live::Observer;
use super::live::Published;
use super::view::SlotStatus;
use super::view::View;
use super::webhook::{self, Notification};
use crate::config::observability::SloKind;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rules::RuleRuntime;
use serde_json::{json, Value};
use slo::{Counts, SloRuntime};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Seconds of per-second totals kept for the 1 min and 5 min rates.
const RATE_SECONDS: usize = 300;

/// One second of input, computed by the sampler.
pub struct Sample<'a> {
    /// What the sampler just published for this second (rates, percentiles, processes).
    pub published: &'a Published,
    /// Every worker slot's status this second (pid, crash loop, backend id).
    pub slots: &'a [SlotStatus],
    /// Requests and bad ones (5xx or failed) completed in the last second.
    pub total: u64,
    /// The bad ones among `total`: 5xx or failed before a status.
    pub errors: u64,
    /// Per configured SLO (same order): requests slower than its threshold last second.
    pub slow: &'a [u64],
    /// Requests in the overall latency recorder's last completed second: the total that
    /// latency SLOs count `slow` against.
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

/// Alert rules, SLOs and scaling advice with their state across seconds; owned by the
/// `Observer` and evaluated by its sampler.
pub struct Alerts {
    inner: Mutex<Inner>,
    metrics: AlertMetrics,
    pub(crate) webhook: Arc<webhook::Sender>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Alerts {
    /// Registers the alert, SLO and notification series into `r` and starts the webhook
    /// sender; rules and SLOs are loaded from the config on the first evaluation.
    pub fn new(r: &Registry) -> Self {
        use crate::metric_names::*;
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
    pub fn evaluate(&self, v: &View<'_>, observer: &Observer, s: &Sample<'_>, now: Instant) {
        let cfg = v.config.clone();
        let mut inner = lock(&self.inner);
        self.sync_config(&mut inner, &cfg);
        let p = s.published;
        let members = v.pool.members();

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
        inner
            .seconds
            .push_back((s.total, s.errors, v.pool.queue.len(), worker_cpu, running));
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

        let snap = signals::Snapshot {
            published: p,
            rps_1m: t60 as f64 / secs60,
            error_ratio_1m,
            error_ratio_5m,
            queue_length: v.pool.queue.len(),
            workers_healthy: members.iter().filter(|b| b.in_rotation()).count(),
            workers_down: s
                .slots
                .iter()
                .filter(|w| {
                    !w.backend_id
                        .and_then(|id| members.iter().find(|b| b.id == id))
                        .is_some_and(|b| b.in_rotation())
                })
                .count(),
            workers_crash_looping: s.slots.iter().filter(|w| w.crash_looping).count(),
            breakers_open: members
                .iter()
                .filter(|b| !b.breaker.admits_traffic())
                .count(),
        };

        let wall = p.time;
        let Inner { rules, slos, .. } = &mut *inner;
        let mut notes = Vec::new();
        for r in rules.iter_mut() {
            let v = signals::value_of(observer, &snap, slos, &r.rule.expr);
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
        inner.scaling = advice::scaling_advice(&cfg, p, s.slots, &inner.seconds);
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
            observer.event("alert", msg);
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

    /// One JSON object per configured SLO: objective, window, counts, budget left and
    /// burn rates (5m, 30m, 1h, 6h).
    pub fn slo_status(&self) -> Vec<Value> {
        lock(&self.inner).slos.iter().map(|s| s.status()).collect()
    }

    /// The latest scaling recommendation (current and recommended workers, reasons), as
    /// JSON; `Null` before the first evaluation.
    pub fn scaling(&self) -> Value {
        lock(&self.inner).scaling.clone()
    }

    /// Webhook notifications so far with `result` `delivered`, `failed` (after retries)
    /// or `dropped`; 0 for any other label.
    pub fn notifications(&self, result: &str) -> u64 {
        self.metrics
            .notifications
            .with_label_values(&[result])
            .get()
    }
}
