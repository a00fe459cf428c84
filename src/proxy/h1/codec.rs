//! HTTP/1 message heads as bytes, for drover's engine.
//!
//! Request heads are parsed without touching the connection's buffer
//! ([`parse_head`]); only once drover decides to serve a request itself does
//! [`take_request`] split the head off and build a Pingora `RequestHeader` whose values
//! point into it. A request handed to Pingora therefore leaves the buffer exactly as the
//! client sent it. Response heads are forwarded as the worker wrote them, minus the
//! fields that stop at drover ([`crate::wire::response::forwarded`]).

use crate::wire::fields;
use crate::wire::request::{self, Rejection, RequestFacts};
use crate::wire::response::{self as resp_rules, ResponseFacts, ResponseFraming};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use pingora_http::{RequestHeader, ResponseHeader};
use std::mem::MaybeUninit;

/// What the client is told about its connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// The connection stays open (HTTP/1.1's default: nothing to say).
    Open,
    /// `Connection: keep-alive`: an HTTP/1.0 client that asked for it and gets it.
    KeepAlive,
    /// `Connection: close`.
    Close,
}

impl Persist {
    /// What to tell a client: `Close` if the connection ends after this response, else `KeepAlive`
    /// for HTTP/1.0 (which closes by default) and `Open` for HTTP/1.1.
    pub fn for_client(close: bool, http10: bool) -> Persist {
        match (close, http10) {
            (true, _) => Persist::Close,
            (false, true) => Persist::KeepAlive,
            (false, false) => Persist::Open,
        }
    }

    fn write(self, out: &mut BytesMut) {
        match self {
            Persist::Open => {}
            Persist::KeepAlive => out.put_slice(b"Connection: keep-alive\r\n"),
            Persist::Close => out.put_slice(b"Connection: close\r\n"),
        }
    }
}

/// Header slots parsed on the stack: `limits.max_headers` is at most this.
pub const MAX_HEADERS: usize = 256;

/// Where a request field sits in the head: name start and length, value start and length.
pub type FieldAt = (u32, u32, u32, u32);

/// Limits a request head must keep.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Most bytes of a head (`limits.max_header_bytes`); a longer head is refused with 431.
    pub max_bytes: usize,
    /// Most fields in a head (`limits.max_headers`, at most [`MAX_HEADERS`]); more are refused with
    /// 431.
    pub max_headers: usize,
}

/// A complete, acceptable request head at the start of the buffer.
pub struct Head {
    /// Bytes of the head at the start of the buffer, blank line included; the body (if any)
    /// follows.
    pub len: usize,
    /// What the request's framing and fields say (version, body length, target form, ...).
    pub facts: RequestFacts,
    /// The request method.
    pub method: Method,
    /// The request target's position in the head.
    target: (u32, u32),
}

impl Head {
    /// For a request another carrier will parse: its origin-form target is a valid URI
    /// path (drover's engine finds out when it builds the request).
    pub fn target_parses(&self, buf: &[u8]) -> bool {
        let (at, len) = (self.target.0 as usize, self.target.1 as usize);
        self.facts.target != request::TargetForm::Origin
            || request::valid_origin_target(&buf[at..at + len])
    }
}

/// Outcome of [`parse_head`] on the bytes received so far.
pub enum HeadParse {
    /// More bytes are needed.
    Partial,
    /// A head drover may serve; the buffer is unchanged.
    Complete(Head),
    /// Answer with this status and close the connection.
    Reject(Rejection),
}

/// Why a head was refused, for counting the edge limit it broke.
pub const WHY_HEAD_BYTES: &str = "request head over limits.max_header_bytes";
/// Rejection reason (431) when a head has more fields than `limits.max_headers`.
pub const WHY_HEADER_COUNT: &str = "more request fields than limits.max_headers";
/// Rejection reason (408) when the head did not arrive within `limits.client_header_timeout`.
pub const WHY_HEAD_TIMEOUT: &str = "request head not complete within limits.client_header_timeout";

fn too_large(why: &'static str) -> HeadParse {
    HeadParse::Reject(Rejection { status: 431, why })
}

