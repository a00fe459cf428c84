//! What the listener's scheme changes: HTTP requests redirected to HTTPS
//! (`tls.redirect_http`), and `Strict-Transport-Security` on HTTPS answers (`tls.hsts_*`).
//! `X-Forwarded-Proto` (`proxy::forwarded`) and the session cookie's `Secure` flag
//! (`sessions`) follow the scheme too.

use super::{Exchange, LocalResponse, Pipeline};
use crate::config::Config;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};

/// The `308 Permanent Redirect` to the same URL over HTTPS (308 keeps the method and
/// body, unlike 301). `None` when the request names no host to redirect to.
pub fn redirect_to_https(req: &RequestHeader, cfg: &Config) -> Option<LocalResponse> {
    let host = crate::resilience::routes::request_host(req)?;
    let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = match cfg.tls.redirect_port() {
        Some(port) => format!("https://{host}:{port}{path}"),
        None => format!("https://{host}{path}"),
    };
    let location = http::HeaderValue::from_str(&location).ok()?;
    let mut header = ResponseHeader::build(308, Some(3)).ok()?;
    header.insert_header("Location", location).ok()?;
    header.insert_header("Content-Length", "0").ok()?;
    header
        .insert_header("Cache-Control", "private, no-store")
        .ok()?;
    Some(LocalResponse {
        header,
        body: Bytes::new(),
        close: false,
    })
}

impl Pipeline {
    /// The `Strict-Transport-Security` value to add to this exchange's answer: HTTPS
    /// requests only (RFC 6797 §7.2: never over plain HTTP), when configured.
    pub fn hsts(&self, ex: &Exchange) -> Option<http::HeaderValue> {
        if !ex.https {
            return None;
        }
        self.shared.config.load().tls.hsts.clone()
    }
}
