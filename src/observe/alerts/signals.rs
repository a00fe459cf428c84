//! Evaluating a rule's expression (a metric name, maybe `NAME:TARGET`) against one
//! second's snapshot. The names are the ones `config::observability` accepts
//! ([`ALERT_METRICS`], [`SLO_METRICS`], [`PROCESS_METRICS`], [`BACKEND_METRICS`]); the
//! tables below are tied to those lists by
//! `tests::evaluator_and_config_know_the_same_metrics`.
//!
//! [`ALERT_METRICS`]: crate::config::observability::ALERT_METRICS
//! [`SLO_METRICS`]: crate::config::observability::SLO_METRICS
//! [`PROCESS_METRICS`]: crate::config::observability::PROCESS_METRICS
//! [`BACKEND_METRICS`]: crate::config::observability::BACKEND_METRICS

use super::slo::SloRuntime;
use crate::observe::latency::Percentiles;
use crate::observe::live::Observer;
use crate::observe::live::{ProcessSample, Published};

/// The overall values of one second, computed once per evaluation.
pub(super) struct Snapshot<'a> {
    pub(super) published: &'a Published,
    pub(super) rps_1m: f64,
    pub(super) error_ratio_1m: f64,
    pub(super) error_ratio_5m: f64,
    pub(super) queue_length: usize,
    pub(super) workers_healthy: usize,
    pub(super) workers_down: usize,
    pub(super) workers_crash_looping: usize,
    pub(super) breakers_open: usize,
}

/// A percentile of a window, `None` when the window has no samples.
fn pct(w: &Percentiles, q: fn(&Percentiles) -> f64) -> Option<f64> {
    if w.count == 0 {
        None
    } else {
        Some(q(w))
    }
}

