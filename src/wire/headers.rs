//! Header hygiene between client, drover and worker, on `RequestHeader` /
//! `ResponseHeader` values (the rules themselves are in `proxy::http::fields`).
//!
//! Headers that start with `x-drover-` are drover's channel to its workers (session data,
//! internal signals). A client must never be able to inject them, and a worker's must
//! never leak to a client, so they are stripped in both directions.

use crate::wire::fields;
use pingora_http::{RequestHeader, ResponseHeader};

pub use fields::INTERNAL_PREFIX;
/// The request id header drover sets on every forwarded request; an incoming one is
/// believed only from a trusted proxy (see [`request_id`]).
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Changes to a request's headers, applied in one go.
///
/// Why: Pingora's `insert_header` re-parses and copies every name it is given (to keep
/// its header-case map), about 500 instructions and an allocation per header, and the
/// steps add five or more headers to every request. A request drover's fast path parsed
/// has no case map, so its `http` map is edited in place; one Pingora parsed goes
/// through Pingora's API so its case map stays in step.
pub struct HeaderEdits(Vec<(http::HeaderName, Option<http::HeaderValue>)>);

impl Default for HeaderEdits {
    fn default() -> Self {
        HeaderEdits(Vec::with_capacity(8))
    }
}

impl HeaderEdits {
    /// Sets `name` to `value`, replacing any values it had.
    pub fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        self.0.push((name, Some(value)));
    }

    /// Removes every value of `name` (no-op if it is absent).
    pub fn remove(&mut self, name: http::HeaderName) {
        self.0.push((name, None));
    }

    /// Applies the edits in order.
    pub fn apply(self, req: &mut RequestHeader) {
        if self.0.is_empty() {
            return;
        }
        if req.has_case() {
            for (name, value) in self.0 {
                match value {
                    Some(v) => {
                        let _ = req.insert_header(name, v);
                    }
                    None => {
                        req.remove_header(&name);
                    }
                }
            }
            return;
        }
        // No case map to keep in step: edit the `http` parts. (The conversion back also
        // keeps the target as the URI, which is how the fast path built it.)
        let (empty, ()) = http::Request::new(()).into_parts();
        let mut parts: http::request::Parts =
            std::mem::replace(req, RequestHeader::from(empty)).into();
        for (name, value) in self.0 {
            match value {
                Some(v) => {
                    parts.headers.insert(name, v);
                }
                None => {
                    parts.headers.remove(&name);
                }
            }
        }
        *req = RequestHeader::from(parts);
    }
}

/// An internal field name (`x-drover-*`, `x_drover_*`).
pub fn is_internal(name: &http::HeaderName) -> bool {
    fields::is_internal(name.as_str().as_bytes())
}

/// Names of the internal headers present; `None` (no allocation) in the common case.
fn internal_names(headers: &http::HeaderMap) -> Option<Vec<http::HeaderName>> {
    if !headers.keys().any(is_internal) {
        return None;
    }
    Some(headers.keys().filter(|k| is_internal(k)).cloned().collect())
}

/// Removes internal headers from a client request.
pub fn strip_internal_request(req: &mut RequestHeader) {
    for n in internal_names(&req.headers).unwrap_or_default() {
        req.remove_header(&n);
    }
}

/// Whether a client's field never reaches a worker: hop-by-hop, internal, or an
/// underscore spelling of a field drover owns.
fn dropped_from_request(name: &http::HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    fields::is_request_hop_by_hop(n) || fields::is_internal(n) || fields::is_underscore_alias(n)
}

