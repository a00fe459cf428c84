//! What the pipeline counts about the edge's protocols: requests by HTTP version,
//! connections upgraded by a worker (WebSocket) per backend, and gRPC statuses. The
//! gRPC status of a call also decides its outcome for breakers (see
//! [`grpc_outcome_status`]).

use super::{Exchange, Pipeline};
use crate::metric_names as names;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

pub(super) struct EdgeMetrics {
    /// `drover_requests_by_version_total{version}`: HTTP/1.0, HTTP/1.1, HTTP/2.
    by_version: [IntCounter; 3],
    upgraded: IntGaugeVec,
    grpc: IntCounterVec,
}

impl EdgeMetrics {
    pub(super) fn new(registry: &prometheus::Registry) -> Self {
        let by_version = IntCounterVec::new(
            Opts::new(
                names::REQUESTS_BY_VERSION_TOTAL,
                "Requests answered, by the client's HTTP version (every version runs the same pipeline)",
            ),
            &["version"],
        )
        .expect("valid metric");
        let upgraded = IntGaugeVec::new(
            Opts::new(
                names::UPGRADED_CONNECTIONS,
                "Client connections a backend switched to another protocol (WebSocket) and still open, by backend",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let grpc = IntCounterVec::new(
            Opts::new(
                names::GRPC_RESPONSES_TOTAL,
                "gRPC calls answered, by grpc-status code (0 = OK, 14 = UNAVAILABLE, ...)",
            ),
            &["code"],
        )
        .expect("valid metric");
        for c in [
            Box::new(by_version.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upgraded.clone()),
            Box::new(grpc.clone()),
        ] {
            let _ = registry.register(c);
        }
        EdgeMetrics {
            by_version: ["1.0", "1.1", "2"].map(|v| by_version.with_label_values(&[v])),
            upgraded,
            grpc,
        }
    }
}

/// Counts one upgraded connection of a backend while it lives.
pub struct UpgradedGuard(IntGauge);

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// gRPC statuses that mean the server side failed, as the HTTP status a breaker and the
/// retry rules judge them by: UNAVAILABLE (14) as 503, DEADLINE_EXCEEDED (4) as 504,
/// RESOURCE_EXHAUSTED (8) as 429, UNKNOWN (2), INTERNAL (13) and DATA_LOSS (15) as 500.
/// Others (OK, NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's business: `None`.
pub fn grpc_outcome_status(code: u32) -> Option<u16> {
    match code {
        14 => Some(503),
        4 => Some(504),
        8 => Some(429),
        2 | 13 | 15 => Some(500),
        _ => None,
    }
}

/// Parses a `grpc-status` value.
pub fn parse_grpc_status(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

impl Pipeline {
    /// A worker switched the connection's protocol (101): count it against its backend
    /// until the exchange ends (the upgraded connection closes).
    pub(super) fn on_upgraded(&self, ex: &mut Exchange) {
        if let Some(g) = &ex.guard {
            let gauge = self.edge.upgraded.with_label_values(&[&g.backend().name]);
            gauge.inc();
            ex.upgraded = Some(UpgradedGuard(gauge));
        }
    }

    /// The worker's response is a gRPC one (`content-type: application/grpc…`).
    pub fn grpc_response(&self, ex: &mut Exchange) {
        ex.grpc = true;
    }

    /// A `grpc-status` arrived, in the response head (trailers-only) or the trailers.
    pub fn grpc_status(&self, ex: &mut Exchange, value: &[u8]) {
        ex.grpc = true;
        ex.grpc_status = parse_grpc_status(value);
    }

    /// At the end of an exchange: counts the version and gRPC status, and returns the
    /// status the outcome is judged by (a failed gRPC call's equivalent, else `status`).
    pub(super) fn edge_finish(
        &self,
        version: http::Version,
        status: u16,
        ex: &mut Exchange,
    ) -> u16 {
        let i = match version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => 0,
            http::Version::HTTP_2 => 2,
            _ => 1,
        };
        self.edge.by_version[i].inc();
        ex.upgraded = None;
        if !ex.grpc {
            return status;
        }
        match ex.grpc_status {
            Some(code) => {
                self.edge.grpc.with_label_values(&[&code.to_string()]).inc();
                grpc_outcome_status(code)
                    .filter(|_| status < 500)
                    .unwrap_or(status)
            }
            None => {
                // The call ended without a status (a broken stream): count it as the
                // client sees it.
                self.edge.grpc.with_label_values(&["none"]).inc();
                status
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_grpc_failures_map_to_5xx_and_client_errors_do_not() {
        assert_eq!(grpc_outcome_status(14), Some(503));
        assert_eq!(grpc_outcome_status(4), Some(504));
        assert_eq!(grpc_outcome_status(13), Some(500));
        for ok in [0, 1, 3, 5, 6, 7, 9, 10, 11, 12, 16] {
            assert_eq!(grpc_outcome_status(ok), None, "{ok}");
        }
        assert_eq!(parse_grpc_status(b" 14"), Some(14));
        assert_eq!(parse_grpc_status(b"x"), None);
    }
}
