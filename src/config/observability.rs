//! The `observability:` section: alert rules, their webhook, and SLOs. File types,
//! validation and the runtime types live together here so the shared config files only
//! gain one field each.

use super::duration::Dur;
use super::error::ConfigIssue;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most alert rules and SLOs accepted (each is evaluated every second and labels metrics).
pub const MAX_RULES: usize = 100;
/// Most SLOs accepted under `observability.slos` (each is evaluated every second).
pub const MAX_SLOS: usize = 16;
/// Longest SLO window: one point per minute is kept for it.
pub const MAX_SLO_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// What an alert rule may compare. Latencies are seconds, ratios 0..1. This list,
/// [`PROCESS_METRICS`], [`BACKEND_METRICS`] and [`SLO_METRICS`] are tied to the names the
/// evaluator computes (`observe/alerts/signals.rs`) by a test there.
pub const ALERT_METRICS: &[&str] = &[
    "rps",
    "rps_1m",
    "error_ratio",
    "error_ratio_1m",
    "error_ratio_5m",
    "p50_10s",
    "p95_10s",
    "p99_10s",
    "p999_10s",
    "p50_1m",
    "p95_1m",
    "p99_1m",
    "p999_1m",
    "p99_5m",
    "in_flight",
    "queue_length",
    "workers_healthy",
    "workers_down",
    "workers_crash_looping",
    "breakers_open",
];
/// Per-process metrics, written `NAME:PROCESS` with PROCESS `drover`, `worker-N` or
/// `any_worker` (the highest worker's value), e.g. `rss_bytes:any_worker`.
pub const PROCESS_METRICS: &[&str] = &["cpu_cores", "rss_bytes", "open_fds"];
/// Per-backend metrics, written `NAME:BACKEND` with BACKEND a backend name (`worker-N`,
/// `host:port`) or `any_backend` (the highest value), e.g. `backend_p99_10s:worker-1`.
pub const BACKEND_METRICS: &[&str] = &[
    "backend_rps",
    "backend_in_flight",
    "backend_error_ratio",
    "backend_p50_10s",
    "backend_p99_10s",
    "backend_p99_1m",
];
/// Aggregations of worker-reported metrics in `app:NAME[:AGG][@BACKEND]`.
pub const APP_AGGREGATIONS: &[&str] = &[
    "max", "min", "sum", "rate", "p50", "p90", "p99", "mean", "count",
];

/// Whether `expr` is a valid per-process, per-backend or worker-reported metric.
pub fn targeted_expr_ok(expr: &str) -> bool {
    let Some((m, target)) = expr.split_once(':') else {
        return false;
    };
    if m == "app" {
        let (rest, backend) = match target.split_once('@') {
            Some((r, b)) => (r, Some(b)),
            None => (target, None),
        };
        let (name, agg) = match rest.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (rest, None),
        };
        return crate::metric_names::valid_name(name)
            && agg.is_none_or(|a| APP_AGGREGATIONS.contains(&a))
            && backend.is_none_or(|b| !b.is_empty() && b.len() <= 128);
    }
    if PROCESS_METRICS.contains(&m) {
        return target == "drover"
            || target == "any_worker"
            || target
                .strip_prefix("worker-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    }
    BACKEND_METRICS.contains(&m) && !target.is_empty() && target.len() <= 128
}

/// Per-SLO metrics, written `NAME:SLO` (e.g. `burn_rate_1h:availability`).
pub const SLO_METRICS: &[&str] = &[
    "burn_rate_5m",
    "burn_rate_30m",
    "burn_rate_1h",
    "burn_rate_6h",
    "error_budget_remaining",
];

/// The `observability:` section as written in the file; [`validate`] turns it into an
/// [`ObservabilityConfig`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityFile {
    /// Alert rules and where their notifications go (`observability.alerts`).
    pub alerts: AlertsFile,
    /// Service level objectives; their burn rates can be alerted on.
    pub slos: Vec<SloFile>,
    /// Metrics workers report in the `X-Drover-Metric` header (`observe/custom.rs`).
    pub worker_metrics: WorkerMetricsFile,
    /// Defaults of the capacity plan (`/api/capacity`, `observe/capacity.rs`).
    pub capacity: CapacityFile,
    /// Spans of sampled requests exported over OTLP/HTTP (`observe/otlp.rs`).
    pub tracing: TracingFile,
}

