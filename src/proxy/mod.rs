//! The data plane: drover's `ProxyHttp` implementation.
//!
//! Hooks stay thin: header hygiene is in `headers`, backend choice in `balancing`, outcome
//! bookkeeping in `outcome`. A request walks: request_filter (strip internal headers,
//! request id) → upstream_peer (pick a backend, take an in-flight slot) → on connect or
//! proxy failure, maybe retry on another backend → response filters (strip internal
//! headers) → logging (record the outcome once: breaker, balancer, metrics, access log).

pub mod forwarded;
pub mod headers;
pub mod limits;
mod resilience;

use crate::balancing::consistent_hash::fnv1a;
use crate::balancing::queue::QueueRejection;
use crate::balancing::{InflightGuard, SelectError, SelectLimits};
use crate::config::Config;
use crate::config::HashKey;
use crate::observe::access_log;
use crate::observe::trace::TraceContext;
use crate::resilience::classify::Outcome;
use crate::sessions::SessionCtx;
use crate::state::Shared;
use async_trait::async_trait;
use pingora_core::modules::http::HttpModules;
use pingora_core::prelude::*;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

pub struct DroverProxy {
    shared: Arc<Shared>,
    /// `drover_limit_rejections_total{limit}`, one handle per limit.
    limit_rejections: [prometheus::IntCounter; 5],
}

impl DroverProxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        let vec = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                crate::observe::names::LIMIT_REJECTIONS_TOTAL,
                "Requests refused by an edge limit (431, 413, 408, 503), by limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let _ = shared.metrics.registry.register(Box::new(vec.clone()));
        // The last is counted where Pingora reports a client's read timeout (fail_to_proxy).
        let limit_rejections = [
            "header_bytes",
            "header_count",
            "body_bytes",
            "in_flight",
            "body_timeout",
        ]
        .map(|l| vec.with_label_values(&[l]));
        DroverProxy {
            shared,
            limit_rejections,
        }
    }

    fn count_limit(&self, v: limits::Violation) {
        let i = match v {
            limits::Violation::HeaderBytes => 0,
            limits::Violation::HeaderCount => 1,
            limits::Violation::BodyBytes => 2,
            limits::Violation::InFlight => 3,
        };
        self.limit_rejections[i].inc();
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
    /// Why drover itself answered 503 (no backend, queue full or timed out).
    reject: Option<&'static str>,
    /// The request's sticky session, when sessions are on.
    session: Option<SessionCtx>,
    /// The client's address (the TCP peer, or what a trusted proxy reported).
    client_ip: Option<std::net::IpAddr>,
    /// Request body bytes seen so far, and the limit on them.
    body_bytes: u64,
    max_body_bytes: u64,
    /// Route, bulkhead slot, route breaker permit, deadline (`proxy/resilience.rs`).
    res: resilience::ResCtx,
    /// W3C trace context: continued or started in request_filter, logged at the end.
    trace: Option<TraceContext>,
}

/// The hash of a client address used by IP hashing, sticky fallback and rate limits.
pub(crate) fn ip_hash(ip: Option<std::net::IpAddr>) -> u64 {
    match ip {
        Some(std::net::IpAddr::V4(v4)) => fnv1a(&v4.octets()),
        Some(std::net::IpAddr::V6(v6)) => fnv1a(&v6.octets()),
        None => 0,
    }
}

