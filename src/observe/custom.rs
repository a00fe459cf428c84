//! Metrics reported by workers themselves: counters, gauges and histograms, with labels
//! the worker chooses, through two paths:
//!
//! - a response header, `X-Drover-Metric: name[{k="v",...}]=value[|type], ...` (type `c`
//!   counter: the running total; `g` gauge; `h` one histogram observation; without a type
//!   a `_total` name is a counter, any other a gauge). The header is internal
//!   (`x-drover-`), so it never reaches the client;
//! - a datagram socket that needs no response (`supervisor::metrics_socket`): StatsD lines
//!   `name:value|c|g|h|ms|d[|@rate][|#k:v,...]` (`c` adds, `g` sets, `h`/`d` observe,
//!   `ms` observes milliseconds as seconds).
//!
//! Exported as `drover_app_<name>{backend="worker-N",<labels>}` (histograms with
//! `_bucket{le}`, `_sum`, `_count` over [`BUCKETS`] seconds). The `drover_app_` prefix
//! belongs to workers alone: no metric of drover's own starts with it (a unit test checks
//! every registered family), so a worker cannot duplicate one of drover's families and
//! make `/metrics` unparsable.
//!
//! Bounded (`observability.worker_metrics`): at most `max_names` names, `max_series`
//! series in all and `max_series_per_name` per name (so one name's label explosion
//! cannot starve the others), at most [`MAX_LABELS`] labels a series, values ≤
//! [`MAX_LABEL_VALUE`] bytes. A series no worker reported for `expire_after` is
//! forgotten, and a name with no series left frees its place. Names are
//! `[a-z_][a-z0-9_]*`, ≤ 64 bytes; label names `[a-zA-Z_][a-zA-Z0-9_]*` except `backend`
//! and `le`. Anything else is dropped and counted in
//! `drover_worker_metrics_rejected_total`.
//!
//! Alert rules read them as `app:NAME[:AGG][@BACKEND]` ([`CustomMetrics::alert_value`]),
//! the history store keeps one series per name (`app/NAME`), the dashboard lists them.

use crate::config::observability::WorkerMetricsConfig;
use crate::metric_names::valid_name;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Response header workers report metrics in (lowercase); read by the proxy and
/// stripped before the response reaches the client.
pub const HEADER: &str = "x-drover-metric";
/// Prefix of every worker-reported metric; no drover family uses it.
pub const PREFIX: &str = crate::metric_names::WORKER_REPORTED_PREFIX;
/// drover's own counter of values it dropped.
pub const REJECTED: &str = crate::metric_names::WORKER_METRICS_REJECTED_TOTAL;
/// Histogram bucket bounds (seconds, Prometheus' defaults); +Inf is implied.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Most labels one series may carry (besides the `backend` drover adds).
pub const MAX_LABELS: usize = 8;
/// Longest label value accepted, in bytes.
pub const MAX_LABEL_VALUE: usize = 64;
/// Seconds of histogram snapshots kept for windowed percentiles and counter rates.
const WINDOW: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Prometheus type of a reported name; fixed by its first report, and a report of another
/// kind under the same name is rejected.
pub enum Kind {
    /// Monotonic; the header sends the running total, StatsD `c` sends increments.
    Counter,
    /// A value that goes up and down; the last report wins (or a signed StatsD change).
    Gauge,
    /// Observations in seconds, bucketed by [`BUCKETS`].
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// What one report does to a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// A counter's running total (header) or a gauge's value.
    Set(f64),
    /// A counter increment (StatsD `c`) or a relative gauge change (`g` with a sign).
    Add(f64),
    /// One histogram observation.
    Observe(f64),
}

/// One parsed report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Metric name as the worker sent it, without the `drover_app_` prefix.
    pub name: String,
    /// Type the report declares (or implies, for an untyped header item).
    pub kind: Kind,
    /// Sorted by name.
    pub labels: Vec<(String, String)>,
    /// What the report does to its series.
    pub op: Op,
}

#[derive(Debug, Clone)]
struct Series {
    value: f64,
    /// Histograms: cumulative bucket counts (last = +Inf), sum.
    buckets: Vec<u64>,
    sum: f64,
    /// One snapshot a second of (value or count, buckets, sum), newest last.
    window: VecDeque<(f64, Vec<u64>, f64)>,
    seen: Instant,
}

