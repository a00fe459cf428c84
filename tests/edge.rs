// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! What clients send at the edge: forwarding headers and spoofing.

mod common;

use common::Drover;

fn echo_headers(d: &Drover, headers: &[(&str, &str)]) -> serde_json::Value {
    let r = d.get_with("/echo", headers).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["headers"].clone()
}

fn header<'a>(h: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.as_str())
}

#[test]
fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_not_trusted() {
    let d = Drover::start(1, "");
    let h = echo_headers(
        &d,
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    );
    assert_eq!(header(&h, "x-forwarded-for"), Some("127.0.0.1"), "{h}");
    assert_eq!(header(&h, "x-real-ip"), Some("127.0.0.1"), "{h}");
    assert_eq!(header(&h, "x-forwarded-proto"), Some("http"), "{h}");
    assert!(header(&h, "forwarded").is_none(), "{h}");
    assert!(!h.to_string().contains("6.6.6.6"), "{h}");
    let log = d.log();
    assert!(
        !log.contains("6.6.6.6"),
        "spoofed address reached the access log"
    );
}

#[test]
fn a_trusted_proxy_chain_is_believed_and_extended() {
    let d = Drover::start(1, "forwarded:\n  trusted_proxies: [\"127.0.0.1/32\"]\n");
    let h = echo_headers(&d, &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
    assert_eq!(header(&h, "x-real-ip"), Some("198.51.100.7"), "{h}");
    assert_eq!(
        header(&h, "x-forwarded-for"),
        Some("6.6.6.6, 198.51.100.7, 127.0.0.1"),
        "{h}"
    );
    assert!(common::wait_until(
        std::time::Duration::from_secs(2),
        || d.log().contains("\"client\":\"198.51.100.7\"")
    ));
}

/// Sends raw bytes, then (optionally) waits and sends more; returns what came back.
fn raw(port: u16, first: &[u8], pause: std::time::Duration, rest: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(first).unwrap();
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    let _ = s.write_all(rest);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn each_edge_limit_answers_its_status_and_is_counted() {
    let limits = "limits:\n  max_header_bytes: 4096\n  max_headers: 20\n  max_body_bytes: 1000\n  client_body_timeout: 1s\n  max_in_flight: 2\n";
    let d = Drover::start(1, limits);
    // Too many headers.
    let many: Vec<(String, String)> = (0..25).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(d.get_with("/", &many).unwrap().status, 431);
    // A header block too large.
    let big = "a".repeat(5000);
    assert_eq!(d.get_with("/", &[("x-big", &big)]).unwrap().status, 431);
    // A declared body too large.
    let agent = common::agent();
    let body = "b".repeat(2000);
    let r = common::request(&agent, "POST", &d.url("/echo"), &[], Some(&body)).unwrap();
    assert_eq!(r.status, 413);
    // A streamed (chunked) body that grows too large.
    let chunk = format!("{:x}\r\n{}\r\n", 800, "c".repeat(800));
    let head = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(chunk.as_bytes());
    req.extend_from_slice(chunk.as_bytes());
    req.extend_from_slice(b"0\r\n\r\n");
    let reply = raw(d.port, &req, std::time::Duration::ZERO, b"");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // A body trickled slower than client_body_timeout.
    let reply = raw(
        d.port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part",
        std::time::Duration::from_millis(1800),
        b"-of-it",
    );
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    // More requests at once than max_in_flight.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| d.get("/delay?ms=800").unwrap().status))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    // Ordinary requests are unaffected.
    assert_eq!(d.get("/").unwrap().status, 200);
    let m = d.metrics();
    for (limit, at_least) in [
        ("header_count", 1.0),
        ("header_bytes", 1.0),
        ("body_bytes", 2.0),
        ("body_timeout", 1.0),
        ("in_flight", 1.0),
    ] {
        let v = common::metric_value(
            &m,
            &format!("drover_limit_rejections_total{{limit=\"{limit}\"}}"),
        );
        assert!(v >= at_least, "{limit}: {v}");
    }
}
