//! HTTP/1.1 message heads and body framing for the fast path.
//!
//! Request heads become Pingora `RequestHeader`s (so the shared request steps run
//! unchanged), with values pointing into the connection's read buffer instead of copies.
//! Response heads are forwarded as the worker wrote them, minus hop-by-hop and internal
//! headers, unless a step needs to edit them (sticky sessions), in which case they are
//! built into a `ResponseHeader` first.

use crate::proxy::headers::INTERNAL_PREFIX;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use pingora_http::{RequestHeader, ResponseHeader};
use std::mem::MaybeUninit;

/// Header slots parsed on the stack; a message with more goes to Pingora's path.
pub const MAX_HEADERS: usize = 128;

/// Headers that describe one hop's connection, never forwarded (RFC 9110 7.6.1).
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn is_internal(name: &[u8]) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX)
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn lists(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A request head the fast path serves.
pub struct Request {
    pub header: RequestHeader,
    /// The client wants the connection kept open afterwards.
    pub keep_alive: bool,
}

pub enum ParsedRequest {
    /// More bytes are needed.
    Partial,
    /// A bodyless HTTP/1.1 request in origin form: served by the fast path.
    Fast(Box<Request>),
    /// Anything else (a body, an upgrade, `Expect`, HTTP/1.0, a malformed head): Pingora's
    /// full path serves it, including the error answer for a malformed one.
    Delegate,
}

/// Parses the request head at the start of `buf`. On `Fast`, the head's bytes have been
/// split off `buf` (header values point into them); what follows (a pipelined request)
/// stays in `buf`.
pub fn parse_request(buf: &mut BytesMut) -> ParsedRequest {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ParsedRequest::Partial,
        Err(_) => return ParsedRequest::Delegate,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return ParsedRequest::Delegate;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return ParsedRequest::Delegate;
    }
    let mut keep_alive = true;
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-length") {
            if h.value.trim_ascii() != b"0" {
                return ParsedRequest::Delegate;
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"upgrade")
            || n.eq_ignore_ascii_case(b"expect")
        {
            return ParsedRequest::Delegate;
        } else if n.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
                    // A token naming more hop-by-hop headers, or `upgrade`.
                    return ParsedRequest::Delegate;
                }
            }
        }
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return ParsedRequest::Delegate;
    };
    // Header values will point into the head's bytes once they are split off the buffer,
    // so remember where each field is.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let path_at = (at(path.as_bytes()), path.len() as u32);
    let mut fields = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut count = 0;
    for h in req.headers.iter() {
        if is_hop_by_hop(h.name.as_bytes()) {
            continue;
        }
        fields[count] = (
            at(h.name.as_bytes()),
            h.name.len() as u32,
            at(h.value),
            h.value.len() as u32,
        );
        count += 1;
    }
    let head = buf.split_to(len).freeze();
    let range = |start: u32, len: u32| start as usize..(start + len) as usize;
    let Ok(uri) = http::Uri::from_maybe_shared(head.slice(range(path_at.0, path_at.1))) else {
        return ParsedRequest::Delegate;
    };
    // Built as `http` parts, not with `RequestHeader::append_header`, which re-parses
    // and title-cases every name; the steps insert a few more headers, hence the spare.
    let mut headers = http::HeaderMap::with_capacity(count + 8);
    for &(ns, nl, vs, vl) in &fields[..count] {
        let Ok(name) = HeaderName::from_bytes(&head[range(ns, nl)]) else {
            return ParsedRequest::Delegate;
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(range(vs, vl))) else {
            return ParsedRequest::Delegate;
        };
        if headers.try_append(name, value).is_err() {
            return ParsedRequest::Delegate;
        }
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    ParsedRequest::Fast(Box::new(Request {
        header: RequestHeader::from(parts),
        keep_alive,
    }))
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

/// How a response body ends (RFC 9112 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the worker closes the connection; the client connection closes too.
    UntilClose,
}

/// Header lines a response head drops on its way to the client, recorded by the one
/// parse so forwarding is a copy; heads with more go through a second, full parse.
const MAX_DROPPED: usize = 8;

/// A worker's response head, still in the upstream read buffer.
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The worker's connection can carry another request after this response.
    pub reusable: bool,
    /// Bytes of the head in the buffer.
    pub len: usize,
    /// Byte ranges of the header lines not forwarded (hop-by-hop and internal ones), in
    /// order; `None` when there were more than `MAX_DROPPED` or the status line is not
    /// the plain `HTTP/1.x ` form.
    dropped: Option<([(u32, u32); MAX_DROPPED], usize)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ResponseError {
    Partial,
    Invalid,
}