impl Series {
    fn new(kind: Kind, now: Instant) -> Self {
        let buckets = if kind == Kind::Histogram {
            vec![0; BUCKETS.len() + 1]
        } else {
            Vec::new()
        };
        Series {
            value: 0.0,
            // A zero snapshot: what arrives before the first tick counts in the window.
            window: VecDeque::from([(0.0, buckets.clone(), 0.0)]),
            buckets,
            sum: 0.0,
            seen: now,
        }
    }

    fn apply(&mut self, op: Op, now: Instant) {
        self.seen = now;
        match op {
            Op::Set(v) => self.value = v,
            Op::Add(v) => self.value += v,
            Op::Observe(v) => {
                let i = BUCKETS
                    .iter()
                    .position(|b| v <= *b)
                    .unwrap_or(BUCKETS.len());
                self.buckets[i] += 1;
                self.sum += v;
                self.value += 1.0; // observation count
            }
        }
    }

    /// Change over the window: (value delta, bucket deltas, seconds covered, sum delta).
    fn delta(&self) -> (f64, Vec<u64>, usize, f64) {
        match self.window.front() {
            Some((v, b, sum)) => (
                self.value - v,
                self.buckets
                    .iter()
                    .zip(b.iter().chain(std::iter::repeat(&0)))
                    .map(|(n, o)| n.saturating_sub(*o))
                    .collect(),
                self.window.len(),
                self.sum - sum,
            ),
            None => (0.0, vec![0; self.buckets.len()], 0, 0.0),
        }
    }
}

/// Upper-bound quantile from bucket counts (like Prometheus' histogram_quantile, without
/// interpolation: the bound of the bucket holding the rank).
fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in counts.iter().enumerate() {
        acc += c;
        if acc >= rank {
            return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    None
}

struct Name {
    kind: Kind,
    /// (backend, labels) → series.
    series: BTreeMap<(String, Vec<(String, String)>), Series>,
}

#[derive(Default)]
struct Table {
    policy: WorkerMetricsConfig,
    names: BTreeMap<String, Name>,
    count: usize,
}

impl Table {
    /// Forgets series older than `expire_after` and names left without series.
    fn expire(&mut self, now: Instant) {
        let ttl = self.policy.expire_after;
        let mut dropped = 0;
        for n in self.names.values_mut() {
            let before = n.series.len();
            n.series
                .retain(|_, s| now.saturating_duration_since(s.seen) < ttl);
            dropped += before - n.series.len();
        }
        self.names.retain(|_, n| !n.series.is_empty());
        self.count -= dropped;
    }
}

/// The table of worker-reported series, bounded by `observability.worker_metrics`; one
/// per process, in the `Observer`.
#[derive(Default)]
pub struct CustomMetrics {
    table: Mutex<Table>,
    rejected: AtomicU64,
}

fn valid_label_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && n != "backend"
        && n != "le"
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= MAX_LABEL_VALUE && !v.chars().any(|c| c.is_control())
}

fn labels_ok(labels: &mut [(String, String)]) -> bool {
    labels.sort();
    labels.len() <= MAX_LABELS
        && labels
            .iter()
            .all(|(k, v)| valid_label_name(k) && valid_label_value(v))
        && labels.windows(2).all(|w| w[0].0 != w[1].0)
}

/// Splits on `sep` outside `{...}` and quotes.
fn split_outside(text: &str, sep: char) -> Vec<&str> {
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    let mut prev = '\0';
    for (i, c) in text.char_indices() {
        match c {
            '"' if prev != '\\' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
        prev = c;
    }
    out.push(&text[start..]);
    out
}

/// `k="v",k2="v2"` → pairs.
fn parse_prom_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in split_outside(text, ',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=')?;
        let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
        out.push((k.trim().to_string(), v.replace("\\\"", "\"")));
    }
    Some(out)
}

