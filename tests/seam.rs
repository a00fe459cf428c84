// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! The seam between drover's two HTTP/1 carriers (its own engine, `proxy.fast_path:
//! true`, and Pingora's proxy, `false`): one regression test per defect of the seam
//! issue, each run on both carriers.

mod common;
#[path = "support/raw.rs"]
mod raw;

use common::Drover;
use raw::{Client, RawWorker, Received, Reply};
use std::time::{Duration, Instant};

const CARRIERS: [bool; 2] = [true, false];

fn carrier(fast: bool) -> &'static str {
    if fast {
        "fast path"
    } else {
        "pingora"
    }
}

/// drover in front of one raw worker, on the chosen carrier. `proxy` is extra indented
/// YAML under `proxy:`; `extra` more top-level YAML.
fn start(worker: &RawWorker, fast: bool, proxy: &str, extra: &str) -> Drover {
    Drover::start(
        0,
        &format!(
            "proxy:\n  fast_path: {fast}\n{proxy}upstreams:\n  - address: 127.0.0.1:{}\n{extra}",
            worker.port
        ),
    )
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn drover_rss_kib(d: &Drover) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// 1 -------------------------------------------------------------------------------------

#[test]
fn a_bad_request_target_is_answered_400_and_never_shifts_the_responses() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "");
        let c = raw::exchange(
            d.port,
            b"GET /a\"b<c> HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
            &["GET", "GET"],
            2,
        );
        let finals = c.finals();
        assert!(!finals.is_empty(), "{}: no answer: {c:?}", carrier(fast));
        assert_eq!(finals[0].status, 400, "{}: {c:?}", carrier(fast));
        match finals.get(1) {
            Some(second) => assert_eq!(second.body_text(), "/second", "{}", carrier(fast)),
            None => assert!(c.closed, "{}: {c:?}", carrier(fast)),
        }
        // Alone, it is answered at once instead of hanging the connection.
        let c = raw::exchange(
            d.port,
            b"GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n",
            &["GET"],
            1,
        );
        assert_eq!(c.statuses(), vec![400], "{}: {c:?}", carrier(fast));
        assert!(c.elapsed < Duration::from_secs(2), "{}", carrier(fast));
        assert!(
            w.requests().iter().all(|r| !r.target().contains('<')),
            "{}",
            carrier(fast)
        );
    }
}

// 2 -------------------------------------------------------------------------------------