/// Parses and judges the request head at the start of `buf`, without changing it.
/// `fields` receives where each forwarded field is (hop-by-hop and `Connection`-nominated
/// fields are left out), for [`take_request`].
pub fn parse_head(buf: &[u8], limits: HeadLimits, fields: &mut Vec<FieldAt>) -> HeadParse {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_bytes => {
            return too_large(WHY_HEAD_BYTES)
        }
        Ok(httparse::Status::Partial) => return HeadParse::Partial,
        Err(httparse::Error::TooManyHeaders) => return too_large(WHY_HEADER_COUNT),
        Err(_) => {
            return HeadParse::Reject(Rejection {
                status: 400,
                why: "malformed request head",
            })
        }
    };
    if len > limits.max_bytes {
        return too_large(WHY_HEAD_BYTES);
    }
    if req.headers.len() > limits.max_headers {
        return too_large(WHY_HEADER_COUNT);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return HeadParse::Reject(Rejection {
            status: 400,
            why: "malformed request line",
        });
    };
    let facts = match request::check(method, target, version, req.headers) {
        Ok(f) => f,
        Err(r) => return HeadParse::Reject(r),
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return HeadParse::Reject(Rejection {
            status: 400,
            why: "invalid method",
        });
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    fields.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if fields::is_request_hop_by_hop(name) || facts.connection.nominates(name) {
            continue;
        }
        // (httparse admits exactly what `HeaderValue` does: HTAB, SP, VCHAR, obs-text.)
        fields.push((
            at(name),
            name.len() as u32,
            at(h.value),
            h.value.len() as u32,
        ));
    }
    HeadParse::Complete(Head {
        len,
        target: (at(target.as_bytes()), target.len() as u32),
        facts,
        method,
    })
}

/// Splits the head off `buf` and builds the request drover serves itself (values point
/// into the head's bytes). Only heads [`parse_head`] accepted come here, and every check
/// that can fail was made there; should a conversion still fail, the request is refused
/// (400), never handed on, since its bytes are gone from the buffer.
pub fn take_request(
    buf: &mut BytesMut,
    head: &Head,
    fields: &[FieldAt],
) -> Result<RequestHeader, Rejection> {
    let refused = Rejection {
        status: 400,
        why: "invalid request head",
    };
    let bytes = buf.split_to(head.len).freeze();
    let range = |start: u32, len: u32| start as usize..(start + len) as usize;
    let uri = http::Uri::from_maybe_shared(bytes.slice(range(head.target.0, head.target.1)))
        .map_err(|_| refused)?;
    // Built as `http` parts, not with `RequestHeader::append_header`, which re-parses
    // and title-cases every name; the steps insert a few more fields, hence the spare.
    let mut headers = http::HeaderMap::with_capacity(fields.len() + 8);
    for &(ns, nl, vs, vl) in fields {
        let name = HeaderName::from_bytes(&bytes[range(ns, nl)]).map_err(|_| refused)?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice(range(vs, vl))).map_err(|_| refused)?;
        headers.try_append(name, value).map_err(|_| refused)?;
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = head.method.clone();
    parts.uri = uri;
    parts.headers = headers;
    Ok(RequestHeader::from(parts))
}

