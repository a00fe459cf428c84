// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! drover's own HTTP/1 engine (`src/proxy/h1/`): framing, pipelining, hand-over to
//! Pingora's path and back on one connection, pooled worker connections.

mod common;

use common::Drover;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Reads one HTTP/1.1 response (Content-Length or chunked body) from `r`.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if get("transfer-encoding").is_some() {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
            if n == 0 {
                // Trailers up to the empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t).unwrap();
                    if t.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    (status, headers, body)
}

fn connect(d: &Drover) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn engine_count(d: &Drover, engine: &str) -> f64 {
    d.metric(&format!(
        "drover_http1_engine_requests_total{{engine=\"{engine}\"}}"
    ))
}

#[test]
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let d = Drover::start(2, "");
    let (mut s, mut r) = connect(&d);
    s.write_all(
        b"GET /bytes?n=3 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes?n=70000 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let (st, _, body) = read_response(&mut r);
    assert_eq!((st, body.len()), (200, 3));
    let (st, _, body) = read_response(&mut r);
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).starts_with("hello from worker"));
    // HEAD: a Content-Length but no body.
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
    }
    let (st, _, body) = read_response(&mut r);
    assert_eq!((st, body.len()), (200, 70000));
    assert!(engine_count(&d, "fast") >= 4.0);
}

/// Responses of every size the engine treats differently (coalesced with the head, one
/// vectored write of head and body, several reads) on the same few reused worker
/// connections: each client gets exactly its own bytes, whole and in order.
#[test]
fn responses_of_every_size_on_reused_worker_connections_reach_the_right_client_whole() {
    let d = Drover::start(1, "");
    let sizes = [
        5usize, 17_000, 70_000, 300, 65_000, 1, 40_000, 150_000, 16_384, 90,
    ];
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let port = d.port;
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                for round in 0..3 {
                    for (i, &n) in sizes.iter().enumerate() {
                        // A body only this request carries; /echo sends it back inside
                        // a JSON document slightly larger than the body.
                        let tag = format!("c{c}r{round}i{i}-");
                        let body: String = tag.chars().cycle().take(n).collect();
                        write!(
                            w,
                            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n{body}"
                        )
                        .unwrap();
                        let (st, _, got) = read_response(&mut r);
                        assert_eq!(st, 200, "client {c} request {i}");
                        let got = String::from_utf8(got).unwrap();
                        let want = format!("\"body\":\"{body}\",");
                        assert!(
                            got.contains(&want),
                            "client {c} round {round} size {n}: not its own body ({} bytes back)",
                            got.len()
                        );
                        // A plain body of the same size in between.
                        write!(w, "GET /bytes?n={n} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
                        let (st, _, got) = read_response(&mut r);
                        assert_eq!((st, got.len()), (200, n));
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(engine_count(&d, "fast") >= (4 * 3 * sizes.len() * 2) as f64);
}

#[test]
fn bodies_are_served_here_and_a_hand_over_to_pingora_gives_the_connection_back() {
    let d = Drover::start(1, "");
    let (fast, pingora) = (engine_count(&d, "fast"), engine_count(&d, "pingora"));
    let (mut s, mut r) = connect(&d);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).0, 200);
    // Bodies (length and chunked) are drover's engine's.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    let (st, _, body) = read_response(&mut r);
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"hi\""));
    s.write_all(b"PUT /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .unwrap();
    let (st, _, body) = read_response(&mut r);
    assert_eq!(st, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body"], "abcde", "{echo}");
    // Expect: 100-continue goes to Pingora, and the connection comes back.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\nhello drove")
        .unwrap();
    // The worker's 100 Continue first (Pingora forwards it).
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    r.read_line(&mut line).unwrap();
    let (st, _, body) = read_response(&mut r);
    assert_eq!(st, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body"], "hello drove", "{echo}");
    s.write_all(b"GET /bytes?n=5 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (st, _, body) = read_response(&mut r);
    assert_eq!((st, body.len()), (200, 5));
    assert_eq!(engine_count(&d, "pingora") - pingora, 1.0);
    assert_eq!(engine_count(&d, "fast") - fast, 4.0);
}

/// A hand-written worker for framings the real one never produces. Answers `/health`,
/// `/chunked` (chunked with a trailer), `/interim` (103 then 200), `/close` (no length:
/// the body ends when the connection does) and `/` (then closes the idle connection
/// after 100 ms). Counts accepted connections.
fn fake_worker() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve_fake(conn));
        }
    });
    (port, accepted)
}

