//! Is a worker's response head acceptable, and how is its body framed? One answer for
//! both carriers (RFC 9112 section 6.3; rejections as nginx's "upstream sent ..." 502s).
//!
//! A worker is trusted to run the application, not to frame HTTP correctly for drover's
//! clients: a response whose framing is ambiguous is refused with 502 instead of being
//! passed on for a client (or a cache in front of drover) to read differently.
//! Refused: a `Content-Length` that is not plain digits or two that differ,
//! `Transfer-Encoding` on an HTTP/1.0 response, a malformed `Connection` field, a head
//! larger than `proxy.max_response_header_bytes`. `Content-Length` together with
//! `Transfer-Encoding` is normalised as RFC 9112 section 6.3 requires of an intermediary
//! that forwards it (and as Pingora does): the transfer coding frames the body and the
//! `Content-Length` field is dropped.

use super::fields::{self, ConnectionOptions};
use super::request::parse_content_length;

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    /// `Content-Length` bytes (may be 0).
    Length(u64),
    /// A transfer coding ending in `chunked`; see [`super::chunked`].
    Chunked,
    /// Until the worker closes the connection (the client connection then closes too).
    UntilClose,
}

/// What drover needs to know about an accepted response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFacts {
    /// How the body ends.
    pub framing: ResponseFraming,
    /// `Content-Length` came with `Transfer-Encoding`: it is not forwarded.
    pub drop_content_length: bool,
    /// The worker connection can carry another request afterwards. Not after a response
    /// that has no body (HEAD, 204, 304) but declares one (`Content-Length` above 0 or a
    /// transfer coding): a worker that writes that body anyway, late, would have it read
    /// as the response to the next request on the connection.
    pub reusable: bool,
    /// The worker's parsed `Connection` fields; nominated names are not forwarded.
    pub connection: ConnectionOptions,
}

/// A refused response head (answered with 502); the reason is for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidResponse(pub &'static str);

/// Judges a worker's response head. `version`: the minor version; `head_request`: the
/// request was HEAD, so there is no body whatever the fields say.
pub fn check<'a>(
    status: u16,
    version: u8,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    head_request: bool,
) -> Result<ResponseFacts, InvalidResponse> {
    let mut length: Option<u64> = None;
    let mut encoded = false;
    let mut chunked_last = false;
    let mut connection_values: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_content_length(value).ok_or(InvalidResponse("invalid Content-Length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(InvalidResponse("conflicting Content-Length"));
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoded = true;
            chunked_last = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_values.push(value);
        }
    }
    if encoded && version == 0 {
        return Err(InvalidResponse("Transfer-Encoding on an HTTP/1.0 response"));
    }
    let connection = fields::connection_options(connection_values)
        .map_err(|_| InvalidResponse("invalid Connection"))?;
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        ResponseFraming::Empty
    } else if encoded {
        if chunked_last {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        }
    } else if let Some(l) = length {
        ResponseFraming::Length(l)
    } else {
        ResponseFraming::UntilClose
    };
    let declares_body = encoded || length.is_some_and(|l| l > 0);
    let unsent_body = framing == ResponseFraming::Empty && declares_body && status >= 200;
    let reusable =
        version == 1 && !connection.close && framing != ResponseFraming::UntilClose && !unsent_body;
    Ok(ResponseFacts {
        framing,
        drop_content_length: encoded && length.is_some(),
        reusable,
        connection,
    })
}

/// Whether a response field is forwarded to the client: not hop-by-hop, not nominated by
/// the worker's `Connection`, not internal, not a `Content-Length` that a transfer coding
/// overrides.
#[inline]
pub fn forwarded(name: &[u8], facts: &ResponseFacts) -> bool {
    let overridden = facts.drop_content_length && name.eq_ignore_ascii_case(b"content-length");
    !(fields::is_response_hop_by_hop(name)
        || fields::is_internal(name)
        || facts.connection.nominates(name)
        || overridden)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        status: u16,
        version: u8,
        fields: &[(&str, &str)],
        head: bool,
    ) -> Result<ResponseFacts, InvalidResponse> {
        check(
            status,
            version,
            fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            head,
        )
    }

    #[test]
    fn framing_and_reuse() {
        let f = |status, version, fields: &[(&str, &str)], head| {
            run(status, version, fields, head).unwrap()
        };
        let r = f(200, 1, &[("Content-Length", "5")], false);
        assert_eq!((r.framing, r.reusable), (ResponseFraming::Length(5), true));
        assert_eq!(
            f(200, 1, &[("Transfer-Encoding", "gzip, chunked")], false).framing,
            ResponseFraming::Chunked
        );
        let r = f(200, 1, &[("Transfer-Encoding", "gzip")], false);
        assert_eq!(
            (r.framing, r.reusable),
            (ResponseFraming::UntilClose, false)
        );
        assert_eq!(f(200, 1, &[], false).framing, ResponseFraming::UntilClose);
        assert_eq!(
            f(200, 1, &[("Content-Length", "5")], true).framing,
            ResponseFraming::Empty
        );
        assert_eq!(
            f(304, 1, &[("Content-Length", "5")], false).framing,
            ResponseFraming::Empty
        );
        assert!(
            !f(
                200,
                1,
                &[("Content-Length", "1"), ("Connection", "close")],
                false
            )
            .reusable
        );
        assert!(!f(200, 0, &[("Content-Length", "1")], false).reusable);
        assert!(
            f(
                200,
                1,
                &[("Content-Length", "1"), ("Content-Length", "1")],
                false
            )
            .reusable
        );
        let r = f(
            200,
            1,
            &[("Connection", "X-Secret"), ("Content-Length", "0")],
            false,
        );
        assert!(!forwarded(b"x-secret", &r));
        assert!(forwarded(b"x-other", &r));
        assert!(forwarded(b"content-length", &r));
        assert!(!forwarded(b"X-Drover-Session-Set", &r));
        let r = f(
            200,
            1,
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            false,
        );
        assert_eq!(r.framing, ResponseFraming::Chunked);
        assert!(!forwarded(b"Content-Length", &r));
    }

    #[test]
    fn ambiguous_responses_are_refused() {
        for (version, fields) in [
            (1, vec![("Content-Length", "+5")]),
            (1, vec![("Content-Length", "1"), ("Content-Length", "2")]),
            (1, vec![("Content-Length", "x")]),
            (0, vec![("Transfer-Encoding", "chunked")]),
            (1, vec![("Connection", "a\"b")]),
        ] {
            assert!(run(200, version, &fields, false).is_err(), "{fields:?}");
        }
    }
}