/// Writes the request head for a worker (HTTP/1.1, keep-alive is the default).
pub fn write_request(req: &RequestHeader, out: &mut BytesMut) {
    out.put_slice(req.method.as_str().as_bytes());
    out.put_u8(b' ');
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    out.put_slice(pq.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.put_slice(b"\r\n");
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Header lines a response head drops on its way to the client, recorded by the one
/// parse so forwarding is a copy; heads with more go through a second, full parse.
const MAX_DROPPED: usize = 8;

/// A worker's response head, still in the upstream read buffer.
pub struct ResponseHead {
    /// The final status code (1xx heads are parsed too; the caller skips them).
    pub status: u16,
    /// How the response body is delimited (length, chunked, until close, none).
    pub framing: ResponseFraming,
    /// The worker's connection can carry another request after this response.
    pub reusable: bool,
    /// Bytes of the head in the buffer.
    pub len: usize,
    facts: ResponseFacts,
    /// Fields the pipeline takes out of the response besides internal ones (custom
    /// session field names).
    picked: [Option<http::HeaderName>; 2],
    /// A chunked body for an HTTP/1.0 client: forwarded without its chunk framing and
    /// without `Transfer-Encoding`, delimited by closing the connection.
    pub dechunk: bool,
    /// Byte ranges of the header lines not forwarded, in order; `None` when there were
    /// more than `MAX_DROPPED` or the status line is not the plain `HTTP/1.x ` form.
    dropped: Option<([(u32, u32); MAX_DROPPED], usize)>,
}

impl ResponseHead {
    /// Whether a field of this response is forwarded to the client.
    fn forwards(&self, name: &[u8]) -> bool {
        resp_rules::forwarded(name, &self.facts)
            && !self.is_picked(name)
            && !(self.dechunk && name.eq_ignore_ascii_case(b"transfer-encoding"))
    }

    fn is_picked(&self, name: &[u8]) -> bool {
        self.picked
            .iter()
            .flatten()
            .any(|p| name.eq_ignore_ascii_case(p.as_str().as_bytes()))
    }
}

/// Why a worker's response head could not be forwarded yet (`Partial`) or at all (the attempt
/// fails as an invalid response).
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// More bytes are needed to finish the head.
    Partial,
    /// The head is malformed; the reason is logged.
    Invalid(&'static str),
    /// The head is larger than `proxy.max_response_header_bytes`.
    TooLarge,
}

/// The response parser both carriers use (Pingora's settings).
fn response_parser() -> httparse::ParserConfig {
    let mut p = httparse::ParserConfig::default();
    p.allow_spaces_after_header_name_in_responses(true);
    p.allow_obsolete_multiline_headers_in_responses(true);
    p
}

/// What a response head is parsed against.
#[derive(Clone, Copy)]
pub struct Expectations<'a> {
    /// The request was HEAD, so the response has no body whatever its fields say.
    pub head_request: bool,
    /// `proxy.max_response_header_bytes`.
    pub max_bytes: usize,
    /// Fields the pipeline takes out besides internal ones (custom session field names).
    pub picked: [Option<&'a http::HeaderName>; 2],
    /// The client speaks HTTP/1.0: a chunked body reaches it without chunk framing.
    pub client_http10: bool,
}

impl Expectations<'_> {
    /// A GET from an HTTP/1.1 client with the default head cap and nothing picked.
    pub fn plain() -> Expectations<'static> {
        Expectations {
            head_request: false,
            max_bytes: 64 * 1024,
            picked: [None, None],
            client_http10: false,
        }
    }
}

/// Parses a response head at the start of `buf`.
pub fn parse_response(buf: &[u8], x: &Expectations<'_>) -> Result<ResponseHead, ResponseError> {
    // The strict parser first (the common, clean head); only a head it refuses goes
    // through Pingora's lenient settings (obsolete line folding, whitespace before a
    // colon), and such a head is rewritten, never copied (RFC 9112 section 5).
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut strict = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut strict,
        buf,
        &mut slots,
    );
    match parsed {
        Err(httparse::Error::TooManyHeaders) | Ok(_) => {
            judge_response(buf, x, parsed, &strict, false)
        }
        Err(_) => parse_lenient_response(buf, x),
    }
}

/// The lenient parse of a head the strict parser refused. Apart, so that its slots
/// (8 KiB) are not part of every response's stack frame.
#[cold]
#[inline(never)]
fn parse_lenient_response(buf: &[u8], x: &Expectations<'_>) -> Result<ResponseHead, ResponseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut lenient = httparse::Response::new(&mut []);
    let parsed =
        response_parser().parse_response_with_uninit_headers(&mut lenient, buf, &mut slots);
    judge_response(buf, x, parsed, &lenient, true)
}

