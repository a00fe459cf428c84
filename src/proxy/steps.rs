//! The steps of a proxied request that do not depend on which HTTP/1 engine carries it.
//!
//! Pingora's `ProxyHttp` hooks (`proxy/mod.rs`) and drover's own HTTP/1 fast path
//! (`proxy/h1/`) both call these, so a request gets the same limits, header hygiene,
//! rate limits, sessions, balancing, breakers, metrics and access log whichever path
//! serves it.

use super::headers::HeaderEdits;
use super::{forwarded, hash_key, headers, ip_hash, limits, DroverProxy, RequestCtx};
use crate::balancing::backend::BackendState;
use crate::balancing::{SelectError, SelectLimits};
use crate::observe::access_log;
use crate::observe::trace::TraceContext;
use crate::resilience::classify::Outcome;
use bytes::Bytes;
use pingora_core::prelude::*;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// A response drover gives itself instead of proxying: an edge limit, a rate limit, a
/// bulkhead or a tripped route's fallback.
pub struct LocalResponse {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Close the client connection afterwards (the request body may be unread).
    pub close: bool,
}

impl LocalResponse {
    /// The answer to a request that failed with `code` (see `failure_status`). A 503
    /// that drover chose itself (`reject`) says why and when to come back. The connection
    /// is not reused after an error: the header says so, so clients do not send their
    /// next request on a socket about to close.
    pub fn failure(code: u16, reject: Option<&'static str>) -> Result<Self> {
        let retry_after = reject.is_some() && code == 503;
        let body: &'static [u8] = match reject {
            Some(why) if code == 503 => why.as_bytes(),
            _ => b"",
        };
        let mut header = ResponseHeader::build(code, Some(4))?;
        header.insert_header("Content-Length", body.len().to_string())?;
        header.insert_header("Cache-Control", "private, no-store")?;
        header.insert_header("Connection", "close")?;
        if retry_after {
            header.insert_header("Retry-After", "1")?;
        }
        Ok(LocalResponse {
            header,
            body: Bytes::from_static(body),
            close: true,
        })
    }

    /// Writes the answer through Pingora's session.
    pub async fn write_to(self, session: &mut Session) -> Result<()> {
        if self.close {
            session.set_keepalive(None);
        }
        let empty = self.body.is_empty();
        session
            .write_response_header(Box::new(self.header), empty)
            .await?;
        if !empty {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}

impl DroverProxy {
    /// The status a failed request answers with; 0 when the client is gone (nobody to
    /// answer). Counts clients too slow sending their body.
    pub(crate) fn failure_status(&self, e: &Error) -> u16 {
        match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::ConnectTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // A client too slow sending its body (limits.client_body_timeout).
                    ErrorType::ReadTimedout => {
                        self.limit_rejections[4].inc();
                        408
                    }
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        }
    }

    /// Everything before a backend is chosen: edge limits, internal-header stripping,
    /// request id, trace context, forwarding headers, rate limits, bulkheads, route
    /// breakers, and the session. `Some` when drover answers the request itself.
    pub(crate) async fn admit(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        ctx: &mut RequestCtx,
    ) -> Result<Option<LocalResponse>> {
        self.shared.metrics.in_flight.inc();
        ctx.counted = true;
        // One load of the running config for the whole step.
        let cfg = self.shared.config.load();
        let in_flight = self.shared.metrics.in_flight.get();
        if let Some(v) = limits::check_request(&cfg.limits, req, in_flight) {
            self.count_limit(v);
            return LocalResponse::failure(v.status(), None).map(Some);
        }
        ctx.max_body_bytes = cfg.limits.max_body_bytes;
        headers::strip_internal_request(req);
        // Header changes are decided from the request as the client sent it, then
        // applied at once (see `HeaderEdits`).
        let mut edits = HeaderEdits::default();
        if cfg.logging.access_log {
            let (id, fresh) = headers::request_id(req);
            if fresh {
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    edits.insert(headers::REQUEST_ID, v);
                }
            }
            ctx.request_id = Some(id);
        }
        let trace = TraceContext::from_request(req);
        trace.edit(&mut edits);
        ctx.trace = Some(trace);
        if let Some(peer) = peer {
            let client = forwarded::client_ip(&cfg.forwarded, peer, req);
            forwarded::edit(&cfg.forwarded, req, peer, client, &mut edits);
            ctx.client_ip = Some(client);
        }
        edits.apply(req);
        drop(cfg);
        // Rate limits, bulkheads and route breakers answer before any session work.
        if let Some(answer) = self.resilience_request(req, ctx)? {
            return Ok(Some(answer));
        }
        if let Some(sessions) = self.shared.sessions.get() {
            sessions.strip_client_headers(req);
            let client = ip_hash(ctx.client_ip);
            ctx.session = Some(sessions.begin(req, client).await);
        }
        Ok(None)
    }

    /// Chooses the backend for this attempt and takes its in-flight slot (waiting in the
    /// bounded queue when every backend is full).
    pub(crate) async fn pick_peer(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.tries += 1;
        if let Some(peer) = self.resilience_before_select(ctx).await? {
            return Ok(peer);
        }
        let cfg = self.shared.config.load();
        let key = if self.shared.pool.selector().needs_key() {
            hash_key(req, ctx, &cfg.balancing.hash_key)
        } else {
            0
        };
        // Release the previous attempt's slot before taking a new one.
        ctx.guard = None;
        let limits = SelectLimits {
            max_inflight: cfg.balancing.max_inflight_per_backend,
            slow_start: cfg.balancing.slow_start,
        };
        let guard = match self.try_select(key, ctx, limits) {
            Ok(g) => g,
            Err(SelectError::AllBusy) => self.wait_in_queue(key, ctx, limits, &cfg).await?,
            Err(SelectError::NoBackend) => {
                self.shared.metrics.no_backend.inc();
                ctx.reject = Some("no backend available");
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no backend available",
                ));
            }
        };
        let mut peer = Box::new(guard.backend().peer.clone());
        ctx.guard = Some(guard);
        ctx.upstream_start = Some(Instant::now());
        self.resilience_after_select(req, ctx, &mut peer).await?;
        Ok(peer)
    }

    /// The request as the backend sees it: the session's headers added.
    pub(crate) fn prepare_upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) {
        if let (Some(sessions), Some(s)) = (self.shared.sessions.get(), &ctx.session) {
            let mut edits = HeaderEdits::default();
            sessions.annotate(s, &mut edits);
            edits.apply(req);
        }
    }

    /// The connection to the chosen backend failed. Records it and says whether to try
    /// another backend: nothing reached the worker, so any method is safe to resend.
    pub(crate) fn connect_failed(&self, ctx: &mut RequestCtx, e: &Error) -> bool {
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["connect"])
            .inc();
        if e.etype() == &ErrorType::ConnectRefused {
            self.eject_refusing_backend(ctx);
        }
        self.settle_failed_attempt(ctx, Outcome::from_error(e).unwrap_or(Outcome::ConnectError));
        let retry =
            ctx.tries <= self.shared.config.load().proxy.retries && self.resilience_may_retry(ctx);
        if retry {
            self.shared.metrics.retries.inc();
        }
        retry
    }

    /// Passive health check: a refused connection means nothing listens there (a worker
    /// killed, a host restarting), so the backend leaves rotation at once instead of
    /// drawing requests (and the retry budget) until its active check fails twice. The
    /// active check puts it back when it passes. nginx does the same by default
    /// (`max_fails=1`).
    fn eject_refusing_backend(&self, ctx: &RequestCtx) {
        let Some(b) = ctx.guard.as_ref().map(|g| g.backend()) else {
            return;
        };
        if b.state() != BackendState::Healthy {
            return;
        }
        if b.set_state(BackendState::Unhealthy) == BackendState::Healthy {
            log::warn!(
                "health: {} ({}) refused a connection, out of rotation until its health check passes",
                b.name,
                b.addr
            );
            self.shared
                .metrics
                .health_checks
                .with_label_values(&["refused"])
                .inc();
            self.shared.pool.refresh();
        }
    }

    /// The backend failed after the connection was up. Records it and says whether to
    /// resend the request elsewhere: a worker that died mid-request (kill -9) took an
    /// idempotent request with it, which is resent unless the client already saw part
    /// of a response or the request body cannot be replayed.
    pub(crate) fn proxy_failed(
        &self,
        ctx: &mut RequestCtx,
        e: &Error,
        req: &RequestHeader,
        replayable: bool,
    ) -> bool {
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["proxy"])
            .inc();
        self.settle_failed_attempt(ctx, Outcome::from_error(e).unwrap_or(Outcome::Reset));
        let retry = req.method.is_idempotent()
            && !ctx.response_started
            && replayable
            && ctx.tries <= self.shared.config.load().proxy.retries
            && self.resilience_may_retry(ctx);
        if retry {
            self.shared.metrics.retries.inc();
        }
        retry
    }

    /// The backend's response header arrived: session update, custom worker metrics,
    /// internal headers stripped.
    pub(crate) async fn on_upstream_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) {
        ctx.response_started = true;
        if let (Some(sessions), Some(s)) = (self.shared.sessions.get(), ctx.session.as_mut()) {
            sessions.on_response(s, resp).await;
        }
        if let (Some(v), Some(g)) = (resp.headers.get(crate::observe::custom::HEADER), &ctx.guard) {
            self.shared
                .observe
                .custom
                .ingest(&g.backend().name, v.as_bytes());
        }
        headers::strip_internal_response(resp);
    }

    /// The request is over: session write-back, then its outcome recorded once in the
    /// breaker, balancer, metrics, route breaker and access log.
    pub(crate) async fn finish(
        &self,
        req: &RequestHeader,
        client_addr: Option<&SocketAddr>,
        status: u16,
        bytes_sent: usize,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        if let (Some(sessions), Some(mut s)) = (self.shared.sessions.get(), ctx.session.take()) {
            sessions.finish(&mut s).await;
        }
        let m = &self.shared.metrics;
        if ctx.counted {
            m.in_flight.dec();
            ctx.counted = false;
        }
        // One clock read for both the total and the upstream time.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(ctx.start);
        m.status_class(status).inc();
        m.duration.observe(elapsed.as_secs_f64());
        m.latency.overall.record(elapsed);
        let mut backend_name: Option<Arc<str>> = None;
        let mut worker_id = None;
        if let Some(mut guard) = ctx.guard.take() {
            let upstream_elapsed = ctx
                .upstream_start
                .map(|s| now.saturating_duration_since(s))
                .unwrap_or(elapsed);
            let success =
                Outcome::of_request(e, status).is_some_and(|o| guard.finish(o, upstream_elapsed));
            let b = guard.backend();
            self.shared.pool.selector().feedback(b.id, success);
            if let Some(h) = b.metrics.get() {
                h.requests.inc();
                h.duration.observe(upstream_elapsed.as_secs_f64());
                h.latency.record(upstream_elapsed);
                if !success {
                    h.failures.inc();
                }
            }
            backend_name = Some(b.name.clone());
            worker_id = b.worker_id;
        }
        self.resilience_done(ctx, e, status);
        if self.shared.config.load().logging.access_log {
            let client = match ctx.client_ip {
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
                request_id: ctx.request_id.as_deref().unwrap_or(""),
                tries: ctx.tries,
                error: err.as_deref(),
                trace: ctx.trace.as_ref(),
            });
            log::info!(target: "access", "{line}");
        }
    }
}
