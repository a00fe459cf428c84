//! Step 2: the backend for an attempt, and what a failed attempt means for the next.

use super::{Exchange, Pipeline};
use crate::balancing::queue::QueueRejection;
use crate::balancing::{Backend, InflightGuard, SelectError, SelectLimits};
use crate::config::{Config, HashKey};
use crate::resilience::classify::Outcome;
use crate::stable_hash::fnv1a;
use crate::wire::headers::{self, HeaderEdits};
use pingora_core::prelude::*;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::{Error, ErrorType};
use pingora_http::RequestHeader;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an attempt goes: an address and its timeouts, and the backend it belongs to (for
/// connection reuse). A carrier that needs a Pingora peer builds one with
/// [`Target::to_peer`]; drover's engine never does.
pub struct Target {
    /// The backend's (or fallback upstream's) TCP address.
    pub addr: SocketAddr,
    /// Connect timeout for this attempt: the backend's, or the route's, capped by the deadline;
    /// `None` = no limit.
    pub connect_timeout: Option<Duration>,
    /// Timeout for each read from the worker: the backend's, or the route's, capped by the
    /// deadline; `None` = no limit.
    pub read_timeout: Option<Duration>,
    /// `None` for a tripped route's fallback upstream (not a pool member).
    pub backend: Option<Arc<Backend>>,
    /// The fallback upstream's peer, when that is the target. Boxed: a peer is ~0.5 KB,
    /// and every attempt's target is moved a few times on the common path, where this
    /// is `None`.
    fallback: Option<Box<HttpPeer>>,
}

impl Target {
    fn of_peer(peer: &HttpPeer, backend: Option<Arc<Backend>>) -> Option<Self> {
        let addr = peer.address().as_inet().copied()?;
        Some(Target {
            addr,
            connect_timeout: peer.options.connection_timeout,
            read_timeout: peer.options.read_timeout,
            fallback: backend.is_none().then(|| Box::new(peer.clone())),
            backend,
        })
    }

    /// Pingora's peer for this target, with the attempt's timeouts.
    pub fn to_peer(&self) -> Box<HttpPeer> {
        let mut peer = match (&self.backend, &self.fallback) {
            (Some(b), _) => b.peer.clone(),
            (None, Some(p)) => HttpPeer::clone(p),
            (None, None) => HttpPeer::new(self.addr, false, String::new()),
        };
        peer.options.connection_timeout = self.connect_timeout;
        peer.options.read_timeout = self.read_timeout;
        Box::new(peer)
    }
}

fn hash_key(req: &RequestHeader, ex: &Exchange, key: &HashKey) -> u64 {
    match key {
        HashKey::ClientIp => super::ip_hash(ex.client_ip),
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

fn not_a_tcp_backend() -> Box<Error> {
    Error::explain(ErrorType::ConnectError, "backend is not a TCP address")
}

impl Pipeline {
    /// Chooses the backend for this attempt and takes its in-flight slot (waiting in the
    /// bounded queue when every backend is full).
    pub async fn choose(&self, req: &RequestHeader, ex: &mut Exchange) -> Result<Target> {
        ex.tries += 1;
        // The waits (a tripped route's fallback, backoff before a retry, the deadline)
        // are rare: boxed, so the common path's future stays small (moving a large
        // future costs a copy per request).
        if ex.res.may_wait() || ex.tries > 1 {
            if let Some(peer) = Box::pin(self.resilience_before_select(ex)).await? {
                let target = Target::of_peer(&peer, None).ok_or_else(not_a_tcp_backend)?;
                if let Some(r) = ex.spans.as_mut() {
                    r.start_attempt(ex.tries, "fallback", &target.addr.to_string());
                }
                return Ok(target);
            }
        }
        let cfg = self.shared.config.load();
        let key = {
            let sel = self.shared.pool.selector();
            if sel.needs_key() {
                hash_key(req, ex, &cfg.balancing.hash_key)
            } else if sel.needs_class() {
                crate::balancing::predictive::class_key(
                    req.method.as_str().as_bytes(),
                    req.uri.path().as_bytes(),
                )
            } else {
                0
            }
        };
        // Release the previous attempt's slot before taking a new one.
        ex.guard = None;
        let limits = SelectLimits {
            max_inflight: cfg.balancing.max_inflight_per_backend,
            slow_start: cfg.balancing.slow_start,
        };
        let guard = match self.try_select(key, ex, limits) {
            Ok(g) => g,
            Err(SelectError::AllBusy) => {
                Box::pin(self.wait_in_queue(key, ex, limits, &cfg)).await?
            }
            Err(SelectError::NoBackend) => {
                self.shared.metrics.no_backend.inc();
                ex.reject = Some("no backend available");
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no backend available",
                ));
            }
        };
        let backend = guard.backend().clone();
        if let Some(r) = ex.spans.as_mut() {
            r.start_attempt(ex.tries, &backend.name, &backend.addr.to_string());
        }
        ex.guard = Some(guard);
        ex.upstream_start = Some(Instant::now());
        let mut target = Target {
            addr: backend.addr,
            connect_timeout: backend.peer.options.connection_timeout,
            read_timeout: backend.peer.options.read_timeout,
            backend: Some(backend),
            fallback: None,
        };
        self.resilience_timeouts(ex, &mut target);
        if self.shared.chaos.armed() {
            Box::pin(self.resilience_chaos(req, ex)).await?;
        }
        Ok(target)
    }

    /// One selection attempt: the session's pinned backend (or its ring owner) for a
    /// sticky request, the strategy's pick otherwise.
    fn try_select(
        &self,
        key: u64,
        ex: &mut Exchange,
        limits: SelectLimits,
    ) -> std::result::Result<InflightGuard, SelectError> {
        let pool = &self.shared.pool;
        if let (Some(sessions), Some(s)) = (self.shared.sessions.get(), ex.session.as_mut()) {
            let pref = sessions.preference(s);
            if pref.sticky {
                let (guard, repin) =
                    pool.select_sticky(pref.pinned.as_deref(), pref.key, &ex.tried, limits)?;
                sessions.on_selected(s, &guard.backend().name, repin);
                return Ok(guard);
            }
            let guard = pool.select_limited(key, &ex.tried, limits)?;
            sessions.on_selected(s, &guard.backend().name, false);
            return Ok(guard);
        }
        pool.select_limited(key, &ex.tried, limits)
    }

    /// Every backend is at `max_inflight_per_backend`: wait for a slot in the bounded
    /// queue, or give up with 503 + Retry-After when it is full or the wait times out.
    async fn wait_in_queue(
        &self,
        key: u64,
        ex: &mut Exchange,
        limits: SelectLimits,
        cfg: &Config,
    ) -> Result<InflightGuard> {
        let m = &self.shared.metrics;
        let queue = &self.shared.pool.queue;
        let rejected = |ex: &mut Exchange, why: QueueRejection| {
            m.queue_rejected.with_label_values(&[why.as_str()]).inc();
            ex.reject = Some(match why {
                QueueRejection::Full => "queue full",
                QueueRejection::TimedOut => "queue wait timed out",
            });
            Error::explain(ErrorType::HTTPStatus(503), "all backends busy")
        };
        let place = match queue.enter(cfg.balancing.queue_size as usize) {
            Ok(p) => p,
            Err(why) => return Err(rejected(ex, why)),
        };
        m.queue_length.set(queue.len() as i64);
        let start = Instant::now();
        // Wall-clock start for the queue span, read only for a traced request.
        let span_start = ex.spans.is_some().then(crate::observe::otlp::unix_nanos);
        let deadline = start + cfg.balancing.queue_timeout;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(QueueRejection::TimedOut);
            }
            queue.wait(&place, left).await;
            match self.try_select(key, ex, limits) {
                Ok(g) => break Ok(g),
                Err(SelectError::AllBusy) => continue,
                Err(SelectError::NoBackend) => break Err(QueueRejection::TimedOut),
            }
        };
        drop(place);
        m.queue_length.set(queue.len() as i64);
        m.queue_wait.observe(start.elapsed().as_secs_f64());
        if let (Some(r), Some(span_start)) = (ex.spans.as_mut(), span_start) {
            use crate::observe::otlp::Attr;
            let result = match &outcome {
                Ok(_) => "served",
                Err(w) => w.as_str(),
            };
            r.child(
                "queue",
                span_start,
                vec![("drover.queue.result", Attr::Str(result.into()))],
            );
        }
        outcome.map_err(|why| rejected(ex, why))
    }

    /// Step 3: the request as the worker sees it: the session's fields added, and
    /// `te: trailers` for an HTTP/2 backend when the client accepts trailers (gRPC
    /// servers refuse calls without it; RFC 9113 §8.2.2 allows exactly that value).
    /// A traced request's worker sees the attempt's span as its parent.
    pub fn upstream_request(&self, req: &mut RequestHeader, ex: &Exchange) {
        if ex.te_trailers
            && ex
                .guard
                .as_ref()
                .is_some_and(|g| g.backend().link.protocol != crate::config::Protocol::Http1)
        {
            let _ = req.insert_header(http::header::TE, "trailers");
        }
        let attempt = ex.spans.as_ref().and_then(|r| r.attempt_span());
        let sessions = self.shared.sessions.get().zip(ex.session.as_ref());
        if attempt.is_none() && sessions.is_none() {
            return;
        }
        let mut edits = HeaderEdits::default();
        if let (Some(span_id), Some(t)) = (attempt, &ex.trace) {
            crate::observe::trace::TraceContext { span_id, ..*t }.edit(&mut edits);
        }
        if let Some((svc, s)) = sessions {
            svc.annotate(s, &mut edits);
        }
        edits.apply(req);
    }

    /// The connection to the chosen backend failed. Records it and says whether to try
    /// another backend: nothing reached the worker, so any method is safe to resend.
    pub fn connect_failed(&self, ex: &mut Exchange, e: &Error) -> bool {
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["connect"])
            .inc();
        if e.etype() == &ErrorType::ConnectRefused {
            self.eject_refusing_backend(ex);
        }
        self.settle_failed_attempt(ex, Outcome::from_error(e).unwrap_or(Outcome::ConnectError));
        let retry =
            ex.tries <= self.shared.config.load().proxy.retries && self.resilience_may_retry(ex);
        if retry {
            self.shared.metrics.retries.inc();
        }
        retry
    }

    /// Reports a refused connection to `health` (the passive check), which owns the
    /// backend's health state.
    fn eject_refusing_backend(&self, ex: &Exchange) {
        if let Some(b) = ex.guard.as_ref().map(|g| g.backend()) {
            crate::health::connection_refused(&*self.shared, b);
        }
    }

    /// The backend failed after the connection was up. Records it and says whether to
    /// resend the request elsewhere. By default it is not resent: the worker had the whole
    /// request (a request that crashes workers would otherwise crash them one after
    /// another). `proxy.retry_on: [reset, timeout]` resends idempotent requests whose
    /// body can be replayed, unless the client already saw part of a response.
    pub fn proxy_failed(
        &self,
        ex: &mut Exchange,
        e: &Error,
        req: &RequestHeader,
        replayable: bool,
    ) -> bool {
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["proxy"])
            .inc();
        let outcome = Outcome::from_error(e).unwrap_or(Outcome::Reset);
        self.settle_failed_attempt(ex, outcome);
        let cfg = self.shared.config.load();
        // A reset before any answer to a bodiless request means the worker closed with
        // the request unread in its socket (a worker killed with connections in its
        // accept queue); one that read the request and then crashed closes with a FIN,
        // which stays unretried. An unread request never reached the application, so it
        // is as safe to send elsewhere as a refused connection.
        let unread = !ex.response_started && !has_body(req) && reset_by_peer(e);
        let allowed = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => cfg.proxy.retry_on.timeout,
            _ => cfg.proxy.retry_on.reset || unread,
        };
        let retry = allowed
            && req.method.is_idempotent()
            && !ex.response_started
            && replayable
            && ex.tries <= cfg.proxy.retries
            && self.resilience_may_retry(ex);
        if retry {
            self.shared.metrics.retries.inc();
        }
        retry
    }

    /// Records a failed attempt on the current backend and remembers it so a retry goes
    /// elsewhere.
    pub(super) fn settle_failed_attempt(&self, ex: &mut Exchange, outcome: Outcome) {
        if let Some(r) = ex.spans.as_mut() {
            r.end_attempt(None, Some(format!("{outcome:?}")));
        }
        if let Some(mut guard) = ex.guard.take() {
            let elapsed = ex.upstream_start.map(|s| s.elapsed()).unwrap_or_default();
            guard.finish(outcome, elapsed);
            let b = guard.backend();
            self.shared.pool.selector().feedback(b.id, false);
            if let Some(h) = b.metrics.get() {
                h.attempt_failed();
            }
            ex.tried.push(b.id);
        }
    }
}

/// Whether the worker reset the connection (RST: it closed with our bytes unread).
fn reset_by_peer(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
}

/// Whether the request carries a body (whose head the worker may have acted on before
/// resetting the connection with the body unread).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}