/// Judges a parsed response head and records what forwarding it needs.
fn judge_response(
    buf: &[u8],
    x: &Expectations<'_>,
    parsed: httparse::Result<usize>,
    resp: &httparse::Response<'_, '_>,
    normalise_all: bool,
) -> Result<ResponseHead, ResponseError> {
    let (head_request, max_bytes, picked) = (x.head_request, x.max_bytes, x.picked);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) if n > max_bytes => return Err(ResponseError::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
            return Err(ResponseError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Err(ResponseError::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Invalid("malformed response head")),
    };
    let status = resp.code.ok_or(ResponseError::Invalid("no status"))?;
    let version = resp.version.unwrap_or(1);
    let facts = resp_rules::check(
        status,
        version,
        resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
        head_request,
    )
    .map_err(|e| ResponseError::Invalid(e.0))?;
    // Obsolete line folding and whitespace before a colon are accepted as Pingora does,
    // and normalised (RFC 9112 section 5): such a head is rewritten, never copied.
    let normalise = normalise_all;
    // Copying lines verbatim is only done for the usual CRLF-terminated head.
    let plain_status_line = !normalise
        && buf.len() > 9
        && buf.starts_with(b"HTTP/1.")
        && buf[8] == b' '
        && buf[..len].ends_with(b"\r\n\r\n");
    let mut dropped = plain_status_line.then_some(([(0u32, 0u32); MAX_DROPPED], 0usize));
    let base = buf.as_ptr() as usize;
    let is_picked = |n: &[u8]| {
        picked
            .iter()
            .flatten()
            .any(|p| n.eq_ignore_ascii_case(p.as_str().as_bytes()))
    };
    let dechunk = x.client_http10 && facts.framing == ResponseFraming::Chunked;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        let framing_field = dechunk && n.eq_ignore_ascii_case(b"transfer-encoding");
        if resp_rules::forwarded(n, &facts) && !is_picked(n) && !framing_field {
            continue;
        }
        if let Some((ranges, count)) = dropped.as_mut() {
            // The line runs from the name to the end of the value's line.
            let start = n.as_ptr() as usize - base;
            let value_end = h.value.as_ptr() as usize - base + h.value.len();
            let end = buf[value_end..len]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| value_end + i + 1);
            match end {
                Some(end) if *count < MAX_DROPPED => {
                    ranges[*count] = (start as u32, end as u32);
                    *count += 1;
                }
                _ => dropped = None,
            }
        }
    }
    Ok(ResponseHead {
        status,
        framing: facts.framing,
        reusable: facts.reusable,
        len,
        facts,
        picked: picked.map(|p| p.cloned()),
        dechunk,
        dropped,
    })
}

/// Hands `f` each internal or picked field of a response head (what the pipeline acts
/// on), from the ranges the parse recorded (or a second parse when there were many).
pub fn for_each_picked(
    buf: &[u8],
    head: &ResponseHead,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<(), ResponseError> {
    let Some((ranges, count)) = &head.dropped else {
        return with_complete_head(&buf[..head.len], |_, resp| {
            for h in resp.headers.iter() {
                let n = h.name.as_bytes();
                if fields::is_internal(n) || head.is_picked(n) {
                    f(n, h.value);
                }
            }
            Ok(())
        });
    };
    for &(start, end) in &ranges[..*count] {
        let line = &buf[start as usize..end as usize];
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = &line[..colon];
            if fields::is_internal(name) || head.is_picked(name) {
                f(name, line[colon + 1..].trim_ascii());
            }
        }
    }
    Ok(())
}

