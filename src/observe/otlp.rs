//! Spans of sampled requests, exported over OTLP/HTTP (protobuf) in bounded batches.
//!
//! A sampled request (`observability.tracing`: parent-based, else `sample_ratio`)
//! records, in its `Exchange`, a SERVER span for the whole request and below it an
//! INTERNAL `queue` span when it waited for a free backend, an INTERNAL `retry backoff`
//! span before each retry, and a CLIENT `upstream attempt` span per attempt with its
//! backend (the worker's `traceparent` names the attempt span). When the request ends
//! its spans go, without blocking, into a bounded queue (`max_queue` requests; beyond
//! it they are dropped and counted); a task on the control thread sends them in batches
//! of at most `max_batch` spans every `flush_interval` as an
//! `ExportTraceServiceRequest` (POST `endpoint`, `application/x-protobuf`).
//!
//! The messages are the OpenTelemetry crates' own: the types `opentelemetry-proto`
//! generates from the official OTLP .proto files, encoded by `prost`. Drover keeps its
//! own span model, sampler, queue and batcher and posts with the webhook's HTTP/1.1
//! client rather than running the SDK's batch processor and the `opentelemetry-otlp`
//! exporter with its HTTP client (docs/DECISIONS.md). `tests/tracing.rs` decodes what
//! drover sends with the reference Python implementation (`opentelemetry-proto`).

use crate::config::observability::TracingConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    self as proto, span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Status,
};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use tokio::sync::mpsc;

/// OTLP `SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside drover: queue wait, retry backoff.
    Internal = 1,
    /// The request span, as drover serves the client.
    Server = 2,
    /// An upstream attempt, as drover calls a backend.
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// OTLP `string_value`.
    Str(String),
    /// OTLP `int_value`.
    Int(i64),
    /// OTLP `bool_value`.
    Bool(bool),
}

/// drover's own span model, converted to the OTLP message only at export.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Random, never 0.
    pub span_id: u64,
    /// 0 = a root span.
    pub parent_id: u64,
    /// Operation name: `request`, `queue`, `retry backoff` or `upstream attempt`.
    pub name: &'static str,
    /// OTLP span kind.
    pub kind: Kind,
    /// Start, in Unix nanoseconds.
    pub start_ns: u64,
    /// End, in Unix nanoseconds; 0 while the span is open (export clamps it to `start_ns`).
    pub end_ns: u64,
    /// OpenTelemetry semantic-convention keys (`http.response.status_code`, ...) and
    /// drover's own (`drover.*`).
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set: the span failed, with this message.
    pub error: Option<String>,
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn nonzero_u64() -> u64 {
    loop {
        let v = rand::random::<u64>();
        if v != 0 {
            return v;
        }
    }
}

/// The spans of one sampled request, filled in by the pipeline's steps.
#[derive(Debug)]
pub struct Recording {
    /// The request's trace id (from its `TraceContext`).
    pub trace_id: u128,
    /// The request span (drover's span id of the trace context).
    pub root: Span,
    /// The attempt in progress.
    pub attempt: Option<Span>,
    /// Finished child spans, in the order they ended.
    pub done: Vec<Span>,
}

impl Recording {
    /// Starts the request span now: `span_id` is drover's span of the trace context,
    /// `parent` the caller's span (`None`: a root span).
    pub fn new(trace_id: u128, span_id: u64, parent: Option<u64>) -> Self {
        Recording {
            trace_id,
            root: Span {
                span_id,
                parent_id: parent.unwrap_or(0),
                name: "request",
                kind: Kind::Server,
                start_ns: unix_nanos(),
                end_ns: 0,
                attributes: Vec::new(),
                error: None,
            },
            attempt: None,
            done: Vec::new(),
        }
    }

