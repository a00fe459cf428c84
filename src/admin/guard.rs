//! The checks every admin request passes before any handler runs (a middleware on the
//! whole router), in this order:
//!
//! 1. `Host` names this listener: `localhost`, a loopback address, the listener's own
//!    address (any address when it listens on 0.0.0.0 / ::), or a name in
//!    `admin.allowed_hosts`. A page that rebinds its own DNS name to 127.0.0.1 sends its
//!    own name and is refused (DNS rebinding). A request without `Host` (not a browser)
//!    passes.
//! 2. Not cross-site: an `Origin` header must be this listener's origin (scheme
//!    `http`/`https` and the request's `Host`); `Sec-Fetch-Site: cross-site` or
//!    `same-site` is refused except for a top-level navigation (a link to the
//!    dashboard). Browsers always send `Origin` on WebSocket handshakes and on
//!    cross-origin POSTs, so a page elsewhere can neither POST nor subscribe.
//! 3. The token rule of `auth.rs` (open, read or write).
//! 4. The handler runs within `admin.request_timeout` (408 after it).
//!
//! Handlers that read JSON also require `Content-Type: application/json` ([`json_body`]).

use super::auth;
use super::error::AdminError;
use super::AdminState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use std::net::{IpAddr, SocketAddr};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Probes, Prometheus and the static dashboard page.
    Open,
    /// Data: needs the token when the operator configured one.
    Read,
    /// Changes state: always needs the token.
    Write,
}

/// Paths readable by anyone who can reach the listener.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/dashboard"];

/// Which privilege a request needs: anything but GET/HEAD is `Write`, GET/HEAD of [`OPEN_PATHS`] is
/// `Open`, any other GET/HEAD is `Read`.
pub fn access(method: &Method, path: &str) -> Access {
    let read = method == Method::GET || method == Method::HEAD;
    if !read {
        Access::Write
    } else if OPEN_PATHS.contains(&path) {
        Access::Open
    } else {
        Access::Read
    }
}

/// Splits `host[:port]` (IPv6 in brackets); `None` if malformed.
fn host_name(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) && !name.contains(':') => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `host` (a `Host` header value) names this admin listener.
pub fn host_allowed(host: &str, listen: SocketAddr, allowed: &[String]) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    let name = name.trim_end_matches('.');
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        // An address cannot be rebound; it must be one this listener can be reached on.
        return ip.is_loopback() || ip == listen.ip() || listen.ip().is_unspecified();
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Why a request is cross-site, if it is.
pub fn cross_site(method: &Method, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        let same = host.is_some_and(|h| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(h))
        });
        if !same {
            return Some(format!(
                "cross-origin request refused: Origin `{o}` is not this admin listener"
            ));
        }
    }
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if site == "cross-site" || site == "same-site" {
        let navigation = (method == Method::GET || method == Method::HEAD)
            && headers
                .get("sec-fetch-mode")
                .is_some_and(|m| m.as_bytes() == b"navigate");
        if !navigation {
            return Some(format!(
                "cross-site request refused (Sec-Fetch-Site: {site})"
            ));
        }
    }
    None
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The middleware: see the module doc.
pub async fn guard(
    State(s): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let cfg = s.shared.config();
    let admin = &cfg.admin;
    let headers = req.headers();
    if let Some(host) = headers.get(header::HOST) {
        let text = host.to_str().unwrap_or("");
        if !host_allowed(text, admin.listen, &admin.allowed_hosts) {
            s.refused("host");
            return Err(AdminError::Host(text.to_string()));
        }
    }
    if let Some(why) = cross_site(req.method(), headers) {
        s.refused("cross_site");
        return Err(AdminError::CrossSite(why));
    }
    let need = access(req.method(), req.uri().path());
    if need != Access::Open {
        let token = s.tokens.effective(admin.token.as_deref()).map_err(|e| {
            log::error!("{e}");
            AdminError::NoToken
        })?;
        if need == Access::Write || token.configured {
            let checked = if is_websocket(headers) {
                auth::check_ws(&token.token, headers)
            } else {
                auth::check(&token.token, headers)
            };
            if let Err(why) = checked {
                s.refused("token");
                return Err(AdminError::Unauthorized(why));
            }
        }
    }
    let limit = admin.request_timeout;
    drop(cfg);
    tokio::time::timeout(limit, next.run(req))
        .await
        .map_err(|_| AdminError::Timeout(limit))
}

/// Why a JSON body was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JsonBodyError {
    /// `Content-Type` is missing or not `application/json` (415).
    #[error("Content-Type must be application/json")]
    NotJson,
    /// The body is not JSON of the expected shape (400).
    #[error("body must be JSON like {example}: {source}")]
    Malformed {
        /// A sample of the expected body, quoted in the message.
        example: &'static str,
        /// What serde rejected.
        source: serde_json::Error,
    },
}

/// Parses a JSON body, requiring `Content-Type: application/json` so that no "simple"
/// cross-origin form or text POST can carry it (415 otherwise: `AdminError::status`).
pub fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    example: &'static str,
) -> Result<T, JsonBodyError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(JsonBodyError::NotJson);
    }
    serde_json::from_slice(body).map_err(|source| JsonBodyError::Malformed { example, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_must_name_the_listener() {
        let l = listen("127.0.0.1:9090");
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "localhost",
            "LOCALHOST.:9090",
            "[::1]:9090",
            "127.0.0.2",
        ] {
            assert!(host_allowed(ok, l, &[]), "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "evil.example",
            "10.0.0.1:9090",
            "localhost.evil.example",
            "127.0.0.1:90:90",
            "[::1]x",
            "",
        ] {
            assert!(!host_allowed(bad, l, &[]), "{bad}");
        }
        assert!(host_allowed(
            "admin.internal:9090",
            l,
            &["admin.internal".into()]
        ));
        assert!(host_allowed("10.0.0.1:9090", listen("0.0.0.0:9090"), &[]));
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(cross_site(&Method::POST, &h), None, "curl: no Origin");
        h.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert_eq!(cross_site(&Method::POST, &h), None, "same origin");
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&Method::POST, &h).is_some());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_site(&Method::GET, &h).is_some());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&Method::POST, &h).is_some());
        assert!(cross_site(&Method::GET, &h).is_some());
        h.insert("sec-fetch-mode", "navigate".parse().unwrap());
        assert_eq!(
            cross_site(&Method::GET, &h),
            None,
            "a link to the dashboard"
        );
        assert!(cross_site(&Method::POST, &h).is_some());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert_eq!(cross_site(&Method::POST, &h), None);
    }

    #[test]
    fn access_classes() {
        assert_eq!(access(&Method::GET, "/metrics"), Access::Open);
        assert_eq!(access(&Method::HEAD, "/healthz"), Access::Open);
        assert_eq!(access(&Method::GET, "/api/status"), Access::Read);
        assert_eq!(access(&Method::GET, "/api/stream"), Access::Read);
        assert_eq!(access(&Method::POST, "/healthz"), Access::Write);
        assert_eq!(access(&Method::DELETE, "/api/chaos/faults"), Access::Write);
    }
}