/// One item of the header: `name[{labels}]=value[|type]`.
pub fn parse_header_item(item: &str) -> Option<Report> {
    let item = item.trim();
    let (lhs, rhs) = match item.find('{') {
        Some(_) => {
            let close = item.rfind('}')?;
            let rest = item.get(close + 1..)?.trim_start().strip_prefix('=')?;
            (item.get(..close + 1)?, rest)
        }
        None => item.split_once('=')?,
    };
    let (name, labels) = match lhs.split_once('{') {
        Some((n, l)) => (n.trim(), parse_prom_labels(l.strip_suffix('}')?)?),
        None => (lhs.trim(), Vec::new()),
    };
    let (value, ty) = match rhs.split_once('|') {
        Some((v, t)) => (v.trim(), Some(t.trim())),
        None => (rhs.trim(), None),
    };
    let v: f64 = value.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let (kind, op) = match ty {
        Some("c") => (Kind::Counter, Op::Set(v)),
        Some("g") => (Kind::Gauge, Op::Set(v)),
        Some("h") => (Kind::Histogram, Op::Observe(v)),
        Some(_) => return None,
        None if name.ends_with("_total") => (Kind::Counter, Op::Set(v)),
        None => (Kind::Gauge, Op::Set(v)),
    };
    if kind == Kind::Counter && v < 0.0 {
        return None;
    }
    Some(Report {
        name: name.to_string(),
        kind,
        labels,
        op,
    })
}

