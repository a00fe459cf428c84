//! The pipeline's entry points into `crate::resilience`: each step calls one function
//! here in a line or two; the decisions themselves live in `resilience::*`.
//!
//! Per request, in order: route match → rate limit (429) → bulkhead (503) → route
//! breaker (fallback) in `request_filter`; backoff and deadline before a backend is
//! picked; per-route timeouts and chaos after; the retry budget when a hook considers a
//! retry; the route breaker's outcome in `logging`.

use super::{Exchange, LocalResponse, Pipeline, Target};
use crate::resilience::breaker::{Breaker, Permit};
use crate::resilience::chaos::FaultKind;
use crate::resilience::classify::Outcome;
use crate::resilience::rate_limit::{Decision, RateLimiter};
use crate::resilience::routes::{request_host, BulkheadSlot, Fallback, Route, RouteLimit};
use bytes::Bytes;
use pingora_core::prelude::*;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType};
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A route breaker's permit, given back if the request ends without an outcome.
struct RoutePermit {
    breaker: Arc<Breaker>,
    permit: Permit,
}

impl Drop for RoutePermit {
    fn drop(&mut self) {
        self.breaker.release(&mut self.permit);
    }
}

/// A request whose rate limit is shared through Redis, between the synchronous part of
/// `resilience_request` and `admit`'s awaited decision.
pub struct SharedCheck {
    limiter: Arc<RateLimiter>,
    scope: Arc<str>,
    buckets: crate::resilience::rate_limit::Buckets,
    route: Option<Arc<Route>>,
}

/// Resilience state of one request.
#[derive(Default)]
pub struct ResCtx {
    /// Set by `resilience_request` when a shared rate limit must be asked.
    pub(super) shared: Option<SharedCheck>,
    route: Option<Arc<Route>>,
    _slot: Option<BulkheadSlot>,
    permit: Option<RoutePermit>,
    /// The route is tripped and has fallback upstreams: proxy there instead.
    fallback_upstream: bool,
    deadline: Option<Instant>,
}

impl ResCtx {
    /// Something may make an attempt wait or go elsewhere before a backend is picked:
    /// a tripped route's fallback upstream, or a deadline to check.
    pub(super) fn may_wait(&self) -> bool {
        self.fallback_upstream || self.deadline.is_some()
    }

    pub fn route_name(&self) -> Option<&str> {
        self.route.as_deref().map(|r| &*r.name)
    }
}

/// Whole seconds for Retry-After / RateLimit-Reset, rounded up, at least 1.
fn ceil_secs(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(1_000_000_000) as u64).max(1)
}