/// Removes from a client's request every field that must not reach a worker: hop-by-hop
/// fields and whatever the client's `Connection` nominates, internal fields, and the
/// underscore spellings of fields drover owns. Runs before drover adds its own fields,
/// so nothing a client nominates can remove those. A protocol upgrade keeps `Upgrade` and
/// `Connection: upgrade`, which its carrier needs to forward the handshake.
pub fn sanitize_request(req: &mut RequestHeader) {
    if !req.headers.keys().any(dropped_from_request) {
        return;
    }
    let conn = fields::connection_options(
        req.headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .unwrap_or_default();
    let upgrade = req.version == http::Version::HTTP_11
        && conn.upgrade
        && req.headers.contains_key(http::header::UPGRADE);
    let doomed: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| dropped_from_request(k) || conn.nominates(k.as_str().as_bytes()))
        .filter(|k| !(upgrade && *k == http::header::UPGRADE))
        .cloned()
        .collect();
    for n in doomed {
        req.remove_header(&n);
    }
    if upgrade {
        let _ = req.insert_header(http::header::CONNECTION, "upgrade");
    }
}

/// Removes internal headers from a worker response before it reaches the client.
pub fn strip_internal_response(resp: &mut ResponseHeader) {
    for n in internal_names(&resp.headers).unwrap_or_default() {
        resp.remove_header(&n);
    }
}

/// Removes from a worker's response the fields that stop at drover: hop-by-hop ones,
/// those its `Connection` nominates, internal ones.
pub fn sanitize_response(resp: &mut ResponseHeader, facts: &crate::wire::response::ResponseFacts) {
    let doomed: Vec<http::HeaderName> = resp
        .headers
        .keys()
        .filter(|k| !crate::wire::response::forwarded(k.as_str().as_bytes(), facts))
        .filter(|k| {
            !(resp.status == http::StatusCode::SWITCHING_PROTOCOLS
                && (*k == http::header::UPGRADE || *k == http::header::CONNECTION))
        })
        .cloned()
        .collect();
    for n in doomed {
        resp.remove_header(&n);
    }
}

/// A request id: the one a trusted proxy sent (`trusted`: the peer is one), if sane,
/// else a fresh random 64-bit hex id. A client's own is not believed: it would let a
/// client pick the id other requests are logged and traced under.
pub fn request_id(req: &RequestHeader, trusted: bool) -> (String, bool) {
    if let Some(v) = req.headers.get(&REQUEST_ID).filter(|_| trusted) {
        if let Ok(s) = v.to_str() {
            if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) {
                return (s.to_string(), false);
            }
        }
    }
    (format!("{:016x}", rand::random::<u64>()), true)
}

/// Finds cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    for v in req.headers.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == name {
                    return Some(val);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_internal_headers_case_insensitively() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Drover-Session", "forged").unwrap();
        req.insert_header("x-drover-other", "x").unwrap();
        req.insert_header("X-Keep", "yes").unwrap();
        strip_internal_request(&mut req);
        assert!(req.headers.get("x-drover-session").is_none());
        assert!(req.headers.get("x-drover-other").is_none());
        assert_eq!(req.headers.get("x-keep").unwrap(), "yes");

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("X-Drover-Session-Set", "{}").unwrap();
        resp.insert_header("X-Worker-Id", "1").unwrap();
        strip_internal_response(&mut resp);
        assert!(resp.headers.get("x-drover-session-set").is_none());
        assert!(resp.headers.get("x-worker-id").is_some());
    }

    #[test]
    fn keeps_sane_request_ids_and_replaces_bad_ones() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(request_id(&req, true).1);
        req.insert_header("X-Request-Id", "abc-123").unwrap();
        assert_eq!(request_id(&req, true), ("abc-123".to_string(), false));
        assert!(
            request_id(&req, false).1,
            "an untrusted client's id is replaced"
        );
        req.insert_header("X-Request-Id", "a b").unwrap();
        assert!(request_id(&req, true).1);
    }

    #[test]
    fn finds_cookies() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("Cookie", "a=1; user=bob").unwrap();
        req.append_header("Cookie", "c=3").unwrap();
        assert_eq!(cookie(&req, "user"), Some("bob"));
        assert_eq!(cookie(&req, "c"), Some("3"));
        assert_eq!(cookie(&req, "zz"), None);
    }
}
