//! Metrics reported by workers themselves, through a response header:
//! `X-Drover-Metric: name=value[, name2=value2]`.
//!
//! Exported as `drover_worker_<name>{backend="…"}`: a name ending in `_total` is a counter
//! (the worker reports its running total), any other a gauge; the last value reported
//! wins. The header is internal (`x-drover-`), so it never reaches the client. Bounded:
//! at most [`MAX_NAMES`] names and [`MAX_SERIES`] (name, backend) series; names must be
//! `[a-z_][a-z0-9_]*`, at most 64 bytes. Anything else is dropped and counted.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const HEADER: &str = "x-drover-metric";
pub const PREFIX: &str = "drover_worker_";
pub const MAX_NAMES: usize = 32;
pub const MAX_SERIES: usize = 1024;

#[derive(Default)]
pub struct CustomMetrics {
    /// name → backend → value.
    series: Mutex<BTreeMap<String, BTreeMap<String, f64>>>,
    count: AtomicU64,
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
    /// Records every `name=value` pair of one header value from `backend`.
    pub fn ingest(&self, backend: &str, header: &[u8]) {
        let Ok(text) = std::str::from_utf8(header) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
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
            let known_name = series.contains_key(name);
            if !known_name && series.len() >= MAX_NAMES {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let total = self.count.load(Ordering::Relaxed);
            let per = series.entry(name.to_string()).or_default();
            match per.get_mut(backend) {
                Some(v) => *v = value,
                None if (total as usize) < MAX_SERIES => {
                    per.insert(backend.to_string(), value);
                    self.count.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        series.retain(|_, v| !v.is_empty());
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Text exposition of every custom series plus the rejection counter.
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, per) in series.iter() {
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
            for (backend, v) in per {
                let mut label = String::new();
                for c in backend.chars() {
                    match c {
                        '\\' => label.push_str("\\\\"),
                        '"' => label.push_str("\\\""),
                        '\n' => label.push_str("\\n"),
                        c => label.push(c),
                    }
                }
                let _ = writeln!(out, "{full}{{backend=\"{label}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP drover_worker_metrics_rejected_total Worker-reported metric values dropped (bad name or value, or over the caps)"
        );
        let _ = writeln!(out, "# TYPE drover_worker_metrics_rejected_total counter");
        let _ = writeln!(
            out,
            "drover_worker_metrics_rejected_total {}",
            self.rejected()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_renders_gauges_and_counters() {
        let c = CustomMetrics::default();
        c.ingest("worker-0", b"queue_depth=7, jobs_done_total=42");
        c.ingest("worker-1", b"queue_depth=3");
        c.ingest("worker-0", b"queue_depth=9");
        c.ingest("worker-0", b"Bad-Name=1, x=notanumber, neg_total=-1");
        let text = c.render();
        assert!(
            text.contains("# TYPE drover_worker_queue_depth gauge"),
            "{text}"
        );
        assert!(text.contains("drover_worker_queue_depth{backend=\"worker-0\"} 9"));
        assert!(text.contains("drover_worker_queue_depth{backend=\"worker-1\"} 3"));
        assert!(text.contains("# TYPE drover_worker_jobs_done_total counter"));
        assert!(text.contains("drover_worker_jobs_done_total{backend=\"worker-0\"} 42"));
        assert_eq!(c.rejected(), 3);
    }

    #[test]
    fn names_and_series_are_capped() {
        let c = CustomMetrics::default();
        for i in 0..100 {
            c.ingest("w", format!("m{i}=1").as_bytes());
        }
        assert_eq!(c.series.lock().unwrap().len(), MAX_NAMES);
        for b in 0..2000 {
            c.ingest(&format!("b{b}"), b"m0=1");
        }
        assert_eq!(c.count.load(Ordering::Relaxed) as usize, MAX_SERIES);
        // 68 names over the cap; then 32 series existed, so 992 backends fit and 1008 not.
        assert_eq!(c.rejected(), 68 + 1008);
    }
}
