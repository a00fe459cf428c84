// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Observability end to end: sliding-window percentiles, /metrics validity, history,
//! resource metrics, events.

mod common;
#[path = "support/promtext.rs"]
mod promtext;

use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn run_load(d: &Drover, path: &str, threads: usize, n: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, why) = load(d.url(path), threads, stop, n / threads)
        .join()
        .unwrap();
    assert_eq!(failed, 0, "{why:?}");
    assert_eq!(ok, n / threads * threads);
}

#[test]
fn window_percentiles_follow_a_known_delay_in_status_and_metrics() {
    let d = Drover::start(2, "");
    run_load(&d, "/delay?ms=30", 4, 200);
    let mut status = Value::Null;
    assert!(
        wait_until(Duration::from_secs(5), || {
            status = d.status();
            status["latency"]["overall"]["10s"]["count"].as_u64() == Some(200)
        }),
        "{status}"
    );
    let w = &status["latency"]["overall"]["10s"];
    let p50 = w["p50"].as_f64().unwrap();
    let p99 = w["p99"].as_f64().unwrap();
    // Every request waited 30 ms in the worker; loopback adds little.
    assert!((0.030..0.5).contains(&p50), "{w}");
    assert!(p99 >= p50 && p99 < 2.0, "{w}");
    assert_eq!(status["latency"]["overall"]["1m"]["count"], 200);
    let backends = &status["latency"]["backends"];
    let per: u64 = ["worker-0", "worker-1"]
        .iter()
        .map(|b| backends[b]["10s"]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(per, 200, "{backends}");
    assert!(backends["worker-0"]["10s"]["p50"].as_f64().unwrap() >= 0.030);
    let text = d.metrics();
    let m99 = metric_value(
        &text,
        "drover_request_duration_percentile_seconds{percentile=\"99\",window=\"10s\"}",
    );
    assert!(m99 >= 0.030, "{m99}");
    let b50 = metric_value(
        &text,
        "drover_backend_request_duration_percentile_seconds{backend=\"worker-1\",percentile=\"50\",window=\"1m\"}",
    );
    assert!(b50 >= 0.030, "{b50}");
}

#[test]
fn metrics_pass_promtool_or_the_strict_parser_and_include_process_resources() {
    let d = Drover::start(2, "");
    run_load(&d, "/", 2, 100);
    let _ = d.get("/status?code=503");
    assert!(wait_until(Duration::from_secs(5), || {
        metric_value(
            &d.metrics(),
            "drover_process_resident_memory_bytes{process=\"worker-1\"}",
        ) > 0.0
    }));
    let text = d.metrics();
    for p in ["drover", "worker-0", "worker-1"] {
        let rss = metric_value(
            &text,
            &format!("drover_process_resident_memory_bytes{{process=\"{p}\"}}"),
        );
        let fds = metric_value(
            &text,
            &format!("drover_process_open_fds{{process=\"{p}\"}}"),
        );
        assert!(rss > 1e6, "{p} rss {rss}");
        assert!(fds >= 3.0, "{p} fds {fds}");
        assert!(
            text.contains(&format!(
                "drover_process_cpu_seconds_total{{process=\"{p}\"}}"
            )),
            "{p}"
        );
    }
    // drover did work: some CPU was counted.
    assert!(
        metric_value(
            &text,
            "drover_process_cpu_seconds_total{process=\"drover\"}"
        ) > 0.0
    );

    let problems = promtext::check(&text);
    assert!(problems.is_empty(), "{problems:#?}");
    match promtext::promtool_check(&text) {
        Ok(true) => eprintln!("promtool accepted /metrics"),
        Ok(false) => eprintln!("promtool not installed: validated with the strict parser only"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn history_serves_each_tier_and_rejects_bad_queries() {
    let d = Drover::start(2, "");
    let stop = Arc::new(AtomicBool::new(false));
    let h = load(d.url("/"), 2, stop.clone(), 1_000_000);
    std::thread::sleep(Duration::from_millis(3500));
    stop.store(true, Ordering::Relaxed);
    let (_, failed, _) = h.join().unwrap();
    assert_eq!(failed, 0);
    std::thread::sleep(Duration::from_millis(1100));
    let get = |q: &str| {
        let r = d.admin_get(&format!("/api/history?{q}"));
        (r.status, serde_json::from_str::<Value>(&r.body).unwrap())
    };
    let (s, v) = get("metric=rps&range=1m");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["step_seconds"], 1);
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 60);
    let busy = pts
        .iter()
        .filter(|p| p[1].as_f64().unwrap_or(0.0) > 5.0)
        .count();
    assert!(busy >= 2, "{v}");
    let (_, v) = get("metric=p99&range=1h");
    assert_eq!(v["step_seconds"], 10);
    assert_eq!(v["points"].as_array().unwrap().len(), 360);
    let (_, v) = get("metric=error_ratio&range=7d");
    assert_eq!(v["step_seconds"], 60);
    assert_eq!(v["points"].as_array().unwrap().len(), 10_080);
    let (s, v) = get("metric=backend_rps&backend=worker-0&range=30s");
    assert_eq!(s, 200);
    assert!(v["points"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p[1].as_f64().unwrap_or(0.0) > 1.0));
    let (s, v) = get("");
    assert_eq!(s, 200);
    let names: Vec<&str> = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for n in [
        "rps",
        "error_ratio",
        "p50",
        "p95",
        "p99",
        "backend_in_flight/worker-1",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert_eq!(get("metric=nope").0, 404);
    assert_eq!(get("metric=rps&range=abc").0, 400);
    assert_eq!(get("metric=rps&range=30d").0, 400);
}

#[test]
fn events_record_restarts_reloads_and_strategy_switches() {
    let d = Drover::start(2, "");
    let _ = d.get("/crash");
    assert!(d
        .admin_post("/api/strategy", "{\"strategy\":\"random\"}")
        .body
        .contains("\"ok\":true"));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let mut ev = Value::Null;
    let ok = wait_until(Duration::from_secs(10), || {
        ev = serde_json::from_str(&d.admin_get("/api/events").body).unwrap();
        let text = ev.to_string();
        text.contains("\"kind\":\"restart\"")
            && text.contains("strategy round_robin -> random")
            && text.contains("config reloaded: version 2")
    });
    assert!(ok, "{ev}");
    let text = d.metrics();
    assert!(metric_value(&text, "drover_events_total{kind=\"restart\"}") >= 1.0);
    assert_eq!(
        metric_value(&text, "drover_events_total{kind=\"reload\"}"),
        1.0
    );
}

#[test]
fn a_request_id_from_an_untrusted_client_is_replaced() {
    let d = Drover::start(1, "");
    let r = request(
        &d.agent,
        "GET",
        &d.url("/echo"),
        &[("x-request-id", "chosen-by-the-client")],
        None,
    )
    .unwrap();
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    let id = echo["headers"]["x-request-id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(id.len(), 16, "a fresh id went to the worker: {echo}");
    assert_ne!(id, "chosen-by-the-client");
    assert!(wait_until(Duration::from_secs(5), || access_line(&d, &id).is_some()));
    assert!(access_line(&d, "chosen-by-the-client").is_none());
}

fn access_line(d: &Drover, needle: &str) -> Option<Value> {
    d.log()
        .lines()
        .filter_map(|l| l.find("{\"time\"").map(|i| &l[i..]))
        .filter(|l| l.contains(needle))
        .find_map(|l| serde_json::from_str(l).ok())
}

#[test]
fn traceparent_is_continued_or_started_and_logged_with_the_request_id() {
    // The request id is believed from a trusted proxy only (here: the test client).
    let d = Drover::start(1, "forwarded:\n  trusted_proxies: [\"127.0.0.1/32\"]\n");
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = request(
        &d.agent,
        "GET",
        &d.url("/echo"),
        &[("traceparent", incoming), ("x-request-id", "trace-test-1")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    let sent = echo["headers"]["traceparent"].as_str().unwrap().to_string();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "drover's own span");
    assert_eq!(parts[3], "01", "flags kept");
    let mut line = None;
    assert!(wait_until(Duration::from_secs(5), || {
        line = access_line(&d, "trace-test-1");
        line.is_some()
    }));
    let line = line.unwrap();
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["span_id"], parts[2]);
    assert_eq!(line["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(line["request_id"], "trace-test-1");

    // No (or a malformed) traceparent: drover starts a trace and logs it.
    let r = request(
        &d.agent,
        "GET",
        &d.url("/echo"),
        &[
            ("traceparent", "00-bogus"),
            ("x-request-id", "trace-test-2"),
        ],
        None,
    )
    .unwrap();
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    let sent = echo["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(sent.len(), 55, "{sent}");
    assert!(sent.ends_with("-00"));
    let mut line = None;
    assert!(wait_until(Duration::from_secs(5), || {
        line = access_line(&d, "trace-test-2");
        line.is_some()
    }));
    let line = line.unwrap();
    assert_eq!(line["trace_id"].as_str().unwrap(), &sent[3..35]);
    assert_eq!(line["span_id"].as_str().unwrap(), &sent[36..52]);
    assert!(line.get("parent_span_id").is_none(), "{line}");
}

/// `logging.format: json` makes every line drover writes (its own, Pingora's, the
/// workers' forwarded output) one JSON object; `logging.access_log_file` takes the
/// access lines, and SIGUSR1 reopens it after logrotate moved it.
#[test]
fn json_logs_and_an_access_log_file_reopened_on_sigusr1() {
    let logs = tempfile::tempdir().unwrap();
    let access = logs.path().join("access.log");
    let d = Drover::start(
        1,
        &format!(
            "logging:\n  format: json\n  access_log_file: {}\n",
            access.display()
        ),
    );
    for _ in 0..3 {
        assert_eq!(d.get("/?before").unwrap().status, 200);
    }
    assert!(wait_until(Duration::from_secs(3), || {
        std::fs::read_to_string(&access)
            .map(|t| t.lines().count() == 3)
            .unwrap_or(false)
    }));
    // logrotate: move the file, then SIGUSR1.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&access, &rotated).unwrap();
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    assert!(wait_until(Duration::from_secs(3), || d
        .log()
        .contains("access log reopened")));
    assert_eq!(d.get("/?after").unwrap().status, 200);
    assert!(wait_until(Duration::from_secs(3), || {
        std::fs::read_to_string(&access)
            .map(|t| t.lines().count() == 1)
            .unwrap_or(false)
    }));
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&access).unwrap();
    assert_eq!(old.lines().count(), 3, "{old}");
    assert!(old.lines().all(|l| l.contains("?before")));
    assert_eq!(new.lines().count(), 1, "{new}");
    let line: serde_json::Value = serde_json::from_str(new.trim()).unwrap();
    assert_eq!(line["path"], "/?after");
    assert_eq!(line["status"], 200);
    // Every line of drover's own log is a JSON object with level, target and message.
    let log = d.log();
    let mut targets = std::collections::BTreeSet::new();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{l}");
        targets.insert(v["target"].as_str().unwrap().to_string());
    }
    assert!(targets.len() >= 3, "{targets:?}");
    assert!(
        !log.contains("\"target\":\"access\""),
        "access lines went to the file"
    );
}

/// Seconds (unix) of `metric` with a value above zero in the last two minutes.
fn history_seconds(d: &Drover, metric: &str) -> std::collections::BTreeSet<u64> {
    let h: serde_json::Value = serde_json::from_str(
        &d.admin_get(&format!("/api/history?metric={metric}&range=120s"))
            .body,
    )
    .unwrap_or(serde_json::Value::Null);
    h["points"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p[1].as_f64().is_some_and(|v| v > 0.0))
                .filter_map(|p| p[0].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// The history store is saved to `runtime_dir` and read back: the seconds recorded
/// before a graceful restart and before a `drover -u` upgrade are still in
/// `/api/history` afterwards.
#[test]
fn history_survives_a_restart_and_a_binary_upgrade() {
    let mut d = Drover::start(1, "");
    let stop = Arc::new(AtomicBool::new(false));
    let l = load(d.url("/"), 2, stop.clone(), usize::MAX);
    std::thread::sleep(Duration::from_millis(3500));
    stop.store(true, Ordering::Relaxed);
    l.join().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let before = history_seconds(&d, "rps");
    assert!(before.len() >= 3, "{before:?}");

    d.restart_gracefully(1);
    assert!(d.dir.path().join("run/history.bin").exists());
    let after = history_seconds(&d, "rps");
    assert!(
        before.is_subset(&after),
        "lost across the restart: {before:?} vs {after:?}"
    );
    assert!(d.log().contains("history: "), "{}", d.log());

    // Some traffic on the restarted process, then an upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let l = load(d.url("/"), 2, stop.clone(), usize::MAX);
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    l.join().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let before = history_seconds(&d, "rps");
    let new_log = d.dir.path().join("drover-new.log");
    let log = std::fs::File::create(&new_log).unwrap();
    let new = std::process::Command::new(drover_bin())
        .arg("-u")
        .arg("-c")
        .arg(&d.config_path)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.0.wait();
        }
    }
    let _new = Stop(new);
    assert_eq!(d.wait_exit(Duration::from_secs(40)), Some(0), "{}", d.log());
    let new_text = || std::fs::read_to_string(&new_log).unwrap_or_default();
    // The old process's file, written at its exit, is merged once it is gone.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let after = history_seconds(&d, "rps");
            before.is_subset(&after)
        }),
        "lost across the upgrade: {before:?} vs {:?}\n{}",
        history_seconds(&d, "rps"),
        new_text()
    );
}
