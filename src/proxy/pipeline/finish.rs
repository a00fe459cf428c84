//! Step 6: the request is over.

use super::{Exchange, LimitKind, Pipeline};
use crate::observe::access_log;
use crate::resilience::classify::Outcome;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Instant;

/// Whether a read error is the client's malformed body rather than a broken connection.
fn malformed_body(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
}

impl Pipeline {
    /// The status a failed request answers with; 0 when the client is gone (nobody to
    /// answer). Counts clients too slow sending their body.
    pub fn failure_status(&self, e: &Error) -> u16 {
        match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::ConnectTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    // A malformed chunked body (`h1::client::ClientStream` refuses it as
                    // Pingora reads it): the client gets 400, as from drover's engine.
                    ErrorType::ReadError if malformed_body(e) => 400,
                    ErrorType::WriteError
                    | ErrorType::ReadError
                    | ErrorType::ConnectionClosed
                    | ErrorType::WriteTimedout => 0,
                    // A client too slow sending its body (limits.client_body_timeout).
                    ErrorType::ReadTimedout => {
                        self.count_limit(LimitKind::BodyTimeout);
                        408
                    }
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        }
    }

    /// Session write-back, then the request's outcome recorded once in the breaker,
    /// balancer, metrics, route breaker and access log.
    pub async fn finish(
        &self,
        req: &RequestHeader,
        client_addr: Option<&SocketAddr>,
        status: u16,
        bytes_sent: usize,
        e: Option<&Error>,
        ex: &mut Exchange,
    ) {
        if let (Some(sessions), Some(mut s)) = (self.shared.sessions.get(), ex.session.take()) {
            sessions.finish(&mut s).await;
        }
        // A failed gRPC call is judged like the HTTP status it amounts to.
        let judged = self.edge_finish(req.version, status, ex);
        let m = &self.shared.metrics;
        if let Some(counted) = ex.counted.take() {
            self.shared.in_flight.leave(counted);
        }
        // One clock read for both the total and the upstream time.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(ex.start);
        m.status_class(status).inc();
        m.duration.observe(elapsed.as_secs_f64());
        m.latency.overall.record(elapsed);
        let mut backend_name: Option<Arc<str>> = None;
        let mut worker_id = None;
        if let Some(mut guard) = ex.guard.take() {
            let upstream_elapsed = ex
                .upstream_start
                .map(|s| now.saturating_duration_since(s))
                .unwrap_or(elapsed);
            let success =
                Outcome::of_request(e, judged).is_some_and(|o| guard.finish(o, upstream_elapsed));
            let b = guard.backend();
            self.shared.pool.selector().feedback(b.id, success);
            if let Some(h) = b.metrics.get() {
                h.finished(upstream_elapsed, success);
            }
            backend_name = Some(b.name.clone());
            worker_id = b.worker_id;
        }
        self.resilience_done(ex, e, judged);
        if let Some(r) = ex.spans.take() {
            use crate::observe::otlp::{submit, Attr};
            let mut attrs = vec![
                (
                    "http.request.method",
                    Attr::Str(req.method.as_str().to_string()),
                ),
                ("url.path", Attr::Str(req.uri.path().to_string())),
                ("http.response.status_code", Attr::Int(status as i64)),
                ("drover.tries", Attr::Int(ex.tries as i64)),
            ];
            if let Some(b) = &backend_name {
                attrs.push(("drover.backend", Attr::Str(b.to_string())));
            }
            if let Some(ip) = ex.client_ip {
                attrs.push(("client.address", Attr::Str(ip.to_string())));
            }
            if let Some(id) = &ex.request_id {
                attrs.push(("drover.request_id", Attr::Str(id.clone())));
            }
            if let Some(code) = ex.grpc_status {
                attrs.push(("rpc.grpc.status_code", Attr::Int(code as i64)));
            }
            // A failed gRPC call (HTTP 200, failing grpc-status) is an error span too.
            let error = e.map(|e| e.to_string()).or_else(|| {
                (judged >= 500 && status < 500)
                    .then(|| format!("grpc-status {}", ex.grpc_status.unwrap_or_default()))
            });
            let (trace, spans) = r.finish(attrs, status, error);
            submit(trace, spans);
        }
        let cfg = self.shared.config.load();
        if cfg.logging.access_log {
            let client = match ex.client_ip {
                Some(ip) => ip.to_string(),
                None => client_addr.map(|a| a.to_string()).unwrap_or_default(),
            };
            let err = e.map(|e| e.to_string());
            let line = access_log::format(&access_log::AccessRecord {
                client: &client,
                method: req.method.as_str(),
                path: req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                status,
                backend: backend_name.as_deref().unwrap_or("-"),
                worker_id,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                bytes: bytes_sent,
                request_id: ex.request_id.as_deref().unwrap_or(""),
                tries: ex.tries,
                error: err.as_deref(),
                trace: ex.trace.as_ref(),
            });
            access_log::write(cfg.logging.access_log_file.as_deref(), &line);
        }
    }
}