#[test]
fn drovers_own_answers_have_no_body_on_head() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(
            &w,
            fast,
            "",
            "rate_limit:\n  requests_per_second: 0.01\n  burst: 1\n",
        );
        let mut c = Client::connect(d.port);
        c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let conv = c.read(&["HEAD", "HEAD", "GET"], 3, Duration::from_secs(5));
        assert_eq!(
            conv.statuses(),
            vec![200, 429, 429],
            "{}: the 429 to HEAD carried a body: {conv:?}",
            carrier(fast)
        );
        assert_eq!(conv.finals()[2].body_text(), "rate limit exceeded\n");
        assert!(conv.leftover.is_empty(), "{}: {conv:?}", carrier(fast));
    }
    // A bulkhead's 503 and an error answer (the worker hangs up) on HEAD: no body either.
    for fast in CARRIERS {
        let w = RawWorker::start(|r| match r.target().as_str() {
            "/b/slow" => {
                std::thread::sleep(Duration::from_millis(1500));
                raw::echo_target(r)
            }
            "/hangup" => Reply::Close,
            _ => raw::echo_target(r),
        });
        let d = start(
            &w,
            fast,
            "",
            "routes:\n  - name: b\n    path_prefix: /b\n    max_concurrent: 1\n",
        );
        let port = d.port;
        let slow = std::thread::spawn(move || {
            raw::exchange(
                port,
                b"GET /b/slow HTTP/1.1\r\nHost: a\r\n\r\n",
                &["GET"],
                1,
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut c = Client::connect(d.port);
        c.send(b"HEAD /b/x HTTP/1.1\r\nHost: a\r\n\r\nGET /b/y HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let conv = c.read(&["HEAD", "GET"], 2, Duration::from_secs(5));
        assert_eq!(
            conv.statuses(),
            vec![503, 503],
            "{}: {conv:?}",
            carrier(fast)
        );
        assert_eq!(conv.finals()[1].body_text(), "route at max_concurrent\n");
        assert!(conv.leftover.is_empty(), "{}: {conv:?}", carrier(fast));
        assert_eq!(slow.join().unwrap().statuses(), vec![200]);
        let c = raw::exchange(
            d.port,
            b"HEAD /hangup HTTP/1.1\r\nHost: a\r\n\r\n",
            &["HEAD"],
            1,
        );
        assert_eq!(c.statuses(), vec![502], "{}: {c:?}", carrier(fast));
        assert!(
            c.leftover.is_empty(),
            "{}: body bytes after a HEAD answer: {:?}",
            carrier(fast),
            String::from_utf8_lossy(&c.leftover)
        );
    }
}

// 3 -------------------------------------------------------------------------------------

#[test]
fn headers_drover_sets_survive_what_the_client_nominates() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "");
        let c = raw::exchange(
            d.port,
            b"GET /n HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Real-IP, X-Request-Id, traceparent, X-Forwarded-For, X-Custom\r\nX-Custom: gone\r\n\r\n",
            &["GET"],
            1,
        );
        let got = w.requests();
        // Either refused outright (a protected name was nominated) or forwarded with
        // drover's headers intact and the nominated client header gone.
        if c.statuses() == vec![400] {
            assert!(got.is_empty(), "{}", carrier(fast));
            continue;
        }
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let r = got.last().expect("forwarded");
        assert_eq!(
            r.header("x-real-ip").as_deref(),
            Some("127.0.0.1"),
            "{}: {}",
            carrier(fast),
            r.head_text()
        );
        assert!(
            r.header("x-request-id").is_some(),
            "{}: {}",
            carrier(fast),
            r.head_text()
        );
        assert!(
            r.header("traceparent").is_some(),
            "{}: {}",
            carrier(fast),
            r.head_text()
        );
        assert!(
            r.header("x-custom").is_none(),
            "{}: {}",
            carrier(fast),
            r.head_text()
        );
        assert!(
            r.header("connection")
                .is_none_or(|v| !v.to_ascii_lowercase().contains("x-")),
            "{}",
            r.head_text()
        );
    }
    // The same with a name that is not protected: drover's own headers still arrive.
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "");
        let c = raw::exchange(
            d.port,
            b"GET /n HTTP/1.1\r\nHost: a\r\nConnection: close, X-Real-IP\r\nX-Real-IP: 6.6.6.6\r\n\r\n",
            &["GET"],
            1,
        );
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let r = w.requests().last().cloned().expect("forwarded");
        assert_eq!(
            r.header("x-real-ip").as_deref(),
            Some("127.0.0.1"),
            "{}: {}",
            carrier(fast),
            r.head_text()
        );
    }
}

// 4 -------------------------------------------------------------------------------------

#[test]
fn an_interim_100_continue_does_not_end_the_session_step() {
    let script = |r: &Received| {
        if r.target() == "/set" {
            Reply::Bytes(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Drover-Session-Set: {\"n\":1}\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        } else {
            raw::echo_target(r)
        }
    };
    for fast in CARRIERS {
        let w = RawWorker::start(script);
        let d = start(&w, fast, "", "sessions:\n  enabled: true\n");
        let c = raw::exchange(
            d.port,
            b"POST /set HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
            &["POST"],
            1,
        );
        let last = c.finals().last().cloned().cloned();
        let last = last.unwrap_or_else(|| panic!("{}: no answer {c:?}", carrier(fast)));
        assert_eq!(last.status, 200, "{}", carrier(fast));
        let cookie = last
            .header("set-cookie")
            .unwrap_or_else(|| {
                panic!(
                    "{}: Set-Cookie not on the final response: {c:?}",
                    carrier(fast)
                )
            })
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let req = format!("GET /show HTTP/1.1\r\nHost: a\r\nCookie: {cookie}\r\n\r\n");
        let c = raw::exchange(d.port, req.as_bytes(), &["GET"], 1);
        assert_eq!(c.statuses(), vec![200]);
        let shown = w.requests().last().cloned().unwrap();
        assert_eq!(
            shown.header("x-drover-session").as_deref(),
            Some("{\"n\":1}"),
            "{}: the worker's update was lost: {}",
            carrier(fast),
            shown.head_text()
        );
    }
}

// 5 -------------------------------------------------------------------------------------

#[test]
fn both_carriers_agree_on_host_and_strip_proxy_credentials() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "");
        for (what, stream) in [
            ("missing Host", &b"GET /h HTTP/1.1\r\n\r\n"[..]),
            (
                "two Hosts",
                b"GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            ),
            (
                "userinfo in Host",
                b"GET /h HTTP/1.1\r\nHost: user:pw@a\r\n\r\n",
            ),
            ("bad Host", b"GET /h HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ] {
            let c = raw::exchange(d.port, stream, &["GET"], 1);
            assert_eq!(c.statuses(), vec![400], "{}: {what}: {c:?}", carrier(fast));
        }
        assert!(w.requests().is_empty(), "{}", carrier(fast));
        let c = raw::exchange(
            d.port,
            b"GET /p HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic c2VjcmV0\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
            &["GET"],
            1,
        );
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let r = w.requests().last().cloned().unwrap();
        for h in [
            "proxy-authorization",
            "http2-settings",
            "proxy-connection",
            "keep-alive",
            "te",
        ] {
            assert!(
                r.header(h).is_none(),
                "{}: {h} forwarded: {}",
                carrier(fast),
                r.head_text()
            );
        }
    }
}

// 6 -------------------------------------------------------------------------------------

#[test]
fn a_trickled_head_is_cut_off_at_the_header_deadline() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "limits:\n  client_header_timeout: 1s\n");
        let mut c = Client::connect(d.port);
        let start = Instant::now();
        let head = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut cut = false;
        for b in head.iter() {
            if c.send(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if start.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        let closed = cut || c.wait_closed(Duration::from_secs(1));
        assert!(
            closed,
            "{}: still open after {:?}",
            carrier(fast),
            start.elapsed()
        );
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "{}: {:?}",
            carrier(fast),
            start.elapsed()
        );
        assert!(w.requests().is_empty(), "{}", carrier(fast));
    }
}

