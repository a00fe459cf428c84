//! The data plane: drover's `ProxyHttp` implementation.
//!
//! Hooks stay thin: header hygiene is in `headers`, backend choice in `balancing`, outcome
//! bookkeeping in `outcome`. A request walks: request_filter (strip internal headers,
//! request id) → upstream_peer (pick a backend, take an in-flight slot) → on connect or
//! proxy failure, maybe retry on another backend → response filters (strip internal
//! headers) → logging (record the outcome once: breaker, balancer, metrics, access log).

pub mod headers;

use crate::balancing::consistent_hash::fnv1a;
use crate::balancing::InflightGuard;
use crate::config::HashKey;
use crate::observe::access_log;
use crate::state::Shared;
use async_trait::async_trait;
use pingora_core::prelude::*;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

pub struct DroverProxy {
    shared: Arc<Shared>,
}

impl DroverProxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        DroverProxy { shared }
    }
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    guard: Option<InflightGuard>,
    /// Backends this request failed on; allocated only when a retry happens.
    tried: Vec<u64>,
    tries: u32,
    upstream_start: Option<Instant>,
    response_started: bool,
    request_id: Option<String>,
    counted: bool,
}

fn hash_key(session: &Session, key: &HashKey) -> u64 {
    let req = session.req_header();
    match key {
        HashKey::ClientIp => match session.client_addr().and_then(|a| a.as_inet()) {
            Some(a) => match a.ip() {
                std::net::IpAddr::V4(v4) => fnv1a(&v4.octets()),
                std::net::IpAddr::V6(v6) => fnv1a(&v6.octets()),
            },
            None => 0,
        },
        HashKey::Path => fnv1a(req.uri.path().as_bytes()),
        HashKey::Header(name) => req
            .headers
            .get(name)
            .map(|v| fnv1a(v.as_bytes()))
            .unwrap_or(0),
        HashKey::Cookie(name) => headers::cookie(req, name)
            .map(|v| fnv1a(v.as_bytes()))
            .unwrap_or(0),
    }
}

#[async_trait]
impl ProxyHttp for DroverProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            guard: None,
            tried: Vec::new(),
            tries: 0,
            upstream_start: None,
            response_started: false,
            request_id: None,
            counted: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.shared.metrics.in_flight.inc();
        ctx.counted = true;
        let req = session.req_header_mut();
        headers::strip_internal_request(req);
        if self.shared.config.load().logging.access_log {
            let (id, fresh) = headers::request_id(req);
            if fresh {
                let _ = req.insert_header(headers::REQUEST_ID, id.as_str());
            }
            ctx.request_id = Some(id);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.tries += 1;
        let key = {
            let sel = self.shared.pool.selector();
            if sel.needs_key() {
                hash_key(session, &self.shared.config.load().balancing.hash_key)
            } else {
                0
            }
        };
        // Release the previous attempt's slot before taking a new one.
        ctx.guard = None;
        match self.shared.pool.select(key, &ctx.tried) {
            Some(guard) => {
                let peer = Box::new(guard.backend().peer.clone());
                ctx.guard = Some(guard);
                ctx.upstream_start = Some(Instant::now());
                Ok(peer)
            }
            None => {
                self.shared.metrics.no_backend.inc();
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no backend available",
                ))
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["connect"])
            .inc();
        self.settle_failed_attempt(ctx);
        // Nothing reached the worker, so any method is safe to send elsewhere.
        if ctx.tries <= self.shared.config.load().proxy.retries {
            self.shared.metrics.retries.inc();
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["proxy"])
            .inc();
        self.settle_failed_attempt(ctx);
        // A worker that died mid-request (kill -9) took an idempotent request with it;
        // resend it elsewhere unless the client already saw part of a response or the
        // request body could not be buffered for replay.
        let idempotent = session.req_header().method.is_idempotent();
        let retry = idempotent
            && !ctx.response_started
            && !session.as_ref().retry_buffer_truncated()
            && ctx.tries <= self.shared.config.load().proxy.retries;
        if retry {
            self.shared.metrics.retries.inc();
        }
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.response_started = true;
        headers::strip_internal_response(upstream_response);
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client hanging up is routine at the edge, not an ERROR.
        let client_gone = error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::ConnectionClosed
                    | ErrorType::ReadTimedout
            );
        let no_backend = matches!(error.etype(), ErrorType::HTTPStatus(503));
        client_gone || no_backend
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let m = &self.shared.metrics;
        if ctx.counted {
            m.in_flight.dec();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        m.status_class(status).inc();
        m.duration.observe(elapsed.as_secs_f64());
        let mut backend_name: Option<Arc<str>> = None;
        let mut worker_id = None;
        if let Some(mut guard) = ctx.guard.take() {
            let upstream_elapsed = ctx.upstream_start.map(|s| s.elapsed()).unwrap_or(elapsed);
            let success = e.is_none() && status != 0 && status < 500;
            guard.finish(success, upstream_elapsed);
            let b = guard.backend();
            self.shared.pool.selector().feedback(b.id, success);
            m.backend_requests.with_label_values(&[&b.name]).inc();
            m.backend_duration
                .with_label_values(&[&b.name])
                .observe(upstream_elapsed.as_secs_f64());
            if !success {
                m.backend_failures.with_label_values(&[&b.name]).inc();
            }
            backend_name = Some(b.name.clone());
            worker_id = b.worker_id;
        }
        if self.shared.config.load().logging.access_log {
            let req = session.req_header();
            let client = session
                .client_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let err = e.map(|e| e.to_string());
            let line = access_log::format(&access_log::AccessRecord {
                client: &client,
                method: req.method.as_str(),
                path: req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                status,
                backend: backend_name.as_deref().unwrap_or("-"),
                worker_id,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                bytes: session.body_bytes_sent(),
                request_id: ctx.request_id.as_deref().unwrap_or(""),
                tries: ctx.tries,
                error: err.as_deref(),
            });
            log::info!(target: "access", "{line}");
        }
    }
}

impl DroverProxy {
    /// Records a failed attempt on the current backend and remembers it so a retry goes
    /// elsewhere.
    fn settle_failed_attempt(&self, ctx: &mut RequestCtx) {
        if let Some(mut guard) = ctx.guard.take() {
            let elapsed = ctx.upstream_start.map(|s| s.elapsed()).unwrap_or_default();
            guard.finish(false, elapsed);
            let b = guard.backend();
            self.shared.pool.selector().feedback(b.id, false);
            self.shared
                .metrics
                .backend_failures
                .with_label_values(&[&b.name])
                .inc();
            ctx.tried.push(b.id);
        }
    }
}
