//! Metrics reported by workers themselves, through a response header:
//! `X-Drover-Metric: name=value[, name2=value2]`.
//!
//! Exported as `drover_app_<name>{backend="…"}`: a name ending in `_total` is a counter
//! (the worker reports its running total), any other a gauge; the last value reported
//! wins. The `drover_app_` prefix belongs to workers alone: no metric of drover's own
//! starts with it (a unit test checks every registered family), so a worker cannot
//! duplicate one of drover's families and make `/metrics` unparsable. The header is
//! internal (`x-drover-`), so it never reaches the client.
//!
//! Bounded (`observability.worker_metrics`): at most `max_names` names and `max_series`
//! (name, backend) series; a series no worker reported for `expire_after` is forgotten,
//! and a name with no series left frees its place, so names a worker sent once (junk,
//! or a renamed metric) cannot lock out real ones for ever. Names must be
//! `[a-z_][a-z0-9_]*`, at most 64 bytes. Anything else is dropped and counted in
//! `drover_worker_metrics_rejected_total`.

use crate::config::observability::WorkerMetricsConfig;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub const HEADER: &str = "x-drover-metric";
/// Prefix of every worker-reported metric; no drover family uses it.
pub const PREFIX: &str = super::names::WORKER_REPORTED_PREFIX;
/// drover's own counter of values it dropped.
pub const REJECTED: &str = super::names::WORKER_METRICS_REJECTED_TOTAL;

/// One series' last value and when a worker last reported it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    value: f64,
    seen: Instant,
}

#[derive(Default)]
struct Table {
    policy: WorkerMetricsConfig,
    /// name → backend → sample.
    series: BTreeMap<String, BTreeMap<String, Sample>>,
    count: usize,
}

impl Table {
    /// Forgets series older than `expire_after` and names left without series.
    fn expire(&mut self, now: Instant) {
        let ttl = self.policy.expire_after;
        let mut dropped = 0;
        for per in self.series.values_mut() {
            let before = per.len();
            per.retain(|_, s| now.saturating_duration_since(s.seen) < ttl);
            dropped += before - per.len();
        }
        self.series.retain(|_, per| !per.is_empty());
        self.count -= dropped;
    }
}

#[derive(Default)]
pub struct CustomMetrics {
    table: Mutex<Table>,
    rejected: AtomicU64,
}