#[test]
fn a_client_that_never_reads_frees_its_backend_slot_at_the_send_timeout() {
    let big = {
        let body = vec![b'x'; 48 << 20];
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(&body);
        std::sync::Arc::new(r)
    };
    for fast in CARRIERS {
        let b = big.clone();
        let w = RawWorker::start(move |_| Reply::Bytes(b.to_vec()));
        let d = start(&w, fast, "", "limits:\n  client_send_timeout: 1s\n");
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut c = Client::connect(d.port);
            c.send(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            clients.push(c);
        }
        assert!(
            common::wait_until(Duration::from_secs(3), || d
                .metric("drover_requests_in_flight")
                >= 3.0),
            "{}: requests never started",
            carrier(fast)
        );
        let start = Instant::now();
        let freed = common::wait_until(Duration::from_secs(8), || {
            d.metric("drover_requests_in_flight") == 0.0
        });
        assert!(
            freed,
            "{}: clients that never read still hold {} requests after {:?}",
            carrier(fast),
            d.metric("drover_requests_in_flight"),
            start.elapsed()
        );
        drop(clients);
    }
}

#[test]
fn heads_over_max_header_bytes_get_431_on_both_carriers_without_buffering() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "limits:\n  max_header_bytes: 4096\n");
        // A complete head over the limit.
        let mut head = b"GET /h HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 10_000));
        head.extend_from_slice(b"\r\n\r\n");
        let c = raw::exchange(d.port, &head, &["GET"], 1);
        assert_eq!(c.statuses(), vec![431], "{}: {c:?}", carrier(fast));
        // Many heads that never end: each is refused once past the limit, and drover's
        // memory does not grow with what they send.
        let before = drover_rss_kib(&d);
        let mut conns = Vec::new();
        for _ in 0..50 {
            let mut c = Client::connect(d.port);
            let _ = c.send(b"GET /h HTTP/1.1\r\nHost: a\r\nX-Big: ");
            conns.push(c);
        }
        let piece = vec![b'a'; 16 * 1024];
        for _ in 0..64 {
            for c in conns.iter_mut() {
                let _ = c.send(&piece);
            }
        }
        for c in conns.iter_mut() {
            let conv = c.read(&["GET"], 1, Duration::from_secs(3));
            assert!(
                conv.closed || conv.statuses() == vec![431],
                "{}: a 1 MiB head was still being read: {conv:?}",
                carrier(fast)
            );
        }
        let grown = drover_rss_kib(&d).saturating_sub(before);
        assert!(grown < 16 * 1024, "{}: RSS grew {grown} KiB", carrier(fast));
        assert!(w.requests().is_empty());
    }
}

