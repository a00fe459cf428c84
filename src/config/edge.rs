//! `forwarded:` and `limits:`: how drover treats what clients send at the edge.

use super::error::ConfigIssue;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `forwarded:` as written: which client-address headers drover sends and whom it believes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardedFile {
    /// Send `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP`
    /// to workers.
    pub headers: bool,
    /// Peers (CIDRs) whose `X-Forwarded-For` / `Forwarded` headers are believed, e.g. a
    /// load balancer in front of drover. Empty: nobody's; the TCP peer is the client and
    /// such headers from clients are replaced, so a client cannot spoof its address.
    pub trusted_proxies: Vec<String>,
}

impl Default for ForwardedFile {
    fn default() -> Self {
        ForwardedFile {
            headers: true,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Validated `forwarded:`, read by `proxy::forwarded` for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedConfig {
    /// Whether `X-Forwarded-*` and `X-Real-IP` are sent to workers (default true).
    pub headers: bool,
    /// Parsed `trusted_proxies` (a bare IP becomes a /32 or /128); empty = trust no peer.
    pub trusted: Vec<IpNet>,
}

/// Parses `trusted_proxies`; every entry that is neither an IP nor a CIDR is one issue.
pub fn validate_forwarded(f: &ForwardedFile) -> Result<ForwardedConfig, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut trusted = Vec::new();
    for t in &f.trusted_proxies {
        let parsed = t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted.push(n),
            Err(_) => issues.push(ConfigIssue {
                field: "forwarded.trusted_proxies".into(),
                line: None,
                message: format!("`{t}` is not an IP address or CIDR (e.g. `10.0.0.0/8`)"),
            }),
        }
    }
    if issues.is_empty() {
        Ok(ForwardedConfig {
            headers: f.headers,
            trusted,
        })
    } else {
        Err(issues)
    }
}

/// `limits:` as written: size, count and time limits on what clients send.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Request line plus headers, in bytes; more answers 431.
    pub max_header_bytes: usize,
    /// Request headers; more answers 431.
    pub max_headers: usize,
    /// Request body, in bytes (declared or streamed); more answers 413.
    pub max_body_bytes: u64,
    /// Longest wait for each read of a request body from a client; a client trickling
    /// slower (slowloris on the body) gets 408.
    pub client_body_timeout: super::duration::Dur,
    /// Requests being handled at once; more answer 503 at once rather than queueing
    /// without bound. 0 = no limit.
    pub max_in_flight: u64,
    /// Longest time a request head may take to arrive, from its first byte to its end;
    /// a client trickling a head (slowloris) gets 408 and the connection closes.
    pub client_header_timeout: super::duration::Dur,
    /// Longest wait for a client to accept more response bytes; a client that stops
    /// reading is dropped after it, freeing the request's backend slot (nginx's
    /// `send_timeout`).
    pub client_send_timeout: super::duration::Dur,
    /// How long an idle client connection waits for its next request.
    pub client_keepalive_timeout: super::duration::Dur,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            client_body_timeout: super::duration::Dur::secs(30),
            max_in_flight: 10_000,
            client_header_timeout: super::duration::Dur::secs(30),
            client_send_timeout: super::duration::Dur::secs(60),
            client_keepalive_timeout: super::duration::Dur::secs(60),
        }
    }
}

/// Validated `limits:`, enforced by the proxy pipeline on every client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Request line plus headers, in bytes (1024..=1048575, default 32 KiB); more answers 431.
    pub max_header_bytes: usize,
    /// Request headers (1..=256, default 100); more answers 431.
    pub max_headers: usize,
    /// Request body in bytes, declared or streamed (default 10 MiB); more answers 413.
    pub max_body_bytes: u64,
    /// Longest wait for each read of a request body (default 30 s); slower gets 408.
    pub client_body_timeout: std::time::Duration,
    /// Requests handled at once (default 10000); more answer 503 at once. 0 = no limit.
    pub max_in_flight: u64,
    /// Longest time from a request head's first byte to its end (default 30 s); then 408.
    pub client_header_timeout: std::time::Duration,
    /// Longest wait for a client to accept more response bytes (default 60 s); then dropped.
    pub client_send_timeout: std::time::Duration,
    /// How long an idle client connection waits for its next request (default 60 s).
    pub client_keepalive_timeout: std::time::Duration,
}

/// Pingora itself refuses more than 256 headers or 1 MiB of them (without a 431).
const PINGORA_MAX_HEADERS: usize = 256;
const PINGORA_MAX_HEADER_BYTES: usize = 1_048_575;

/// Checks `limits:` against the ranges Pingora can honour and that timeouts are non-zero;
/// returns every problem at once.
pub fn validate_limits(f: &LimitsFile) -> Result<LimitsConfig, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut fail = |field: &str, message: String| {
        issues.push(ConfigIssue {
            field: format!("limits.{field}"),
            line: None,
            message,
        })
    };
    if f.max_header_bytes < 1024 || f.max_header_bytes > PINGORA_MAX_HEADER_BYTES {
        fail(
            "max_header_bytes",
            format!("out of range; accepted: 1024 to {PINGORA_MAX_HEADER_BYTES}"),
        );
    }
    if f.max_headers == 0 || f.max_headers > PINGORA_MAX_HEADERS {
        fail(
            "max_headers",
            format!("out of range; accepted: 1 to {PINGORA_MAX_HEADERS}"),
        );
    }
    for (name, d) in [
        ("client_body_timeout", f.client_body_timeout.0),
        ("client_header_timeout", f.client_header_timeout.0),
        ("client_send_timeout", f.client_send_timeout.0),
        ("client_keepalive_timeout", f.client_keepalive_timeout.0),
    ] {
        if d.is_zero() {
            fail(name, "must be greater than zero".into());
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(LimitsConfig {
        max_header_bytes: f.max_header_bytes,
        max_headers: f.max_headers,
        max_body_bytes: f.max_body_bytes,
        client_body_timeout: f.client_body_timeout.0,
        max_in_flight: f.max_in_flight,
        client_header_timeout: f.client_header_timeout.0,
        client_send_timeout: f.client_send_timeout.0,
        client_keepalive_timeout: f.client_keepalive_timeout.0,
    })
}
