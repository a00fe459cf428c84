// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! End-to-end resilience tests: real drover, real workers (made to fail through their
//! FAIL_FILE / SLOW_FILE), real sockets; plus small test-side TCP upstreams where a test
//! needs an upstream drover cannot reach otherwise (one that resets every request, a
//! fallback upstream).

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "resilience-test-token-0123";

/// Workers that answer 500 while `<dir>/fail-<id>` exists and sleep the milliseconds
/// in `<dir>/slow-<id>` while that exists.
fn start_with_files(
    workers: usize,
    extra: &str,
    token: Option<&str>,
) -> (tempfile::TempDir, Drover) {
    let dir = tempfile::tempdir().unwrap();
    let d = Drover::start_with(
        workers,
        &format!(
            "  env:\n    FAIL_FILE: \"{}\"\n    SLOW_FILE: \"{}\"\n{extra}",
            dir.path().join("fail-{id}").display(),
            dir.path().join("slow-{id}").display()
        ),
        token,
    );
    (dir, d)
}

fn file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn breakers(d: &Drover) -> Value {
    serde_json::from_str(&d.admin_get("/api/breakers").body).expect("breakers JSON")
}

fn breaker(d: &Drover, name: &str) -> Value {
    breakers(d)["breakers"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn admin_post_as(d: &Drover, path: &str, body: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    request(&d.agent, "POST", &d.admin_url(path), &headers, Some(body)).expect("admin reachable")
}

/// Fires `n` GETs at once (one thread each) and returns the replies.
fn burst(
    d: &Drover,
    path: &str,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Reply> {
    let start = Arc::new(std::sync::Barrier::new(n));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let url = d.url(path);
            let start = start.clone();
            std::thread::spawn(move || {
                let a = agent();
                start.wait();
                request(&a, "GET", &url, headers, None).expect("request")
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn breaker_opens_on_a_worker_answering_500_and_traffic_moves_off_it() {
    let (dir, d) = start_with_files(
        3,
        "circuit_breaker:\n  consecutive_failures: 3\n  open_for: 30s\n  max_open_for: 30s\n",
        None,
    );
    std::fs::write(file(&dir, "fail-0"), "").unwrap();
    let mut errors = 0;
    for _ in 0..30 {
        let r = d.get("/").unwrap();
        if r.status == 500 {
            assert_eq!(r.worker(), Some(0));
            errors += 1;
        }
    }
    // 3 failures trip it; a 4th can slip in when the next request to worker 0 is picked
    // before the logging hook of the 3rd has recorded its outcome.
    assert!((3..=4).contains(&errors), "{errors} failures");
    let b = breaker(&d, "worker-0");
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["last_trip_reason"], "3 consecutive failures", "{b}");
    let mut per_worker: HashMap<usize, usize> = HashMap::new();
    for _ in 0..60 {
        let r = d.get("/").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        *per_worker.entry(r.worker().unwrap()).or_default() += 1;
    }
    assert_eq!(per_worker.get(&0), None, "{per_worker:?}");
    assert_eq!(per_worker[&1] + per_worker[&2], 60);
    let m = d.metrics();
    assert_eq!(
        metric_value(&m, "drover_circuit_breaker_state{backend=\"worker-0\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "drover_circuit_breaker_trips_total{breaker=\"worker-0\",reason=\"consecutive_failures\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "drover_circuit_breaker_transitions_total{backend=\"worker-0\",to=\"open\"}"
        ),
        1.0
    );
    assert!(
        d.log()
            .contains("breaker worker-0: closed -> open: 3 consecutive failures"),
        "transition logged with its reason"
    );
}

#[test]
fn failure_ratio_trips_a_worker_that_fails_one_request_in_two() {
    // Alternate failing and succeeding requests to worker 0 through /status: the
    // consecutive rule never fires, the ratio rule does.
    let d = Drover::start(
        2,
        "balancing:\n  strategy: consistent_hash\n  hash_key: header:x-key\ncircuit_breaker:\n  consecutive_failures: 0\n  failure_ratio: 0.5\n  min_requests: 10\n  open_for: 30s\n",
    );
    // Find a key pinned to some worker; send its requests alternately failing.
    let pinned = request(&d.agent, "GET", &d.url("/"), &[("x-key", "k1")], None)
        .unwrap()
        .worker()
        .unwrap();
    let name = format!("worker-{pinned}");
    for i in 0..40 {
        let path = if i % 2 == 0 { "/status?code=503" } else { "/" };
        let _ = request(&d.agent, "GET", &d.url(path), &[("x-key", "k1")], None);
        if breaker(&d, &name)["state"] == "open" {
            break;
        }
    }
    let b = breaker(&d, &name);
    assert_eq!(b["state"], "open", "{b}");
    assert!(
        b["last_trip_reason"]
            .as_str()
            .unwrap()
            .starts_with("failure ratio"),
        "{b}"
    );
}

#[test]
fn half_open_admits_at_most_k_probes_closes_on_recovery_and_reopens_on_a_failed_probe() {
    let (dir, d) = start_with_files(
        3,
        "circuit_breaker:\n  consecutive_failures: 3\n  failure_ratio: 0\n  open_for: 1s\n  max_open_for: 10s\n  half_open_probes: 2\n",
        None,
    );
    let trip = || {
        std::fs::write(file(&dir, "fail-0"), "").unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || {
                let _ = d.get("/");
                breaker(&d, "worker-0")["state"] == "open"
            }),
            "worker-0's breaker did not open"
        );
    };
    trip();
    // Recovered but slow, so the probes stay in flight while the burst arrives.
    std::fs::remove_file(file(&dir, "fail-0")).unwrap();
    std::fs::write(file(&dir, "slow-0"), "1500").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || breaker(&d, "worker-0")["state"]
            == "half_open"),
        "did not go half-open"
    );
    let replies = burst(&d, "/", 50, &[]);
    let to_worker_0 = replies.iter().filter(|r| r.worker() == Some(0)).count();
    assert!(
        replies.iter().all(|r| r.status == 200),
        "every request of the burst answered"
    );
    assert_eq!(
        to_worker_0, 2,
        "HALF_OPEN admits exactly K = 2 of 50 concurrent requests"
    );
    assert!(
        wait_until(Duration::from_secs(2), || breaker(&d, "worker-0")["state"]
            == "closed"),
        "2 probes succeeded, so it closed"
    );
    std::fs::remove_file(file(&dir, "slow-0")).unwrap();

    // Trip again; this time the probe fails and the breaker reopens for longer.
    trip();
    assert!(wait_until(Duration::from_secs(5), || breaker(
        &d, "worker-0"
    )["state"]
        == "half_open"));
    assert!(
        wait_until(Duration::from_secs(5), || {
            let _ = d.get("/");
            let b = breaker(&d, "worker-0");
            b["state"] == "open" && b["last_trip_reason"] == "a half-open probe failed"
        }),
        "failed probe did not reopen: {}",
        breaker(&d, "worker-0")
    );
    assert!(
        d.metric(
            "drover_circuit_breaker_trips_total{breaker=\"worker-0\",reason=\"probe_failed\"}"
        ) >= 1.0
    );
    assert!(d
        .log()
        .contains("half_open -> open: a half-open probe failed"));
}

#[test]
fn ejection_cap_balances_over_all_when_most_breakers_open() {
    let (dir, d) = start_with_files(
        3,
        "circuit_breaker:\n  consecutive_failures: 2\n  open_for: 30s\n  max_open_for: 30s\n  max_ejected_share: 0.5\n",
        Some(TOKEN),
    );
    // Open two of three breakers by hand: 67% > 50%, so the cap ignores them.
    for w in ["worker-0", "worker-1"] {
        let r = d.admin_post(&format!("/api/breakers/{w}/open"), "");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(wait_until(Duration::from_secs(2), || breakers(&d)
        ["ejection_capped"]
        == true));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let r = d.get("/").unwrap();
        assert_eq!(r.status, 200);
        seen.insert(r.worker().unwrap());
    }
    assert_eq!(seen.len(), 3, "traffic spread over all workers: {seen:?}");
    // Closing one brings the ejected share to 33%: worker-0 stays out.
    assert_eq!(d.admin_post("/api/breakers/worker-1/close", "").status, 200);
    assert!(wait_until(Duration::from_secs(2), || breakers(&d)
        ["ejection_capped"]
        == false));
    for _ in 0..30 {
        assert_ne!(d.get("/").unwrap().worker(), Some(0));
    }
    drop(dir);
}

#[test]
fn breaker_admin_api_requires_the_token_and_validates_names() {
    let d = Drover::start_with(2, "", Some(TOKEN));
    let r = admin_post_as(&d, "/api/breakers/worker-0/open", "", None);
    assert_eq!(r.status, 401);
    let r = admin_post_as(
        &d,
        "/api/breakers/worker-0/open",
        "",
        Some("wrong-token-wrong-token"),
    );
    assert_eq!(r.status, 401);
    assert_eq!(breaker(&d, "worker-0")["state"], "closed");
    assert_eq!(d.admin_post("/api/breakers/worker-9/open", "").status, 404);
    assert_eq!(
        d.admin_post("/api/breakers/worker-0/explode", "").status,
        400
    );
    let r = d.admin_post("/api/breakers/worker-0/open", "");
    assert_eq!(r.status, 200);
    assert_eq!(breaker(&d, "worker-0")["state"], "open");
    assert_eq!(
        breaker(&d, "worker-0")["last_trip_reason"],
        "forced open by an operator"
    );
    assert_eq!(d.admin_post("/api/breakers/worker-0/reset", "").status, 200);
    let b = breaker(&d, "worker-0");
    assert_eq!(b["state"], "closed");
    assert_eq!(b["last_trip_reason"], Value::Null);
}

/// A one-thread HTTP/1.0-style upstream: answers every request with `body`.
fn fixed_upstream(body: &'static str) -> (u16, Arc<AtomicUsize>) {
    serve(move |path| (path != "/health").then_some(body).or(Some("ok\n")))
}

/// An upstream that passes health checks and resets every other request.
fn resetting_upstream() -> (u16, Arc<AtomicUsize>) {
    serve(|path| (path == "/health").then_some("ok\n"))
}

/// Accepts connections; for each request calls `answer(path)`: `Some(body)` → 200 with
/// that body, `None` → close without answering. Counts non-health requests.
fn serve(
    answer: impl Fn(&str) -> Option<&'static str> + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let c = c.clone();
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                if path != "/health" {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(body) = answer(&path) {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    (port, count)
}

#[test]
fn route_breaker_serves_its_static_fallback_and_an_upstream_fallback() {
    let (fb_port, fb_hits) = fixed_upstream("from the fallback upstream\n");
    let extra = format!(
        "routes:\n  - name: api\n    path_prefix: /status\n    circuit_breaker:\n      consecutive_failures: 2\n      open_for: 30s\n    fallback:\n      status: 200\n      headers:\n        content-type: application/json\n      body: '{{\"degraded\": true}}'\n  - name: echo\n    path_prefix: /echo\n    circuit_breaker:\n      consecutive_failures: 2\n    fallback:\n      upstreams: [\"127.0.0.1:{fb_port}\"]\n"
    );
    let d = Drover::start_with(2, &extra, Some(TOKEN));
    for _ in 0..2 {
        assert_eq!(d.get("/status?code=500").unwrap().status, 500);
    }
    // Outcomes are recorded in the logging hook, just after the client has its answer.
    assert!(wait_until(Duration::from_secs(2), || breaker(
        &d,
        "route:api"
    )["state"]
        == "open"));
    // The route answers from its fallback, whatever the request.
    let r = d.get("/status?code=200").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"degraded\": true}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.worker(), None, "no worker was involved");
    // Other paths are not affected.
    assert_eq!(d.get("/").unwrap().status, 200);
    let m = d.metrics();
    assert_eq!(
        metric_value(&m, "drover_route_breaker_state{route=\"api\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "drover_route_fallback_total{kind=\"static\",route=\"api\"}"
        ),
        1.0
    );
    // An operator closes it: the worker answers again.
    assert_eq!(
        d.admin_post("/api/breakers/route:api/close", "").status,
        200
    );
    let r = d.get("/status?code=201").unwrap();
    assert_eq!((r.status, r.worker().is_some()), (201, true));

    // The echo route's fallback is an upstream.
    assert_eq!(
        d.admin_post("/api/breakers/route:echo/open", "").status,
        200
    );
    let r = d.get("/echo").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "from the fallback upstream\n");
    assert_eq!(fb_hits.load(Ordering::SeqCst), 1);
}

#[test]
fn route_bulkhead_rejects_beyond_max_concurrent_with_503() {
    let d = Drover::start(
        2,
        "routes:\n  - name: slow\n    path_prefix: /delay\n    max_concurrent: 2\n",
    );
    let replies = burst(&d, "/delay?ms=1500", 6, &[]);
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let rejected: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!((ok, rejected.len()), (2, 4), "2 admitted, 4 turned away");
    assert!(rejected
        .iter()
        .all(|r| r.header("retry-after") == Some("1")));
    assert_eq!(
        d.metric("drover_route_rejected_total{reason=\"bulkhead\",route=\"slow\"}"),
        4.0
    );
    // Slots are released: the next request gets through.
    assert_eq!(d.get("/delay?ms=1").unwrap().status, 200);
}

#[test]
fn route_total_timeout_answers_504_instead_of_waiting() {
    let d = Drover::start(
        2,
        "routes:\n  - name: quick\n    path_prefix: /delay\n    total_timeout: 300ms\n",
    );
    let t = Instant::now();
    let r = d.get("/delay?ms=3000").unwrap();
    assert_eq!(r.status, 504);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(d.get("/").unwrap().status, 200, "other routes unaffected");
}

#[test]
fn a_request_that_crashes_its_worker_is_not_sent_to_the_next_one() {
    for fast in [true, false] {
        let d = Drover::start(2, &format!("proxy:\n  fast_path: {fast}\n"));
        let pids = d.worker_pids();
        let r = d.get("/crash").unwrap();
        assert_eq!(r.status, 502, "fast_path {fast}: {}", r.body);
        // Exactly one worker died: the request was not retried on the other.
        assert!(wait_until(Duration::from_secs(5), || {
            d.metric("drover_worker_restarts_total{worker=\"worker-0\"}")
                + d.metric("drover_worker_restarts_total{worker=\"worker-1\"}")
                >= 1.0
        }));
        std::thread::sleep(Duration::from_millis(300));
        let restarts = d.metric("drover_worker_restarts_total{worker=\"worker-0\"}")
            + d.metric("drover_worker_restarts_total{worker=\"worker-1\"}");
        assert_eq!(restarts, 1.0, "fast_path {fast}: pids before {pids:?}");
        assert_eq!(d.metric("drover_retries_total"), 0.0, "fast_path {fast}");
    }
}

#[test]
fn retry_budget_caps_retries_during_a_total_outage() {
    let ups: Vec<_> = (0..3).map(|_| resetting_upstream()).collect();
    let mut yaml = String::from("upstreams:\n");
    for (port, _) in &ups {
        yaml.push_str(&format!("  - address: 127.0.0.1:{port}\n"));
    }
    // Resets after the request was sent are retried only when configured to be.
    yaml.push_str("circuit_breaker:\n  enabled: false\nproxy:\n  retries: 2\n  retry_on: [connect_failure, reset]\n  retry_backoff:\n    base: 0s\n    max: 0s\n  retry_budget:\n    ratio: 0.2\n    min_per_second: 1\n    window: 10s\n");
    let d = Drover::start(0, &yaml);
    let requests = 100;
    for _ in 0..requests {
        let r = d.get("/").unwrap();
        assert_eq!(r.status, 502);
    }
    let attempts: usize = ups.iter().map(|(_, c)| c.load(Ordering::SeqCst)).sum();
    // Without a budget: 100 × 3 = 300 attempts. With it: 100 + 20% of 100 + the floor
    // (1/s × 10 s); a few more may slip through concurrent checks.
    assert!(
        (requests..=requests + 20 + 10 + 3).contains(&attempts),
        "{attempts} upstream attempts for {requests} requests"
    );
    // Each request stops at its first refused retry: most of the 100 see one.
    let denied = d.metric("drover_retries_denied_total{reason=\"budget\"}");
    assert!(denied >= 60.0, "denied {denied}");
    let b = breakers(&d);
    assert_eq!(b["retry_budget"]["requests"], requests);
}

#[test]
fn rate_limit_answers_429_with_headers_while_another_client_is_unaffected_and_floods_stay_bounded()
{
    let d = Drover::start(
        2,
        "rate_limit:\n  requests_per_second: 0.1\n  burst: 5\n  key: header:x-api-key\n  max_clients: 1024\n",
    );
    let send =
        |key: &str| request(&d.agent, "GET", &d.url("/"), &[("x-api-key", key)], None).unwrap();
    for _ in 0..5 {
        assert_eq!(send("client-a").status, 200);
    }
    let r = send("client-a");
    assert_eq!(r.status, 429);
    let secs = |h: &str| r.header(h).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert!((9..=10).contains(&secs("retry-after")), "{:?}", r.headers);
    assert_eq!(r.header("ratelimit-limit"), Some("5"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(
        (49..=50).contains(&secs("ratelimit-reset")),
        "{:?}",
        r.headers
    );
    assert_eq!(send("client-b").status, 200, "another key is unaffected");

    // Flood: 4000 distinct keys. The table stays 1024 slots × 8 bytes, and the flood
    // does not clear client-a's bucket.
    let bytes = d.metric("drover_rate_limit_table_bytes{scope=\"global\"}");
    assert_eq!(bytes, 8192.0);
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let url = d.url("/");
            std::thread::spawn(move || {
                let a = agent();
                let mut limited = 0;
                for i in 0..1000 {
                    let key = format!("flood-{t}-{i}");
                    let r = request(&a, "GET", &url, &[("x-api-key", &key)], None).unwrap();
                    assert!(r.status == 200 || r.status == 429, "{}", r.status);
                    limited += (r.status == 429) as usize;
                }
                limited
            })
        })
        .collect();
    let limited: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        d.metric("drover_rate_limit_table_bytes{scope=\"global\"}"),
        bytes
    );
    assert_eq!(send("client-a").status, 429, "client-a still limited");
    let counted = d.metric("drover_rate_limited_total{scope=\"global\"}");
    assert_eq!(counted as usize, limited + 2);
}

#[test]
fn chaos_is_off_by_default_and_injected_faults_are_labelled() {
    let fault = r#"{"target": {"worker": 1}, "kind": "error", "status": 500, "share": 1}"#;
    {
        let d = Drover::start_with(2, "", Some(TOKEN));
        assert_eq!(d.admin_post("/api/chaos/faults", fault).status, 403);
    }

    let d = Drover::start_with(
        2,
        "chaos:\n  enabled: true\ncircuit_breaker:\n  consecutive_failures: 3\n  open_for: 30s\n",
        Some(TOKEN),
    );
    assert_eq!(
        admin_post_as(&d, "/api/chaos/faults", fault, None).status,
        401
    );
    let r = d.admin_post("/api/chaos/faults", fault);
    assert_eq!(r.status, 201, "{}", r.body);
    let mut failed = 0;
    for _ in 0..20 {
        if d.get("/").unwrap().status == 500 {
            failed += 1;
        }
    }
    assert!(
        (3..=4).contains(&failed),
        "worker-1's breaker opened after 3 injected errors: {failed}"
    );
    assert_eq!(breaker(&d, "worker-1")["state"], "open");
    assert_eq!(
        d.metric("drover_chaos_injected_total{kind=\"error\",target=\"worker-1\"}"),
        failed as f64
    );
    assert!(d.log().contains("chaos: injected error on worker-1"));
    let listed: Value = serde_json::from_str(&d.admin_get("/api/chaos").body).unwrap();
    assert_eq!(listed["faults"].as_array().unwrap().len(), 1);
    let r = request(
        &d.agent,
        "DELETE",
        &d.admin_url("/api/chaos/faults"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn chaos_killing_a_worker_every_two_seconds_under_steady_get_load_loses_nothing() {
    let d = Drover::start_with(3, "chaos:\n  enabled: true\n", Some(TOKEN));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(d.url("/"), 4, stop.clone(), usize::MAX);
    let mut kills = 0;
    for round in 0..4 {
        std::thread::sleep(Duration::from_secs(2));
        let id = round % 3;
        let r = d.admin_post(&format!("/api/chaos/workers/{id}/kill"), "");
        if r.status == 200 {
            kills += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, bad, why) = loader.join().unwrap();
    assert!(kills >= 3, "kills went through: {kills}");
    assert!(ok > 500, "steady load ran: {ok}");
    assert_eq!(bad, 0, "failed: {:?}", &why[..why.len().min(5)]);
    assert_eq!(
        (0..3)
            .map(|w| d.metric(&format!(
                "drover_chaos_injected_total{{kind=\"kill\",target=\"worker-{w}\"}}"
            )))
            .sum::<f64>(),
        kills as f64
    );
}

#[test]
fn clients_hanging_up_mid_request_never_trip_a_worker_breaker() {
    use std::io::Write;
    let d = Drover::start(
        2,
        "circuit_breaker:\n  consecutive_failures: 3\n  failure_ratio: 0.0\n",
    );
    // Twenty clients send a request and hang up before the (slow) answer.
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        s.write_all(b"GET /delay?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let m = d.metrics();
    for w in ["worker-0", "worker-1"] {
        let opened = common::metric_value(
            &m,
            &format!("drover_circuit_breaker_transitions_total{{backend=\"{w}\",to=\"open\"}}"),
        );
        assert_eq!(opened, 0.0, "{w}'s breaker opened because clients hung up");
    }
    for _ in 0..10 {
        assert_eq!(d.get("/").unwrap().status, 200);
    }
}

/// A process killed when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upstream-worker outside drover's supervision (a remote upstream), on a free port.
fn external_worker(id: usize) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = std::process::Command::new(worker_bin())
        .env("PORT", port.to_string())
        .env("WORKER_ID", id.to_string())
        .env("BIND", "127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start upstream-worker");
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let child = KillOnDrop(child);
    assert!(up, "upstream-worker {id} did not listen");
    (child, port)
}

#[test]
fn a_backend_that_refuses_connections_leaves_rotation_at_once() {
    // No retries, so every request sent to the dead backend would be a 502: only the
    // passive check (a refused connection ejects the backend) keeps them off it before
    // its active health check has failed twice.
    let (_a, port_a) = external_worker(0);
    let (mut b, port_b) = external_worker(1);
    let d = Drover::start(
        0,
        &format!(
            "upstreams:\n  - address: 127.0.0.1:{port_a}\n  - address: 127.0.0.1:{port_b}\nbalancing:\n  strategy: round_robin\nproxy:\n  retries: 0\n"
        ),
    );
    let mut seen = std::collections::HashSet::new();
    assert!(wait_until(Duration::from_secs(10), || {
        if let Some(w) = d.get("/").ok().and_then(|r| r.worker()) {
            seen.insert(w);
        }
        seen.len() == 2
    }));
    b.0.kill().unwrap();
    b.0.wait().unwrap();
    let failed = (0..200)
        .filter(|_| d.get("/").map(|r| r.status != 200).unwrap_or(true))
        .count();
    assert!(
        failed <= 1,
        "{failed} of 200 requests failed after the kill"
    );
    assert!(
        d.log().contains("refused a connection, out of rotation"),
        "{}",
        d.log()
    );
    assert!(d.metric("drover_health_checks_total{result=\"refused\"}") >= 1.0);
}

/// Sends GET / from `threads` clients for `run`; returns (answers, 500s) per worker.
fn steady(d: &Drover, threads: usize, run: Duration) -> HashMap<usize, (usize, usize)> {
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let url = d.url("/");
            std::thread::spawn(move || {
                let a = agent();
                let mut m: HashMap<usize, (usize, usize)> = HashMap::new();
                let end = Instant::now() + run;
                while Instant::now() < end {
                    if let Ok(r) = request(&a, "GET", &url, &[], None) {
                        if let Some(w) = r.worker() {
                            let e = m.entry(w).or_default();
                            e.0 += 1;
                            e.1 += usize::from(r.status == 500);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(4));
                }
                m
            })
        })
        .collect();
    let mut total: HashMap<usize, (usize, usize)> = HashMap::new();
    for h in hs {
        for (w, (n, e)) in h.join().unwrap() {
            let t = total.entry(w).or_default();
            t.0 += n;
            t.1 += e;
        }
    }
    total
}

/// Worker 0 fails 20% of its requests at random, always: its adaptive breaker learns
/// that as its normal and keeps it in rotation (the static rules are off here, so only
/// the adaptive rule could trip). When it jumps to 70%, the breaker opens within a
/// couple of windows, and says why against which baseline.
#[test]
fn adaptive_breaker_keeps_a_noisy_worker_and_ejects_it_on_a_sudden_change() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share-0");
    let d = Drover::start(
        2,
        &format!(
            "  env:\n    FAIL_SHARE_FILE: \"{}\"\ncircuit_breaker:\n  consecutive_failures: 0\n  failure_ratio: 0\n  window: 1s\n  min_requests: 20\n  open_for: 30s\n  max_open_for: 30s\n  adaptive:\n    enabled: true\n    warmup_windows: 3\n    latency_factor: 0\n",
            dir.path().join("share-{id}").display()
        ),
    );
    std::fs::write(&share, "0.2").unwrap();
    let noisy = steady(&d, 4, Duration::from_secs(7));
    let (n0, e0) = noisy[&0];
    let observed = e0 as f64 / n0 as f64;
    assert!(n0 > 300 && (0.12..0.28).contains(&observed), "{noisy:?}");
    let b = breaker(&d, "worker-0");
    assert_eq!(b["state"], "closed", "noisy-but-normal worker ejected: {b}");
    let learned = b["baseline"]["failure_ratio"].as_f64().unwrap();
    assert!((learned - 0.2).abs() < 0.08, "{b}");
    assert!(b["baseline"]["windows"].as_u64().unwrap() >= 3, "{b}");
    assert_eq!(
        d.metric("drover_circuit_breaker_trips_total{breaker=\"worker-0\",reason=\"adaptive_failure_ratio\"}"),
        0.0
    );

    std::fs::write(&share, "0.7").unwrap();
    let t0 = Instant::now();
    let mut opened = false;
    while t0.elapsed() < Duration::from_secs(6) && !opened {
        steady(&d, 4, Duration::from_millis(250));
        opened = breaker(&d, "worker-0")["state"] == "open";
    }
    let b = breaker(&d, "worker-0");
    assert!(opened, "a jump from 20% to 70% failures did not trip: {b}");
    assert_eq!(b["last_trip_kind"], "adaptive_failure_ratio", "{b}");
    let reason = b["last_trip_reason"].as_str().unwrap();
    assert!(reason.contains("well above its baseline"), "{reason}");
    println!(
        "noisy phase: {n0} requests to worker-0, {:.1}% failed, baseline {:.3}; tripped after {:?}: {reason}",
        observed * 100.0,
        learned,
        t0.elapsed()
    );
    assert_eq!(breaker(&d, "worker-1")["state"], "closed");
    assert_eq!(
        d.metric("drover_circuit_breaker_trips_total{breaker=\"worker-0\",reason=\"adaptive_failure_ratio\"}"),
        1.0
    );
}