/// `observability.tracing` as written: OTLP span export, off unless `endpoint` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingFile {
    /// OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces; null = off.
    pub endpoint: Option<String>,
    /// Share of requests without a sampled parent that are traced (0..1); a request
    /// whose `traceparent` says sampled is always traced, one that says not never.
    pub sample_ratio: f64,
    /// Requests' spans waiting for export at most; more are dropped and counted.
    pub max_queue: usize,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// How often waiting spans are sent.
    pub flush_interval: Dur,
    /// Timeout of one export request.
    pub timeout: Dur,
    /// `service.name` of the resource.
    pub service_name: String,
}

impl Default for TracingFile {
    fn default() -> Self {
        TracingFile {
            endpoint: None,
            sample_ratio: 0.01,
            max_queue: 2048,
            max_batch: 512,
            flush_interval: Dur::secs(1),
            timeout: Dur::secs(2),
            service_name: "drover".into(),
        }
    }
}

/// Validated `observability.tracing`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Parsed collector URL; `None` = tracing off (nothing is sampled or exported).
    pub endpoint: Option<WebhookTarget>,
    /// Share (0..1) of requests without a sampled parent that are traced.
    pub sample_ratio: f64,
    /// Requests whose spans may wait for export; beyond it they are dropped and counted.
    pub max_queue: usize,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// How often waiting spans are sent (at least 10 ms).
    pub flush_interval: Duration,
    /// Timeout of one export request (greater than zero).
    pub timeout: Duration,
    /// `service.name` resource attribute of exported spans (1-128 characters).
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        let f = TracingFile::default();
        TracingConfig {
            endpoint: None,
            sample_ratio: f.sample_ratio,
            max_queue: f.max_queue,
            max_batch: f.max_batch,
            flush_interval: f.flush_interval.0,
            timeout: f.timeout.0,
            service_name: f.service_name,
        }
    }
}

/// `observability.capacity` as written: the targets the capacity plan sizes the pool for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityFile {
    /// The p99 the plan sizes the pool for.
    pub target_p99: Dur,
    /// The rate the plan sizes the pool for; null = the current rate.
    pub target_rps: Option<f64>,
}

impl Default for CapacityFile {
    fn default() -> Self {
        CapacityFile {
            target_p99: Dur::ms(250),
            target_rps: None,
        }
    }
}

/// Validated `observability.capacity`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityConfig {
    /// p99 latency the plan sizes the pool for (at least 1 ms; default 250 ms).
    pub target_p99: Duration,
    /// Request rate (per second) the plan sizes the pool for; `None` = the current rate.
    pub target_rps: Option<f64>,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        let f = CapacityFile::default();
        CapacityConfig {
            target_p99: f.target_p99.0,
            target_rps: f.target_rps,
        }
    }
}

/// `observability.worker_metrics` as written: caps on the metrics workers report.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerMetricsFile {
    /// Distinct names kept at once; a new name beyond it is dropped and counted.
    pub max_names: usize,
    /// (name, worker, labels) series kept at once.
    pub max_series: usize,
    /// Series of one name (its label combinations × workers) kept at once.
    pub max_series_per_name: usize,
    /// The datagram socket workers push StatsD lines to (`runtime_dir/metrics.sock`,
    /// its path in the workers' `DROVER_METRICS_SOCKET`).
    pub socket: bool,
    /// A series no worker reported for this long is forgotten (its name too once it has
    /// no series left), so names nobody reports any more free their places.
    pub expire_after: Dur,
}

impl Default for WorkerMetricsFile {
    fn default() -> Self {
        WorkerMetricsFile {
            max_names: 32,
            max_series: 1024,
            max_series_per_name: 128,
            socket: true,
            expire_after: Dur(Duration::from_secs(600)),
        }
    }
}

