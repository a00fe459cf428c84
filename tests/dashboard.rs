// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! The dashboard in a real headless Chromium, driven over the DevTools protocol.

#[path = "support/cdp.rs"]
mod cdp;
mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "dashboard-test-token-0123";

#[test]
fn dashboard_in_chromium_updates_live_under_load_and_switches_strategy() {
    let d = Drover::start_with(2, "", Some(TOKEN));
    let browser = cdp::Browser::launch().expect("headless chromium (apt-get install -y chromium)");
    let mut page = browser.page().expect("page target");
    page.navigate(&d.admin_url(&format!("/dashboard#token={TOKEN}")))
        .unwrap();
    page.wait_for(
        "Number(document.body.dataset.updates) >= 2 && document.getElementById('conn').textContent === 'live'",
        Duration::from_secs(20),
    )
    .expect("the page receives snapshots over the WebSocket");
    let rows = page
        .eval("document.querySelectorAll('#workers tbody tr[data-worker]').length")
        .unwrap();
    assert_eq!(rows, 2, "one row per worker");
    let idle_rps = page
        .eval("document.getElementById('rps').textContent")
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = load(d.url("/delay?ms=5"), 4, stop.clone(), 1_000_000);
    page.wait_for(
        "parseFloat(document.getElementById('rps').textContent) > 20",
        Duration::from_secs(20),
    )
    .expect("throughput shown rises under load");
    // Numbers keep changing while load runs.
    let mut seen = std::collections::HashSet::new();
    let first = page.eval("Number(document.body.dataset.updates)").unwrap();
    for _ in 0..8 {
        let v = page
            .eval("document.getElementById('rps').textContent + '|' + document.getElementById('p99').textContent")
            .unwrap();
        seen.insert(v.to_string());
        std::thread::sleep(Duration::from_millis(500));
    }
    let last = page.eval("Number(document.body.dataset.updates)").unwrap();
    assert!(
        last.as_f64().unwrap() >= first.as_f64().unwrap() + 3.0,
        "at least one update a second: {first} -> {last}"
    );
    assert!(
        seen.len() >= 2,
        "numbers did not change: {seen:?} (idle {idle_rps})"
    );
    let worker_rps = page
        .eval("[...document.querySelectorAll('#workers tbody td.rps')].map(td => parseFloat(td.textContent))")
        .unwrap();
    let worker_rps: Vec<f64> = serde_json::from_value(worker_rps).unwrap();
    assert!(worker_rps.iter().all(|r| *r > 0.0), "{worker_rps:?}");
    let p99 = page
        .eval("document.getElementById('p99').textContent")
        .unwrap();
    assert!(p99.as_str().unwrap().ends_with("ms"), "{p99}");

    // Switch the strategy from the page (token from the URL fragment).
    page.eval(
        "document.getElementById('strategy-select').value = 'least_connections'; document.getElementById('strategy-apply').click(); true",
    )
    .unwrap();
    let status = page
        .wait_for(
            "document.getElementById('strategy-result').dataset.status",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(status, "200");
    assert_eq!(d.status()["strategy"], "least_connections");
    page.wait_for(
        "document.getElementById('strategy-current').textContent === 'least_connections' && document.getElementById('events').textContent.includes('strategy round_robin -> least_connections')",
        Duration::from_secs(10),
    )
    .expect("the page shows the new strategy and the event");

    // Charts have a few seconds of data by now: keep a screenshot.
    std::thread::sleep(Duration::from_secs(3));
    let png = page.screenshot_png().unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "screenshot too small: {} bytes",
        png.len()
    );
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    if let Some(p) = std::env::var_os("DROVER_SCREENSHOT") {
        std::fs::write(p, &png).unwrap();
    }

    stop.store(true, Ordering::Relaxed);
    let (ok, failed, why) = load.join().unwrap();
    assert!(ok > 100 && failed == 0, "ok {ok} failed {failed}: {why:?}");

    // A wrong token is refused and changes nothing.
    page.eval(
        "document.getElementById('token').value = 'wrong-token-wrong-token'; document.getElementById('strategy-result').dataset.status = ''; document.getElementById('strategy-select').value = 'random'; document.getElementById('strategy-apply').click(); true",
    )
    .unwrap();
    let status = page
        .wait_for(
            "document.getElementById('strategy-result').dataset.status",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(status, "401");
    assert_eq!(d.status()["strategy"], "least_connections");

    // Without WebSocket the page polls /api/live instead.
    page.navigate(&d.admin_url(&format!("/dashboard?transport=poll#token={TOKEN}")))
        .unwrap();
    page.wait_for(
        "Number(document.body.dataset.updates) >= 2 && document.getElementById('conn').textContent === 'polling'",
        Duration::from_secs(20),
    )
    .expect("polling fallback updates the page");
}

/// The breaker panel shows route breakers next to workers' with the trip reason, a
/// count-down to half-open and the recent transitions; the capacity and worker-metrics
/// panels fill in from traffic.
#[test]
fn dashboard_shows_breakers_capacity_and_worker_metrics() {
    let d = Drover::start_with(
        2,
        "circuit_breaker:\n  open_for: 60s\n  max_open_for: 60s\nroutes:\n- name: flaky\n  path_prefix: /status\n  circuit_breaker:\n    consecutive_failures: 2\n    failure_ratio: 0\n    open_for: 30s\n    max_open_for: 30s\n",
        Some(TOKEN),
    );
    // Traffic for the capacity plan, a worker metric, and the route breaker's trip.
    for _ in 0..120 {
        assert_eq!(d.get("/delay?ms=2").unwrap().status, 200);
    }
    d.get("/metrics-report?name=queue_depth&value=7").unwrap();
    for _ in 0..2 {
        assert_eq!(d.get("/status?code=500").unwrap().status, 500);
    }
    let r = d.get("/status?code=500").unwrap();
    assert_eq!(r.status, 503, "route open: {}", r.body);
    let r = d.admin_post("/api/breakers/worker-1/open", "");
    assert_eq!(r.status, 200, "{}", r.body);

    let browser = cdp::Browser::launch().expect("headless chromium (apt-get install -y chromium)");
    let mut page = browser.page().expect("page target");
    page.navigate(&d.admin_url(&format!("/dashboard#token={TOKEN}")))
        .unwrap();
    page.wait_for(
        "Number(document.body.dataset.updates) >= 2",
        Duration::from_secs(20),
    )
    .expect("snapshots arrive");
    let row = |name: &str, cell: &str| {
        format!("(document.querySelector('#breakers tr[data-breaker=\"{name}\"] .{cell}') || {{}}).textContent")
    };
    let state = page.eval(&row("route:flaky", "state")).unwrap();
    assert_eq!(state, "open");
    let reason = page.eval(&row("route:flaky", "reason")).unwrap();
    assert_eq!(reason, "2 consecutive failures");
    let transitions = page.eval(&row("route:flaky", "transitions")).unwrap();
    assert!(
        transitions
            .as_str()
            .unwrap()
            .contains("closed→open (2 consecutive failures)"),
        "{transitions}"
    );
    let left = |page: &mut cdp::Page| -> f64 {
        page.eval(&row("route:flaky", "half-open-in"))
            .unwrap()
            .as_str()
            .unwrap()
            .trim_end_matches(" s")
            .parse()
            .unwrap()
    };
    let first = left(&mut page);
    assert!(first > 20.0 && first <= 30.0, "{first}");
    std::thread::sleep(Duration::from_millis(2100));
    let later = left(&mut page);
    assert!(
        later < first - 1.0,
        "the count-down moves: {first} -> {later}"
    );
    assert_eq!(page.eval(&row("worker-1", "state")).unwrap(), "open");
    assert_eq!(
        page.eval(&row("worker-1", "reason")).unwrap(),
        "forced open by an operator"
    );
    assert_eq!(page.eval(&row("worker-0", "state")).unwrap(), "closed");
    // Capacity and worker metrics.
    page.wait_for(
        "document.getElementById('capacity-sustainable') && parseFloat(document.getElementById('capacity-sustainable').textContent) > 0",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("the capacity panel shows a sustainable rate: {e}\n{}", d.admin_get("/api/capacity").body));
    let metric = page
        .eval("(document.querySelector('#app-metrics tr[data-metric=\"queue_depth\"]') || {}).textContent")
        .unwrap();
    assert!(
        metric.as_str().unwrap().contains("gauge") && metric.as_str().unwrap().contains("7.00"),
        "{metric}"
    );
}
