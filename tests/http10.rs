// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! HTTP/1.0 clients (ApacheBench, proxies that speak 1.0 upstream), on both carriers:
//! keep-alive only when asked for and the length is known, no chunked encoding towards
//! a 1.0 client, Host optional; sessions and rate limits as for HTTP/1.1; and real `ab`.

mod common;
#[path = "support/raw.rs"]
mod raw;

use common::Drover;
use raw::{Client, RawWorker, Reply};
use std::time::Duration;

const CARRIERS: [bool; 2] = [true, false];

fn carrier(fast: bool) -> &'static str {
    if fast {
        "fast path"
    } else {
        "pingora"
    }
}

fn worker() -> RawWorker {
    RawWorker::start(|r| {
        match r.target().as_str() {
        "/chunked" => Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
                .to_vec(),
        ),
        "/close" => Reply::ThenClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()),
        _ => raw::echo_target(r),
    }
    })
}

fn start(w: &RawWorker, fast: bool, extra: &str) -> Drover {
    Drover::start(
        0,
        &format!(
            "proxy:\n  fast_path: {fast}\nupstreams:\n  - address: 127.0.0.1:{}\n{extra}",
            w.port
        ),
    )
}

#[test]
fn without_keep_alive_the_connection_closes_after_the_response() {
    for fast in CARRIERS {
        let w = worker();
        let d = start(&w, fast, "");
        let c = raw::exchange(d.port, b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n", &["GET"], 1);
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        assert_eq!(c.finals()[0].body_text(), "/a");
        let mut client = Client::connect(d.port);
        client.send(b"GET /b HTTP/1.0\r\n\r\n").unwrap();
        assert!(
            client.wait_closed(Duration::from_secs(3)),
            "{}: not closed",
            carrier(fast)
        );
        // Host is optional in HTTP/1.0.
        let c = raw::exchange(d.port, b"GET /nohost HTTP/1.0\r\n\r\n", &["GET"], 1);
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
    }
}

#[test]
fn keep_alive_is_honoured_when_asked_for_and_the_length_is_known() {
    for fast in CARRIERS {
        let w = worker();
        let d = start(&w, fast, "");
        let mut c = Client::connect(d.port);
        c.send(b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let conv = c.read(&["GET"], 1, Duration::from_secs(5));
        assert_eq!(conv.statuses(), vec![200], "{}: {conv:?}", carrier(fast));
        let r = &conv.finals()[0];
        assert_eq!(
            r.header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive"),
            "{}: {r:?}",
            carrier(fast)
        );
        assert!(!conv.closed);
        // The same connection, and two pipelined ones.
        c.send(b"GET /2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let conv = c.read(&["GET", "GET", "GET"], 3, Duration::from_secs(5));
        let bodies: Vec<String> = conv.finals().iter().map(|r| r.body_text()).collect();
        assert_eq!(
            bodies,
            vec!["/1", "/2", "/3"],
            "{}: {conv:?}",
            carrier(fast)
        );
        // A body of unknown length (the worker closes): the connection closes too.
        let mut c = Client::connect(d.port);
        c.send(b"GET /close HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let conv = c.read(&["GET"], 1, Duration::from_secs(5));
        assert_eq!(conv.statuses(), vec![200], "{}: {conv:?}", carrier(fast));
        assert_eq!(conv.finals()[0].body_text(), "until the end");
        assert!(c.wait_closed(Duration::from_secs(3)), "{}", carrier(fast));
    }
}

#[test]
fn a_chunked_worker_response_reaches_a_1_0_client_without_chunking() {
    for fast in CARRIERS {
        let w = worker();
        let d = start(&w, fast, "");
        let mut c = Client::connect(d.port);
        c.send(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        assert!(
            c.wait_closed(Duration::from_secs(5)),
            "{}: the body must end with the connection",
            carrier(fast)
        );
        let conv = c.read(&["GET"], 1, Duration::from_millis(10));
        assert_eq!(conv.statuses(), vec![200], "{}: {conv:?}", carrier(fast));
        let r = &conv.finals()[0];
        assert!(
            !r.has_header("transfer-encoding"),
            "{}: {r:?}",
            carrier(fast)
        );
        assert_eq!(r.body_text(), "hello, world", "{}", carrier(fast));
    }
}

#[test]
fn framing_a_1_0_request_with_transfer_encoding_is_refused() {
    for fast in CARRIERS {
        let w = worker();
        let d = start(&w, fast, "");
        let c = raw::exchange(
            d.port,
            b"POST /te HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            &["POST"],
            1,
        );
        assert_eq!(c.statuses(), vec![400], "{}: {c:?}", carrier(fast));
        assert!(w.requests().is_empty());
    }
}

#[test]
fn sessions_and_rate_limits_work_for_1_0_clients() {
    for fast in CARRIERS {
        let d = Drover::start(
            2,
            &format!("proxy:\n  fast_path: {fast}\nsessions:\n  enabled: true\nrate_limit:\n  requests_per_second: 0.01\n  burst: 3\n"),
        );
        let c = raw::exchange(
            d.port,
            b"GET /session/incr HTTP/1.0\r\nHost: x\r\n\r\n",
            &["GET"],
            1,
        );
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let cookie = c.finals()[0]
            .header("set-cookie")
            .unwrap_or_else(|| panic!("{}: no cookie: {c:?}", carrier(fast)))
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let req = format!("GET /session/incr HTTP/1.0\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
        let c = raw::exchange(d.port, req.as_bytes(), &["GET"], 1);
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let v: serde_json::Value = serde_json::from_slice(&c.finals()[0].body).unwrap();
        assert_eq!(
            v["counter"],
            2,
            "{}: the session carried over: {v}",
            carrier(fast)
        );
        let c = raw::exchange(d.port, b"GET / HTTP/1.0\r\n\r\n", &["GET"], 1);
        assert_eq!(c.statuses(), vec![200]);
        let c = raw::exchange(d.port, b"GET / HTTP/1.0\r\n\r\n", &["GET"], 1);
        assert_eq!(c.statuses(), vec![429], "{}: {c:?}", carrier(fast));
    }
}

/// ApacheBench (Debian's apache2-utils; `.ci/run` installs it), with and without `-k`.
#[test]
fn apache_bench_with_and_without_keep_alive_gets_every_response() {
    let Some(ab) = ["/usr/bin/ab", "/usr/sbin/ab"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        panic!("ab is not installed (apt-get install apache2-utils; .ci/run does)");
    };
    let d = Drover::start(2, "");
    for keep_alive in [false, true] {
        let mut cmd = std::process::Command::new(ab);
        if keep_alive {
            cmd.arg("-k");
        }
        let out = cmd
            .args(["-q", "-n", "3000", "-c", "20", "-s", "10"])
            .arg(format!("http://127.0.0.1:{}/", d.port))
            .output()
            .expect("run ab");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ab failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(field("Complete requests:"), Some(3000), "{text}");
        assert_eq!(field("Failed requests:"), Some(0), "{text}");
        assert_eq!(field("Non-2xx responses:"), None, "{text}");
        if keep_alive {
            assert_eq!(field("Keep-Alive requests:"), Some(3000), "{text}");
        }
    }
    // drover's own engine served them.
    let fast = d.metric("drover_http1_engine_requests_total{engine=\"fast\"}");
    assert!(fast >= 6000.0, "fast path served {fast}");
}