/// Validated `observability.worker_metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerMetricsConfig {
    /// Distinct metric names kept at once (0..=1000); a new name beyond it is dropped.
    pub max_names: usize,
    /// (name, worker, labels) series kept at once (0..=100000).
    pub max_series: usize,
    /// Series of one name kept at once (1..=100000).
    pub max_series_per_name: usize,
    /// Whether the StatsD datagram socket `runtime_dir/metrics.sock` is opened for workers.
    pub socket: bool,
    /// Unreported series are forgotten after this long (greater than zero).
    pub expire_after: Duration,
}

impl Default for WorkerMetricsConfig {
    fn default() -> Self {
        let f = WorkerMetricsFile::default();
        WorkerMetricsConfig {
            max_names: f.max_names,
            max_series: f.max_series,
            max_series_per_name: f.max_series_per_name,
            socket: f.socket,
            expire_after: f.expire_after.0,
        }
    }
}

/// `observability.alerts` as written: the rules and the webhook they notify.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsFile {
    /// Alertmanager-compatible webhook (`http://host:port/path`); null = log and
    /// dashboard only.
    pub webhook: Option<String>,
    /// Extra delivery attempts after a failed one (backoff 500 ms, doubling).
    pub webhook_retries: u32,
    /// Timeout of one delivery attempt.
    pub webhook_timeout: Dur,
    /// Alert rules (at most [`MAX_RULES`], names unique).
    pub rules: Vec<AlertRuleFile>,
}

impl Default for AlertsFile {
    fn default() -> Self {
        AlertsFile {
            webhook: None,
            webhook_retries: 3,
            webhook_timeout: Dur::secs(2),
            rules: Vec::new(),
        }
    }
}

/// One entry of `observability.alerts.rules`, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleFile {
    /// Rule name (1-64 characters of `A-Z a-z 0-9 _ -`, unique); the `alertname` label.
    pub name: String,
    /// One of [`ALERT_METRICS`], or `METRIC:SLO` with one of [`SLO_METRICS`].
    pub expr: String,
    /// `>`, `>=`, `<`, `<=`, `==` or `!=`.
    #[serde(default = "default_op")]
    pub op: String,
    /// What the value of `expr` is compared with (by `op`); must be finite.
    pub threshold: f64,
    /// How long the condition must hold before the alert fires (pending until then).
    #[serde(rename = "for", default = "zero")]
    pub for_: Dur,
    /// Free-form severity (at most 64 characters, default `warning`), e.g. `page`; a label of
    /// `drover_alert_state` and passed to the webhook.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Optional text (at most 512 characters) shown in logs, the dashboard and notifications.
    #[serde(default)]
    pub summary: String,
}

fn default_op() -> String {
    ">".into()
}
fn zero() -> Dur {
    Dur::secs(0)
}
fn default_severity() -> String {
    "warning".into()
}

/// One entry of `observability.slos`, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SloFile {
    /// SLO name (1-64 characters of `A-Z a-z 0-9 _ -`, unique); referenced as `METRIC:NAME`
    /// in alert rules.
    pub name: String,
    /// `availability` (bad = 5xx or failed) or `latency` (bad = slower than `threshold`).
    pub kind: String,
    /// Share of good requests, e.g. 0.999.
    pub objective: f64,
    /// For `latency`: the duration a good request stays under.
    #[serde(default)]
    pub threshold: Option<Dur>,
    /// Error-budget window (at most 720h).
    #[serde(default = "default_slo_window")]
    pub window: Dur,
}

fn default_slo_window() -> Dur {
    Dur(Duration::from_secs(30 * 24 * 3600))
}

/// How an alert rule compares its metric with its threshold (`op`, default `>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==` (exact float equality)
    Eq,
    /// `!=`
    Ne,
}

impl CompareOp {
    /// Whether `value OP threshold` is true; false when either side is NaN (except for `!=`).
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            CompareOp::Gt => value > threshold,
            CompareOp::Ge => value >= threshold,
            CompareOp::Lt => value < threshold,
            CompareOp::Le => value <= threshold,
            CompareOp::Eq => value == threshold,
            CompareOp::Ne => value != threshold,
        }
    }

    /// The operator as written in the config (`>`, `>=`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
        }
    }
}

