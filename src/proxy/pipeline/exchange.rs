//! The state of one request as it walks the pipeline, whichever carrier serves it.
//!
//! Carriers hold an `Exchange` and hand it to each step; they never read or write its
//! fields, only call the few methods below, so what a step records (a backend slot, a
//! session, a route permit) is settled by the steps themselves.

use super::resilience::ResCtx;
use crate::balancing::InflightGuard;
use crate::observe::trace::TraceContext;
use crate::sessions::SessionCtx;
use std::time::Instant;

/// One request's state across pipeline steps; a carrier creates it per request and hands it to
/// every step.
pub struct Exchange {
    pub(super) start: Instant,
    pub(super) guard: Option<InflightGuard>,
    /// Backends this request failed on; allocated only when a retry happens.
    pub(super) tried: Vec<u64>,
    pub(super) tries: u32,
    pub(super) upstream_start: Option<Instant>,
    /// A final response head reached the client: no retry from here on.
    pub(super) response_started: bool,
    pub(super) request_id: Option<String>,
    /// Counted in `Shared::in_flight` by `admit` (counted out once in `finish`).
    pub(super) counted: Option<crate::in_flight::Counted>,
    /// Why drover itself answered 503 (no backend, queue full or timed out).
    pub(super) reject: Option<&'static str>,
    /// The request's sticky session, when sessions are on.
    pub(super) session: Option<SessionCtx>,
    /// The client's address (the TCP peer, or what a trusted proxy reported).
    pub(super) client_ip: Option<std::net::IpAddr>,
    /// Request body bytes seen so far, and the limit on them.
    pub(super) body_bytes: u64,
    pub(super) max_body_bytes: u64,
    /// Route, bulkhead slot, route breaker permit, deadline (`resilience.rs`).
    pub(super) res: ResCtx,
    /// W3C trace context: continued or started in `admit`, logged at the end.
    pub(super) trace: Option<TraceContext>,
    /// The request was HEAD: answers carry no body.
    pub(super) head_request: bool,
    /// Spans of a sampled request (`observe::otlp`), when tracing exports them.
    pub(super) spans: Option<Box<crate::observe::otlp::Recording>>,
    /// It arrived over TLS (an HTTPS listener): `X-Forwarded-Proto: https`, the session
    /// cookie's `Secure`, HSTS; no redirect to HTTPS.
    pub(super) https: bool,
    /// The worker switched protocols (101): an upgraded connection (WebSocket) counted
    /// in `drover_upgraded_connections` until the exchange finishes.
    pub(super) upgraded: Option<super::edge::UpgradedGuard>,
    /// The worker answered with gRPC, and the call's `grpc-status` once known.
    pub(super) grpc: bool,
    pub(super) grpc_status: Option<u32>,
    /// The client sent `TE: trailers`.
    pub(super) te_trailers: bool,
}

impl Exchange {
    /// A fresh exchange, its clock starting now: no backend, session or retry yet, no body limit.
    pub fn new() -> Self {
        Exchange {
            start: Instant::now(),
            guard: None,
            tried: Vec::new(),
            tries: 0,
            upstream_start: None,
            response_started: false,
            request_id: None,
            counted: None,
            reject: None,
            session: None,
            client_ip: None,
            body_bytes: 0,
            max_body_bytes: u64::MAX,
            res: Default::default(),
            trace: None,
            head_request: false,
            spans: None,
            https: false,
            upgraded: None,
            grpc: false,
            grpc_status: None,
            te_trailers: false,
        }
    }

    /// The carrier says the request came over TLS.
    pub fn set_https(&mut self, https: bool) {
        self.https = https;
    }

    /// The client went away mid-request: the backend is not to blame, so its slot and
    /// breaker permit are given back without recording an outcome.
    pub fn client_gone(&mut self) {
        self.guard = None;
    }

    /// Why drover answered 503 itself, for the answer's body.
    pub fn rejection(&self) -> Option<&'static str> {
        self.reject
    }

    /// Whether the request is HEAD (set by `admit`), so answers carry no body.
    pub fn head_request(&self) -> bool {
        self.head_request
    }
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}