#[test]
fn a_worker_response_head_over_the_cap_answers_502() {
    let mut huge = b"HTTP/1.1 200 OK\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'h', 200 * 1024));
    huge.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    let huge = std::sync::Arc::new(huge);
    for fast in CARRIERS {
        let h = huge.clone();
        let w = RawWorker::start(move |_| Reply::Bytes(h.to_vec()));
        let d = start(&w, fast, "  max_response_header_bytes: 65536\n", "");
        let c = raw::exchange(d.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &["GET"], 1);
        assert_eq!(
            c.statuses(),
            vec![502],
            "{}: {:?}",
            carrier(fast),
            c.statuses()
        );
    }
}

// 7 -------------------------------------------------------------------------------------

fn odd_worker() -> RawWorker {
    RawWorker::start(|r| {
        let bytes: &[u8] = match r.target().as_str() {
            "/cl-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/nominated" => b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\nok",
            "/plus" => b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
            "/empty-size" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "/bare-lf" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\n0\n\n",
            "/trailer" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Drover-Session-Set: {\"a\":1}\r\nX-Drover-Metric: x=1\r\n\r\n",
            "/http10-chunked" => b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            _ => return raw::echo_target(r),
        };
        Reply::Bytes(bytes.to_vec())
    })
}

#[test]
fn worker_framing_is_normalised_before_it_reaches_clients() {
    for fast in CARRIERS {
        let w = odd_worker();
        let d = start(&w, fast, "", "");
        let get = |path: &str| {
            let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
            raw::exchange(d.port, req.as_bytes(), &["GET"], 1)
        };
        for path in ["/plus", "/http10-chunked"] {
            let c = get(path);
            assert_eq!(c.statuses(), vec![502], "{}: {path}: {c:?}", carrier(fast));
        }
        // Both framing fields: the transfer coding frames the body and Content-Length is
        // not forwarded (RFC 9112 section 6.3).
        let c = get("/cl-te");
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let r = c.finals()[0];
        assert_eq!(
            (r.body.as_slice(), r.has_header("content-length")),
            (&b"hello"[..], false),
            "{}: {r:?}",
            carrier(fast)
        );
        let c = get("/nominated");
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        assert!(
            !c.finals()[0].has_header("x-secret"),
            "{}: {c:?}",
            carrier(fast)
        );
        for path in ["/empty-size", "/bare-lf"] {
            let c = get(path);
            let complete_ok = c
                .finals()
                .iter()
                .any(|r| r.status == 200 && r.body == b"ok");
            assert!(
                !complete_ok,
                "{}: {path} was passed as valid: {c:?}",
                carrier(fast)
            );
        }
        let c = get("/trailer");
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let r = c.finals()[0];
        assert_eq!(r.body, b"ok");
        assert!(
            !r.trailers.iter().any(|(k, _)| k.starts_with("x-drover-")),
            "{}: internal trailer reached the client: {r:?}",
            carrier(fast)
        );
    }
}

// 8 -------------------------------------------------------------------------------------

#[test]
fn get_post_get_pipelined_in_one_write_are_all_answered_in_order() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "");
        let c = raw::exchange(
            d.port,
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
            &["GET", "POST", "GET"],
            3,
        );
        let bodies: Vec<String> = c.finals().iter().map(|r| r.body_text()).collect();
        assert_eq!(bodies, vec!["/1", "/2", "/3"], "{}: {c:?}", carrier(fast));
        let got = w.requests();
        assert_eq!(got.len(), 3, "{}", carrier(fast));
        assert_eq!(got[1].body, b"abc", "{}", carrier(fast));
        // And with a chunked body in the middle.
        w.clear();
        let c = raw::exchange(
            d.port,
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
            &["GET", "POST", "GET"],
            3,
        );
        let bodies: Vec<String> = c.finals().iter().map(|r| r.body_text()).collect();
        assert_eq!(bodies, vec!["/1", "/2", "/3"], "{}: {c:?}", carrier(fast));
    }
}

// 9 -------------------------------------------------------------------------------------

#[test]
fn underscore_variants_of_internal_headers_never_reach_the_worker() {
    for fast in CARRIERS {
        let w = RawWorker::start(raw::echo_target);
        let d = start(&w, fast, "", "sessions:\n  enabled: true\n");
        let c = raw::exchange(
            d.port,
            b"GET /u HTTP/1.1\r\nHost: a\r\nX_Drover_Session: {\"admin\":true}\r\nx_drover_session_id: forged\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n\r\n",
            &["GET"],
            1,
        );
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        let r = w.requests().last().cloned().unwrap();
        let text = r.head_text();
        assert!(!text.contains("admin"), "{}: {text}", carrier(fast));
        assert!(!text.contains("forged"), "{}: {text}", carrier(fast));
        assert!(!text.contains("6.6.6.6"), "{}: {text}", carrier(fast));
    }
}

