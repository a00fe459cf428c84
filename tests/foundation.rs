// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! End-to-end tests of the foundation: real drover, real workers, real sockets.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn requests_spread_over_all_workers() {
    let d = Drover::start(3, "");
    let mut per_worker: HashMap<usize, usize> = HashMap::new();
    for _ in 0..300 {
        let r = d.get("/").unwrap();
        assert_eq!(r.status, 200);
        *per_worker.entry(r.worker().unwrap()).or_default() += 1;
    }
    assert_eq!(per_worker.len(), 3, "{per_worker:?}");
    for (w, n) in &per_worker {
        assert_eq!(
            *n, 100,
            "round robin gives each of 3 workers exactly 100 of 300 (worker {w})"
        );
    }
}

#[test]
fn kill_9_worker_loses_no_get_request_and_worker_comes_back() {
    let d = Drover::start(2, "");
    let old_pids = d.worker_pids();
    assert_eq!(old_pids.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    // The load runs until it is stopped, a second after the kill, so the kill always lands
    // while requests are in flight (a fixed count could finish before the kill on a fast host).
    let loader = load(d.url("/"), 4, stop.clone(), usize::MAX);
    std::thread::sleep(Duration::from_millis(300));
    let served_before_kill = d.metric("drover_requests_total{class=\"2xx\"}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pids[0] as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let (ok, bad, why) = loader.join().unwrap();
    assert!(
        (ok as f64) > served_before_kill,
        "requests ran after the kill: {ok} in all, {served_before_kill} before it"
    );
    assert_eq!(bad, 0, "failed requests: {:?}", &why[..why.len().min(5)]);
    // Healthy again *and* with a new pid: drover may not have reaped the killed worker yet
    // when the load stops, and then it still counts two healthy workers with the old pids.
    assert!(
        wait_until(Duration::from_secs(10), || {
            d.healthy_workers() == 2 && !d.worker_pids().contains(&old_pids[0])
        }),
        "killed worker did not come back with a new pid: {:?}",
        d.worker_pids()
    );
    let new_pids = d.worker_pids();
    assert!(
        new_pids.contains(&old_pids[1]),
        "worker 1 untouched: {new_pids:?}"
    );
    assert_eq!(
        d.metric("drover_worker_restarts_total{worker=\"worker-0\"}"),
        1.0
    );
}

#[test]
fn crashing_worker_is_restarted_with_a_new_pid() {
    let d = Drover::start(1, "");
    let pid = d.worker_pids()[0];
    let r = d.get("/crash");
    // The request that crashed the worker is a GET: drover retries it, and with the only
    // worker gone it gets a 502/503 rather than hanging.
    assert!(r.map(|r| r.status >= 500).unwrap_or(true));
    assert!(wait_until(Duration::from_secs(10), || {
        d.healthy_workers() == 1 && d.worker_pids().first().is_some_and(|p| *p != pid)
    }));
    assert_eq!(d.get("/").unwrap().status, 200);
    assert!(d.log().contains("worker-0 pid"), "exit is logged");
}

#[test]
fn crash_looping_worker_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("dies.sh");
    std::fs::write(&script, "#!/bin/sh\necho starting and dying\nexit 7\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let admin = free_port();
    let yaml = format!(
        "{}workers:\n  count: 1\n  command: [\"{}\"]\n  restart_backoff:\n    initial: 10ms\n    max: 40ms\n    crash_loop_restarts: 3\n",
        base_yaml(port, admin, dir.path()),
        script.display()
    );
    let cfg = dir.path().join("d.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new(drover_bin())
        .args(["-c", cfg.to_str().unwrap()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    let a = agent();
    let looping = wait_until(Duration::from_secs(10), || {
        request(
            &a,
            "GET",
            &format!("http://127.0.0.1:{admin}/api/status"),
            &[],
            None,
        )
        .ok()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .is_some_and(|s| s["workers"][0]["crash_looping"] == true)
    });
    let metrics = request(
        &a,
        "GET",
        &format!("http://127.0.0.1:{admin}/metrics"),
        &[],
        None,
    )
    .unwrap()
    .body;
    let _ = child.kill();
    let _ = child.wait();
    assert!(looping, "crash loop not reported");
    assert_eq!(metric_value(&metrics, "drover_workers_crash_looping"), 1.0);
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap();
    assert!(err.contains("crash-looping"), "{err}");
    assert!(
        err.contains("worker-0: starting and dying"),
        "worker output is forwarded: {err}"
    );
}

#[test]
fn sighup_with_valid_change_applies_under_load_with_zero_failures() {
    let d = Drover::start(2, "");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(d.url("/"), 4, stop.clone(), usize::MAX);
    std::thread::sleep(Duration::from_millis(300));
    d.rewrite_config(3, "balancing:\n  strategy: least_connections\n");
    d.signal(Signal::SIGHUP);
    let applied = wait_until(Duration::from_secs(15), || {
        let s = d.status();
        s["config_version"] == 2 && s["strategy"] == "least_connections"
    });
    let scaled = wait_until(Duration::from_secs(15), || d.healthy_workers() == 3);
    // Scale back down by draining under the same load.
    d.rewrite_config(1, "balancing:\n  strategy: least_connections\n");
    d.signal(Signal::SIGHUP);
    let shrunk = wait_until(Duration::from_secs(15), || {
        d.status()["workers"].as_array().map(|w| w.len()) == Some(1)
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, bad, why) = loader.join().unwrap();
    assert!(applied, "reload not applied: {}", d.log());
    assert!(scaled, "did not scale to 3");
    assert!(shrunk, "did not scale down to 1");
    assert!(ok > 100, "load ran ({ok} ok)");
    assert_eq!(bad, 0, "failed: {:?}", &why[..why.len().min(5)]);
    assert_eq!(d.metric("drover_config_reloads_total{result=\"ok\"}"), 2.0);
}

#[test]
fn sighup_with_broken_file_keeps_serving_and_reports_the_error() {
    let d = Drover::start(2, "");
    std::fs::write(
        &d.config_path,
        "listen: 127.0.0.1:1\nworkers:\n  count: [oops\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || {
        d.metric("drover_config_reloads_total{result=\"invalid\"}") == 1.0
    }));
    for _ in 0..20 {
        assert_eq!(d.get("/").unwrap().status, 200);
    }
    let s = d.status();
    assert_eq!(s["config_version"], 1);
    assert_eq!(s["listen"], format!("127.0.0.1:{}", d.port));
    let log = d.log();
    assert!(log.contains("keeping the running config"), "{log}");
    assert!(
        log.contains("drover.yaml:3"),
        "error names file and line: {log}"
    );
    // The API reports the same error to the caller.
    let r = d.admin_post("/api/reload", "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("drover.yaml:3"), "{}", r.body);
}

/// Runs `drover -t -c path`.
fn check_config(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(drover_bin())
        .args(["-t", "-c"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn config_test_flag_reports_ok_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("workers:\n  command: [\"{}\"]\n", worker_bin().display()),
    )
    .unwrap();
    let out = check_config(&good);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: nowhere\nbalancing:\n  strategy: fastest\nhealth_check:\n  interval: 0s\n",
    )
    .unwrap();
    let out = check_config(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:1: listen:"), "{err}");
    assert!(
        err.contains("bad.yaml:3: balancing.strategy: unknown strategy `fastest`"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:5: health_check.interval: must be greater than zero"),
        "{err}"
    );

    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "workers:\n  cuont: 2\n").unwrap();
    let out = check_config(&typo);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("typo.yaml:2"), "{err}");
    assert!(
        err.contains("unknown field `cuont`, expected one of"),
        "{err}"
    );

    let help = std::process::Command::new(drover_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("-t, --test") && help.contains("-c, --config"),
        "{help}"
    );
}

#[test]
fn bad_config_at_start_exits_nonzero_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("start.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:1\nworkers:\n  count: -1\n").unwrap();
    let out = std::process::Command::new(drover_bin())
        .args(["-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start.yaml:3: workers.count"), "{err}");
}

#[test]
fn sigterm_drains_a_slow_request_then_stops_every_worker() {
    let mut d = Drover::start(2, "shutdown:\n  grace_period: 10s\n");
    let pids = d.worker_pids();
    let url = d.url("/delay?ms=1500");
    let slow = std::thread::spawn(move || request(&agent(), "GET", &url, &[], None));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let r = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "delayed 1500 ms\n");
    let code = d.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exits once drained, not after the full grace period"
    );
    for p in pids {
        assert!(!process_alive(p), "worker {p} left behind");
    }
}

#[test]
fn kill_9_of_drover_leaves_no_orphan_workers() {
    let mut d = Drover::start(2, "");
    let pids = d.worker_pids();
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(5), || pids
            .iter()
            .all(|p| !process_alive(*p))),
        "workers outlived drover"
    );
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_requests() {
    let d = Drover::start(2, "");
    for _ in 0..40 {
        assert_eq!(d.get("/").unwrap().status, 200);
    }
    for _ in 0..10 {
        assert_eq!(d.get("/status?code=404").unwrap().status, 404);
    }
    // Outcomes are recorded in Pingora's logging phase, just after the response is
    // written, so the last request may be counted a moment after the client has it.
    assert!(wait_until(Duration::from_secs(2), || {
        d.metric("drover_request_duration_seconds_count") == 50.0
    }));
    let text = d.metrics();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            types.insert(
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        assert!(
            types.contains_key(name) || types.contains_key(base),
            "sample without TYPE: {line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
    }
    assert_eq!(
        metric_value(&text, "drover_requests_total{class=\"2xx\"}"),
        40.0
    );
    assert_eq!(
        metric_value(&text, "drover_requests_total{class=\"4xx\"}"),
        10.0
    );
    assert_eq!(
        metric_value(&text, "drover_request_duration_seconds_count"),
        50.0
    );
    let per_backend = metric_value(&text, "drover_backend_requests_total{backend=\"worker-0\"}")
        + metric_value(&text, "drover_backend_requests_total{backend=\"worker-1\"}");
    assert_eq!(per_backend, 50.0);
    assert_eq!(metric_value(&text, "drover_requests_in_flight"), 0.0);
}

#[test]
fn admin_mutations_require_the_token_when_set() {
    let d = Drover::start_with(1, "", Some("s3cret-token-0123456789"));
    let a = agent();
    let r = request(&a, "POST", &d.admin_url("/api/reload"), &[], Some("")).unwrap();
    assert_eq!(r.status, 401);
    let r = request(
        &a,
        "POST",
        &d.admin_url("/api/reload"),
        &[("authorization", "Bearer wrong")],
        Some(""),
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = d.admin_post("/api/reload", "");
    assert_eq!(r.status, 200, "{}", r.body);
    // With an operator token, reads need it too; probes and metrics stay open.
    let r = request(&a, "GET", &d.admin_url("/api/status"), &[], None).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(d.admin_get("/api/status").status, 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = request(&a, "GET", &d.admin_url(open), &[], None).unwrap();
        assert_eq!(r.status, 200, "{open}");
    }
}

#[test]
fn internal_headers_from_clients_never_reach_workers() {
    let d = Drover::start(1, "");
    let r = request(
        &d.agent,
        "GET",
        &d.url("/echo"),
        &[("X-Drover-Session", "forged"), ("X-Custom", "kept")],
        None,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["headers"].get("x-drover-session").is_none(), "{}", r.body);
    assert_eq!(v["headers"]["x-custom"], "kept");
    assert!(v["headers"]["x-request-id"]
        .as_str()
        .is_some_and(|s| s.len() == 16));
    // And internal response headers never reach the client.
    let r = d.get("/session/incr").unwrap();
    assert!(r.header("x-drover-session-set").is_none());
}
