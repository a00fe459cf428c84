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