type Overall = fn(&Snapshot<'_>) -> Option<f64>;

/// Overall metrics (`rps`, `p99_10s`, ...). Latencies are seconds, ratios 0..1.
pub(super) const OVERALL: &[(&str, Overall)] = &[
    ("rps", |s| Some(s.published.rps)),
    ("rps_1m", |s| Some(s.rps_1m)),
    ("error_ratio", |s| Some(s.published.error_ratio)),
    ("error_ratio_1m", |s| Some(s.error_ratio_1m)),
    ("error_ratio_5m", |s| Some(s.error_ratio_5m)),
    ("p50_10s", |s| {
        pct(&s.published.latency.ten_seconds, |w| w.p50)
    }),
    ("p95_10s", |s| {
        pct(&s.published.latency.ten_seconds, |w| w.p95)
    }),
    ("p99_10s", |s| {
        pct(&s.published.latency.ten_seconds, |w| w.p99)
    }),
    ("p999_10s", |s| {
        pct(&s.published.latency.ten_seconds, |w| w.p999)
    }),
    ("p50_1m", |s| {
        pct(&s.published.latency.one_minute, |w| w.p50)
    }),
    ("p95_1m", |s| {
        pct(&s.published.latency.one_minute, |w| w.p95)
    }),
    ("p99_1m", |s| {
        pct(&s.published.latency.one_minute, |w| w.p99)
    }),
    ("p999_1m", |s| {
        pct(&s.published.latency.one_minute, |w| w.p999)
    }),
    ("p99_5m", |s| {
        pct(&s.published.latency.five_minutes, |w| w.p99)
    }),
    ("in_flight", |s| Some(s.published.in_flight as f64)),
    ("queue_length", |s| Some(s.queue_length as f64)),
    ("workers_healthy", |s| Some(s.workers_healthy as f64)),
    ("workers_down", |s| Some(s.workers_down as f64)),
    ("workers_crash_looping", |s| {
        Some(s.workers_crash_looping as f64)
    }),
    ("breakers_open", |s| Some(s.breakers_open as f64)),
];

type PerSlo = fn(&SloRuntime) -> f64;

/// Per-SLO metrics, written `NAME:SLO`.
pub(super) const PER_SLO: &[(&str, PerSlo)] = &[
    ("burn_rate_5m", |s| s.burn_rate(5)),
    ("burn_rate_30m", |s| s.burn_rate(30)),
    ("burn_rate_1h", |s| s.burn_rate(60)),
    ("burn_rate_6h", |s| s.burn_rate(360)),
    ("error_budget_remaining", |s| s.budget_remaining()),
];

type PerProcess = fn(&ProcessSample) -> f64;

/// Per-process metrics, written `NAME:PROCESS`.
pub(super) const PER_PROCESS: &[(&str, PerProcess)] = &[
    ("cpu_cores", |s| s.cpu_cores),
    ("rss_bytes", |s| s.stats.rss_bytes as f64),
    ("open_fds", |s| s.stats.open_fds as f64),
];

type PerBackend = fn(&Published, &str) -> Option<f64>;

/// Per-backend metrics, written `NAME:BACKEND`.
pub(super) const PER_BACKEND: &[(&str, PerBackend)] = &[
    ("backend_rps", |p, b| p.backend_rps.get(b).copied()),
    ("backend_in_flight", |p, b| {
        p.backend_in_flight.get(b).map(|v| *v as f64)
    }),
    ("backend_error_ratio", |p, b| {
        p.backend_error_ratio.get(b).copied()
    }),
    ("backend_p50_10s", |p, b| {
        p.backends
            .get(b)
            .and_then(|l| pct(&l.ten_seconds, |w| w.p50))
    }),
    ("backend_p99_10s", |p, b| {
        p.backends
            .get(b)
            .and_then(|l| pct(&l.ten_seconds, |w| w.p99))
    }),
    ("backend_p99_1m", |p, b| {
        p.backends
            .get(b)
            .and_then(|l| pct(&l.one_minute, |w| w.p99))
    }),
];

fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The value of `expr` now: `None` when it is unknown or has no value (e.g. no traffic
/// for a percentile, an unknown SLO or target).
pub(super) fn value_of(
    observer: &Observer,
    snap: &Snapshot<'_>,
    slos: &[SloRuntime],
    expr: &str,
) -> Option<f64> {
    if let Some(v) = targeted_value(observer, snap.published, expr) {
        return v;
    }
    if let Some((m, name)) = expr.split_once(':') {
        let slo = slos.iter().find(|x| x.cfg.name == name)?;
        return lookup(PER_SLO, m).map(|f| f(slo));
    }
    lookup(OVERALL, expr)?(snap)
}

/// The value of a per-process (`rss_bytes:worker-0`), per-backend
/// (`backend_p99_10s:any_backend`) or worker-reported (`app:NAME[:AGG][@BACKEND]`)
/// metric: `None` when `expr` is none of these, `Some(None)` when it has no value now.
fn targeted_value(observer: &Observer, p: &Published, expr: &str) -> Option<Option<f64>> {
    let (m, target) = expr.split_once(':')?;
    if m == "app" {
        return Some(observer.custom.alert_value(target));
    }
    if let Some(of) = lookup(PER_PROCESS, m) {
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
    let of = lookup(PER_BACKEND, m)?;
    Some(if target == "any_backend" {
        p.backend_rps
            .keys()
            .chain(p.backends.keys())
            .filter_map(|n| of(p, n))
            .reduce(f64::max)
    } else {
        of(p, target)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::observability::{
        targeted_expr_ok, SloConfig, SloKind, ALERT_METRICS, BACKEND_METRICS, PROCESS_METRICS,
        SLO_METRICS,
    };
    use crate::observe::live::LatencyWindows;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn names<T>(table: &[(&'static str, T)]) -> BTreeSet<&'static str> {
        let set: BTreeSet<_> = table.iter().map(|(n, _)| *n).collect();
        assert_eq!(set.len(), table.len(), "a name is listed twice");
        set
    }

    fn set(list: &[&'static str]) -> BTreeSet<&'static str> {
        let set: BTreeSet<_> = list.iter().copied().collect();
        assert_eq!(set.len(), list.len(), "a name is listed twice");
        set
    }

    /// Every name the config accepts for a rule is one the evaluator computes (and has a
    /// value for on a sample with traffic), and every name the evaluator computes is one
    /// the config accepts: the two lists cannot drift apart.
    #[test]
    fn evaluator_and_config_know_the_same_metrics() {
        let w = Percentiles {
            count: 10,
            p50: 0.01,
            p95: 0.02,
            p99: 0.03,
            p999: 0.04,
            max: 0.05,
        };
        let windows = LatencyWindows {
            ten_seconds: w,
            one_minute: w,
            five_minutes: w,
        };
        let mut p = Published {
            latency: windows.clone(),
            ..Published::default()
        };
        p.backends.insert("worker-0".into(), windows);
        p.backend_rps.insert("worker-0".into(), 5.0);
        p.backend_in_flight.insert("worker-0".into(), 1);
        p.backend_error_ratio.insert("worker-0".into(), 0.0);
        p.processes
            .insert("worker-0".into(), ProcessSample::default());
        let snap = Snapshot {
            published: &p,
            rps_1m: 1.0,
            error_ratio_1m: 0.0,
            error_ratio_5m: 0.0,
            queue_length: 0,
            workers_healthy: 1,
            workers_down: 0,
            workers_crash_looping: 0,
            breakers_open: 0,
        };

        // Overall metrics.
        assert_eq!(names(OVERALL), set(ALERT_METRICS));
        for m in ALERT_METRICS {
            let f = lookup(OVERALL, m).unwrap_or_else(|| panic!("{m}: not evaluated"));
            assert!(f(&snap).is_some(), "{m}: no value on a sample with traffic");
        }

        // Per SLO.
        assert_eq!(names(PER_SLO), set(SLO_METRICS));
        let slo = SloRuntime::new(SloConfig {
            name: "a".into(),
            kind: SloKind::Availability,
            objective: 0.99,
            window: Duration::from_secs(3600),
        });
        for m in SLO_METRICS {
            let v = value_of_slo(&slo, m);
            assert!(v.is_some_and(f64::is_finite), "{m}:a -> {v:?}");
        }

        // Per process and per backend.
        assert_eq!(names(PER_PROCESS), set(PROCESS_METRICS));
        assert_eq!(names(PER_BACKEND), set(BACKEND_METRICS));
        for m in PROCESS_METRICS {
            for target in ["worker-0", "any_worker"] {
                assert!(targeted_expr_ok(&format!("{m}:{target}")), "{m}:{target}");
            }
            let f = lookup(PER_PROCESS, m).unwrap_or_else(|| panic!("{m}: not evaluated"));
            assert!(f(&p.processes["worker-0"]).is_finite(), "{m}");
        }
        for m in BACKEND_METRICS {
            for target in ["worker-0", "any_backend"] {
                assert!(targeted_expr_ok(&format!("{m}:{target}")), "{m}:{target}");
            }
            let f = lookup(PER_BACKEND, m).unwrap_or_else(|| panic!("{m}: not evaluated"));
            assert!(
                f(&p, "worker-0").is_some(),
                "{m}: no value for a known backend"
            );
        }
    }

    fn value_of_slo(slo: &SloRuntime, m: &str) -> Option<f64> {
        lookup(PER_SLO, m).map(|f| f(slo))
    }
}
