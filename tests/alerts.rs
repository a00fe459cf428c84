// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Alerts, SLOs, worker-reported metrics and the scaling recommendation, end to end.

mod common;
#[path = "support/promtext.rs"]
mod promtext;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A local Alertmanager stand-in: answers 500 to the first `fail_first` posts, 200 after;
/// keeps every (status answered, body).
type Received = Arc<Mutex<Vec<(u16, Value)>>>;

fn receiver(fail_first: usize) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if first {
                    assert!(line.starts_with("POST /hook "), "{line}");
                    first = false;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let mut g = seen.lock().unwrap();
            let status = if g.len() < fail_first { 500 } else { 200 };
            g.push((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            drop(g);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, got)
}

fn alerts(d: &Drover) -> Value {
    serde_json::from_str(&d.admin_get("/api/alerts").body).unwrap()
}

fn rule_state(d: &Drover, name: &str) -> String {
    alerts(d)["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| r["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn alert_goes_pending_then_fires_to_the_webhook_with_a_retry_then_resolves() {
    let (port, got) = receiver(1);
    let d = Drover::start(
        2,
        &format!(
            "observability:\n  alerts:\n    webhook: http://127.0.0.1:{port}/hook\n    webhook_retries: 3\n    webhook_timeout: 1s\n    rules:\n    - name: HighTraffic\n      expr: rps\n      op: '>'\n      threshold: 20\n      for: 3s\n      severity: page\n      summary: traffic above 20 rps\n"
        ),
    );
    // Rules are evaluated from the first one-second sample on.
    assert!(wait_until(Duration::from_secs(3), || rule_state(
        &d,
        "HighTraffic"
    ) == "inactive"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(d.url("/"), 4, stop.clone(), 1_000_000);
    assert!(
        wait_until(Duration::from_secs(10), || rule_state(&d, "HighTraffic")
            == "pending"),
        "{}",
        alerts(&d)
    );
    // Pending for `for: 3s` before firing, and shown on the dashboard feed meanwhile.
    let live: Value = serde_json::from_str(&d.admin_get("/api/live").body).unwrap();
    assert_eq!(live["alerts"][0]["name"], "HighTraffic", "{live}");
    assert!(wait_until(Duration::from_secs(10), || rule_state(
        &d,
        "HighTraffic"
    ) == "firing"));
    // The receiver refused the first delivery; the retry got through.
    assert!(wait_until(Duration::from_secs(10), || got
        .lock()
        .unwrap()
        .len()
        >= 2));
    {
        let g = got.lock().unwrap();
        assert_eq!(g[0].0, 500);
        assert_eq!(g[1].0, 200);
        let body = &g[1].1;
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["receiver"], "drover");
        let a = &body["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "HighTraffic");
        assert_eq!(a["labels"]["severity"], "page");
        assert_eq!(a["annotations"]["summary"], "traffic above 20 rps");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        let starts = a["startsAt"].as_str().unwrap();
        assert!(
            starts.len() == 24 && starts.ends_with('Z') && starts.contains('T'),
            "{starts}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (_, failed, why) = load.join().unwrap();
    assert_eq!(failed, 0, "{why:?}");
    assert!(wait_until(Duration::from_secs(10), || rule_state(
        &d,
        "HighTraffic"
    ) == "resolved"));
    assert!(wait_until(Duration::from_secs(10), || got
        .lock()
        .unwrap()
        .len()
        >= 3));
    let resolved = got.lock().unwrap()[2].1.clone();
    assert_eq!(resolved["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let text = d.metrics();
    assert_eq!(
        metric_value(
            &text,
            "drover_alert_notifications_total{result=\"delivered\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &text,
            "drover_alert_state{alertname=\"HighTraffic\",severity=\"page\"}"
        ),
        3.0
    );
    let events = d.admin_get("/api/events").body;
    assert!(
        events.contains("HighTraffic firing") && events.contains("HighTraffic resolved"),
        "{events}"
    );
    assert!(d.log().contains("HighTraffic firing"));
}

#[test]
fn slo_budget_and_burn_rates_count_errors_and_slow_requests() {
    let d = Drover::start(
        2,
        "circuit_breaker:\n  enabled: false\nobservability:\n  alerts:\n    rules:\n    - name: FastBurn\n      expr: burn_rate_5m:avail\n      threshold: 2\n  slos:\n  - name: avail\n    kind: availability\n    objective: 0.9\n  - name: fast\n    kind: latency\n    threshold: 40ms\n    objective: 0.95\n    window: 24h\n",
    );
    for i in 0..100 {
        let path = if i % 2 == 0 { "/" } else { "/status?code=500" };
        let r = d.get(path).unwrap();
        assert_eq!(r.status, if i % 2 == 0 { 200 } else { 500 });
    }
    for _ in 0..20 {
        assert_eq!(d.get("/delay?ms=80").unwrap().status, 200);
    }
    let mut slos = Value::Null;
    assert!(
        wait_until(Duration::from_secs(5), || {
            slos = alerts(&d)["slos"].clone();
            slos[0]["requests"] == 120 && slos[1]["requests"] == 120
        }),
        "{slos}"
    );
    let avail = &slos[0];
    assert_eq!(avail["bad"], 50);
    // 50/120 bad against a 10% budget.
    let burn = 50.0 / 120.0 / 0.1;
    assert!(
        (avail["burn_rate_5m"].as_f64().unwrap() - burn).abs() < 1e-6,
        "{avail}"
    );
    assert!((avail["budget_remaining"].as_f64().unwrap() - (1.0 - burn)).abs() < 1e-6);
    let fast = &slos[1];
    assert_eq!(fast["bad"], 20, "{fast}");
    assert!((fast["burn_rate_1h"].as_f64().unwrap() - 20.0 / 120.0 / 0.05).abs() < 1e-6);
    assert!(wait_until(Duration::from_secs(5), || rule_state(
        &d, "FastBurn"
    ) == "firing"));
    let text = d.metrics();
    assert!(
        (metric_value(&text, "drover_slo_burn_rate{slo=\"avail\",window=\"5m\"}") - burn).abs()
            < 1e-6
    );
    assert!(metric_value(&text, "drover_slo_error_budget_remaining{slo=\"fast\"}") < 0.0);
    let problems = promtext::check(&text);
    assert!(problems.is_empty(), "{problems:#?}");
    promtext::promtool_check(&text).unwrap();
}

#[test]
fn worker_reported_metrics_are_exported_and_never_reach_the_client() {
    let d = Drover::start(1, "");
    let r = d.get("/metrics-report?name=queue_depth&value=7").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-drover-metric").is_none(),
        "internal header leaked"
    );
    d.get("/metrics-report?name=jobs_total&value=42").unwrap();
    d.get("/metrics-report?name=Bad-Name&value=1").unwrap();
    let text = d.metrics();
    assert_eq!(
        metric_value(&text, "drover_app_queue_depth{backend=\"worker-0\"}"),
        7.0
    );
    assert!(text.contains("# TYPE drover_app_jobs_total counter"));
    assert_eq!(
        metric_value(&text, "drover_app_jobs_total{backend=\"worker-0\"}"),
        42.0
    );
    assert_eq!(
        metric_value(&text, "drover_worker_metrics_rejected_total"),
        1.0
    );
    d.get("/metrics-report?name=queue_depth&value=3").unwrap();
    assert_eq!(
        metric_value(&d.metrics(), "drover_app_queue_depth{backend=\"worker-0\"}"),
        3.0
    );
    let text = d.metrics();
    let problems = promtext::check(&text);
    assert!(problems.is_empty(), "{problems:#?}");
    promtext::promtool_check(&text).unwrap();
}

#[test]
fn scaling_recommendation_follows_worker_cpu() {
    let d = Drover::start(1, "");
    let mut idle = Value::Null;
    assert!(wait_until(Duration::from_secs(3), || {
        idle = d.status()["scaling"].clone();
        !idle.is_null()
    }));
    assert_eq!(idle["current_workers"], 1, "{idle}");
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(d.url("/cpu?ms=40"), 2, stop.clone(), 1_000_000);
    std::thread::sleep(Duration::from_secs(6));
    let busy = d.status()["scaling"].clone();
    stop.store(true, Ordering::Relaxed);
    let _ = load.join().unwrap();
    let cpu = busy["cpu_per_worker"].as_f64().unwrap();
    // The worker spun a CPU for most of those seconds (less when the machine is shared).
    assert!(cpu > 0.1, "{busy}");
    assert!(
        cpu > idle["cpu_per_worker"].as_f64().unwrap(),
        "{idle} {busy}"
    );
    // One worker at `cpu` cores against a 60% target.
    let expected = ((cpu / 0.6).ceil() as u64).max(1);
    assert_eq!(busy["recommended_workers"], expected, "{busy}");
    assert!(busy["reason"].as_str().unwrap().contains("CPU"), "{busy}");
    if expected > 1 {
        assert_eq!(busy["action"], "scale_up");
    }
}

/// A worker's resident memory is an alert signal like any other: one worker grabs
/// 160 MiB and `rss_bytes:any_worker` fires, naming the value; per-process and
/// per-backend expressions are validated with the rest.
#[test]
fn an_alert_on_a_workers_memory_fires_when_it_grows() {
    let d = Drover::start(
        2,
        "balancing:\n  strategy: round_robin\nobservability:\n  alerts:\n    rules:\n    - name: WorkerMemory\n      expr: rss_bytes:any_worker\n      threshold: 120000000\n      severity: page\n    - name: Worker0Slow\n      expr: backend_p99_10s:worker-0\n      threshold: 5\n    - name: DroverFds\n      expr: open_fds:drover\n      threshold: 100000\n",
    );
    assert!(wait_until(Duration::from_secs(5), || {
        rule_state(&d, "WorkerMemory") == "inactive" && rule_state(&d, "DroverFds") == "inactive"
    }));
    // Round robin: one of the first two requests lands on each worker; one is enough.
    let r = d.get("/alloc?mb=160").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let fired = wait_until(Duration::from_secs(8), || {
        rule_state(&d, "WorkerMemory") == "firing"
    });
    let a = alerts(&d);
    assert!(fired, "{a}");
    let rule = a["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "WorkerMemory")
        .unwrap()
        .clone();
    assert!(
        rule["value"].as_f64().unwrap() > 160.0 * 1024.0 * 1024.0,
        "{rule}"
    );
    assert!(d
        .log()
        .contains("WorkerMemory firing: rss_bytes:any_worker"));
    assert_eq!(rule_state(&d, "Worker0Slow"), "inactive");
    // Freed again: resolved.
    for _ in 0..2 {
        d.get("/alloc?mb=0").unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(8), || rule_state(&d, "WorkerMemory")
            == "resolved"),
        "{}",
        alerts(&d)
    );
}

/// Worker metrics with labels and histograms through both paths: the response header
/// and the datagram socket (StatsD lines, no response needed); the socket only takes
/// worker processes, attributes each line to the worker that sent it, and the values
/// feed alert rules and the history store.
#[test]
fn worker_histograms_and_labels_arrive_by_header_and_socket_and_drive_alerts() {
    let d = Drover::start(
        1,
        "observability:\n  alerts:\n    rules:\n    - name: QueueDeep\n      expr: app:queue_depth@worker-0\n      threshold: 5\n    - name: SlowRenders\n      expr: app:render_seconds:p99\n      threshold: 0.3\n",
    );
    let sock = d.dir.path().join("run/metrics.sock");
    assert!(sock.exists(), "{}", d.log());
    // Header: a labelled histogram observation and a labelled counter.
    let r = d
        .get("/metrics-report?name=render_seconds%7Broute%3D%22home%22%7D&value=0.2%7Ch")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-drover-metric"), None);
    // Socket: the worker pushes StatsD lines on its own.
    let lines = "render_seconds:900|ms|#route:search\nqueue_depth:9|g\norders_total:3|c|#region:eu";
    let path = format!(
        "/metrics-push?line={}",
        lines
            .replace(':', "%3A")
            .replace('|', "%7C")
            .replace('#', "%23")
            .replace('\n', "%0A")
    );
    let r = d.get(&path).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // Anyone else writing to the socket (this test process: same user, but no worker)
    // is refused.
    let before = d.metric("drover_worker_metrics_rejected_total");
    std::os::unix::net::UnixDatagram::unbound()
        .unwrap()
        .send_to(b"queue_depth:1000|g", &sock)
        .unwrap();
    assert!(wait_until(Duration::from_secs(3), || {
        d.metric("drover_worker_metrics_rejected_total") == before + 1.0
    }));
    let text = d.metrics();
    for want in [
        r#"drover_app_render_seconds_bucket{backend="worker-0",route="home",le="0.25"} 1"#,
        r#"drover_app_render_seconds_bucket{backend="worker-0",route="search",le="1"} 1"#,
        r#"drover_app_render_seconds_count{backend="worker-0",route="search"} 1"#,
        r#"drover_app_queue_depth{backend="worker-0"} 9"#,
        r#"drover_app_orders_total{backend="worker-0",region="eu"} 3"#,
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let problems = promtext::check(&text);
    assert!(problems.is_empty(), "{problems:?}");
    promtext::promtool_check(&text).unwrap();
    // Alerts on worker-reported values.
    assert!(
        wait_until(Duration::from_secs(5), || rule_state(&d, "QueueDeep")
            == "firing"
            && rule_state(&d, "SlowRenders") == "firing"),
        "{}",
        alerts(&d)
    );
    // History keeps one series per name.
    assert!(wait_until(Duration::from_secs(4), || {
        let h: Value = serde_json::from_str(
            &d.admin_get("/api/history?metric=app/queue_depth&range=60s")
                .body,
        )
        .unwrap_or(Value::Null);
        h["points"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p[1] == 9.0))
    }));
    let live: Value = serde_json::from_str(&d.admin_get("/api/live").body).unwrap();
    assert!(
        live["app_metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "render_seconds" && m["kind"] == "histogram"),
        "{live}"
    );
}
