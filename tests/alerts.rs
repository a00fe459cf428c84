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