fn serve_fake(conn: TcpStream) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
                break;
            }
        }
        let reply: &[u8] = match path.as_str() {
            "/health" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Drover-Secret: no\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            "/interim" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            "/close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake",
        };
        if w.write_all(reply).is_err() {
            return;
        }
        match path.as_str() {
            "/close" => return,
            "/" => {
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            _ => {}
        }
    }
}

#[test]
fn chunked_interim_and_close_delimited_responses_pass_through() {
    let (port, _) = fake_worker();
    let d = Drover::start(0, &format!("upstreams:\n  - address: 127.0.0.1:{port}\n"));
    let (mut s, mut r) = connect(&d);
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (st, headers, body) = read_response(&mut r);
    assert_eq!(st, 200);
    assert_eq!(body, b"hello, world");
    assert!(
        !headers.iter().any(|(k, _)| k.starts_with("x-drover-")),
        "internal header leaked: {headers:?}"
    );
    s.write_all(b"GET /interim HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (st, _, body) = read_response(&mut r);
    assert_eq!((st, body.as_slice()), (200, &b"hi"[..]));
    s.write_all(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (st, headers, body) = read_response(&mut r);
    assert_eq!((st, body.as_slice()), (200, &b"until the end"[..]));
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "connection" && v == "close"),
        "{headers:?}"
    );
}

#[test]
fn a_pooled_connection_the_worker_closed_is_replaced_without_an_error() {
    let (port, accepted) = fake_worker();
    let d = Drover::start(0, &format!("upstreams:\n  - address: 127.0.0.1:{port}\n"));
    let (mut s, mut r) = connect(&d);
    let before = accepted.load(Ordering::SeqCst);
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (st, _, body) = read_response(&mut r);
        assert_eq!((st, body.as_slice()), (200, &b"fake"[..]));
        // The worker closes its side of the idle pooled connection meanwhile.
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(accepted.load(Ordering::SeqCst) - before >= 3);
    assert_eq!(d.metric("drover_requests_total{class=\"5xx\"}"), 0.0);
}

#[test]
fn with_the_fast_path_off_pingora_serves_everything() {
    let d = Drover::start(1, "proxy:\n  fast_path: false\n");
    for _ in 0..5 {
        assert_eq!(d.get("/").unwrap().status, 200);
    }
    assert_eq!(engine_count(&d, "fast"), 0.0);
    assert!(engine_count(&d, "pingora") >= 5.0);
}

/// A keep-alive connection idle past a second gives its request state and buffers back
/// (`IDLE_BUFFERS_KEPT` in `src/proxy/h1/mod.rs`). Its next request, even one whose head
/// arrives in pieces, is still served; it is closed at `limits.client_keepalive_timeout`;
/// and idle connections in either state are closed at once when drover shuts down,
/// without waiting for the grace period.
#[test]
fn an_idle_keep_alive_connection_serves_again_times_out_and_closes_on_shutdown() {
    let mut d = Drover::start(
        2,
        "limits:\n  client_keepalive_timeout: 4s\nshutdown:\n  grace_period: 20s\n",
    );
    let get = |s: &mut TcpStream, r: &mut BufReader<TcpStream>, n: usize| {
        s.write_all(format!("GET /bytes?n={n} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let (st, _, body) = read_response(r);
        assert_eq!((st, body.len()), (200, n));
    };
    let (mut s, mut r) = connect(&d);
    get(&mut s, &mut r, 5);
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET /bytes?n=7 HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"Host: a\r\n\r\n").unwrap();
    let (st, _, body) = read_response(&mut r);
    assert_eq!((st, body.len()), (200, 7));
    // Idle for the whole keep-alive timeout: closed, with nothing written.
    let t0 = std::time::Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    let waited = t0.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(8),
        "closed after {waited:?}, keep-alive timeout 4 s"
    );

    // One connection idle past a second, one idle for less, then SIGTERM.
    let (mut long, mut long_r) = connect(&d);
    get(&mut long, &mut long_r, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let (mut short, mut short_r) = connect(&d);
    get(&mut short, &mut short_r, 4);
    let t0 = std::time::Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    for (name, r) in [("idle > 1 s", &mut long_r), ("idle < 1 s", &mut short_r)] {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{name}: {rest:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{name}: closed {:?} after SIGTERM",
            t0.elapsed()
        );
    }
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "drover waited for idle connections: {:?}",
        t0.elapsed()
    );
}
