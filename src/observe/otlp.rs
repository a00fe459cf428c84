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
//! The protobuf encoding is written by hand (the handful of messages of
//! `opentelemetry/proto/{collector/trace,trace,common,resource}/v1`, field numbers in
//! the comments) rather than pulling the OpenTelemetry SDK, prost and an HTTP client
//! into the build (docs/DECISIONS.md). `tests/tracing.rs` decodes what drover sends with
//! the reference Python implementation (`opentelemetry-proto`).

use crate::config::observability::TracingConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use tokio::sync::mpsc;

/// OTLP `SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub span_id: u64,
    /// 0 = a root span.
    pub parent_id: u64,
    pub name: &'static str,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
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
    pub trace_id: u128,
    /// The request span (drover's span id of the trace context).
    pub root: Span,
    /// The attempt in progress.
    pub attempt: Option<Span>,
    pub done: Vec<Span>,
}

impl Recording {
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

// ---- protobuf encoding -----------------------------------------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes_field(out, field, &inner);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `KeyValue { string key = 1; AnyValue value = 2 }`, `AnyValue { string_value = 1;
/// bool_value = 2; int_value = 3 }`.
fn key_value(out: &mut Vec<u8>, field: u32, k: &str, v: &Attr) {
    message(out, field, |kv| {
        bytes_field(kv, 1, k.as_bytes());
        message(kv, 2, |av| match v {
            Attr::Str(s) => bytes_field(av, 1, s.as_bytes()),
            Attr::Bool(b) => {
                key(av, 2, 0);
                varint(av, *b as u64);
            }
            Attr::Int(i) => {
                key(av, 3, 0);
                varint(av, *i as u64);
            }
        });
    });
}

/// `Span` (opentelemetry/proto/trace/v1/trace.proto): trace_id = 1, span_id = 2,
/// parent_span_id = 4, name = 5, kind = 6, start = 7, end = 8, attributes = 9,
/// status = 15 (`message = 2`, `code = 3`: 1 ok, 2 error), flags = 16.
fn span(out: &mut Vec<u8>, trace_id: u128, s: &Span) {
    message(out, 2, |m| {
        bytes_field(m, 1, &trace_id.to_be_bytes());
        bytes_field(m, 2, &s.span_id.to_be_bytes());
        if s.parent_id != 0 {
            bytes_field(m, 4, &s.parent_id.to_be_bytes());
        }
        bytes_field(m, 5, s.name.as_bytes());
        key(m, 6, 0);
        varint(m, s.kind as u64);
        fixed64(m, 7, s.start_ns);
        fixed64(m, 8, s.end_ns.max(s.start_ns));
        for (k, v) in &s.attributes {
            key_value(m, 9, k, v);
        }
        message(m, 15, |st| {
            if let Some(e) = &s.error {
                bytes_field(st, 2, e.as_bytes());
            }
            key(st, 3, 0);
            varint(st, if s.error.is_some() { 2 } else { 1 });
        });
        // Flags: the W3C trace flags (sampled).
        key(m, 16, 5);
        m.extend_from_slice(&1u32.to_le_bytes());
    });
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }`,
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }`,
/// `Resource { repeated KeyValue attributes = 1 }`, `ScopeSpans { InstrumentationScope
/// scope = 1; repeated Span spans = 2 }`, `InstrumentationScope { name = 1; version = 2 }`.
pub fn encode(service: &str, batch: &[(u128, Vec<Span>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * batch.len());
    message(&mut out, 1, |rs| {
        message(rs, 1, |r| {
            key_value(r, 1, "service.name", &Attr::Str(service.to_string()));
            key_value(
                r,
                1,
                "service.version",
                &Attr::Str(env!("CARGO_PKG_VERSION").to_string()),
            );
        });
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                bytes_field(scope, 1, b"drover");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for (trace_id, spans) in batch {
                for s in spans {
                    span(ss, *trace_id, s);
                }
            }
        });
    });
    out
}

// ---- the exporter ------------------------------------------------------------------

/// Counters of the exporter, exported by `/metrics` (`drover_trace_spans_total`).
#[derive(Default)]
pub struct ExportCounts {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Exporter {
    tx: mpsc::Sender<(u128, Vec<Span>)>,
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
    use super::names::TRACE_SPANS_TOTAL as N;
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
    fn varints_and_fixed_fields_encode_as_protobuf_does() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut f = Vec::new();
        fixed64(&mut f, 7, 1);
        assert_eq!(f, [0x39, 1, 0, 0, 0, 0, 0, 0, 0]);
    }

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
        let body = encode("drover", &[(trace, spans)]);
        // The trace id appears as 16 big-endian bytes.
        let id = 0xabcu128.to_be_bytes();
        assert!(body.windows(16).any(|w| w == id));
    }
}
