//! Client address and the `X-Forwarded-*` / `Forwarded` headers.
//!
//! The client is the TCP peer unless the peer is a configured trusted proxy; then the
//! `X-Forwarded-For` chain is walked from the right, skipping trusted hops, and the first
//! untrusted address is the client (what nginx's `real_ip_recursive` does). Headers from
//! an untrusted peer are replaced, never extended, so a client cannot plant an address.

use crate::config::ForwardedConfig;
use crate::wire::headers::HeaderEdits;
use http::header::{FORWARDED, HOST};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// Address chain: the TCP peer's address for an untrusted peer; a trusted proxy's chain gets
/// the peer appended.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `http` or `https`: how the client reached drover (or what a trusted proxy reported).
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The `Host` the client sent (a trusted proxy's value is kept).
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The single client address drover settled on (see the module docs on trusted proxies).
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn trusted(cfg: &ForwardedConfig, ip: IpAddr) -> bool {
    cfg.trusted.iter().any(|n| n.contains(&ip))
}

/// Whether `peer` is a configured trusted proxy (whose forwarding fields are believed).
pub fn is_trusted(cfg: &ForwardedConfig, peer: IpAddr) -> bool {
    !cfg.trusted.is_empty() && trusted(cfg, peer)
}

/// One hop of `X-Forwarded-For` or a `for=` of `Forwarded`: an IP, maybe quoted,
/// bracketed or with a port.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Ok(ip) = t.parse() {
        return Some(ip);
    }
    if let Some(rest) = t.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    t.rsplit_once(':').and_then(|(ip, _port)| ip.parse().ok())
}

/// The hops a trusted proxy reported, oldest first.
fn reported_hops(req: &RequestHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for v in req.headers.get_all(&X_FORWARDED_FOR) {
        let Ok(s) = v.to_str() else {
            hops.push(None);
            continue;
        };
        hops.extend(s.split(',').map(parse_hop));
    }
    if hops.is_empty() {
        for v in req.headers.get_all(FORWARDED) {
            let Ok(s) = v.to_str() else {
                hops.push(None);
                continue;
            };
            for element in s.split(',') {
                let for_ = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                });
                if let Some(v) = for_ {
                    hops.push(parse_hop(v));
                }
            }
        }
    }
    hops
}

/// The client's address as drover believes it.
pub fn client_ip(cfg: &ForwardedConfig, peer: IpAddr, req: &RequestHeader) -> IpAddr {
    if !trusted(cfg, peer) {
        return peer;
    }
    let mut client = peer;
    for hop in reported_hops(req).into_iter().rev() {
        match hop {
            // Garbage in the chain: believe nothing left of it.
            None => break,
            Some(ip) => {
                client = ip;
                if !trusted(cfg, ip) {
                    break;
                }
            }
        }
    }
    client
}

/// Rewrites the forwarding headers of a request (`edit` then apply; the request path
/// batches `edit` with the other steps' changes).
pub fn apply(cfg: &ForwardedConfig, req: &mut RequestHeader, peer: IpAddr, client: IpAddr) {
    let mut edits = HeaderEdits::default();
    edit(cfg, req, peer, client, false, &mut edits);
    edits.apply(req);
}

