// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Protocols through drover (issue 16): WebSocket (sticky, counted per worker, drained
//! on shutdown), gRPC to h2c workers with a real gRPC client and server (grpcio from
//! PyPI; unary, server-streaming and bidirectional calls, trailers, statuses counted, breakers that see gRPC
//! failures), and an HTTP/2 rapid-reset flood (CVE-2023-44487).

mod common;
#[path = "support/tls.rs"]
mod tls;

use common::{metric_value, wait_until, Drover, Options};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn apps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

fn which(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "{cmd} is not installed (.ci/run installs it)"
    );
    p
}

/// Sum of every series of a metric family in the exposition text.
fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ws_connect(port: u16, cookie: Option<&str>) -> tungstenite::WebSocket<std::net::TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (ws, resp) = tungstenite::client(req, tcp).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

fn ws_echo(ws: &mut tungstenite::WebSocket<std::net::TcpStream>, text: &str) -> String {
    ws.send(tungstenite::Message::Text(text.into())).unwrap();
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return t.to_string(),
            _ => continue,
        }
    }
}

/// Reads once: true when the peer closed the WebSocket (a close frame, a reset, EOF),
/// false on a message or when nothing arrived within the read timeout.
fn ws_closed(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> bool {
    match ws.read() {
        Ok(tungstenite::Message::Close(_)) => true,
        Ok(_) => false,
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true,
    }
}

#[test]
fn websocket_is_sticky_counted_per_worker_and_drained_on_shutdown() {
    let node = which("node");
    let script = apps().join("socketio/ws-echo.js");
    assert!(
        apps().join("socketio/node_modules/ws").is_dir(),
        "run `npm ci` in tests/apps/socketio (.ci/run does)"
    );
    let mut d = Drover::start_opts(Options {
        workers: 2,
        command: Some(vec![node, script.display().to_string()]),
        extra: "shutdown:\n  grace_period: 3s\nsessions:\n  enabled: true\n  store: memory\n",
        ..Options::default()
    });
    // A first request places the session and pins it to a worker.
    let first = d.get("/").unwrap();
    let pinned = first.worker().unwrap();
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut socks = Vec::new();
    for i in 0..3 {
        let mut ws = ws_connect(d.port, Some(&cookie));
        assert_eq!(ws_echo(&mut ws, &format!("m{i}")), format!("{pinned}:m{i}"));
        socks.push(ws);
    }
    let m = d.metrics();
    assert_eq!(
        metric_value(
            &m,
            &format!("drover_upgraded_connections{{backend=\"worker-{pinned}\"}}")
        ),
        3.0,
        "{m}"
    );
    assert_eq!(family_sum(&m, "drover_upgraded_connections"), 3.0);
    // Closing them is counted too.
    for mut ws in socks.drain(..2) {
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    assert!(wait_until(Duration::from_secs(5), || {
        family_sum(&d.metrics(), "drover_upgraded_connections") == 1.0
    }));
    // SIGTERM: the open WebSocket keeps working during the grace period, then drover
    // stops within it and the socket is closed.
    let mut ws = socks.pop().unwrap();
    let t0 = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ws_echo(&mut ws, "late"), format!("{pinned}:late"));
    let code = d.wait_exit(Duration::from_secs(15));
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(
        took < Duration::from_secs(3 + 6),
        "shutdown took {took:?} with a 3 s grace period"
    );
    let closed = (0..5).any(|_| ws_closed(&mut ws));
    assert!(
        closed,
        "the WebSocket must be closed once drover has stopped"
    );
}

#[test]
fn worker_drain_keeps_websockets_until_the_drain_timeout_then_closes_them() {
    let node = which("node");
    let script = apps().join("socketio/ws-echo.js");
    let d = Drover::start_opts(Options {
        workers: 2,
        command: Some(vec![node, script.display().to_string()]),
        worker_keys: "  drain_timeout: 2s\n",
        extra: "sessions:\n  enabled: true\n  store: memory\n",
        ..Options::default()
    });
    let first = d.get("/").unwrap();
    let pinned = first.worker().unwrap();
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut ws = ws_connect(d.port, Some(&cookie));
    assert_eq!(ws_echo(&mut ws, "a"), format!("{pinned}:a"));
    let t0 = Instant::now();
    let r = d.admin_post(&format!("/api/workers/{pinned}/drain"), "");
    assert!(r.status < 300, "{} {}", r.status, r.body);
    // Draining: no new requests go there, but the open WebSocket keeps working.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(ws_echo(&mut ws, "b"), format!("{pinned}:b"));
    // At the drain timeout the worker is stopped and the socket closes.
    let closed = wait_until(Duration::from_secs(10), || ws_closed(&mut ws));
    let took = t0.elapsed();
    assert!(
        closed,
        "the WebSocket must close once its worker is stopped"
    );
    assert!(
        took >= Duration::from_millis(1800),
        "the drain must wait for the WebSocket (closed after {took:?})"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        family_sum(&d.metrics(), "drover_upgraded_connections") == 0.0
    }));
}

