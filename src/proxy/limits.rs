//! Edge limits on what a client may send: header size and count (431), body size (413),
//! concurrent requests (503). Checked first in `request_filter`, before any other work;
//! the body is counted as it streams (`request_body_filter`), so a chunked upload cannot
//! slip past a declared length.

use crate::config::LimitsConfig;
use pingora_http::RequestHeader;

/// Which limit a request broke, and the status it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The head is over `limits.max_header_bytes` (431).
    HeaderBytes,
    /// The head has more than `limits.max_headers` fields (431).
    HeaderCount,
    /// The body, declared or streamed so far, is over `limits.max_body_bytes` (413).
    BodyBytes,
    /// `limits.max_in_flight` requests are already being served (503).
    InFlight,
}

impl Violation {
    /// The status drover answers with: 431, 413 or 503.
    pub fn status(self) -> u16 {
        match self {
            Violation::HeaderBytes | Violation::HeaderCount => 431,
            Violation::BodyBytes => 413,
            Violation::InFlight => 503,
        }
    }

    /// Label for `drover_limit_rejections_total` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::HeaderBytes => "header_bytes",
            Violation::HeaderCount => "header_count",
            Violation::BodyBytes => "body_bytes",
            Violation::InFlight => "in_flight",
        }
    }
}

/// Size of the request head as the client sent it (request line + `name: value\r\n`s).
fn head_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len()
        + req
            .uri
            .path_and_query()
            .map(|p| p.as_str().len())
            .unwrap_or(1)
        + 12;
    line + req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// `in_flight` counts this request.
pub fn check_request(cfg: &LimitsConfig, req: &RequestHeader, in_flight: i64) -> Option<Violation> {
    if cfg.max_in_flight > 0 && in_flight > cfg.max_in_flight as i64 {
        return Some(Violation::InFlight);
    }
    if req.headers.len() > cfg.max_headers {
        return Some(Violation::HeaderCount);
    }
    if head_bytes(req) > cfg.max_header_bytes {
        return Some(Violation::HeaderBytes);
    }
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_body_bytes) {
        return Some(Violation::BodyBytes);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LimitsConfig {
        LimitsConfig {
            max_header_bytes: 2048,
            max_headers: 10,
            max_body_bytes: 100,
            client_body_timeout: std::time::Duration::from_secs(1),
            max_in_flight: 5,
            client_header_timeout: std::time::Duration::from_secs(1),
            client_send_timeout: std::time::Duration::from_secs(1),
            client_keepalive_timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn each_limit_maps_to_its_status() {
        let mut r = RequestHeader::build("POST", b"/upload", None).unwrap();
        r.insert_header("host", "x").unwrap();
        assert_eq!(check_request(&cfg(), &r, 1), None);
        assert_eq!(
            check_request(&cfg(), &r, 6).map(Violation::status),
            Some(503)
        );
        r.insert_header("content-length", "101").unwrap();
        assert_eq!(
            check_request(&cfg(), &r, 1).map(Violation::status),
            Some(413)
        );
        r.insert_header("content-length", "100").unwrap();
        r.insert_header("x-big", "a".repeat(3000)).unwrap();
        assert_eq!(check_request(&cfg(), &r, 1), Some(Violation::HeaderBytes));
        let mut many = RequestHeader::build("GET", b"/", None).unwrap();
        for i in 0..11 {
            many.insert_header(format!("x-h{i}"), "v").unwrap();
        }
        assert_eq!(
            check_request(&cfg(), &many, 1).map(Violation::status),
            Some(431)
        );
    }
}
