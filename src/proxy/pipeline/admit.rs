//! Step 1: everything before a backend is chosen.

use super::{Exchange, LocalResponse, Pipeline};
use crate::observe::trace::TraceContext;
use crate::proxy::{forwarded, limits};
use crate::wire::headers::{self, HeaderEdits};
use pingora_core::prelude::*;
use pingora_http::RequestHeader;
use std::net::IpAddr;

impl Pipeline {
    /// Edge limits, field hygiene, request id, trace context, forwarding fields, rate
    /// limits, bulkheads, route breakers, and the session. `Some` when drover answers the
    /// request itself. `peer` is the TCP peer's address.
    pub async fn admit(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        ex: &mut Exchange,
    ) -> Result<Option<LocalResponse>> {
        let (counted, in_flight) = self.shared.in_flight.enter();
        ex.counted = Some(counted);
        ex.head_request = req.method == http::Method::HEAD;
        // One load of the running config for the whole step.
        let cfg = self.shared.config.load();
        if let Some(v) = limits::check_request(&cfg.limits, req, in_flight) {
            self.count_violation(v);
            return LocalResponse::failure(v.status(), None).map(Some);
        }
        ex.max_body_bytes = cfg.limits.max_body_bytes;
        // `TE: trailers` is hop-by-hop, but an HTTP/2 backend (gRPC) needs to hear that
        // the client takes trailers: remembered for `upstream_request`.
        ex.te_trailers = req.headers.get_all(http::header::TE).iter().any(|v| {
            v.as_bytes()
                .windows(8)
                .any(|w| w.eq_ignore_ascii_case(b"trailers"))
        });
        // First, so nothing a client nominates or spells with underscores can remove or
        // shadow the fields drover adds below.
        headers::sanitize_request(req);
        // Field changes are decided from the request as the client sent it, then
        // applied at once (see `HeaderEdits`).
        let mut edits = HeaderEdits::default();
        let trusted_peer = peer.is_some_and(|p| forwarded::is_trusted(&cfg.forwarded, p));
        if cfg.logging.access_log {
            let (id, fresh) = headers::request_id(req, trusted_peer);
            if fresh {
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    edits.insert(headers::REQUEST_ID, v);
                }
            }
            ex.request_id = Some(id);
        }
        let ratio =
            crate::observe::otlp::enabled().then_some(cfg.observability.tracing.sample_ratio);
        let trace = TraceContext::from_request_sampled(req, ratio);
        trace.edit(&mut edits);
        if trace.sampled() && ratio.is_some() {
            ex.spans = Some(Box::new(crate::observe::otlp::Recording::new(
                trace.trace_id,
                trace.span_id,
                trace.parent_id,
            )));
        }
        ex.trace = Some(trace);
        if let Some(peer) = peer {
            let client = forwarded::client_ip(&cfg.forwarded, peer, req);
            forwarded::edit(&cfg.forwarded, req, peer, client, ex.https, &mut edits);
            ex.client_ip = Some(client);
        }
        edits.apply(req);
        // Plain HTTP goes to HTTPS before any other work (rate limits, sessions).
        if cfg.tls.redirect_http && !ex.https {
            if let Some(answer) = super::scheme::redirect_to_https(req, &cfg) {
                return Ok(Some(answer));
            }
        }
        drop(cfg);
        // Rate limits, bulkheads and route breakers answer before any session work.
        if let Some(answer) = self.resilience_request(req, ex)? {
            return Ok(Some(answer));
        }
        if let Some(check) = ex.res.shared.take() {
            if let Some(answer) = self.shared_rate_limit(check, ex).await? {
                return Ok(Some(answer));
            }
        }
        if let Some(sessions) = self.shared.sessions.get() {
            sessions.strip_client_headers(req);
            let client = super::ip_hash(ex.client_ip);
            let mut s = sessions.begin(req, client).await;
            s.set_https(ex.https);
            ex.session = Some(s);
        }
        Ok(None)
    }
}