/// Parses a response head at the start of `buf`. `head_request`: the request was HEAD,
/// so the response has no body whatever its headers say.
pub fn parse_response(buf: &[u8], head_request: bool) -> Result<ResponseHead, ResponseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(ResponseError::Partial),
        Err(_) => return Err(ResponseError::Invalid),
    };
    let status = resp.code.ok_or(ResponseError::Invalid)?;
    let mut reusable = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    // Copying lines verbatim is only done for the usual CRLF-terminated head.
    let plain_status_line = buf.len() > 9
        && buf.starts_with(b"HTTP/1.")
        && buf[8] == b' '
        && buf[..len].ends_with(b"\r\n\r\n");
    let mut dropped = plain_status_line.then_some(([(0u32, 0u32); MAX_DROPPED], 0usize));
    let base = buf.as_ptr() as usize;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if is_hop_by_hop(n) || is_internal(n) {
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
        if n.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(ResponseError::Invalid)?;
            if length.is_some_and(|l| l != v) {
                return Err(ResponseError::Invalid);
            }
            length = Some(v);
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            encoded = true;
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if n.eq_ignore_ascii_case(b"connection") && lists(h.value, b"close") {
            reusable = false;
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    Ok(ResponseHead {
        status,
        framing,
        reusable,
        len,
        dropped,
    })
}

/// Copies a response head for the client (see `forward_response_head`) from the ranges
/// the parse recorded, without parsing it again.
pub fn forward_parsed_head(
    buf: &[u8],
    head: &ResponseHead,
    close: bool,
    extra: Option<(&[u8], &[u8])>,
    out: &mut BytesMut,
    mut on_internal: impl FnMut(&[u8], &[u8]),
) -> Result<(), ResponseError> {
    let Some((ranges, count)) = &head.dropped else {
        return forward_response_head(&buf[..head.len], close, extra, out, on_internal);
    };
    // "HTTP/1.1 " for the client whatever the worker spoke, then everything up to the
    // blank line except the dropped lines.
    out.put_slice(b"HTTP/1.1 ");
    let mut at = 9;
    for &(start, end) in &ranges[..*count] {
        let (start, end) = (start as usize, end as usize);
        out.put_slice(&buf[at..start]);
        let line = &buf[start..end];
        if is_internal(line) {
            if let Some(colon) = line.iter().position(|b| *b == b':') {
                on_internal(&line[..colon], line[colon + 1..].trim_ascii());
            }
        }
        at = end;
    }
    // Up to the final empty line (CRLF: checked by the parse).
    out.put_slice(&buf[at..(head.len - 2).max(at)]);
    if let Some((name, value)) = extra {
        put_field(out, name, value);
    }
    if close {
        out.put_slice(b"Connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(())
}

/// Copies a response head for the client: status line and end-to-end headers, without
/// hop-by-hop and internal ones. `on_internal` sees each internal header (custom worker
/// metrics). `close`: tell the client this connection ends after the response.
pub fn forward_response_head(
    head: &[u8],
    close: bool,
    extra: Option<(&[u8], &[u8])>,
    out: &mut BytesMut,
    mut on_internal: impl FnMut(&[u8], &[u8]),
) -> Result<(), ResponseError> {
    with_complete_head(head, |code, resp| {
        put_status_line(out, code, resp.reason.unwrap_or(""));
        for h in resp.headers.iter() {
            let n = h.name.as_bytes();
            if is_hop_by_hop(n) {
                continue;
            }
            if is_internal(n) {
                on_internal(n, h.value);
                continue;
            }
            put_field(out, n, h.value);
        }
        if let Some((name, value)) = extra {
            put_field(out, name, value);
        }
        if close {
            out.put_slice(b"Connection: close\r\n");
        }
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
    match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, head, &mut slots)
    {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ResponseError::Invalid),
    }
    let code = resp.code.ok_or(ResponseError::Invalid)?;
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

/// Builds a `ResponseHeader` from a worker's head (hop-by-hop headers dropped), for the
/// steps that edit responses.
pub fn build_response(head: &[u8]) -> Result<ResponseHeader, ResponseError> {
    with_complete_head(head, |code, resp| {
        let mut header = ResponseHeader::build_no_case(code, Some(resp.headers.len()))
            .map_err(|_| ResponseError::Invalid)?;
        if let Some(reason) = resp.reason {
            if Some(reason) != header.status.canonical_reason() {
                let _ = header.set_reason_phrase(Some(reason));
            }
        }
        for h in resp.headers.iter() {
            if is_hop_by_hop(h.name.as_bytes()) {
                continue;
            }
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ResponseError::Invalid)?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| ResponseError::Invalid)?;
            header
                .append_header(name, value)
                .map_err(|_| ResponseError::Invalid)?;
        }
        Ok(header)
    })
}

/// Writes a `ResponseHeader` (an edited worker response, or drover's own answer).
pub fn write_response(resp: &ResponseHeader, close: bool, out: &mut BytesMut) {
    let reason = resp
        .get_reason_phrase()
        .or(resp.status.canonical_reason())
        .unwrap_or("");
    put_status_line(out, resp.status.as_u16(), reason);
    for (name, value) in resp.headers.iter() {
        if close && name == http::header::CONNECTION {
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if close {
        out.put_slice(b"Connection: close\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Finds where a chunked body ends while it streams through unchanged.
#[derive(Debug, Default)]
pub struct ChunkedScanner {
    state: Chunk,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
    Done,
}

impl ChunkedScanner {
    /// Scans the next bytes of the body. `Ok(Some(n))`: the body ends after `n` bytes of
    /// `buf`; `Ok(None)`: all of `buf` belongs to the body and more follows.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, ResponseError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(d))
                            .ok_or(ResponseError::Invalid)?;
                    }
                    b';' | b' ' | b'\t' => self.state = Chunk::Extension,
                    b'\r' => self.state = Chunk::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => return Err(ResponseError::Invalid),
                },
                Chunk::Extension => {
                    if b == b'\n' {
                        self.end_size_line();
                    }
                }
                Chunk::SizeLf => match b {
                    b'\n' => self.end_size_line(),
                    _ => return Err(ResponseError::Invalid),
                },
                Chunk::Data => {
                    let take = (buf.len() - i).min(self.size as usize);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => match b {
                    b'\r' => self.state = Chunk::DataLf,
                    b'\n' => self.state = Chunk::Size,
                    _ => return Err(ResponseError::Invalid),
                },
                Chunk::DataLf => match b {
                    b'\n' => self.state = Chunk::Size,
                    _ => return Err(ResponseError::Invalid),
                },
                Chunk::TrailerStart => match b {
                    b'\r' => self.state = Chunk::TrailerEndLf,
                    b'\n' => self.state = Chunk::Done,
                    _ => self.state = Chunk::TrailerLine,
                },
                Chunk::TrailerLine => {
                    if b == b'\n' {
                        self.state = Chunk::TrailerStart;
                    }
                }
                Chunk::TrailerEndLf => match b {
                    b'\n' => self.state = Chunk::Done,
                    _ => return Err(ResponseError::Invalid),
                },
                Chunk::Done => return Ok(Some(i)),
            }
            i += 1;
            if self.state == Chunk::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data
        };
    }
}

/// An answer drover writes itself, as bytes.
pub fn write_local(resp: &ResponseHeader, body: &Bytes, close: bool, out: &mut BytesMut) {
    write_response(resp, close, out);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(raw: &str) -> Request {
        let mut buf = BytesMut::from(raw);
        match parse_request(&mut buf) {
            ParsedRequest::Fast(r) => *r,
            ParsedRequest::Partial => panic!("partial: {raw:?}"),
            ParsedRequest::Delegate => panic!("delegated: {raw:?}"),
        }
    }

    fn delegated(raw: &str) -> bool {
        matches!(
            parse_request(&mut BytesMut::from(raw)),
            ParsedRequest::Delegate
        )
    }

    #[test]
    fn a_bodyless_request_is_parsed_and_hop_by_hop_headers_dropped() {
        let mut buf = BytesMut::from(
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-A: 1\r\n\r\nGET /next",
        );
        let ParsedRequest::Fast(r) = parse_request(&mut buf) else {
            panic!("not fast")
        };
        assert_eq!(
            &buf[..],
            b"GET /next",
            "the pipelined rest stays in the buffer"
        );
        assert!(r.keep_alive);
        assert_eq!(r.header.uri.path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(r.header.headers.len(), 2);
        assert!(r.header.headers.get("connection").is_none());
        let mut out = BytesMut::new();
        write_request(&r.header, &mut out);
        assert_eq!(
            &out[..],
            b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n\r\n"
        );
    }

    #[test]
    fn connection_close_is_honoured() {
        assert!(!fast("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(fast("DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").keep_alive);
    }

    #[test]
    fn anything_but_a_plain_bodyless_request_goes_to_pingora() {
        assert!(delegated("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"));
        assert!(delegated(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(delegated("GET / HTTP/1.0\r\n\r\n"));
        assert!(delegated(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(delegated("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
        assert!(delegated("GET http://a/ HTTP/1.1\r\n\r\n"));
        assert!(delegated("CONNECT a:443 HTTP/1.1\r\n\r\n"));
        assert!(delegated(
            "GET / HTTP/1.1\r\nConnection: close, x-secret\r\n\r\n"
        ));
        assert!(delegated("G@T / HTTP/1.1\r\n\r\n"));
        assert!(matches!(
            parse_request(&mut BytesMut::from("GET / HTTP/1.1\r\nHost: a")),
            ParsedRequest::Partial
        ));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let p = |raw: &str, head: bool| parse_response(raw.as_bytes(), head).unwrap();
        let r = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(
            (r.framing, r.reusable, r.len),
            (Framing::Length(5), true, 38)
        );
        let r = p(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Chunked);
        let r = p("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
        let r = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(r.framing, Framing::Empty);
        let r = p(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Empty);
        let r = p(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(!r.reusable);
        let r = p("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!r.reusable);
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .err(),
            Some(ResponseError::Invalid)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).err(),
            Some(ResponseError::Invalid)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200", false).err(),
            Some(ResponseError::Partial)
        );
    }

    #[test]
    fn forwarded_response_heads_lose_hop_by_hop_and_internal_headers() {
        let head = b"HTTP/1.1 201 Made\r\nConnection: keep-alive\r\nX-Drover-Metric: a=1\r\nX-A: b\r\nContent-Length: 0\r\n\r\n";
        let mut out = BytesMut::new();
        let mut seen = Vec::new();
        forward_response_head(head, true, None, &mut out, |n, v| {
            seen.push((n.to_vec(), v.to_vec()))
        })
        .unwrap();
        assert_eq!(
            &out[..],
            b"HTTP/1.1 201 Made\r\nX-A: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(seen, vec![(b"X-Drover-Metric".to_vec(), b"a=1".to_vec())]);
        let built = build_response(head).unwrap();
        assert_eq!(built.status.as_u16(), 201);
        assert!(built.headers.get("connection").is_none());
        let mut out = BytesMut::new();
        write_response(&built, false, &mut out);
        assert!(out.starts_with(b"HTTP/1.1 201 Made\r\n"));
    }

    #[test]
    fn forwarding_from_the_parse_matches_a_full_reparse() {
        let heads: [&[u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 201 Made\r\nConnection: keep-alive\r\nX-Drover-Metric: a=1\r\nX-A: b\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nTE: x\r\nTrailer: y\r\nUpgrade: z\r\nProxy-Connection: a\r\nConnection: b\r\nKeep-Alive: c\r\nX-Drover-A: 1\r\nX-Drover-B: 2\r\nX-Drover-C: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\nX-Drover-Metric:   v  \nContent-Length: 0\n\n",
        ];
        for raw in heads {
            for close in [false, true] {
                let parsed = parse_response(raw, false).unwrap();
                let (mut fast, mut full) = (BytesMut::new(), BytesMut::new());
                let (mut seen_fast, mut seen_full) = (Vec::new(), Vec::new());
                let extra = Some((&b"Set-Cookie"[..], &b"a=b"[..]));
                forward_parsed_head(raw, &parsed, close, extra, &mut fast, |n, v| {
                    seen_fast.push((n.to_vec(), v.to_vec()))
                })
                .unwrap();
                forward_response_head(raw, close, extra, &mut full, |n, v| {
                    seen_full.push((n.to_vec(), v.to_vec()))
                })
                .unwrap();
                assert!(fast.windows(15).any(|w| w == b"Set-Cookie: a=b"));
                let text = |b: &BytesMut| String::from_utf8_lossy(b).replace("\r\n", "\n");
                assert_eq!(text(&fast), text(&full), "{}", String::from_utf8_lossy(raw));
                assert_eq!(seen_fast, seen_full);
            }
        }
    }

    #[test]
    fn the_chunked_scanner_finds_the_end_in_any_split() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut s = ChunkedScanner::default();
            let (a, b) = body.split_at(split);
            let found = match s.feed(a).unwrap() {
                Some(n) => n,
                None => split + s.feed(b).unwrap().expect("end in second part"),
            };
            assert_eq!(found, end, "split at {split}");
        }
        let mut s = ChunkedScanner::default();
        assert_eq!(s.feed(b"0\r\n\r\n").unwrap(), Some(5));
        let mut s = ChunkedScanner::default();
        assert!(s.feed(b"zz\r\n").is_err());
        let mut s = ChunkedScanner::default();
        assert!(s.feed(b"ffffffffffffffffff\r\n").is_err());
        let mut s = ChunkedScanner::default();
        assert!(s.feed(b"1\r\nab").is_err());
    }
}