/// One StatsD / DogStatsD line: `name:value|type[|@rate][|#k:v,k2:v2]`.
pub fn parse_statsd_line(line: &str) -> Option<Report> {
    let line = line.trim();
    let (name, rest) = line.split_once(':')?;
    let mut parts = rest.split('|');
    let value = parts.next()?.trim();
    let ty = parts.next()?.trim();
    let (mut rate, mut labels) = (1.0, Vec::new());
    for p in parts {
        if let Some(r) = p.strip_prefix('@') {
            rate = r.parse::<f64>().ok().filter(|r| *r > 0.0 && *r <= 1.0)?;
        } else if let Some(tags) = p.strip_prefix('#') {
            for t in tags.split(',').filter(|t| !t.is_empty()) {
                let (k, v) = t.split_once(':').unwrap_or((t, ""));
                labels.push((k.to_string(), v.to_string()));
            }
        }
    }
    let v: f64 = value.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let signed = value.starts_with('+') || value.starts_with('-');
    let (kind, op) = match ty {
        "c" if v >= 0.0 => (Kind::Counter, Op::Add(v / rate)),
        "g" if signed => (Kind::Gauge, Op::Add(v)),
        "g" => (Kind::Gauge, Op::Set(v)),
        "h" | "d" => (Kind::Histogram, Op::Observe(v)),
        "ms" => (Kind::Histogram, Op::Observe(v / 1000.0)),
        _ => return None,
    };
    Some(Report {
        name: name.trim().to_string(),
        kind,
        labels,
        op,
    })
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl CustomMetrics {
    /// Applies `observability.worker_metrics` (at start and on reload).
    pub fn set_policy(&self, policy: WorkerMetricsConfig) {
        self.lock().policy = policy;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records every item of one `X-Drover-Metric` header value from `backend`.
    pub fn ingest(&self, backend: &str, header: &[u8]) {
        self.ingest_at(backend, header, Instant::now());
    }

    /// [`CustomMetrics::ingest`] with the clock given (tests); `now` marks the series as
    /// seen for expiry.
    pub fn ingest_at(&self, backend: &str, header: &[u8], now: Instant) {
        let Ok(text) = std::str::from_utf8(header) else {
            self.reject();
            return;
        };
        for item in split_outside(text, ',') {
            match parse_header_item(item) {
                Some(r) => self.record(backend, r, now),
                None => self.reject(),
            }
        }
    }

    /// Records every StatsD line of one datagram from `backend`.
    pub fn ingest_statsd(&self, backend: &str, datagram: &[u8], now: Instant) {
        let Ok(text) = std::str::from_utf8(datagram) else {
            self.reject();
            return;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match parse_statsd_line(line) {
                Some(r) => self.record(backend, r, now),
                None => self.reject(),
            }
        }
    }

    /// A datagram from a sender that is no worker (or cut short): dropped, counted.
    pub fn ingest_statsd_rejected(&self) {
        self.reject();
    }

    /// Counts one report against the caps and applies it.
    pub fn record(&self, backend: &str, mut r: Report, now: Instant) {
        if !valid_name(&r.name) || !labels_ok(&mut r.labels) {
            self.reject();
            return;
        }
        let mut t = self.lock();
        let key = (backend.to_string(), r.labels);
        if let Some(n) = t.names.get_mut(&r.name) {
            if n.kind != r.kind {
                drop(t);
                self.reject();
                return;
            }
            if let Some(s) = n.series.get_mut(&key) {
                s.apply(r.op, now);
                return;
            }
        }
        // A new series: make room from expired ones first.
        let full = |t: &Table| {
            let per_name = t.names.get(&r.name).map(|n| n.series.len()).unwrap_or(0);
            t.count >= t.policy.max_series
                || per_name >= t.policy.max_series_per_name
                || (!t.names.contains_key(&r.name) && t.names.len() >= t.policy.max_names)
        };
        if full(&t) {
            t.expire(now);
            if full(&t) {
                drop(t);
                self.reject();
                return;
            }
        }
        let kind = r.kind;
        let n = t.names.entry(r.name).or_insert_with(|| Name {
            kind,
            series: BTreeMap::new(),
        });
        let mut s = Series::new(kind, now);
        s.apply(r.op, now);
        n.series.insert(key, s);
        t.count += 1;
    }

    /// Reports dropped since start (malformed, invalid name or labels, kind clash, or over
    /// a cap); exported as `drover_worker_metrics_rejected_total`.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Once a second (the sampler): snapshots for rates and windowed percentiles, and
    /// one aggregate value per name for the history store (gauges: max over series;
    /// counters: total rate per second; histograms: p99 over the window).
    pub fn tick(&self, now: Instant) -> Vec<(String, f64)> {
        let mut t = self.lock();
        t.expire(now);
        let mut out = Vec::with_capacity(t.names.len());
        for (name, n) in t.names.iter_mut() {
            for s in n.series.values_mut() {
                if s.window.len() == WINDOW {
                    s.window.pop_front();
                }
                s.window.push_back((s.value, s.buckets.clone(), s.sum));
            }
            if let Some(v) = aggregate(n, None, None) {
                out.push((name.clone(), v));
            }
        }
        out
    }

    /// The value of `app:` alert expressions: `NAME[:AGG][@BACKEND]`. `None` when
    /// nothing matches (the alert keeps its state).
    pub fn alert_value(&self, target: &str) -> Option<f64> {
        let (rest, backend) = match target.split_once('@') {
            Some((r, b)) => (r, Some(b)),
            None => (target, None),
        };
        let (name, agg) = match rest.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (rest, None),
        };
        let t = self.lock();
        aggregate(t.names.get(name)?, agg, backend)
    }

    /// Every name with its kind and per-series values, for the dashboard.
    pub fn summary(&self) -> Value {
        let t = self.lock();
        let names: Vec<Value> = t
            .names
            .iter()
            .map(|(name, n)| {
                let series: Vec<Value> = n
                    .series
                    .iter()
                    .take(20)
                    .map(|((backend, labels), s)| {
                        let labels: BTreeMap<&str, &str> = labels
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect();
                        let (dv, buckets, secs, _) = s.delta();
                        match n.kind {
                            Kind::Histogram => json!({
                                "backend": backend, "labels": labels,
                                "count": s.value, "p50": quantile(&buckets, 0.5),
                                "p99": quantile(&buckets, 0.99),
                            }),
                            Kind::Counter => json!({
                                "backend": backend, "labels": labels, "value": s.value,
                                "rate": if secs > 0 { dv / secs as f64 } else { 0.0 },
                            }),
                            Kind::Gauge => json!({
                                "backend": backend, "labels": labels, "value": s.value,
                            }),
                        }
                    })
                    .collect();
                json!({ "name": name, "kind": n.kind.as_str(), "series": series })
            })
            .collect();
        json!(names)
    }

    /// Text exposition of every live custom series plus the rejection counter.
    pub fn render(&self) -> String {
        self.render_at(Instant::now())
    }

    /// [`CustomMetrics::render`] with the clock given (tests): series unseen for
    /// `expire_after` before `now` are dropped first.
    pub fn render_at(&self, now: Instant) -> String {
        let mut t = self.lock();
        t.expire(now);
        let mut out = String::new();
        for (name, n) in t.names.iter() {
            let full = format!("{PREFIX}{name}");
            let _ = writeln!(
                out,
                "# HELP {full} Reported by workers (header {HEADER} or the metrics socket)"
            );
            let _ = writeln!(out, "# TYPE {full} {}", n.kind.as_str());
            for ((backend, labels), s) in &n.series {
                let mut l = String::from("backend=\"");
                escape_label(&mut l, backend);
                l.push('"');
                for (k, v) in labels {
                    let _ = write!(l, ",{k}=\"");
                    escape_label(&mut l, v);
                    l.push('"');
                }
                if n.kind == Kind::Histogram {
                    let mut acc = 0;
                    for (i, c) in s.buckets.iter().enumerate() {
                        acc += c;
                        let le = BUCKETS
                            .get(i)
                            .map(|b| b.to_string())
                            .unwrap_or_else(|| "+Inf".into());
                        let _ = writeln!(out, "{full}_bucket{{{l},le=\"{le}\"}} {acc}");
                    }
                    let _ = writeln!(out, "{full}_sum{{{l}}} {}", s.sum);
                    let _ = writeln!(out, "{full}_count{{{l}}} {acc}");
                } else {
                    let _ = writeln!(out, "{full}{{{l}}} {}", s.value);
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP {REJECTED} Worker-reported metric values dropped (bad name, label or value, or over the caps)"
        );
        let _ = writeln!(out, "# TYPE {REJECTED} counter");
        let _ = writeln!(out, "{REJECTED} {}", self.rejected());
        out
    }
}

/// One number for a name: gauges `max` (default), `min`, `sum`; counters `rate`
/// (default: increase per second over the window, summed) or `sum` (totals);
/// histograms `p99` (default), `p50`, `p90`, `mean`, `count` (observations per second),
/// all over the window. `backend` restricts to one backend.
fn aggregate(n: &Name, agg: Option<&str>, backend: Option<&str>) -> Option<f64> {
    let series = || {
        n.series
            .iter()
            .filter(move |((b, _), _)| backend.is_none_or(|want| want == b))
            .map(|(_, s)| s)
    };
    match n.kind {
        Kind::Gauge => {
            let vals = series().map(|s| s.value);
            match agg.unwrap_or("max") {
                "max" => vals.reduce(f64::max),
                "min" => vals.reduce(f64::min),
                "sum" => vals.reduce(|a, b| a + b),
                _ => None,
            }
        }
        Kind::Counter => match agg.unwrap_or("rate") {
            "sum" | "max" => series().map(|s| s.value).reduce(|a, b| a + b),
            "rate" => series()
                .map(|s| {
                    let (d, _, secs, _) = s.delta();
                    if secs == 0 {
                        0.0
                    } else {
                        d / secs as f64
                    }
                })
                .reduce(|a, b| a + b),
            _ => None,
        },
        Kind::Histogram => {
            let mut counts = vec![0u64; BUCKETS.len() + 1];
            let (mut sum, mut secs, mut any) = (0.0, 0usize, false);
            for s in series() {
                any = true;
                let (_, d, w, dsum) = s.delta();
                for (c, x) in counts.iter_mut().zip(d) {
                    *c += x;
                }
                sum += dsum;
                secs = secs.max(w);
            }
            if !any {
                return None;
            }
            let total: u64 = counts.iter().sum();
            match agg.unwrap_or("p99") {
                "p50" => quantile(&counts, 0.5),
                "p90" => quantile(&counts, 0.9),
                "p99" => quantile(&counts, 0.99),
                "count" => Some(if secs == 0 {
                    0.0
                } else {
                    total as f64 / secs as f64
                }),
                "mean" => (total > 0).then(|| sum / total as f64),
                _ => None,
            }
        }
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
            max_series_per_name: max_series,
            expire_after: Duration::from_secs(secs),
            ..WorkerMetricsConfig::default()
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
    fn labels_and_histograms_from_the_header_and_from_statsd() {
        let c = CustomMetrics::default();
        c.set_policy(policy(32, 1024, 600));
        let t0 = Instant::now();
        c.ingest_at(
            "worker-0",
            br#"render_seconds{route="a,b",tier="gold"}=0.03|h, render_seconds{route="a,b",tier="gold"}=0.2|h, orders_total{region="eu"}=5"#,
            t0,
        );
        c.ingest_statsd(
            "worker-1",
            b"render_seconds:40|ms|#route:c\norders_total:2|c|@0.5|#region:eu\nqueue:+3|g\nqueue:-1|g\nbad line",
            t0,
        );
        let text = c.render_at(t0);
        assert!(
            text.contains("# TYPE drover_app_render_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"drover_app_render_seconds_bucket{backend="worker-0",route="a,b",tier="gold",le="0.05"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"drover_app_render_seconds_count{backend="worker-0",route="a,b",tier="gold"} 2"#
        ));
        assert!(text.contains(
            r#"drover_app_render_seconds_bucket{backend="worker-1",route="c",le="0.05"} 1"#
        ));
        assert!(text.contains(r#"drover_app_orders_total{backend="worker-0",region="eu"} 5"#));
        // 2 at a sample rate of 0.5 counts 4.
        assert!(text.contains(r#"drover_app_orders_total{backend="worker-1",region="eu"} 4"#));
        assert!(
            text.contains(r#"drover_app_queue{backend="worker-1"} 2"#),
            "{text}"
        );
        assert_eq!(c.rejected(), 1);
        // A name keeps its kind.
        c.ingest_at("worker-0", b"render_seconds=1", t0);
        assert_eq!(c.rejected(), 2);
    }

    #[test]
    fn alert_values_aggregate_over_the_window() {
        let c = CustomMetrics::default();
        c.set_policy(policy(32, 1024, 600));
        let t0 = Instant::now();
        c.tick(t0);
        for s in 0..5u64 {
            let now = t0 + Duration::from_secs(s);
            c.ingest_statsd(
                "worker-0",
                b"req:10|c\nlat:0.02|h\nlat:0.02|h\nlat:3|h\ndepth:4|g",
                now,
            );
            c.ingest_statsd("worker-1", b"req:10|c\ndepth:9|g", now);
            c.tick(now);
        }
        assert_eq!(c.alert_value("depth"), Some(9.0));
        assert_eq!(c.alert_value("depth:min"), Some(4.0));
        assert_eq!(c.alert_value("depth@worker-0"), Some(4.0));
        // 10 a second from each worker, over the 5 seconds the window holds.
        let rate = c.alert_value("req").unwrap();
        assert!((rate - 16.0).abs() < 4.1, "{rate}");
        assert_eq!(c.alert_value("lat:p50"), Some(0.025));
        assert_eq!(c.alert_value("lat:p99"), Some(5.0));
        let mean = c.alert_value("lat:mean").unwrap();
        assert!((mean - 3.04 / 3.0).abs() < 1e-9, "{mean}");
        assert_eq!(c.alert_value("nothing"), None);
    }

    #[test]
    fn names_and_series_are_capped_also_per_name() {
        let c = CustomMetrics::default();
        c.set_policy(policy(32, 1024, 600));
        for i in 0..100 {
            c.ingest("w", format!("m{i}=1").as_bytes());
        }
        assert_eq!(c.lock().names.len(), 32);
        for b in 0..2000 {
            c.ingest(&format!("b{b}"), b"m0=1");
        }
        assert_eq!(c.lock().count, 1024);
        assert_eq!(c.rejected(), 68 + 1008);
        // A label explosion on one name stops at max_series_per_name.
        let d = CustomMetrics::default();
        d.set_policy(WorkerMetricsConfig {
            max_series_per_name: 10,
            ..policy(32, 1024, 600)
        });
        for i in 0..50 {
            d.ingest("w", format!("hits{{user=\"u{i}\"}}=1").as_bytes());
        }
        d.ingest("w", b"other=1");
        assert_eq!(d.lock().count, 11);
        assert_eq!(d.rejected(), 40);
        // Too many labels, bad label names, reserved names.
        d.ingest(
            "w",
            br#"x{a="1",b="1",c="1",d="1",e="1",f="1",g="1",h="1",i="1"}=1, y{le="1"}=1, z{backend="x"}=1, q{1a="x"}=1"#,
        );
        assert_eq!(d.rejected(), 44);
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
        let names = include_str!("../metric_names.rs");
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