/// Copies a response head for the client from the ranges the parse recorded, without
/// parsing it again. `extra` is one more field to add (a session cookie); `persist`:
/// what the client is told about its connection.
pub fn forward_parsed_head(
    buf: &[u8],
    head: &ResponseHead,
    persist: Persist,
    extra: &[(&[u8], &[u8])],
    out: &mut BytesMut,
) -> Result<(), ResponseError> {
    let Some((ranges, count)) = &head.dropped else {
        return forward_response_head(&buf[..head.len], head, persist, extra, out);
    };
    // "HTTP/1.1 " for the client whatever the worker spoke, then everything up to the
    // blank line except the dropped lines.
    out.put_slice(b"HTTP/1.1 ");
    let mut at = 9;
    for &(start, end) in &ranges[..*count] {
        let (start, end) = (start as usize, end as usize);
        out.put_slice(&buf[at..start]);
        at = end;
    }
    // Up to the final empty line (CRLF: checked by the parse).
    out.put_slice(&buf[at..(head.len - 2).max(at)]);
    for (name, value) in extra {
        put_field(out, name, value);
    }
    persist.write(out);
    out.put_slice(b"\r\n");
    Ok(())
}

/// Copies a response head for the client after a full parse (see
/// [`forward_parsed_head`]).
pub fn forward_response_head(
    raw: &[u8],
    head: &ResponseHead,
    persist: Persist,
    extra: &[(&[u8], &[u8])],
    out: &mut BytesMut,
) -> Result<(), ResponseError> {
    with_complete_head(raw, |code, resp| {
        put_status_line(out, code, resp.reason.unwrap_or(""));
        for h in resp.headers.iter() {
            let n = h.name.as_bytes();
            if head.forwards(n) {
                // Folded values become one line (the same normalisation as Pingora's).
                let value = pingora_http::header_value_from_slice(h.value);
                put_field(out, n, value.as_bytes());
            }
        }
        for (name, value) in extra {
            put_field(out, name, value);
        }
        persist.write(out);
        out.put_slice(b"\r\n");
        Ok(())
    })
}

/// Parses a whole response head and hands its status code and fields to `f`.
fn with_complete_head<T>(
    head: &[u8],
    f: impl FnOnce(u16, &httparse::Response) -> Result<T, ResponseError>,
) -> Result<T, ResponseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match response_parser().parse_response_with_uninit_headers(&mut resp, head, &mut slots) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ResponseError::Invalid("malformed response head")),
    }
    let code = resp.code.ok_or(ResponseError::Invalid("no status"))?;
    f(code, &resp)
}

fn put_status_line(out: &mut BytesMut, code: u16, reason: &str) {
    // httparse and `StatusCode` only admit three-digit codes.
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
}