fn local(
    status: u16,
    headers: &[(http::HeaderName, http::HeaderValue)],
    extra: &[(&'static str, String)],
    body: Bytes,
) -> Result<LocalResponse> {
    let mut header =
        pingora_http::ResponseHeader::build(status, Some(headers.len() + extra.len() + 2))?;
    header.insert_header("Content-Length", body.len().to_string())?;
    for (k, v) in headers {
        header.insert_header(k.clone(), v.clone())?;
    }
    for (k, v) in extra {
        header.insert_header(*k, v.as_str())?;
    }
    Ok(LocalResponse {
        header,
        body,
        close: false,
    })
}

fn too_many(l: &RateLimiter, retry_after: Duration, reset: Duration) -> Result<LocalResponse> {
    let extra = [
        ("Retry-After", ceil_secs(retry_after).to_string()),
        ("RateLimit-Limit", l.policy.burst.to_string()),
        ("RateLimit-Remaining", "0".to_string()),
        ("RateLimit-Reset", ceil_secs(reset).to_string()),
        ("Cache-Control", "private, no-store".to_string()),
    ];
    local(
        429,
        &[],
        &extra,
        Bytes::from_static(b"rate limit exceeded\n"),
    )
}

fn unavailable(why: &'static str) -> Result<LocalResponse> {
    let extra = [("Retry-After", "1".to_string())];
    local(503, &[], &extra, Bytes::from_static(why.as_bytes()))
}

impl Pipeline {
    /// `request_filter`: route match, rate limit, bulkhead, route breaker. `Some` when
    /// drover answers the request itself.
    pub(super) fn resilience_request(
        &self,
        req: &RequestHeader,
        ex: &mut Exchange,
    ) -> Result<Option<LocalResponse>> {
        let cfg = self.shared.config.load();
        let res = &cfg.resilience;
        let m = &self.shared.metrics.resilience;
        let route = if res.routes.is_empty() {
            None
        } else {
            res.routes.find(request_host(req), req.uri.path()).cloned()
        };
        let (limiter, scope) = match route.as_deref().map(|r| (&r.rate_limit, &*r.name)) {
            Some((RouteLimit::On(l), name)) => (Some(l), name),
            Some((RouteLimit::Off, _)) => (None, ""),
            _ => (res.rate_limit.as_ref(), "global"),
        };
        if let Some(l) = limiter {
            // The client address is the one `forwarded.rs` settled on (the peer unless a
            // trusted proxy reported another): a forged header cannot dodge the limit.
            let buckets = l
                .policy
                .key
                .buckets(&req.headers, super::ip_hash(ex.client_ip));
            if l.policy.shared.is_some() {
                // Decided by Redis in `shared_rate_limit` (awaited by `admit`).
                ex.res.shared = Some(SharedCheck {
                    limiter: l.clone(),
                    scope: Arc::from(scope),
                    buckets,
                    route,
                });
                return Ok(None);
            }
            if let Decision::Deny { retry_after, reset } = l.check_buckets(buckets) {
                m.rate_limited.with_label_values(&[scope]).inc();
                return too_many(l, retry_after, reset).map(Some);
            }
        }
        drop(cfg);
        self.after_rate_limit(route, ex)
    }

    /// A shared limit's decision (Redis, or this instance's buckets while Redis is
    /// unreachable), then the rest of `resilience_request`.
    pub(super) async fn shared_rate_limit(
        &self,
        check: SharedCheck,
        ex: &mut Exchange,
    ) -> Result<Option<LocalResponse>> {
        let l = &check.limiter;
        let decision = match self.shared.shared_limits() {
            Some(s) => s.check(l, check.buckets).await,
            None => l.check_buckets(check.buckets),
        };
        if let Decision::Deny { retry_after, reset } = decision {
            self.shared
                .metrics
                .resilience
                .rate_limited
                .with_label_values(&[&check.scope])
                .inc();
            return too_many(l, retry_after, reset).map(Some);
        }
        self.after_rate_limit(check.route, ex)
    }

    /// Retry budget, deadline, bulkhead and route breaker, once the rate limit let the
    /// request through.
    fn after_rate_limit(
        &self,
        route: Option<Arc<Route>>,
        ex: &mut Exchange,
    ) -> Result<Option<LocalResponse>> {
        let cfg = self.shared.config.load();
        let res = &cfg.resilience;
        let m = &self.shared.metrics.resilience;
        res.budget.on_request(ex.start);
        let Some(route) = route else {
            ex.res.deadline = res.total_timeout.map(|d| ex.start + d);
            return Ok(None);
        };
        ex.res.deadline = route
            .total_timeout
            .or(res.total_timeout)
            .map(|d| ex.start + d);
        if route.max_concurrent > 0 {
            match route.enter() {
                Some(slot) => ex.res._slot = Some(slot),
                None => {
                    m.route_rejected
                        .with_label_values(&[&route.name, "bulkhead"])
                        .inc();
                    return unavailable("route at max_concurrent\n").map(Some);
                }
            }
        }
        if let Some(b) = &route.breaker {
            match b.try_acquire() {
                Some(permit) => {
                    ex.res.permit = Some(RoutePermit {
                        breaker: b.clone(),
                        permit,
                    })
                }
                None => {
                    let answer = self.route_fallback(&route)?;
                    ex.res.fallback_upstream = answer.is_none();
                    ex.res.route = Some(route);
                    return Ok(answer);
                }
            }
        }
        ex.res.route = Some(route);
        Ok(None)
    }

    /// A tripped route: answer from the static fallback, or go to the fallback upstreams
    /// (`None`), or 503 when there is no fallback.
    fn route_fallback(&self, route: &Route) -> Result<Option<LocalResponse>> {
        let m = &self.shared.metrics.resilience;
        match &route.fallback {
            Some(
                f @ Fallback::Static {
                    status,
                    headers,
                    body,
                },
            ) => {
                m.route_fallback
                    .with_label_values(&[&route.name, f.kind()])
                    .inc();
                local(*status, headers, &[], body.clone()).map(Some)
            }
            Some(f @ Fallback::Upstreams { .. }) => {
                m.route_fallback
                    .with_label_values(&[&route.name, f.kind()])
                    .inc();
                Ok(None)
            }
            None => {
                m.route_rejected
                    .with_label_values(&[&route.name, "breaker_open"])
                    .inc();
                unavailable("route circuit open\n").map(Some)
            }
        }
    }

    /// `upstream_peer`, before a backend is picked: the fallback upstream of a tripped
    /// route, the total deadline, and backoff before a retry.
    pub(super) async fn resilience_before_select(
        &self,
        ex: &mut Exchange,
    ) -> Result<Option<HttpPeer>> {
        if ex.res.fallback_upstream {
            let peer = ex
                .res
                .route
                .as_ref()
                .and_then(|r| r.fallback.as_ref())
                .and_then(|f| f.next_peer());
            if let Some(p) = peer {
                return Ok(Some(p.clone()));
            }
        }
        if ex.tries > 1 {
            let backoff = self.shared.config.load().resilience.backoff;
            let mut d = backoff.delay(ex.tries - 1, rand::random::<f64>());
            if let Some(dl) = ex.res.deadline {
                d = d.min(dl.saturating_duration_since(Instant::now()));
            }
            if !d.is_zero() {
                self.shared
                    .metrics
                    .resilience
                    .retry_backoff
                    .inc_by(d.as_secs_f64());
                let start = ex.spans.is_some().then(crate::observe::otlp::unix_nanos);
                tokio::time::sleep(d).await;
                if let (Some(r), Some(start)) = (ex.spans.as_mut(), start) {
                    use crate::observe::otlp::Attr;
                    r.child(
                        "retry backoff",
                        start,
                        vec![("drover.backoff_ms", Attr::Int(d.as_millis() as i64))],
                    );
                }
            }
        }
        if ex.res.deadline.is_some_and(|dl| Instant::now() >= dl) {
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "total timeout reached",
            ));
        }
        Ok(None)
    }

    /// Once a backend is picked: per-route timeouts capped by the deadline.
    pub(super) fn resilience_timeouts(&self, ex: &Exchange, target: &mut Target) {
        if let Some(r) = &ex.res.route {
            if r.connect_timeout.is_some() {
                target.connect_timeout = r.connect_timeout;
            }
            if r.read_timeout.is_some() {
                target.read_timeout = r.read_timeout;
            }
        }
        if let Some(dl) = ex.res.deadline {
            let left = dl.saturating_duration_since(Instant::now());
            let cap = |t: Option<Duration>| Some(t.map_or(left, |t| t.min(left)));
            target.connect_timeout = cap(target.connect_timeout);
            target.read_timeout = cap(target.read_timeout);
        }
    }

    /// Chaos faults installed through the admin API, once a backend is picked.
    pub(super) async fn resilience_chaos(
        &self,
        req: &RequestHeader,
        ex: &mut Exchange,
    ) -> Result<()> {
        let worker = ex.guard.as_ref().and_then(|g| g.backend().worker_id);
        let Some((fault, label)) =
            self.shared
                .chaos
                .pick(ex.res.route_name(), worker, rand::random::<f64>())
        else {
            return Ok(());
        };
        if !self.shared.config.load().resilience.chaos_enabled {
            return Ok(());
        }
        self.shared
            .metrics
            .resilience
            .chaos_injected
            .with_label_values(&[fault.label(), &label])
            .inc();
        log::info!(
            target: "chaos",
            "chaos: injected {} on {label} (request {})",
            fault.label(),
            ex.request_id.as_deref().unwrap_or("-")
        );
        match fault {
            FaultKind::Latency { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            FaultKind::Error { status } => {
                self.settle_failed_attempt(ex, Outcome::Status(status));
                Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "chaos: injected error",
                ))
            }
            FaultKind::Reset => {
                self.settle_failed_attempt(ex, Outcome::Reset);
                let mut e = Error::explain(ErrorType::ConnectionClosed, "chaos: injected reset");
                e.esource = pingora_core::ErrorSource::Upstream;
                let retry = req.method.is_idempotent()
                    && ex.tries <= self.shared.config.load().proxy.retries
                    && self.resilience_may_retry(ex);
                if retry {
                    self.shared.metrics.retries.inc();
                }
                e.set_retry(retry);
                Err(e)
            }
        }
    }

    /// Whether a retry the hook considers may happen: within the deadline and the
    /// retry budget (which it then draws from). Counts refusals.
    pub(super) fn resilience_may_retry(&self, ex: &Exchange) -> bool {
        let m = &self.shared.metrics.resilience;
        let now = Instant::now();
        if ex.res.deadline.is_some_and(|dl| now >= dl) {
            m.retries_denied.with_label_values(&["deadline"]).inc();
            return false;
        }
        if !self.shared.config.load().resilience.budget.try_retry(now) {
            m.retries_denied.with_label_values(&["budget"]).inc();
            return false;
        }
        true
    }

    /// `logging`: the request's final outcome goes to its route's breaker.
    pub(super) fn resilience_done(&self, ex: &mut Exchange, e: Option<&Error>, status: u16) {
        if let Some(mut p) = ex.res.permit.take() {
            if let Some(o) = Outcome::of_request(e, status) {
                p.breaker.record(&mut p.permit, o, ex.start.elapsed());
            }
        }
    }
}