// 10 ------------------------------------------------------------------------------------

#[test]
fn the_idle_pool_evicts_other_backends_and_purges_removed_ones() {
    let slow = |r: &Received| {
        std::thread::sleep(Duration::from_millis(300));
        raw::echo_target(r)
    };
    let a = RawWorker::start(slow);
    let b = RawWorker::start(raw::echo_target);
    let mut d = Drover::start(
        0,
        &format!(
            "threads: 1\nproxy:\n  keepalive_pool_size: 2\nupstreams:\n  - address: 127.0.0.1:{}\n",
            a.port
        ),
    );
    // Two requests at once leave two idle connections to A in the pool.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let c = raw::exchange(d.port, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", &["GET"], 1);
                assert_eq!(c.statuses(), vec![200]);
            });
        }
    });
    assert!(a.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    // A leaves, B arrives.
    d.rewrite_config(
        0,
        &format!(
            "threads: 1\nproxy:\n  keepalive_pool_size: 2\nupstreams:\n  - address: 127.0.0.1:{}\n",
            b.port
        ),
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(common::wait_until(Duration::from_secs(5), || {
        d.status()["backends"].as_array().is_some_and(|bs| {
            bs.len() == 1
                && bs[0]["address"] == format!("127.0.0.1:{}", b.port)
                && bs[0]["state"] == "healthy"
        })
    }));
    let mut c = Client::connect(d.port);
    for i in 0..5 {
        c.send(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let conv = c.read(&vec!["GET"; i + 1], i + 1, Duration::from_secs(5));
        assert_eq!(conv.finals().len(), i + 1, "{conv:?}");
    }
    let b_conns = b.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        b_conns <= 2,
        "B's connections were not pooled (pool full of A's): {b_conns} connections for 5 requests"
    );
    assert!(
        common::wait_until(Duration::from_secs(3), || {
            a.closed_by_peer.load(std::sync::atomic::Ordering::SeqCst) >= 2
        }),
        "idle connections to the removed backend were kept open"
    );
    d.wait_exit(Duration::ZERO);
}

// 11 ------------------------------------------------------------------------------------

#[test]
fn late_bytes_after_a_response_never_reach_the_next_client() {
    let smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED".to_vec();
    for fast in CARRIERS {
        let s = smuggled.clone();
        let w = RawWorker::start(move |r| match r.target().as_str() {
            // A worker that writes a body on HEAD, late: whatever request is sent on this
            // connection next would read it as its response.
            "/head" => Reply::Split(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n".to_vec(),
                Duration::from_millis(300),
                s.clone(),
            ),
            "/extra" => Reply::Split(ok("ok"), Duration::from_millis(30), s.clone()),
            _ => raw::echo_target(r),
        });
        let d = start(&w, fast, "", "threads: 1\n");
        // At once after a HEAD answer that claimed a body: the connection is not reused.
        for _ in 0..3 {
            let c = raw::exchange(
                d.port,
                b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n",
                &["HEAD"],
                1,
            );
            assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
            let c = raw::exchange(
                d.port,
                b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
                &["GET"],
                1,
            );
            let bodies: Vec<String> = c.finals().iter().map(|r| r.body_text()).collect();
            assert_eq!(
                bodies,
                vec!["/next"],
                "{}: after HEAD: another response's bytes reached this client",
                carrier(fast)
            );
        }
        // Bytes after a Content-Length body that arrive while the connection is idle:
        // the connection is found dirty and not reused.
        let c = raw::exchange(
            d.port,
            b"GET /extra HTTP/1.1\r\nHost: a\r\n\r\n",
            &["GET"],
            1,
        );
        assert_eq!(c.statuses(), vec![200], "{}: {c:?}", carrier(fast));
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..3 {
            let c = raw::exchange(
                d.port,
                b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
                &["GET"],
                1,
            );
            let bodies: Vec<String> = c.finals().iter().map(|r| r.body_text()).collect();
            assert_eq!(
                bodies,
                vec!["/next"],
                "{}: after /extra: another response's bytes reached this client",
                carrier(fast)
            );
        }
    }
}