fn hash_key(session: &Session, ctx: &RequestCtx, key: &HashKey) -> u64 {
    let req = session.req_header();
    match key {
        HashKey::ClientIp => ip_hash(ctx.client_ip),
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

    /// No downstream modules: Pingora's default adds a disabled compression module whose
    /// per-request context and filter calls drover never uses (measured in PERFORMANCE.md).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

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
            reject: None,
            session: None,
            client_ip: None,
            body_bytes: 0,
            max_body_bytes: u64::MAX,
            res: Default::default(),
            trace: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.shared.metrics.in_flight.inc();
        ctx.counted = true;
        // One load of the running config for the whole hook.
        let cfg = self.shared.config.load();
        let in_flight = self.shared.metrics.in_flight.get();
        if let Some(v) = limits::check_request(&cfg.limits, session.req_header(), in_flight) {
            self.count_limit(v);
            let _ = session.respond_error(v.status()).await;
            return Ok(true);
        }
        session
            .as_mut()
            .set_read_timeout(Some(cfg.limits.client_body_timeout));
        ctx.max_body_bytes = cfg.limits.max_body_bytes;
        let req = session.req_header_mut();
        headers::strip_internal_request(req);
        if cfg.logging.access_log {
            let (id, fresh) = headers::request_id(req);
            if fresh {
                let _ = req.insert_header(headers::REQUEST_ID, id.as_str());
            }
            ctx.request_id = Some(id);
        }
        let trace = TraceContext::from_request(req);
        trace.apply(req);
        ctx.trace = Some(trace);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(peer) = peer {
            let client = forwarded::client_ip(&cfg.forwarded, peer, session.req_header());
            forwarded::apply(&cfg.forwarded, session.req_header_mut(), peer, client);
            ctx.client_ip = Some(client);
        }
        drop(cfg);
        // Rate limits, bulkheads and route breakers answer before any session work.
        if self.resilience_request(session, ctx).await? {
            return Ok(true);
        }
        if let Some(sessions) = self.shared.sessions.get() {
            sessions.strip_client_headers(session.req_header_mut());
            let client = ip_hash(ctx.client_ip);
            ctx.session = Some(sessions.begin(session.req_header(), client).await);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.max_body_bytes {
                self.count_limit(limits::Violation::BodyBytes);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than limits.max_body_bytes",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(sessions), Some(s)) = (self.shared.sessions.get(), &ctx.session) {
            sessions.annotate_request(s, upstream_request);
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.tries += 1;
        if let Some(peer) = self.resilience_before_select(ctx).await? {
            return Ok(peer);
        }
        let cfg = self.shared.config.load();
        let key = if self.shared.pool.selector().needs_key() {
            hash_key(session, ctx, &cfg.balancing.hash_key)
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
        self.resilience_after_select(session, ctx, &mut peer)
            .await?;
        Ok(peer)
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
        self.settle_failed_attempt(
            ctx,
            Outcome::from_error(&e).unwrap_or(Outcome::ConnectError),
        );
        // Nothing reached the worker, so any method is safe to send elsewhere.
        if ctx.tries <= self.shared.config.load().proxy.retries && self.resilience_may_retry(ctx) {
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
        if e.esource() == &ErrorSource::Downstream {
            // The client went away (or sent garbage): nothing to blame the backend for,
            // and nobody to retry for. Dropping the guard frees the slot and the breaker
            // permit without recording a result.
            ctx.guard = None;
            e.set_retry(false);
            return e;
        }
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["proxy"])
            .inc();
        self.settle_failed_attempt(ctx, Outcome::from_error(&e).unwrap_or(Outcome::Reset));
        // A worker that died mid-request (kill -9) took an idempotent request with it;
        // resend it elsewhere unless the client already saw part of a response or the
        // request body could not be buffered for replay.
        let idempotent = session.req_header().method.is_idempotent();
        let retry = idempotent
            && !ctx.response_started
            && !session.as_ref().retry_buffer_truncated()
            && ctx.tries <= self.shared.config.load().proxy.retries
            && self.resilience_may_retry(ctx);
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
        if let (Some(sessions), Some(s)) = (self.shared.sessions.get(), ctx.session.as_mut()) {
            sessions.on_response(s, upstream_response).await;
        }
        if let (Some(v), Some(g)) = (
            upstream_response
                .headers
                .get(crate::observe::custom::HEADER),
            &ctx.guard,
        ) {
            self.shared
                .observe
                .custom
                .ingest(&g.backend().name, v.as_bytes());
        }
        headers::strip_internal_response(upstream_response);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
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
        };
        if code > 0 {
            let retry_after = ctx.reject.is_some() && code == 503;
            let body: &'static [u8] = match ctx.reject {
                Some(why) if code == 503 => why.as_bytes(),
                _ => b"",
            };
            if let Ok(mut resp) = ResponseHeader::build(code, Some(4)) {
                let _ = resp.insert_header("Content-Length", body.len().to_string());
                let _ = resp.insert_header("Cache-Control", "private, no-store");
                // The connection is not reused after an error (below): say so, so clients
                // do not send their next request on a socket about to close.
                let _ = resp.insert_header("Connection", "close");
                if retry_after {
                    let _ = resp.insert_header("Retry-After", "1");
                }
                let _ = session
                    .write_response_header(Box::new(resp), body.is_empty())
                    .await;
                if !body.is_empty() {
                    let _ = session
                        .write_response_body(Some(bytes::Bytes::from_static(body)), true)
                        .await;
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
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
        if let (Some(sessions), Some(mut s)) = (self.shared.sessions.get(), ctx.session.take()) {
            sessions.finish(&mut s).await;
        }
        let m = &self.shared.metrics;
        if ctx.counted {
            m.in_flight.dec();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
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
            let req = session.req_header();
            let client = match ctx.client_ip {
                Some(ip) => ip.to_string(),
                None => session
                    .client_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
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
                bytes: session.body_bytes_sent(),
                request_id: ctx.request_id.as_deref().unwrap_or(""),
                tries: ctx.tries,
                error: err.as_deref(),
                trace: ctx.trace.as_ref(),
            });
            log::info!(target: "access", "{line}");
        }
    }
}

impl DroverProxy {
    /// One selection attempt: the session's pinned backend (or its ring owner) for a
    /// sticky request, the strategy's pick otherwise.
    fn try_select(
        &self,
        key: u64,
        ctx: &mut RequestCtx,
        limits: SelectLimits,
    ) -> std::result::Result<InflightGuard, SelectError> {
        let pool = &self.shared.pool;
        if let (Some(sessions), Some(s)) = (self.shared.sessions.get(), ctx.session.as_mut()) {
            let pref = sessions.preference(s);
            if pref.sticky {
                let (guard, repin) =
                    pool.select_sticky(pref.pinned.as_deref(), pref.key, &ctx.tried, limits)?;
                sessions.on_selected(s, &guard.backend().name, repin);
                return Ok(guard);
            }
            let guard = pool.select_limited(key, &ctx.tried, limits)?;
            sessions.on_selected(s, &guard.backend().name, false);
            return Ok(guard);
        }
        pool.select_limited(key, &ctx.tried, limits)
    }

    /// Every backend is at `max_inflight_per_backend`: wait for a slot in the bounded
    /// queue, or give up with 503 + Retry-After when it is full or the wait times out.
    async fn wait_in_queue(
        &self,
        key: u64,
        ctx: &mut RequestCtx,
        limits: SelectLimits,
        cfg: &Config,
    ) -> Result<InflightGuard> {
        let m = &self.shared.metrics;
        let queue = &self.shared.pool.queue;
        let rejected = |ctx: &mut RequestCtx, why: QueueRejection| {
            m.queue_rejected.with_label_values(&[why.as_str()]).inc();
            ctx.reject = Some(match why {
                QueueRejection::Full => "queue full",
                QueueRejection::TimedOut => "queue wait timed out",
            });
            Error::explain(ErrorType::HTTPStatus(503), "all backends busy")
        };
        let place = match queue.enter(cfg.balancing.queue_size as usize) {
            Ok(p) => p,
            Err(why) => return Err(rejected(ctx, why)),
        };
        m.queue_length.set(queue.len() as i64);
        let start = Instant::now();
        let deadline = start + cfg.balancing.queue_timeout;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(QueueRejection::TimedOut);
            }
            queue.wait(&place, left).await;
            match self.try_select(key, ctx, limits) {
                Ok(g) => break Ok(g),
                Err(SelectError::AllBusy) => continue,
                Err(SelectError::NoBackend) => break Err(QueueRejection::TimedOut),
            }
        };
        drop(place);
        m.queue_length.set(queue.len() as i64);
        m.queue_wait.observe(start.elapsed().as_secs_f64());
        outcome.map_err(|why| rejected(ctx, why))
    }

    /// Records a failed attempt on the current backend and remembers it so a retry goes
    /// elsewhere.
    fn settle_failed_attempt(&self, ctx: &mut RequestCtx, outcome: Outcome) {
        if let Some(mut guard) = ctx.guard.take() {
            let elapsed = ctx.upstream_start.map(|s| s.elapsed()).unwrap_or_default();
            guard.finish(outcome, elapsed);
            let b = guard.backend();
            self.shared.pool.selector().feedback(b.id, false);
            if let Some(h) = b.metrics.get() {
                h.requests.inc();
                h.failures.inc();
            }
            ctx.tried.push(b.id);
        }
    }
}
