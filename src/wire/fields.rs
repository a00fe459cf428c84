//! Which header fields cross drover and which stop at it.
//!
//! - Hop-by-hop fields describe one connection (RFC 9110 section 7.6.1) and are dropped in
//!   both directions, together with every field a `Connection` header nominates.
//! - Internal fields (`x-drover-*`) are drover's channel to its workers: a client must
//!   never inject one and a worker's must never reach a client.
//! - Fields drover sets itself (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`) are replaced,
//!   never trusted from an untrusted client. CGI, WSGI and PHP workers read
//!   `X_Drover_Session` and `X-Drover-Session` as the same variable (`HTTP_X_DROVER_SESSION`),
//!   so the underscore spellings of all of these are dropped as well (nginx drops every
//!   field with an underscore by default).

/// Hop-by-hop fields of a request, never forwarded to a worker. `Transfer-Encoding` is
/// not here: body framing is decided separately (`request::check`).
const REQUEST_HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"http2-settings",
];

/// Hop-by-hop fields of a response, never forwarded to a client (`Transfer-Encoding` is
/// the body framing, decided by `response::check`).
const RESPONSE_HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"te",
    b"trailer",
    b"upgrade",
];

/// Most names a `Connection` header may nominate; more is refused (as Pingora and Envoy
/// do), so nomination handling cannot become a per-request cost an attacker controls.
pub const MAX_NOMINATIONS: usize = 16;

/// Lower-case prefix of drover's internal fields; see [`is_internal`] for matching.
pub const INTERNAL_PREFIX: &[u8] = b"x-drover-";

/// Fields drover derives itself for the worker; a client's copy is never believed
/// (`proxy::forwarded` decides what a trusted proxy may report).
const DROVER_SET: [&[u8]; 6] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-real-ip",
    b"forwarded",
    b"x-request-id",
];

/// Whether `name` (any case) is a fixed hop-by-hop request field; names a `Connection`
/// header nominates are checked separately ([`ConnectionOptions::nominates`]).
#[inline]
pub fn is_request_hop_by_hop(name: &[u8]) -> bool {
    REQUEST_HOP_BY_HOP
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `name` (any case) is a fixed hop-by-hop response field; like
/// [`is_request_hop_by_hop`], nominated names and `Transfer-Encoding` are not included.
#[inline]
pub fn is_response_hop_by_hop(name: &[u8]) -> bool {
    RESPONSE_HOP_BY_HOP
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// Compares `name` with `target` (lower case, `-` separated), treating `_` in `name` as `-`.
fn eq_spelling(name: &[u8], target: &[u8]) -> bool {
    name.len() == target.len()
        && name.iter().zip(target).all(|(a, b)| {
            (if *a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            }) == *b
        })
}

/// `x-drover-*`, in any case and with `_` for `-`.
#[inline]
pub fn is_internal(name: &[u8]) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && eq_spelling(&name[..INTERNAL_PREFIX.len()], INTERNAL_PREFIX)
}

/// A name with an underscore that a CGI-style worker would read as an internal field
/// or one drover sets (`X_Drover_Session`, `X_Forwarded_For`, `X_Real_IP`, ...).
pub fn is_underscore_alias(name: &[u8]) -> bool {
    name.contains(&b'_') && (is_internal(name) || DROVER_SET.iter().any(|t| eq_spelling(name, t)))
}

/// Whether the bytes form an HTTP `token` (RFC 9110 section 5.6.2).
pub fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// What the `Connection` fields of a message say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `close` was listed: no further message on this connection.
    pub close: bool,
    /// `keep-alive` was listed (what keeps an HTTP/1.0 connection open).
    pub keep_alive: bool,
    /// `upgrade` was listed; an upgrade also needs an `Upgrade` field.
    pub upgrade: bool,
    /// Other nominated field names, lower case.
    pub nominated: Vec<Vec<u8>>,
}

impl ConnectionOptions {
    /// Whether `name` was nominated (case-insensitive).
    pub fn nominates(&self, name: &[u8]) -> bool {
        self.nominated.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Why [`connection_options`] refused a message's `Connection` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionError {
    /// More than [`MAX_NOMINATIONS`] options in total, across all `Connection` fields.
    TooManyNominations,
    /// An option that is not an HTTP token.
    NotAToken,
}

/// Parses the values of every `Connection` field of a message.
pub fn connection_options<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<ConnectionOptions, ConnectionError> {
    let mut o = ConnectionOptions::default();
    let mut count = 0;
    for value in values {
        for token in value.split(|b| *b == b',') {
            let t = token.trim_ascii();
            if t.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_NOMINATIONS {
                return Err(ConnectionError::TooManyNominations);
            }
            if !is_token(t) {
                return Err(ConnectionError::NotAToken);
            }
            if t.eq_ignore_ascii_case(b"close") {
                o.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                o.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                o.upgrade = true;
            } else {
                o.nominated.push(t.to_ascii_lowercase());
            }
        }
    }
    Ok(o)
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
pub fn lists(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names_in_any_spelling() {
        for n in [
            "X-Drover-Session",
            "x_drover_session",
            "X_DROVER-Session-Id",
            "x-drover-",
        ] {
            assert!(is_internal(n.as_bytes()), "{n}");
        }
        for n in ["x-droverx", "x-drove", "drover-session", "x.drover.session"] {
            assert!(!is_internal(n.as_bytes()), "{n}");
        }
        for n in [
            "X_Forwarded_For",
            "x_real_ip",
            "X_Drover_Session",
            "x_request-id",
        ] {
            assert!(is_underscore_alias(n.as_bytes()), "{n}");
        }
        for n in ["X-Forwarded-For", "my_header", "x_forwarded_forx"] {
            assert!(!is_underscore_alias(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn connection_options_are_parsed_and_bounded() {
        let o = connection_options([&b"keep-alive, X-Secret"[..], b"Upgrade,close"]).unwrap();
        assert!(o.close && o.keep_alive && o.upgrade);
        assert!(o.nominates(b"x-secret"));
        assert_eq!(
            connection_options([&b"a\"b"[..]]),
            Err(ConnectionError::NotAToken)
        );
        let many = (0..17)
            .map(|i| format!("x{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            connection_options([many.as_bytes()]),
            Err(ConnectionError::TooManyNominations)
        );
        assert!(connection_options([&b" , ,"[..]])
            .unwrap()
            .nominated
            .is_empty());
    }

    #[test]
    fn hop_by_hop_lists() {
        assert!(is_request_hop_by_hop(b"Proxy-Authorization"));
        assert!(is_request_hop_by_hop(b"HTTP2-Settings"));
        assert!(!is_request_hop_by_hop(b"transfer-encoding"));
        assert!(is_response_hop_by_hop(b"Keep-Alive"));
        assert!(!is_response_hop_by_hop(b"content-length"));
    }
}