    /// A finished child span of the request (queue wait, backoff).
    pub fn child(
        &mut self,
        name: &'static str,
        start_ns: u64,
        attributes: Vec<(&'static str, Attr)>,
    ) {
        self.done.push(Span {
            span_id: nonzero_u64(),
            parent_id: self.root.span_id,
            name,
            kind: Kind::Internal,
            start_ns,
            end_ns: unix_nanos(),
            attributes,
            error: None,
        });
    }

    /// Starts an upstream attempt; returns its span id (the worker's parent).
    pub fn start_attempt(&mut self, attempt: u32, backend: &str, addr: &str) -> u64 {
        self.end_attempt(None, None);
        let id = nonzero_u64();
        self.attempt = Some(Span {
            span_id: id,
            parent_id: self.root.span_id,
            name: "upstream attempt",
            kind: Kind::Client,
            start_ns: unix_nanos(),
            end_ns: 0,
            attributes: vec![
                ("drover.attempt", Attr::Int(attempt as i64)),
                ("drover.retry", Attr::Bool(attempt > 1)),
                ("drover.backend", Attr::Str(backend.to_string())),
                ("server.address", Attr::Str(addr.to_string())),
            ],
            error: None,
        });
        id
    }

    /// The attempt in progress ended: with a status, or failed with `error`.
    pub fn end_attempt(&mut self, status: Option<u16>, error: Option<String>) {
        if let Some(mut a) = self.attempt.take() {
            a.end_ns = unix_nanos();
            if let Some(s) = status {
                a.attributes
                    .push(("http.response.status_code", Attr::Int(s as i64)));
                if s >= 500 && error.is_none() {
                    a.error = Some(format!("status {s}"));
                }
            }
            if error.is_some() {
                a.error = error;
            }
            self.done.push(a);
        }
    }

    /// Span id of the attempt in progress, sent to the worker as its parent in
    /// `traceparent`; `None` between attempts.
    pub fn attempt_span(&self) -> Option<u64> {
        self.attempt.as_ref().map(|a| a.span_id)
    }

    /// Ends the request span and hands every span over.
    pub fn finish(
        mut self,
        attributes: Vec<(&'static str, Attr)>,
        status: u16,
        error: Option<String>,
    ) -> (u128, Vec<Span>) {
        self.end_attempt(Some(status).filter(|s| *s > 0), error.clone());
        let mut root = self.root;
        root.end_ns = unix_nanos();
        root.attributes = attributes;
        root.error = error.or_else(|| (status >= 500).then(|| format!("status {status}")));
        let mut spans = self.done;
        spans.push(root);
        (self.trace_id, spans)
    }
}

// ---- OTLP messages ----------------------------------------------------------------

fn any_value(v: &Attr) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Attr::Str(s) => any_value::Value::StringValue(s.clone()),
            Attr::Int(i) => any_value::Value::IntValue(*i),
            Attr::Bool(b) => any_value::Value::BoolValue(*b),
        }),
    }
}

fn key_value(k: &str, v: &Attr) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(any_value(v)),
        ..Default::default()
    }
}

fn otlp_span(trace_id: u128, s: &Span) -> proto::Span {
    proto::Span {
        trace_id: trace_id.to_be_bytes().to_vec(),
        span_id: s.span_id.to_be_bytes().to_vec(),
        // Empty: a root span.
        parent_span_id: if s.parent_id != 0 {
            s.parent_id.to_be_bytes().to_vec()
        } else {
            Vec::new()
        },
        // The W3C trace flags: sampled.
        flags: 1,
        name: s.name.to_string(),
        kind: match s.kind {
            Kind::Internal => SpanKind::Internal,
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        } as i32,
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns.max(s.start_ns),
        attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
        status: Some(Status {
            message: s.error.clone().unwrap_or_default(),
            code: if s.error.is_some() {
                StatusCode::Error
            } else {
                StatusCode::Ok
            } as i32,
        }),
        ..Default::default()
    }
}

/// One `ExportTraceServiceRequest` for a batch: one resource (`service.name`,
/// `service.version`) and one scope (`drover`) holding every span of the batch.
pub fn request(service: &str, batch: &[(u128, Vec<Span>)]) -> ExportTraceServiceRequest {
    let version = env!("CARGO_PKG_VERSION");
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    key_value("service.name", &Attr::Str(service.to_string())),
                    key_value("service.version", &Attr::Str(version.to_string())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "drover".to_string(),
                    version: version.to_string(),
                    ..Default::default()
                }),
                spans: batch
                    .iter()
                    .flat_map(|(trace_id, spans)| spans.iter().map(|s| otlp_span(*trace_id, s)))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The protobuf body of a batch's export request.
pub fn encode(service: &str, batch: &[(u128, Vec<Span>)]) -> Vec<u8> {
    request(service, batch).encode_to_vec()
}

// ---- the exporter ------------------------------------------------------------------