/// The forwarding headers' changes, decided from the request as the client sent it.
/// `https`: the request came through an HTTPS listener (`X-Forwarded-Proto: https`).
pub fn edit(
    cfg: &ForwardedConfig,
    req: &RequestHeader,
    peer: IpAddr,
    client: IpAddr,
    https: bool,
    edits: &mut HeaderEdits,
) {
    let from_trusted = trusted(cfg, peer);
    let h = &req.headers;
    if !from_trusted {
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            FORWARDED,
        ] {
            if h.contains_key(&name) {
                edits.remove(name);
            }
        }
    }
    if !cfg.headers {
        if h.contains_key(&X_REAL_IP) {
            edits.remove(X_REAL_IP);
        }
        return;
    }
    let peer_text = ip_text(peer);
    let text = |s: &str| HeaderValue::from_str(s).ok();
    let prior = |name: &HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let xff = match prior(&X_FORWARDED_FOR) {
        Some(prior) if from_trusted => text(&format!("{prior}, {peer_text}")),
        _ => text(peer_text.as_str()),
    };
    if let Some(v) = xff {
        edits.insert(X_FORWARDED_FOR, v);
    }
    if from_trusted {
        if let Some(prior) = prior(&FORWARDED) {
            let hop = match peer {
                IpAddr::V4(_) => format!("{prior}, for={peer_text}"),
                IpAddr::V6(_) => format!("{prior}, for=\"[{peer_text}]\""),
            };
            if let Some(v) = text(&hop) {
                edits.insert(FORWARDED, v);
            }
        }
    }
    // An untrusted peer's own values were removed above: drover states what it saw.
    if !from_trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if https { "https" } else { "http" };
        edits.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !from_trusted || !h.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = h.get(HOST) {
            edits.insert(X_FORWARDED_HOST, host.clone());
        }
    }
    let real_ip = if client == peer {
        text(peer_text.as_str())
    } else {
        text(ip_text(client).as_str())
    };
    if let Some(v) = real_ip {
        edits.insert(X_REAL_IP, v);
    }
}

/// An address as text without the formatting machinery (this runs on every request).
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Display for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn ip_text(ip: IpAddr) -> IpText {
    let mut t = IpText {
        buf: [0; 45],
        len: 0,
    };
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    t.buf[t.len] = b'.';
                    t.len += 1;
                }
                if octet >= 100 {
                    t.buf[t.len] = b'0' + octet / 100;
                    t.len += 1;
                }
                if octet >= 10 {
                    t.buf[t.len] = b'0' + octet / 10 % 10;
                    t.len += 1;
                }
                t.buf[t.len] = b'0' + octet % 10;
                t.len += 1;
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut t.buf[..]);
            let _ = write!(cursor, "{v6}");
            t.len = cursor.position() as usize;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.199.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip).as_str(), ip.to_string());
        }
    }

    fn cfg(trusted: &[&str]) -> ForwardedConfig {
        ForwardedConfig {
            headers: true,
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        }
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_and_its_headers_are_replaced() {
        let c = cfg(&[]);
        let mut r = req(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("host", "example.com"),
        ]);
        let peer = ip("203.0.113.9");
        let client = client_ip(&c, peer, &r);
        assert_eq!(client, peer);
        apply(&c, &mut r, peer, client);
        assert_eq!(r.headers.get("x-forwarded-for").unwrap(), "203.0.113.9");
        assert_eq!(r.headers.get("x-real-ip").unwrap(), "203.0.113.9");
        assert_eq!(r.headers.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(r.headers.get("x-forwarded-host").unwrap(), "example.com");
        assert!(r.headers.get("forwarded").is_none());
    }

    #[test]
    fn a_trusted_chain_is_walked_from_the_right() {
        let c = cfg(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let r = req(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(client_ip(&c, peer, &r), ip("198.51.100.7"));
        let split = req(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(client_ip(&c, peer, &split), ip("198.51.100.7"));
        let fwd = req(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:443\"",
        )]);
        assert_eq!(client_ip(&c, peer, &fwd), ip("2001:db8::1"));
        let garbage = req(&[("x-forwarded-for", "6.6.6.6, nonsense, 10.1.1.1")]);
        assert_eq!(client_ip(&c, peer, &garbage), ip("10.1.1.1"));
        let mut r = req(&[("x-forwarded-for", "198.51.100.7")]);
        apply(&c, &mut r, peer, ip("198.51.100.7"));
        assert_eq!(
            r.headers.get("x-forwarded-for").unwrap(),
            "198.51.100.7, 10.0.0.2"
        );
    }

    #[test]
    fn hop_parsing_accepts_ports_brackets_and_quotes() {
        assert_eq!(parse_hop(" 1.2.3.4 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop("\"[::1]:8080\""), Some(ip("::1")));
        assert_eq!(parse_hop("unknown"), None);
        assert_eq!(parse_hop("_hidden"), None);
    }
}
