//! The data plane: drover's `ProxyHttp` implementation.
//!
//! Hooks stay thin: header hygiene is in `headers`, backend choice in `balancing`, outcome
//! bookkeeping in `outcome`. A request walks: request_filter (strip internal headers,
//! request id) → upstream_peer (pick a backend, take an in-flight slot) → on connect or
//! proxy failure, maybe retry on another backend → response filters (strip internal
//! headers) → logging (record the outcome once: breaker, balancer, metrics, access log).

pub mod forwarded;
pub mod h1;
pub mod headers;
pub mod limits;
mod resilience;
mod steps;

pub use steps::LocalResponse;

use crate::balancing::consistent_hash::fnv1a;
use crate::balancing::queue::QueueRejection;
use crate::balancing::{InflightGuard, SelectError, SelectLimits};
use crate::config::Config;
use crate::config::HashKey;
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

/// Cloned once per data-plane app (Pingora's `HttpProxy` and the HTTP/1 fast path share
/// the same hooks); the clone is two reference counts.
#[derive(Clone)]
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

fn hash_key(req: &RequestHeader, ctx: &RequestCtx, key: &HashKey) -> u64 {
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
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let body_timeout = self.shared.config.load().limits.client_body_timeout;
        session.as_mut().set_read_timeout(Some(body_timeout));
        match self.admit(session.req_header_mut(), peer, ctx).await? {
            Some(answer) => {
                answer.write_to(session).await?;
                Ok(true)
            }
            None => {
                self.session_lock_after_body(session, ctx).await?;
                Ok(false)
            }
        }
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
        self.prepare_upstream_request(upstream_request, ctx);
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.pick_peer(session.req_header(), ctx).await
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = self.connect_failed(ctx, &e);
        e.set_retry(retry);
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
        let replayable = !session.as_ref().retry_buffer_truncated();
        let retry = self.proxy_failed(ctx, &e, session.req_header(), replayable);
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.on_upstream_response(upstream_response, ctx).await;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = self.failure_status(e);
        if code > 0 {
            if let Ok(answer) = LocalResponse::failure(code, ctx.reject) {
                let _ = answer.write_to(session).await;
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
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let sent = session.body_bytes_sent();
        let client = session.client_addr().cloned();
        self.finish(session.req_header(), client.as_ref(), status, sent, e, ctx)
            .await;
    }
}

impl DroverProxy {
    /// A request that may write its session and has a body takes the session's lock
    /// only once the whole body is here, so a slow or stalled client never holds it
    /// (docs/SESSIONS.md). A body of up to `LOCK_BODY_BUFFER` bytes is read into
    /// Pingora's retry buffer, from which the proxy sends it to the worker; a larger,
    /// chunked or `Expect: 100-continue` body is not waited for and the request runs
    /// without the lock (its write is still compare-and-set).
    async fn session_lock_after_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(sessions), Some(s)) = (self.shared.sessions.get(), ctx.session.as_mut()) else {
            return Ok(());
        };
        if !s.lock_pending() {
            return Ok(());
        }
        let buffered = crate::sessions::buffer_body_before_lock(session.req_header());
        if buffered {
            let downstream = session.as_mut();
            downstream.enable_retry_buffering();
            while downstream.read_request_body().await?.is_some() {}
        }
        let buffered = buffered && !session.as_ref().retry_buffer_truncated();
        sessions.acquire(s, buffered, ip_hash(ctx.client_ip)).await;
        Ok(())
    }

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
