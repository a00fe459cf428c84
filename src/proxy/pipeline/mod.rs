//! The request pipeline: every step a proxied request goes through, written once for
//! every carrier.
//!
//! A carrier (drover's HTTP/1 engine in `proxy::h1`, Pingora's proxy through
//! `proxy::pingora_carrier`) owns the sockets and the HTTP framing; the pipeline owns
//! what drover does with a request. A carrier drives the steps in this order and holds
//! no logic of its own between them:
//!
//! 1. [`Pipeline::admit`]: edge limits, field hygiene, request id, trace context,
//!    forwarding fields, rate limits, bulkheads, route breakers, the session. May answer
//!    the request itself ([`LocalResponse`]).
//! 2. [`Pipeline::choose`]: the backend for this attempt (session affinity or the
//!    strategy, health, breakers, the bounded queue), as a [`Target`].
//! 3. [`Pipeline::upstream_request`]: the request as the worker sees it (session fields).
//! 4. On a failed attempt, [`Pipeline::connect_failed`] / [`Pipeline::proxy_failed`]
//!    record it and say whether to try another backend (back to 2).
//! 5. [`Pipeline::on_response`]: the worker's final response head (interim 1xx heads do
//!    not count): session update, custom worker metrics, the session cookie.
//! 6. [`Pipeline::finish`]: the outcome recorded once: session release, breaker,
//!    balancer feedback, metrics, route breaker, access log.

mod admit;
mod choose;
mod edge;
mod exchange;
mod finish;
mod local;
mod resilience;
mod respond;
mod scheme;

pub use choose::Target;
pub use edge::{grpc_outcome_status, parse_grpc_status};
pub use exchange::Exchange;
pub use local::LocalResponse;
pub use respond::{ResponseFieldNames, WorkerResponse};

use crate::proxy::limits;
use crate::state::Shared;
use std::sync::Arc;

/// Cloned once per carrier; the clone is reference counts.
#[derive(Clone)]
pub struct Pipeline {
    pub(crate) shared: Arc<Shared>,
    /// `drover_limit_rejections_total{limit}`, one handle per limit.
    limit_rejections: [prometheus::IntCounter; 6],
    /// HTTP versions, upgraded connections, gRPC statuses (`edge.rs`).
    edge: Arc<edge::EdgeMetrics>,
}

/// Edge limits counted in `drover_limit_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The head was over `limits.max_header_bytes` (431).
    HeaderBytes,
    /// The head had more than `limits.max_headers` fields (431).
    HeaderCount,
    /// The body was over `limits.max_body_bytes` (413).
    BodyBytes,
    /// `limits.max_in_flight` was reached (503).
    InFlight,
    /// The request body stalled past `limits.client_body_timeout` (408).
    BodyTimeout,
    /// The request head did not arrive within `limits.client_header_timeout` (408).
    HeaderTimeout,
}

impl Pipeline {
    /// Registers the limit and edge metrics in `shared`'s registry; built once, then cloned per
    /// carrier.
    pub fn new(shared: Arc<Shared>) -> Self {
        let vec = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                crate::metric_names::LIMIT_REJECTIONS_TOTAL,
                "Requests refused by an edge limit (431, 413, 408, 503), by limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let _ = shared.metrics.registry.register(Box::new(vec.clone()));
        let limit_rejections = [
            "header_bytes",
            "header_count",
            "body_bytes",
            "in_flight",
            "body_timeout",
            "header_timeout",
        ]
        .map(|l| vec.with_label_values(&[l]));
        let edge = Arc::new(edge::EdgeMetrics::new(&shared.metrics.registry));
        Pipeline {
            shared,
            limit_rejections,
            edge,
        }
    }

    /// The state shared by the whole proxy: live config, pool, sessions, metrics.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Counts one request refused by `kind` in `drover_limit_rejections_total`.
    pub fn count_limit(&self, kind: LimitKind) {
        let i = match kind {
            LimitKind::HeaderBytes => 0,
            LimitKind::HeaderCount => 1,
            LimitKind::BodyBytes => 2,
            LimitKind::InFlight => 3,
            LimitKind::BodyTimeout => 4,
            LimitKind::HeaderTimeout => 5,
        };
        self.limit_rejections[i].inc();
    }

    fn count_violation(&self, v: limits::Violation) {
        self.count_limit(match v {
            limits::Violation::HeaderBytes => LimitKind::HeaderBytes,
            limits::Violation::HeaderCount => LimitKind::HeaderCount,
            limits::Violation::BodyBytes => LimitKind::BodyBytes,
            limits::Violation::InFlight => LimitKind::InFlight,
        });
    }

    /// A request body chunk passed through: counts it against `limits.max_body_bytes`.
    /// `Err`: the body is over the limit (answer 413).
    pub fn body_chunk(&self, ex: &mut Exchange, len: usize) -> Result<(), limits::Violation> {
        ex.body_bytes += len as u64;
        if ex.body_bytes > ex.max_body_bytes {
            self.count_violation(limits::Violation::BodyBytes);
            return Err(limits::Violation::BodyBytes);
        }
        Ok(())
    }
}

/// The hash of a client address used by IP hashing, sticky fallback and rate limits.
pub(crate) fn ip_hash(ip: Option<std::net::IpAddr>) -> u64 {
    use crate::stable_hash::fnv1a;
    match ip {
        Some(std::net::IpAddr::V4(v4)) => fnv1a(&v4.octets()),
        Some(std::net::IpAddr::V6(v6)) => fnv1a(&v6.octets()),
        None => 0,
    }
}
