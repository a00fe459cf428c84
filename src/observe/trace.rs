//! W3C Trace Context (`traceparent`) propagation.
//!
//! drover is one hop of the trace: it continues a valid incoming `traceparent` (same trace
//! id and flags) or starts a new trace, gives itself a fresh span id, and sends the worker
//! a `traceparent` naming drover's span as the parent. `tracestate` passes through
//! untouched. The ids go into the access log so a request can be followed from the
//! client's trace to the worker's. Spans are not exported (no collector dependency).

use pingora_http::RequestHeader;

/// The W3C header read from the client and rewritten for the worker.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// drover's hop of a trace, made per request by the pipeline and logged in the access
/// line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The caller's trace id when continued, else a fresh random one; never 0.
    pub trace_id: u128,
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<u64>,
    /// drover's span: the parent the worker sees.
    pub span_id: u64,
    /// W3C trace flags: the caller's when continued; bit 0 (sampled) otherwise set only
    /// when this request's spans are exported.
    pub flags: u8,
}

fn hex_u128(s: &[u8]) -> Option<u128> {
    // from_str_radix accepts a leading '+', which W3C does not.
    if !s
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn nonzero_u64() -> u64 {
    loop {
        let v = rand::random::<u64>();
        if v != 0 {
            return v;
        }
    }
}

/// Parses a `traceparent` value: `(trace id, parent span id, flags)`, or `None` if invalid
/// (W3C: lowercase hex, version `ff` invalid, all-zero ids invalid; a future version may
/// append fields after the flags).
pub fn parse(value: &[u8]) -> Option<(u128, u64, u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_u128(&value[0..2])? as u8;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace = hex_u128(&value[3..35])?;
    let parent = hex_u128(&value[36..52])? as u64;
    let flags = hex_u128(&value[53..55])? as u8;
    if trace == 0 || parent == 0 {
        return None;
    }
    Some((trace, parent, flags))
}

impl TraceContext {
    /// Continues the request's trace, or starts one.
    pub fn from_request(req: &RequestHeader) -> Self {
        let incoming = req
            .headers
            .get(&TRACEPARENT)
            .and_then(|v| parse(v.as_bytes()));
        match incoming {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id: nonzero_u64(),
                flags,
            },
            None => TraceContext {
                trace_id: loop {
                    let v = rand::random::<u128>();
                    if v != 0 {
                        break v;
                    }
                },
                parent_id: None,
                span_id: nonzero_u64(),
                // Not sampled: drover records no spans of its own.
                flags: 0,
            },
        }
    }

    /// Like [`TraceContext::from_request`], deciding whether a new trace is sampled:
    /// `ratio` is `observability.tracing.sample_ratio` when spans are exported (else
    /// `None`: nothing is sampled). A continued trace keeps its parent's decision.
    pub fn from_request_sampled(req: &RequestHeader, ratio: Option<f64>) -> Self {
        let mut t = Self::from_request(req);
        if t.parent_id.is_none() && ratio.is_some_and(crate::observe::otlp::sample) {
            t.flags |= 1;
        }
        t
    }

    /// Whether the trace is sampled (W3C flag 01).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` sent to the worker (version 00, drover's span as parent).
    pub fn header_value(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// Replaces the request's `traceparent` with drover's (the request path batches
    /// `edit` with the other steps' changes instead).
    pub fn apply(&self, req: &mut RequestHeader) {
        let mut edits = crate::wire::headers::HeaderEdits::default();
        self.edit(&mut edits);
        edits.apply(req);
    }

    /// Adds drover's `traceparent` to `edits`. Hex-encoded by hand: this runs on every
    /// request and `format!` costs several times more.
    pub fn edit(&self, edits: &mut crate::wire::headers::HeaderEdits) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // Two digits per byte from the big-endian bytes: a u128 shift per digit cost
        // ~8 instructions a digit, 400 a request.
        let mut put = |at: usize, bytes: &[u8]| {
            for (i, b) in bytes.iter().enumerate() {
                v[at + 2 * i] = HEX[usize::from(b >> 4)];
                v[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
            }
        };
        put(3, &self.trace_id.to_be_bytes());
        put(36, &self.span_id.to_be_bytes());
        put(53, &[self.flags]);
        if let Ok(value) = http::HeaderValue::from_bytes(&v) {
            edits.insert(TRACEPARENT, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_header_written_is_the_formatted_value() {
        let t = TraceContext {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            parent_id: None,
            span_id: 0x00f067aa0ba902b7,
            flags: 1,
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        t.apply(&mut req);
        assert_eq!(req.headers.get(&TRACEPARENT).unwrap(), SAMPLE);
        assert_eq!(t.header_value(), SAMPLE);
        // Every digit position, high nibbles and low, and flags 0.
        let t = TraceContext {
            trace_id: 0xf123456789abcdef0fedcba987654321,
            parent_id: None,
            span_id: 0xfedcba9876543210,
            flags: 0,
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        t.apply(&mut req);
        let want = "00-f123456789abcdef0fedcba987654321-fedcba9876543210-00";
        assert_eq!(req.headers.get(&TRACEPARENT).unwrap(), want);
        assert_eq!(t.header_value(), want);
    }

    #[test]
    fn parses_the_spec_example_and_rejects_invalid_values() {
        assert_eq!(
            parse(SAMPLE.as_bytes()),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        // A future version may carry more fields.
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc").is_some());
    }

    #[test]
    fn continues_an_incoming_trace_with_a_new_span() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(TRACEPARENT, SAMPLE).unwrap();
        let t = TraceContext::from_request(&req);
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        t.apply(&mut req);
        let sent = req.headers.get(&TRACEPARENT).unwrap().to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_eq!(parse(sent.as_bytes()).unwrap().1, t.span_id);
    }

    #[test]
    fn starts_a_trace_when_none_or_an_invalid_one_arrives() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(TRACEPARENT, "garbage").unwrap();
        let a = TraceContext::from_request(&req);
        let b = TraceContext::from_request(&req);
        assert_eq!(a.parent_id, None);
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(
            parse(a.header_value().as_bytes()).map(|p| p.0),
            Some(a.trace_id)
        );
    }
}