/// Counters of the exporter, exported by `/metrics` (`drover_trace_spans_total`).
#[derive(Default)]
pub struct ExportCounts {
    /// Spans the collector accepted (2xx answer).
    pub exported: AtomicU64,
    /// Spans dropped because the export queue was full.
    pub dropped: AtomicU64,
    /// Spans whose export request failed or timed out (not retried).
    pub failed: AtomicU64,
}

/// The running exporter's queue handle; set once by [`start`] when an endpoint is
/// configured.
pub struct Exporter {
    tx: mpsc::Sender<(u128, Vec<Span>)>,
    /// The process-wide counters (the same ones [`counts`] returns).
    pub counts: &'static ExportCounts,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();
static COUNTS: ExportCounts = ExportCounts {
    exported: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// Counters (exported, dropped, failed) whether or not an exporter runs.
pub fn counts() -> &'static ExportCounts {
    &COUNTS
}

/// `drover_trace_spans_total{result}` in the text format.
pub fn render() -> String {
    use crate::metric_names::TRACE_SPANS_TOTAL as N;
    let c = counts();
    format!(
        "# HELP {N} Spans of sampled requests by export result (exported, dropped when the queue was full, failed)\n# TYPE {N} counter\n{N}{{result=\"exported\"}} {}\n{N}{{result=\"dropped\"}} {}\n{N}{{result=\"failed\"}} {}\n",
        c.exported.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed)
    )
}