/// Writes a `ResponseHeader` (an edited worker response, or drover's own answer).
pub fn write_response(resp: &ResponseHeader, persist: Persist, out: &mut BytesMut) {
    let reason = resp
        .get_reason_phrase()
        .or(resp.status.canonical_reason())
        .unwrap_or("");
    put_status_line(out, resp.status.as_u16(), reason);
    for (name, value) in resp.headers.iter() {
        if persist != Persist::Open && name == http::header::CONNECTION {
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    persist.write(out);
    out.put_slice(b"\r\n");
}

/// An answer drover writes itself, as bytes: no body on HEAD, 1xx, 204 and 304 (the
/// rule every answer follows, RFC 9110 section 6.4.1).
pub fn write_local(
    resp: &ResponseHeader,
    body: &Bytes,
    head_request: bool,
    persist: Persist,
    out: &mut BytesMut,
) {
    write_response(resp, persist, out);
    if crate::proxy::LocalResponse::body_allowed(head_request, resp.status.as_u16()) {
        out.put_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 32 * 1024,
        max_headers: 100,
    };

    fn served(raw: &str) -> (RequestHeader, RequestFacts, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let mut fields = Vec::new();
        let HeadParse::Complete(head) = parse_head(&buf, LIMITS, &mut fields) else {
            panic!("not complete: {raw:?}")
        };
        let req = take_request(&mut buf, &head, &fields).unwrap();
        (req, head.facts, buf)
    }

    fn status_of(raw: &[u8]) -> Option<u16> {
        match parse_head(raw, LIMITS, &mut Vec::new()) {
            HeadParse::Reject(r) => Some(r.status),
            _ => None,
        }
    }

    #[test]
    fn a_request_is_taken_and_hop_by_hop_fields_dropped() {
        let (r, facts, rest) = served(
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Gone\r\nKeep-Alive: 5\r\nX-Gone: 1\r\nX-A: 1\r\n\r\nGET /next",
        );
        assert_eq!(
            &rest[..],
            b"GET /next",
            "the pipelined rest stays in the buffer"
        );
        assert!(facts.keep_alive);
        assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(r.headers.len(), 2);
        let mut out = BytesMut::new();
        write_request(&r, &mut out);
        assert_eq!(
            &out[..],
            b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n\r\n"
        );
    }

    #[test]
    fn rejections_and_limits() {
        assert_eq!(status_of(b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(400));
        // A target the URI parser refuses is refused when the request is built (or,
        // for a request handed to Pingora, by `Head::target_parses`).
        let raw = b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut fields = Vec::new();
        let HeadParse::Complete(h) = parse_head(raw, LIMITS, &mut fields) else {
            panic!("judged as a head")
        };
        assert!(!h.target_parses(raw));
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            take_request(&mut buf, &h, &fields).err().map(|r| r.status),
            Some(400)
        );
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 40_000));
        assert_eq!(status_of(&big), Some(431), "incomplete and over the limit");
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&big), Some(431));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(status_of(raw.as_bytes()), Some(431));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a", LIMITS, &mut Vec::new()),
            HeadParse::Partial
        ));
    }

    proptest! {
        /// Judging a head never changes the buffer, and a head drover serves itself is
        /// split off exactly: the bytes after it are untouched.
        #[test]
        fn judging_never_consumes_and_taking_splits_exactly(
            head in proptest::collection::vec(any::<u8>(), 0..200),
            valid_prefix in proptest::bool::ANY,
            rest in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            let mut input = if valid_prefix { b"GET /x HTTP/1.1\r\nHost: a\r\n".to_vec() } else { Vec::new() };
            input.extend_from_slice(&head);
            input.extend_from_slice(&rest);
            let before = input.clone();
            let mut fields = Vec::new();
            let parsed = parse_head(&input, LIMITS, &mut fields);
            prop_assert_eq!(&input, &before);
            if let HeadParse::Complete(h) = parsed {
                prop_assert!(h.len <= input.len());
                let mut buf = BytesMut::from(&input[..]);
                if take_request(&mut buf, &h, &fields).is_ok() {
                    prop_assert_eq!(&buf[..], &before[h.len..]);
                }
            }
        }
    }

    fn field_strategy() -> impl Strategy<Value = (String, String)> {
        let names = prop_oneof![
            Just("Content-Type".to_string()),
            Just("Connection".to_string()),
            Just("Keep-Alive".to_string()),
            Just("X-Drover-Session-Set".to_string()),
            Just("X_Drover_Metric".to_string()),
            Just("X-Secret".to_string()),
            Just("Set-Cookie".to_string()),
            Just("Upgrade".to_string()),
            "[A-Za-z][A-Za-z0-9-]{0,12}",
        ];
        let values = prop_oneof![
            Just("close".to_string()),
            Just("X-Secret".to_string()),
            Just("keep-alive, X-Secret".to_string()),
            "[ -~]{0,20}",
        ];
        (names, values)
    }

    proptest! {
        /// Forwarding a worker's head straight from the parse gives the same bytes as a
        /// full re-parse; what reaches the client is a valid head whose fields are exactly
        /// the forwarded ones; the fields the pipeline acts on are exactly the internal
        /// ones.
        #[test]
        fn forwarding_a_response_head_is_exact(
            status in 200u16..600,
            fields in proptest::collection::vec(field_strategy(), 0..12),
            close in proptest::bool::ANY,
        ) {
            let mut raw = format!("HTTP/1.1 {status} Reason\r\n");
            for (n, v) in &fields {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str("Content-Length: 0\r\n\r\n");
            let Ok(parsed) = parse_response(raw.as_bytes(), &Expectations::plain()) else {
                return Ok(());
            };
            let (mut fast, mut full) = (BytesMut::new(), BytesMut::new());
            forward_parsed_head(raw.as_bytes(), &parsed, Persist::for_client(close, false), &[], &mut fast).unwrap();
            forward_response_head(raw.as_bytes(), &parsed, Persist::for_client(close, false), &[], &mut full).unwrap();
            // The same head either way (the copy keeps a value's optional whitespace).
            let fields_of = |bytes: &[u8]| {
                let mut slots = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut slots);
                let complete = matches!(r.parse(bytes), Ok(httparse::Status::Complete(n)) if n == bytes.len());
                let fields: Vec<(String, Vec<u8>)> = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), h.value.trim_ascii().to_vec()))
                    .collect();
                (complete, r.code, fields)
            };
            prop_assert_eq!(fields_of(&fast), fields_of(&full));
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut out = httparse::Response::new(&mut slots);
            prop_assert!(matches!(out.parse(&fast), Ok(httparse::Status::Complete(n)) if n == fast.len()));
            prop_assert_eq!(out.code, Some(status));
            for h in out.headers.iter() {
                let n = h.name.as_bytes();
                let ours = close && n.eq_ignore_ascii_case(b"connection") && h.value == b"close";
                prop_assert!(ours || parsed.forwards(n), "{} reached the client", h.name);
            }
            let mut picked = Vec::new();
            for_each_picked(raw.as_bytes(), &parsed, |n, _| picked.push(n.to_vec())).unwrap();
            let internal: Vec<Vec<u8>> = fields
                .iter()
                .filter(|(n, _)| crate::wire::fields::is_internal(n.as_bytes()))
                .map(|(n, _)| n.as_bytes().to_vec())
                .collect();
            prop_assert_eq!(picked, internal);
        }
    }

    #[test]
    fn response_framing_and_caps() {
        let p = |raw: &str, head: bool| {
            parse_response(
                raw.as_bytes(),
                &Expectations {
                    head_request: head,
                    ..Expectations::plain()
                },
            )
            .unwrap()
        };
        let r = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(
            (r.framing, r.reusable, r.len),
            (ResponseFraming::Length(5), true, 38)
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                &Expectations::plain()
            )
            .err(),
            Some(ResponseError::Invalid("invalid Content-Length"))
        );
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let r = parse_response(both, &Expectations::plain()).unwrap();
        assert_eq!(r.framing, ResponseFraming::Chunked);
        let mut out = BytesMut::new();
        forward_parsed_head(both, &r, Persist::Open, &[], &mut out).unwrap();
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(
            parse_response(
                &big,
                &Expectations {
                    max_bytes: 1024,
                    ..Expectations::plain()
                }
            )
            .err(),
            Some(ResponseError::TooLarge)
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200",
                &Expectations {
                    max_bytes: 1024,
                    ..Expectations::plain()
                }
            )
            .err(),
            Some(ResponseError::Partial)
        );
    }

    #[test]
    fn forwarded_heads_lose_hop_by_hop_nominated_internal_and_picked_fields() {
        let head = b"HTTP/1.1 201 Made\r\nConnection: X-Secret\r\nX-Secret: s\r\nX-Drover-Metric: a=1\r\nX-A: b\r\nX-Upd: {}\r\nContent-Length: 0\r\n\r\n";
        let picked = http::HeaderName::from_static("x-upd");
        let parsed = parse_response(
            head,
            &Expectations {
                picked: [Some(&picked), None],
                ..Expectations::plain()
            },
        )
        .unwrap();
        let (mut fast, mut full) = (BytesMut::new(), BytesMut::new());
        forward_parsed_head(head, &parsed, Persist::Close, &[], &mut fast).unwrap();
        forward_response_head(head, &parsed, Persist::Close, &[], &mut full).unwrap();
        assert_eq!(
            &fast[..],
            b"HTTP/1.1 201 Made\r\nX-A: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(fast, full);
        let mut seen = Vec::new();
        for_each_picked(head, &parsed, |n, v| seen.push((n.to_vec(), v.to_vec()))).unwrap();
        assert_eq!(
            seen,
            vec![
                (b"X-Drover-Metric".to_vec(), b"a=1".to_vec()),
                (b"X-Upd".to_vec(), b"{}".to_vec())
            ]
        );
    }
}
