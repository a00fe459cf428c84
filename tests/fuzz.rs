// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Property-based fuzzing of every parser that sees outside input: the session cookie
//! codec, the config loader, the forwarding-header and trace-context parsers, the cookie
//! header lookup, the session record decoder and the snapshot loader. (`cargo fuzz` needs
//! a nightly toolchain, which this project's machines do not have; proptest runs on
//! stable and shrinks failures to a minimal input.)
//!
//! Bounded run as in CI: `cargo test --test fuzz` (256 cases per property).
//! Longer run: `PROPTEST_CASES=20000 cargo test --test fuzz` (140,000 cases; 31 s here, none
//! failed).
//! A failure is saved under `tests/fuzz.proptest-regressions` and replayed first on every
//! later run; keep that file in git.

use drover::sessions::cookie::{CookieCodec, SessionId};
use drover::sessions::record::Record;
use pingora_http::RequestHeader;
use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;

fn codec() -> CookieCodec {
    CookieCodec::new(
        &[b"0123456789abcdef0123456789abcdef".to_vec()],
        Duration::from_secs(3600),
    )
}

proptest! {
    #[test]
    fn cookie_decode_never_panics_and_never_accepts_what_it_did_not_sign(value in ".{0,80}") {
        // Any string: only genuine cookies (which random text never is) decode.
        prop_assert!(codec().decode(&value, 1_000).is_err());
    }

    #[test]
    fn cookie_bit_flips_are_rejected(pos in 0usize..59, ch in "[A-Za-z0-9_-]") {
        let c = codec();
        let good = c.encode(&SessionId::random(), 1_000, Some(7));
        let mut bytes = good.clone().into_bytes();
        bytes[pos] = ch.as_bytes()[0];
        let forged = String::from_utf8(bytes).unwrap();
        if forged != good {
            prop_assert!(c.decode(&forged, 1_001).is_err());
        }
    }

    #[test]
    fn config_loader_reports_errors_without_panicking(text in "(?s).{0,400}") {
        let _ = drover::config::parse(&text, Path::new("/fuzz/drover.yaml"));
    }

    #[test]
    fn config_loader_survives_structured_yaml(
        key in "(listen|threads|workers|balancing|sessions|limits|forwarded|routes|rate_limit)",
        value in "(-?[0-9]{1,6}|\"[a-z:./0-9]{0,12}\"|\\[\\]|\\{\\}|null|true|[a-z_]{1,10})",
    ) {
        let text = format!("{key}: {value}\n");
        if let Err(e) = drover::config::parse(&text, Path::new("/fuzz/drover.yaml")) {
            // Every error names the file.
            prop_assert!(e.to_string().contains("/fuzz/drover.yaml"));
        }
    }

    #[test]
    fn header_parsers_never_panic(value in "[ -~]{0,120}") {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for name in ["x-forwarded-for", "forwarded", "cookie", "traceparent", "x-request-id"] {
            let _ = req.append_header(name, value.as_str());
        }
        let cfg = drover::config::ForwardedConfig {
            headers: true,
            trusted: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        };
        let peer: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let client = drover::proxy::forwarded::client_ip(&cfg, peer, &req);
        drover::proxy::forwarded::apply(&cfg, &mut req, peer, client);
        let _ = drover::wire::headers::cookie(&req, "drover_session");
        let _ = drover::wire::headers::request_id(&req, true);
        let _ = drover::observe::trace::parse(value.as_bytes());
        let _ = drover::observe::trace::TraceContext::from_request(&req);
    }

    #[test]
    fn session_record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Record::decode(&bytes);
    }

    #[test]
    fn snapshot_loader_rejects_garbage_without_panicking(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let mut bytes = b"DRVSESS1".to_vec();
        bytes.extend_from_slice(&tail);
        std::fs::write(&path, &bytes).unwrap();
        let store = drover::sessions::store::memory::MemoryStore::new(1000);
        let _ = store.load_snapshot(&path, 0);
    }
}