/// Whether spans are being exported (sampling only happens then).
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Hands a finished request's spans to the exporter without waiting; a full queue
/// drops them (counted).
pub fn submit(trace_id: u128, spans: Vec<Span>) {
    let Some(e) = EXPORTER.get() else { return };
    let n = spans.len() as u64;
    if e.tx.try_send((trace_id, spans)).is_err() {
        e.counts.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Starts the exporter on the current (control thread's) runtime, when configured.
pub fn start(cfg: &TracingConfig) {
    let Some(target) = cfg.endpoint.clone() else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<(u128, Vec<Span>)>(cfg.max_queue.max(1));
    if EXPORTER
        .set(Exporter {
            tx,
            counts: &COUNTS,
        })
        .is_err()
    {
        return;
    }
    let (batch_max, every, timeout, service) = (
        cfg.max_batch.max(1),
        cfg.flush_interval,
        cfg.timeout,
        cfg.service_name.clone(),
    );
    log::info!(
        "tracing: exporting sampled spans (ratio {}) over OTLP/HTTP to {}",
        cfg.sample_ratio,
        crate::redact::url_path(&target.url)
    );
    tokio::spawn(async move {
        let mut batch: Vec<(u128, Vec<Span>)> = Vec::new();
        let mut spans = 0usize;
        let mut tick = tokio::time::interval(every);
        loop {
            let closed = tokio::select! {
                got = rx.recv() => match got {
                    Some(t) => {
                        spans += t.1.len();
                        batch.push(t);
                        if spans < batch_max {
                            continue;
                        }
                        false
                    }
                    None => true,
                },
                _ = tick.tick() => false,
            };
            if batch.is_empty() {
                if closed {
                    return;
                }
                continue;
            }
            let body = encode(&service, &batch);
            let n = spans as u64;
            batch.clear();
            spans = 0;
            match tokio::time::timeout(
                timeout,
                super::webhook::post_bytes(&target, "application/x-protobuf", &body),
            )
            .await
            {
                Ok(Ok(())) => {
                    COUNTS.exported.fetch_add(n, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    COUNTS.failed.fetch_add(n, Ordering::Relaxed);
                    log::warn!("tracing: export of {n} spans failed: {e}");
                }
                Err(_) => {
                    COUNTS.failed.fetch_add(n, Ordering::Relaxed);
                    log::warn!("tracing: export of {n} spans timed out after {timeout:?}");
                }
            }
            if closed {
                return;
            }
        }
    });
}

/// Whether a request without a sampled parent is sampled at `ratio`.
pub fn sample(ratio: f64) -> bool {
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_links_attempts_to_the_request_span() {
        let mut r = Recording::new(0xabc, 0x11, Some(0x22));
        let a1 = r.start_attempt(1, "worker-0", "127.0.0.1:1");
        r.end_attempt(None, Some("connection refused".into()));
        let a2 = r.start_attempt(2, "worker-1", "127.0.0.1:2");
        assert_ne!(a1, a2);
        assert_eq!(r.attempt_span(), Some(a2));
        let (trace, spans) = r.finish(
            vec![("http.request.method", Attr::Str("GET".into()))],
            200,
            None,
        );
        assert_eq!(trace, 0xabc);
        assert_eq!(spans.len(), 3);
        let root = spans.last().unwrap();
        assert_eq!(
            (root.span_id, root.parent_id, root.kind),
            (0x11, 0x22, Kind::Server)
        );
        assert!(spans[..2]
            .iter()
            .all(|s| s.parent_id == 0x11 && s.kind == Kind::Client));
        assert_eq!(spans[0].error.as_deref(), Some("connection refused"));
        assert!(spans[1].error.is_none());
        assert!(spans[1]
            .attributes
            .contains(&("http.response.status_code", Attr::Int(200))));
    }

    fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        kvs.iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn an_export_request_carries_the_spans_links_kinds_status_and_attributes() {
        let mut r = Recording::new(0xabc, 0x11, None);
        r.child(
            "queue",
            unix_nanos(),
            vec![("drover.queue.result", Attr::Str("served".into()))],
        );
        r.start_attempt(1, "worker-0", "127.0.0.1:1");
        r.end_attempt(None, Some("connection reset".into()));
        let a2 = r.start_attempt(2, "worker-1", "127.0.0.1:2");
        let (trace, spans) = r.finish(
            vec![("http.request.method", Attr::Str("GET".into()))],
            200,
            None,
        );
        let other = Recording::new(0xdef, 0x33, Some(0x44)).finish(Vec::new(), 503, None);
        let body = encode("edge", &[(trace, spans), other]);

        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(
            attr(&res.attributes, "service.name"),
            Some(&any_value::Value::StringValue("edge".into()))
        );
        assert_eq!(
            attr(&res.attributes, "service.version"),
            Some(&any_value::Value::StringValue(
                env!("CARGO_PKG_VERSION").into()
            ))
        );
        assert_eq!(rs.scope_spans.len(), 1);
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "drover");
        let spans = &ss.spans;
        assert_eq!(spans.len(), 5);
        let by_name = |n: &str| spans.iter().filter(|s| s.name == n).collect::<Vec<_>>();

        let root = by_name("request")[0];
        assert_eq!(root.trace_id, 0xabcu128.to_be_bytes());
        assert_eq!(root.span_id, 0x11u64.to_be_bytes());
        assert!(root.parent_span_id.is_empty(), "a root span has no parent");
        assert_eq!(root.kind, SpanKind::Server as i32);
        assert_eq!(root.flags, 1);
        assert!(root.end_time_unix_nano >= root.start_time_unix_nano);
        assert_eq!(
            attr(&root.attributes, "http.request.method"),
            Some(&any_value::Value::StringValue("GET".into()))
        );
        assert_eq!(root.status.as_ref().unwrap().code, StatusCode::Ok as i32);

        let queue = by_name("queue")[0];
        assert_eq!(queue.kind, SpanKind::Internal as i32);
        assert_eq!(queue.parent_span_id, 0x11u64.to_be_bytes());

        let attempts = by_name("upstream attempt");
        assert_eq!(attempts.len(), 2);
        assert!(attempts.iter().all(
            |a| a.kind == SpanKind::Client as i32 && a.parent_span_id == 0x11u64.to_be_bytes()
        ));
        let failed = attempts[0].status.as_ref().unwrap();
        assert_eq!(
            (failed.code, failed.message.as_str()),
            (StatusCode::Error as i32, "connection reset")
        );
        assert_eq!(attempts[1].span_id, a2.to_be_bytes());
        assert_eq!(
            attr(&attempts[1].attributes, "drover.attempt"),
            Some(&any_value::Value::IntValue(2))
        );
        assert_eq!(
            attr(&attempts[1].attributes, "drover.retry"),
            Some(&any_value::Value::BoolValue(true))
        );
        assert_eq!(
            attr(&attempts[1].attributes, "http.response.status_code"),
            Some(&any_value::Value::IntValue(200))
        );

        // The second request of the batch: a continued trace that failed with a 5xx.
        let cont = spans
            .iter()
            .find(|s| s.trace_id == 0xdefu128.to_be_bytes())
            .unwrap();
        assert_eq!(cont.parent_span_id, 0x44u64.to_be_bytes());
        let st = cont.status.as_ref().unwrap();
        assert_eq!(
            (st.code, st.message.as_str()),
            (StatusCode::Error as i32, "status 503")
        );
    }
}