/// A validated alert rule, evaluated every second by `observe::alerts`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// Unique rule name; the `alertname` label and in notifications.
    pub name: String,
    /// The metric expression as written (validated against [`ALERT_METRICS`] and friends).
    pub expr: String,
    /// Comparison of the metric's value with `threshold`.
    pub op: CompareOp,
    /// Finite threshold the metric is compared with (latencies in seconds, ratios 0..1).
    pub threshold: f64,
    /// How long the condition must hold before firing (YAML key `for`); zero = at once.
    pub for_: Duration,
    /// Free-form severity, default `warning`; a metric label and passed to the webhook.
    pub severity: String,
    /// Optional text for logs and notifications; empty = none.
    pub summary: String,
}

/// Where webhook notifications go (plain HTTP; put a TLS-terminating relay in front for
/// HTTPS receivers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The URL as configured (may carry a credential in its path: redact before logging).
    pub url: String,
    /// Host to connect to (name or IP), taken from the URL.
    pub host: String,
    /// TCP port; 80 when the URL names none.
    pub port: u16,
    /// Request path including any query; `/` when the URL has none.
    pub path: String,
}

/// Validated `observability.alerts`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    /// Where notifications are POSTed; `None` = log and dashboard only.
    pub webhook: Option<WebhookTarget>,
    /// Extra delivery attempts after a failed one (0..=20; backoff 500 ms, doubling).
    pub webhook_retries: u32,
    /// Timeout of one delivery attempt (greater than zero).
    pub webhook_timeout: Duration,
    /// The validated rules, in file order.
    pub rules: Vec<AlertRule>,
}

/// What makes a request bad for an SLO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SloKind {
    /// Bad = answered 5xx or failed without a status.
    Availability,
    /// Good requests finish within this long.
    Latency(Duration),
}

/// A validated `observability.slos` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SloConfig {
    /// Unique SLO name; the `slo` label and the target of `METRIC:SLO` alert expressions.
    pub name: String,
    /// What counts as a bad request.
    pub kind: SloKind,
    /// Target share of good requests, strictly between 0 and 1 (e.g. 0.999).
    pub objective: f64,
    /// Error-budget window, 1 h to 720 h (default 30 days).
    pub window: Duration,
}

/// Validated `observability:` section, produced by [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ObservabilityConfig {
    /// Alert rules and their webhook.
    pub alerts: AlertsConfig,
    /// Service level objectives, at most [`MAX_SLOS`].
    pub slos: Vec<SloConfig>,
    /// Caps on worker-reported metrics.
    pub worker_metrics: WorkerMetricsConfig,
    /// Defaults of the capacity plan.
    pub capacity: CapacityConfig,
    /// OTLP span export settings.
    pub tracing: TracingConfig,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Why a webhook or collector URL was not accepted. The URL is kept as shown to the
/// operator, without the credential receivers often carry in the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    /// The URL does not start with `http://` (HTTPS needs a local relay).
    #[error("`{shown}` must start with http:// (use a local relay for HTTPS receivers)")]
    NotHttp {
        /// The URL as shown to the operator: scheme and host, path and query redacted.
        shown: String,
    },
    /// The text after the last `:` of the authority is not a port number.
    #[error("`{port}` is not a port in `{shown}`")]
    BadPort {
        /// The text that should have been a port (0..=65535).
        port: String,
        /// The URL as shown to the operator: scheme and host, path and query redacted.
        shown: String,
    },
    /// The host is empty or contains `@` or a space.
    #[error("`{shown}` has no valid host")]
    NoHost {
        /// The URL as shown to the operator: scheme and host, path and query redacted.
        shown: String,
    },
    /// The path contains a space, CR or LF.
    #[error("`{shown}` has an invalid path")]
    BadPath {
        /// The URL as shown to the operator: scheme and host, path and query redacted.
        shown: String,
    },
}