fn valid(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

impl CustomMetrics {
    /// Applies `observability.worker_metrics` (at start and on reload).
    pub fn set_policy(&self, policy: WorkerMetricsConfig) {
        self.lock().policy = policy;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records every `name=value` pair of one header value from `backend`.
    pub fn ingest(&self, backend: &str, header: &[u8]) {
        self.ingest_at(backend, header, Instant::now());
    }

    pub fn ingest_at(&self, backend: &str, header: &[u8], now: Instant) {
        let Ok(text) = std::str::from_utf8(header) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut t = self.lock();
        for pair in text.split(',') {
            let parsed = pair.trim().split_once('=').and_then(|(n, v)| {
                let v: f64 = v.trim().parse().ok()?;
                let n = n.trim();
                (valid(n) && v.is_finite() && !(n.ends_with("_total") && v < 0.0)).then_some((n, v))
            });
            let Some((name, value)) = parsed else {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let sample = Sample { value, seen: now };
            if let Some(s) = t.series.get_mut(name).and_then(|per| per.get_mut(backend)) {
                *s = sample;
                continue;
            }
            // A new series: make room from expired ones first.
            let full = |t: &Table| {
                t.count >= t.policy.max_series
                    || (!t.series.contains_key(name) && t.series.len() >= t.policy.max_names)
            };
            if full(&t) {
                t.expire(now);
                if full(&t) {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            t.series
                .entry(name.to_string())
                .or_default()
                .insert(backend.to_string(), sample);
            t.count += 1;
        }
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Text exposition of every live custom series plus the rejection counter.
    pub fn render(&self) -> String {
        self.render_at(Instant::now())
    }

    pub fn render_at(&self, now: Instant) -> String {
        let mut t = self.lock();
        t.expire(now);
        let mut out = String::new();
        for (name, per) in t.series.iter() {
            let full = format!("{PREFIX}{name}");
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {full} Reported by workers in the {HEADER} header"
            );
            let _ = writeln!(out, "# TYPE {full} {kind}");
            for (backend, s) in per {
                let mut label = String::new();
                for c in backend.chars() {
                    match c {
                        '\\' => label.push_str("\\\\"),
                        '"' => label.push_str("\\\""),
                        '\n' => label.push_str("\\n"),
                        c => label.push(c),
                    }
                }
                let _ = writeln!(out, "{full}{{backend=\"{label}\"}} {}", s.value);
            }
        }
        let _ = writeln!(
            out,
            "# HELP {REJECTED} Worker-reported metric values dropped (bad name or value, or over the caps)"
        );
        let _ = writeln!(out, "# TYPE {REJECTED} counter");
        let _ = writeln!(out, "{REJECTED} {}", self.rejected());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(max_names: usize, max_series: usize, secs: u64) -> WorkerMetricsConfig {
        WorkerMetricsConfig {
            max_names,
            max_series,
            expire_after: Duration::from_secs(secs),
        }
    }

    #[test]
    fn parses_pairs_and_renders_gauges_and_counters() {
        let c = CustomMetrics::default();
        c.set_policy(policy(32, 1024, 600));
        c.ingest("worker-0", b"queue_depth=7, jobs_done_total=42");
        c.ingest("worker-1", b"queue_depth=3");
        c.ingest("worker-0", b"queue_depth=9");
        c.ingest("worker-0", b"Bad-Name=1, x=notanumber, neg_total=-1");
        let text = c.render();
        assert!(
            text.contains("# TYPE drover_app_queue_depth gauge"),
            "{text}"
        );
        assert!(text.contains("drover_app_queue_depth{backend=\"worker-0\"} 9"));
        assert!(text.contains("drover_app_queue_depth{backend=\"worker-1\"} 3"));
        assert!(text.contains("# TYPE drover_app_jobs_done_total counter"));
        assert!(text.contains("drover_app_jobs_done_total{backend=\"worker-0\"} 42"));
        assert_eq!(c.rejected(), 3);
    }

    #[test]
    fn names_and_series_are_capped() {
        let c = CustomMetrics::default();
        c.set_policy(policy(32, 1024, 600));
        for i in 0..100 {
            c.ingest("w", format!("m{i}=1").as_bytes());
        }
        assert_eq!(c.lock().series.len(), 32);
        for b in 0..2000 {
            c.ingest(&format!("b{b}"), b"m0=1");
        }
        assert_eq!(c.lock().count, 1024);
        // 68 names over the cap; then 32 series existed, so 992 backends fit and 1008 not.
        assert_eq!(c.rejected(), 68 + 1008);
    }

    #[test]
    fn junk_names_expire_and_free_their_places_for_real_ones() {
        let c = CustomMetrics::default();
        c.set_policy(policy(4, 100, 60));
        let t0 = Instant::now();
        for i in 0..4 {
            c.ingest_at("worker-0", format!("junk{i}=1").as_bytes(), t0);
        }
        c.ingest_at("worker-0", b"real=1", t0 + Duration::from_secs(30));
        assert_eq!(c.rejected(), 1, "the cap holds while the junk is fresh");
        // junk0 keeps being reported; the other three go quiet.
        c.ingest_at("worker-0", b"junk0=2", t0 + Duration::from_secs(50));
        let later = t0 + Duration::from_secs(61);
        c.ingest_at("worker-0", b"real=5", later);
        let text = c.render_at(later);
        assert!(
            text.contains("drover_app_real{backend=\"worker-0\"} 5"),
            "{text}"
        );
        assert!(text.contains("drover_app_junk0{"), "{text}");
        assert!(!text.contains("drover_app_junk1"), "{text}");
        assert_eq!(c.lock().count, 2);
    }

    #[test]
    fn no_family_of_drovers_own_uses_the_worker_prefix() {
        // Every metric name drover registers is a constant in names.rs.
        let names = include_str!("names.rs");
        let own: Vec<&str> = names
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("drover_"))
            .collect();
        assert!(own.len() > 50, "{own:?}");
        assert!(own.contains(&REJECTED));
        for name in own.iter().filter(|n| **n != PREFIX) {
            assert!(!name.starts_with(PREFIX), "{name}");
        }
    }
}