fn grpc_drover(extra_workers: &str, tls: Option<(&tls::Issued, u16)>) -> Drover {
    let python = which("python3");
    let script = apps().join("grpc/echo_server.py");
    let mut extra = String::from(
        "http2:\n  cleartext: true\ncircuit_breaker:\n  consecutive_failures: 3\n  open_for: 30s\nsessions:\n  enabled: false\n",
    );
    if let Some((c, port)) = tls {
        extra.push_str(&format!(
            "tls:\n  listen: [127.0.0.1:{port}]\n  certificates:\n    - cert_file: {}\n      key_file: {}\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    let keys = format!("  protocol: h2c\n{extra_workers}");
    Drover::start_opts(Options {
        workers: 2,
        command: Some(vec![python, script.display().to_string()]),
        worker_keys: &keys,
        extra: &extra,
        ..Options::default()
    })
}

fn grpc_calls(target: &str, calls: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(apps().join("grpc/echo_client.py"))
        .arg(target)
        .args(calls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpc client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn grpc_unary_and_streaming_calls_pass_through_with_trailers_and_statuses_counted() {
    let ca = tls::TestCa::new();
    let a = ca.issue("a", &["a.test"]);
    let tls_port = common::free_port();
    let d = grpc_drover("", Some((&a, tls_port)));
    let h2c = format!("127.0.0.1:{}", d.port);
    let over_tls = format!("tls:127.0.0.1:{tls_port}:{}:a.test", ca.cert.display());
    for target in [&h2c, &over_tls] {
        let r = grpc_calls(
            target,
            &["say:hello", "say:again", "count:5", "fail", "chat:4"],
        );
        assert_eq!(r[0]["code"], "OK", "{target}: {r:?}");
        let reply = r[0]["reply"].as_str().unwrap();
        assert!(reply.ends_with(":hello"), "{reply}");
        // Trailing metadata (in HTTP/2 trailers) reached the client.
        let worker = reply.split(':').next().unwrap();
        assert_eq!(r[0]["trailers"]["x-worker"], worker, "{r:?}");
        assert_eq!(r[2]["code"], "OK");
        assert_eq!(r[2]["replies"].as_array().unwrap().len(), 5, "{r:?}");
        assert_eq!(r[3]["code"], "UNAVAILABLE");
        // Bidirectional streaming: 4 messages each way on one call.
        assert_eq!(r[4]["code"], "OK", "{r:?}");
        let chat: Vec<&str> = r[4]["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(chat.len(), 4, "{r:?}");
        assert!(chat[3].ends_with(":m3"), "{chat:?}");
    }
    // Counted when each exchange ends, which may be just after the client's last read.
    let counted = wait_until(Duration::from_secs(5), || {
        let m = d.metrics();
        metric_value(&m, "drover_grpc_responses_total{code=\"0\"}") == 8.0
            && metric_value(&m, "drover_grpc_responses_total{code=\"14\"}") == 2.0
            && metric_value(&m, "drover_requests_by_version_total{version=\"2\"}") == 10.0
    });
    assert!(counted, "{}", d.metrics());
}

#[test]
fn breakers_open_on_grpc_unavailable_even_with_http_200() {
    let d = grpc_drover("  env:\n    FAIL_WORKER: \"1\"\n", None);
    let target = format!("127.0.0.1:{}", d.port);
    let calls: Vec<String> = (0..24).map(|i| format!("say:{i}")).collect();
    let calls: Vec<&str> = calls.iter().map(|s| s.as_str()).collect();
    let r = grpc_calls(&target, &calls);
    let failed = r.iter().filter(|c| c["code"] != "OK").count();
    // Round robin sends every other call to the failing worker until its breaker
    // opens after 3 consecutive failures; then every call goes to worker 0.
    assert!((3..=6).contains(&failed), "{failed} failed: {r:?}");
    assert!(r[12..].iter().all(|c| c["code"] == "OK"), "{r:?}");
    let breakers = d.admin_get("/api/breakers");
    assert!(breakers.body.contains("open"), "{}", breakers.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_leaves_drover_healthy_and_bounded() {
    let d = tokio::task::spawn_blocking(|| {
        Drover::start_opts(Options {
            workers: 1,
            extra: "http2:\n  cleartext: true\n  max_concurrent_streams: 100\n",
            ..Options::default()
        })
    })
    .await
    .unwrap();
    let rss = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let pid = d.pid();
    let rss_before = rss(pid);
    const STREAMS: usize = 20_000;
    let port = d.port;
    let started = Instant::now();
    // Several connections, each opening streams and resetting them at once.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
            let driver = tokio::spawn(conn);
            let mut sent = 0usize;
            let mut error = None;
            while sent < STREAMS / 4 {
                client = match client.clone().ready().await {
                    Ok(c) => c,
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                };
                let req = http::Request::get(format!("http://127.0.0.1:{port}/delay?ms=200"))
                    .body(())
                    .unwrap();
                match client.send_request(req, false) {
                    Ok((_resp, mut stream)) => {
                        stream.send_reset(h2::Reason::CANCEL);
                        sent += 1;
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
            (sent, error)
        }));
    }
    let mut sent = 0;
    let mut errors = Vec::new();
    for c in conns {
        let (s, e) = c.await.unwrap();
        sent += s;
        errors.extend(e);
    }
    let flood = started.elapsed();
    let rss_peak = rss(pid);
    // drover answers a normal request at once, and nothing stays in flight.
    let d = std::sync::Arc::new(d);
    let d2 = d.clone();
    let (status, settled, worker_requests) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let status = d2.get("/").map(|r| r.status).unwrap_or(0);
        let answer = t.elapsed();
        let settled = wait_until(Duration::from_secs(10), || {
            d2.metric("drover_requests_in_flight") == 0.0
        });
        let m = d2.metrics();
        let reached = family_sum(&m, "drover_backend_requests_total");
        eprintln!("normal request after the flood answered in {answer:?}");
        (status, settled, reached)
    })
    .await
    .unwrap();
    let rss_after = rss(pid);
    eprintln!(
        "rapid reset: {sent} streams opened and reset in {flood:?} over 4 connections; connection errors: {errors:?}; requests that reached the worker: {worker_requests}; drover RSS {rss_before} kB before, {rss_peak} kB after the flood, {rss_after} kB at the end"
    );
    assert_eq!(status, 200, "drover must still serve after the flood");
    assert!(settled, "requests stayed in flight after the flood");
    assert!(
        (worker_requests as usize) <= sent + 1,
        "a reset stream must not turn into more than one request"
    );
    assert!(
        rss_peak < rss_before + 128 * 1024,
        "memory must stay bounded: {rss_before} kB -> {rss_peak} kB"
    );
}