/// Parses `http://host:port/path`.
pub fn parse_webhook(url: &str) -> Result<WebhookTarget, WebhookUrlError> {
    // Receivers often carry a credential in the path: errors show the URL without it.
    let shown = || crate::redact::url_path(url);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| WebhookUrlError::NotHttp { shown: shown() })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| WebhookUrlError::BadPort {
                port: p.to_string(),
                shown: shown(),
            })?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() || host.contains(['@', ' ']) {
        return Err(WebhookUrlError::NoHost { shown: shown() });
    }
    if path.contains([' ', '\r', '\n']) {
        return Err(WebhookUrlError::BadPath { shown: shown() });
    }
    Ok(WebhookTarget {
        url: url.to_string(),
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// Validates the section; problems are appended to `issues`.
pub fn validate(file: &ObservabilityFile, issues: &mut Vec<ConfigIssue>) -> ObservabilityConfig {
    let mut fail = |field: String, message: String| {
        issues.push(ConfigIssue {
            field,
            line: None,
            message,
        })
    };
    let a = &file.alerts;
    let webhook = match &a.webhook {
        Some(url) => match parse_webhook(url) {
            Ok(t) => Some(t),
            Err(e) => {
                fail("observability.alerts.webhook".into(), e.to_string());
                None
            }
        },
        None => None,
    };
    if a.webhook_retries > 20 {
        fail(
            "observability.alerts.webhook_retries".into(),
            format!("{} is out of range; accepted: 0 to 20", a.webhook_retries),
        );
    }
    if a.webhook_timeout.0.is_zero() {
        fail(
            "observability.alerts.webhook_timeout".into(),
            "must be greater than zero".into(),
        );
    }
    let wm = &file.worker_metrics;
    if wm.max_names > 1000 {
        fail(
            "observability.worker_metrics.max_names".into(),
            format!("{} is out of range; accepted: 0 to 1000", wm.max_names),
        );
    }
    if wm.max_series > 100_000 {
        fail(
            "observability.worker_metrics.max_series".into(),
            format!("{} is out of range; accepted: 0 to 100000", wm.max_series),
        );
    }
    if wm.max_series_per_name == 0 || wm.max_series_per_name > 100_000 {
        fail(
            "observability.worker_metrics.max_series_per_name".into(),
            format!(
                "{} is out of range; accepted: 1 to 100000",
                wm.max_series_per_name
            ),
        );
    }
    if wm.expire_after.0.is_zero() {
        fail(
            "observability.worker_metrics.expire_after".into(),
            "must be greater than zero".into(),
        );
    }
    let tr = &file.tracing;
    let tracing_endpoint = match tr.endpoint.as_deref().map(parse_webhook) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            fail("observability.tracing.endpoint".into(), e.to_string());
            None
        }
    };
    if !(0.0..=1.0).contains(&tr.sample_ratio) {
        fail(
            "observability.tracing.sample_ratio".into(),
            format!("{} is out of range; accepted: 0.0 to 1.0", tr.sample_ratio),
        );
    }
    if tr.max_queue == 0 || tr.max_queue > 1_000_000 {
        fail(
            "observability.tracing.max_queue".into(),
            format!("{} is out of range; accepted: 1 to 1000000", tr.max_queue),
        );
    }
    if tr.max_batch == 0 || tr.max_batch > 100_000 {
        fail(
            "observability.tracing.max_batch".into(),
            format!("{} is out of range; accepted: 1 to 100000", tr.max_batch),
        );
    }
    if tr.flush_interval.0 < Duration::from_millis(10) {
        fail(
            "observability.tracing.flush_interval".into(),
            "must be at least 10ms".into(),
        );
    }
    if tr.timeout.0.is_zero() {
        fail(
            "observability.tracing.timeout".into(),
            "must be greater than zero".into(),
        );
    }
    if tr.service_name.is_empty() || tr.service_name.len() > 128 {
        fail(
            "observability.tracing.service_name".into(),
            "must be 1-128 characters".into(),
        );
    }
    let cap = &file.capacity;
    if cap.target_p99.0 < Duration::from_millis(1) {
        fail(
            "observability.capacity.target_p99".into(),
            "must be at least 1ms".into(),
        );
    }
    if cap
        .target_rps
        .is_some_and(|r| !r.is_finite() || !(0.0..=1e9).contains(&r))
    {
        fail(
            "observability.capacity.target_rps".into(),
            "out of range; accepted: 0 to 1000000000, or null".into(),
        );
    }
    let mut slos = Vec::new();
    if file.slos.len() > MAX_SLOS {
        fail(
            "observability.slos".into(),
            format!("at most {MAX_SLOS} SLOs"),
        );
    }
    for (i, s) in file.slos.iter().enumerate() {
        let f = |k: &str| format!("observability.slos[{i}].{k}");
        if !valid_name(&s.name) {
            fail(
                f("name"),
                "must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
            );
        }
        if file.slos[..i].iter().any(|o| o.name == s.name) {
            fail(f("name"), format!("`{}` is defined twice", s.name));
        }
        if !(s.objective > 0.0 && s.objective < 1.0) {
            fail(
                f("objective"),
                format!(
                    "{} is out of range; accepted: between 0 and 1 (e.g. 0.999)",
                    s.objective
                ),
            );
        }
        if s.window.0 < Duration::from_secs(3600) || s.window.0 > MAX_SLO_WINDOW {
            fail(f("window"), "accepted: 1h to 720h".into());
        }
        let kind = match (s.kind.as_str(), s.threshold) {
            ("availability", None) => SloKind::Availability,
            ("latency", Some(t)) if !t.0.is_zero() => SloKind::Latency(t.0),
            ("latency", _) => {
                fail(
                    f("threshold"),
                    "a latency SLO needs a threshold, e.g. `250ms`".into(),
                );
                SloKind::Availability
            }
            ("availability", Some(_)) => {
                fail(f("threshold"), "only latency SLOs take a threshold".into());
                SloKind::Availability
            }
            (other, _) => {
                fail(
                    f("kind"),
                    format!("`{other}` is not a kind; accepted: availability, latency"),
                );
                SloKind::Availability
            }
        };
        slos.push(SloConfig {
            name: s.name.clone(),
            kind,
            objective: s.objective,
            window: s.window.0,
        });
    }
    let mut rules = Vec::new();
    if a.rules.len() > MAX_RULES {
        fail(
            "observability.alerts.rules".into(),
            format!("at most {MAX_RULES} rules"),
        );
    }
    for (i, r) in a.rules.iter().enumerate() {
        let f = |k: &str| format!("observability.alerts.rules[{i}].{k}");
        if !valid_name(&r.name) {
            fail(
                f("name"),
                "must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
            );
        }
        if a.rules[..i].iter().any(|o| o.name == r.name) {
            fail(f("name"), format!("`{}` is defined twice", r.name));
        }
        let expr_ok = match r.expr.split_once(':') {
            None => ALERT_METRICS.contains(&r.expr.as_str()),
            Some((m, slo)) => {
                (SLO_METRICS.contains(&m) && file.slos.iter().any(|s| s.name == slo))
                    || targeted_expr_ok(&r.expr)
            }
        };
        if !expr_ok {
            fail(
                f("expr"),
                format!(
                    "`{}` is not a metric; accepted: {}; METRIC:SLO with METRIC one of {} and SLO a name under observability.slos; METRIC:PROCESS with METRIC one of {} and PROCESS drover, worker-N or any_worker; METRIC:BACKEND with METRIC one of {} and BACKEND a backend name or any_backend; app:NAME[:AGG][@BACKEND] with AGG one of {}",
                    r.expr,
                    ALERT_METRICS.join(", "),
                    SLO_METRICS.join(", "),
                    PROCESS_METRICS.join(", "),
                    BACKEND_METRICS.join(", "),
                    APP_AGGREGATIONS.join(", ")
                ),
            );
        }
        let op = match r.op.as_str() {
            ">" => CompareOp::Gt,
            ">=" => CompareOp::Ge,
            "<" => CompareOp::Lt,
            "<=" => CompareOp::Le,
            "==" => CompareOp::Eq,
            "!=" => CompareOp::Ne,
            other => {
                fail(
                    f("op"),
                    format!("`{other}` is not a comparison; accepted: >, >=, <, <=, ==, !="),
                );
                CompareOp::Gt
            }
        };
        if !r.threshold.is_finite() {
            fail(f("threshold"), "must be a finite number".into());
        }
        if r.summary.len() > 512 || r.severity.len() > 64 {
            fail(
                f("summary"),
                "summary at most 512, severity at most 64 characters".into(),
            );
        }
        rules.push(AlertRule {
            name: r.name.clone(),
            expr: r.expr.clone(),
            op,
            threshold: r.threshold,
            for_: r.for_.0,
            severity: r.severity.clone(),
            summary: r.summary.clone(),
        });
    }
    ObservabilityConfig {
        alerts: AlertsConfig {
            webhook,
            webhook_retries: a.webhook_retries,
            webhook_timeout: a.webhook_timeout.0,
            rules,
        },
        slos,
        worker_metrics: WorkerMetricsConfig {
            max_names: wm.max_names,
            max_series: wm.max_series,
            max_series_per_name: wm.max_series_per_name,
            socket: wm.socket,
            expire_after: wm.expire_after.0,
        },
        capacity: CapacityConfig {
            target_p99: cap.target_p99.0,
            target_rps: cap.target_rps,
        },
        tracing: TracingConfig {
            endpoint: tracing_endpoint,
            sample_ratio: tr.sample_ratio,
            max_queue: tr.max_queue,
            max_batch: tr.max_batch,
            flush_interval: tr.flush_interval.0,
            timeout: tr.timeout.0,
            service_name: tr.service_name.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (ObservabilityConfig, Vec<ConfigIssue>) {
        let file: ObservabilityFile = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Vec::new();
        let c = validate(&file, &mut issues);
        (c, issues)
    }

    #[test]
    fn accepts_rules_slos_and_a_webhook() {
        let (c, issues) = check(
            "alerts:\n  webhook: http://127.0.0.1:9093/api/v2/alerts\n  rules:\n  - name: slow\n    expr: p99_1m\n    threshold: 0.25\n    for: 30s\n  - name: burn\n    expr: burn_rate_1h:avail\n    op: '>='\n    threshold: 14.4\nslos:\n- name: avail\n  kind: availability\n  objective: 0.999\n- name: fast\n  kind: latency\n  objective: 0.99\n  threshold: 250ms\n  window: 24h\n",
        );
        assert!(issues.is_empty(), "{issues:?}");
        let w = c.alerts.webhook.unwrap();
        assert_eq!(
            (w.host.as_str(), w.port, w.path.as_str()),
            ("127.0.0.1", 9093, "/api/v2/alerts")
        );
        assert_eq!(c.alerts.rules[0].for_, Duration::from_secs(30));
        assert_eq!(c.alerts.rules[1].op, CompareOp::Ge);
        assert_eq!(c.slos[1].kind, SloKind::Latency(Duration::from_millis(250)));
        assert_eq!(c.slos[0].window, MAX_SLO_WINDOW);
    }

    #[test]
    fn reports_every_bad_field() {
        let (_, issues) = check(
            "alerts:\n  webhook: https://x/\n  rules:\n  - name: a\n    expr: p42\n    op: '=~'\n    threshold: 1\n  - name: a\n    expr: burn_rate_1h:nope\n    threshold: 1\nslos:\n- name: s\n  kind: latency\n  objective: 1.5\n",
        );
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        for f in [
            "observability.alerts.webhook",
            "observability.alerts.rules[0].expr",
            "observability.alerts.rules[0].op",
            "observability.alerts.rules[1].name",
            "observability.alerts.rules[1].expr",
            "observability.slos[0].objective",
            "observability.slos[0].threshold",
        ] {
            assert!(fields.contains(&f), "{f} missing in {fields:?}");
        }
    }
}
