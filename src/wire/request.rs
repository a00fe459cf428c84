//! Is this request head acceptable, and how is its body framed? One answer for both
//! carriers (RFC 9112 sections 3, 6 and 9; the rejections follow nginx's where the RFC
//! leaves a choice).
//!
//! Rejected, with the status sent before the connection closes:
//! - 400: a request target that is not origin-, absolute- or (for OPTIONS) asterisk-form,
//!   or does not parse as a URI; a missing (HTTP/1.1), repeated or invalid `Host`
//!   (userinfo included); a `Content-Length` that is not plain digits or is repeated;
//!   `Content-Length` together with `Transfer-Encoding`; `Transfer-Encoding` in an
//!   HTTP/1.0 request or without `chunked` last; a malformed `Connection` field.
//! - 405: `CONNECT` (drover is not a forward proxy).
//! - 417: an `Expect` other than `100-continue`.
//! - 501: a transfer coding other than `chunked`.

use super::fields::{self, ConnectionOptions};

/// How a request body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no framing field, or `Content-Length: 0`).
    None,
    /// `Content-Length` bytes; always above 0.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 only); see [`super::chunked`].
    Chunked,
}

/// The form of the request target (RFC 9112 section 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`, the usual form.
    Origin,
    /// `http://host/path` or `https://...`, as sent to a proxy; no userinfo allowed.
    Absolute,
    /// `*`, accepted only with `OPTIONS`.
    Asterisk,
}

/// What drover needs to know about an accepted request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// The request line says `HTTP/1.0` (otherwise HTTP/1.1).
    pub http10: bool,
    /// How the body ends.
    pub framing: BodyFraming,
    /// The client may send another request on this connection after the response.
    pub keep_alive: bool,
    /// An HTTP/1.1 protocol upgrade (`Connection: upgrade` and an `Upgrade` field).
    pub upgrade: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored on HTTP/1.0).
    pub expect_continue: bool,
    /// The request target's form.
    pub target: TargetForm,
    /// The parsed `Connection` fields, whose nominated names are dropped when forwarding.
    pub connection: ConnectionOptions,
}

/// A refused request head: the status to answer with, and why (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status: 400, 405, 417 or 501 from [`check`] (see the module doc); the
    /// HTTP/1 carrier also uses it for its own limits (e.g. 408 on a head timeout).
    pub status: u16,
    /// Short reason for the log, e.g. "more than one Host"; not sent to the client.
    pub why: &'static str,
}

fn bad(why: &'static str) -> Rejection {
    Rejection { status: 400, why }
}

/// Longest `Content-Length` drover parses: 19 digits always fit a `u64`.
const MAX_LENGTH_DIGITS: usize = 19;

/// A `Content-Length` value: plain digits, optional surrounding whitespace (RFC 9110
/// section 8.6; Rust's integer parser alone would also take `+5`).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > MAX_LENGTH_DIGITS {
        return None;
    }
    // 19 digits never overflow a u64.
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Bytes of a plain host name: letters, digits, `.`, `-`, `_`.
const HOST_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_';
        b += 1;
    }
    t
};

/// A `Host` value: an authority without userinfo (empty is allowed, RFC 9112 3.2).
pub fn valid_host(value: &[u8]) -> bool {
    // The common `name[:port]` is checked by hand (every request has one); anything
    // else by the `http` crate's authority parser, which accepts these too.
    let mut in_port = false;
    let mut plain = true;
    for &b in value {
        if in_port {
            plain &= b.is_ascii_digit();
        } else if b == b':' {
            in_port = true;
        } else {
            plain &= HOST_CHAR[b as usize];
        }
    }
    plain || (!value.contains(&b'@') && http::uri::Authority::try_from(value).is_ok())
}

/// Whether an origin-form target parses as a URI path and query. drover's engine parses
/// it anyway when it builds the request (`h1::codec::take_request`) and refuses it there;
/// a request handed to Pingora is checked with this first, so both refuse the same ones.
pub fn valid_origin_target(target: &[u8]) -> bool {
    http::uri::PathAndQuery::try_from(target).is_ok()
}

fn target_form(method: &str, target: &str) -> Result<TargetForm, Rejection> {
    if target.starts_with('/') {
        return Ok(TargetForm::Origin);
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(TargetForm::Asterisk)
        } else {
            Err(bad("asterisk-form target outside OPTIONS"))
        };
    }
    let lower = target
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let uri = http::Uri::try_from(target).map_err(|_| bad("invalid request target"))?;
        let ok = uri
            .authority()
            .is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty());
        return if ok {
            Ok(TargetForm::Absolute)
        } else {
            Err(bad("invalid authority in request target"))
        };
    }
    Err(bad("invalid request target"))
}

/// Judges a parsed request head. `version` is the minor version (`HTTP/1.x`).
pub fn check(
    method: &str,
    target: &str,
    version: u8,
    headers: &[httparse::Header<'_>],
) -> Result<RequestFacts, Rejection> {
    if !fields::is_token(method.as_bytes()) {
        return Err(bad("invalid method"));
    }
    if method == "CONNECT" {
        return Err(Rejection {
            status: 405,
            why: "CONNECT is not supported",
        });
    }
    let http10 = version == 0;
    let form = target_form(method, target)?;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut expect_continue = false;
    let mut has_upgrade = false;
    let mut connection_values: Vec<&[u8]> = Vec::new();
    for h in headers {
        let name = h.name.as_bytes();
        // By length first: this runs on every field of every request.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                if !valid_host(h.value) {
                    return Err(bad("invalid Host"));
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                length = Some(parse_content_length(h.value).ok_or(bad("invalid Content-Length"))?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                codings.extend(
                    h.value
                        .split(|b| *b == b',')
                        .map(|t| t.trim_ascii())
                        .filter(|t| !t.is_empty()),
                );
                if h.value.trim_ascii().is_empty() {
                    return Err(bad("empty Transfer-Encoding"));
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => connection_values.push(h.value),
            7 if name.eq_ignore_ascii_case(b"upgrade") => has_upgrade = true,
            6 if name.eq_ignore_ascii_case(b"expect") => {
                if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(Rejection {
                        status: 417,
                        why: "unsupported expectation",
                    });
                }
            }
            _ => {}
        }
    }
    if hosts > 1 {
        return Err(bad("more than one Host"));
    }
    if hosts == 0 && !http10 {
        return Err(bad("missing Host"));
    }
    if lengths > 1 {
        return Err(bad("more than one Content-Length"));
    }
    let framing = if codings.is_empty() {
        match length {
            None | Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    } else {
        if http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        let last_chunked = codings
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        if !last_chunked {
            return Err(bad("Transfer-Encoding without chunked last"));
        }
        if codings.len() > 1 {
            return Err(Rejection {
                status: 501,
                why: "transfer coding other than chunked",
            });
        }
        BodyFraming::Chunked
    };
    let connection =
        fields::connection_options(connection_values).map_err(|_| bad("invalid Connection"))?;
    let keep_alive = if http10 {
        connection.keep_alive && !connection.close
    } else {
        !connection.close
    };
    Ok(RequestFacts {
        http10,
        framing,
        keep_alive,
        upgrade: !http10 && connection.upgrade && has_upgrade,
        expect_continue: expect_continue && !http10,
        target: form,
        connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(raw: &str) -> Result<RequestFacts, Rejection> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let status = req.parse(raw.as_bytes()).expect("parses");
        assert!(status.is_complete());
        check(
            req.method.unwrap(),
            req.path.unwrap(),
            req.version.unwrap(),
            req.headers,
        )
    }

    fn status(raw: &str) -> u16 {
        match run(raw) {
            Err(r) => r.status,
            Ok(f) if f.target == TargetForm::Origin => {
                let target = raw.split(' ').nth(1).unwrap_or("");
                if valid_origin_target(target.as_bytes()) {
                    200
                } else {
                    400
                }
            }
            Ok(_) => 200,
        }
    }

    #[test]
    fn framing_follows_rfc_9112_section_6() {
        let f = |raw: &str| run(raw).unwrap().framing;
        assert_eq!(f("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), BodyFraming::None);
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            BodyFraming::None
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"),
            BodyFraming::Length(12)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            BodyFraming::Chunked
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{raw:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
    }

    #[test]
    fn host_rules() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: u:p@a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a-b.c_d:8080\r\n\r\n"), 200);
        for host in [
            "a", "a:80", "a:99999", "a:", ":80", "a_b", "A.B", "a..b", "-a",
        ] {
            assert_eq!(
                valid_host(host.as_bytes()),
                http::uri::Authority::try_from(host).is_ok(),
                "{host}"
            );
        }
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 200);
    }

    #[test]
    fn targets_methods_and_expectations() {
        assert_eq!(status("GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET /a?b\"c HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET a HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(
            run("GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap()
                .target,
            TargetForm::Absolute
        );
        assert_eq!(status("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 405);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
            417
        );
        assert!(
            run("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n")
                .unwrap()
                .expect_continue
        );
    }

    #[test]
    fn keep_alive_and_upgrade() {
        assert!(run("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().keep_alive);
        assert!(
            !run("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!run("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            run("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        let up =
            run("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert!(up.upgrade);
        let no = run("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n").unwrap();
        assert!(!no.upgrade);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nConnection: a\"b\r\n\r\n"),
            400
        );
    }
}
