// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Deploy operations end to end under load: rolling restart, blue-green deploy and
//! rollback, an aborted deploy, and the admin plane's guards on them.

mod common;

use common::{wait_until, Drover};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "operations-token-0123456789";

fn post(d: &Drover, path: &str, body: &str) -> common::Reply {
    d.admin_post(path, body)
}

fn deploy_state(d: &Drover) -> serde_json::Value {
    d.status()["deploy"].clone()
}

fn wait_deploy_finished(d: &Drover) -> serde_json::Value {
    let ok = wait_until(Duration::from_secs(60), || {
        let s = deploy_state(d)["state"].as_str().unwrap_or("").to_string();
        s == "done" || s == "aborted"
    });
    assert!(
        ok,
        "operation did not finish: {}\n{}",
        deploy_state(d),
        d.log()
    );
    deploy_state(d)
}

fn pids(d: &Drover) -> HashSet<u32> {
    d.worker_pids().into_iter().collect()
}

/// Steady GET load for the duration of `f`; returns (ok, failures).
fn under_load(d: &Drover, f: impl FnOnce()) -> (usize, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = common::load(d.url("/delay?ms=5"), 4, stop.clone(), 1_000_000);
    std::thread::sleep(Duration::from_millis(300));
    f();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, _bad, why) = load.join().unwrap();
    (ok, why)
}

#[test]
fn rolling_restart_replaces_every_worker_with_zero_failed_requests() {
    let d = Drover::start_with(3, "", Some(TOKEN));
    let before = pids(&d);
    let (ok, failed) = under_load(&d, || {
        let r = post(&d, "/api/workers/restart", "");
        assert_eq!(r.status, 202, "{}", r.body);
        let again = post(&d, "/api/workers/restart", "");
        assert_eq!(
            again.status, 409,
            "a second operation must wait: {}",
            again.body
        );
        let st = wait_deploy_finished(&d);
        assert_eq!(st["state"], "done", "{st}");
        assert_eq!(st["kind"], "rolling_restart");
    });
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "too little load: {ok}");
    let after = pids(&d);
    assert_eq!(after.len(), 3);
    assert!(
        before.is_disjoint(&after),
        "not every worker replaced: {before:?} {after:?}"
    );
    assert_eq!(d.healthy_workers(), 3);
}

#[test]
fn blue_green_deploy_then_rollback_under_load_with_zero_failed_requests() {
    let d = Drover::start_with(2, "", Some(TOKEN));
    let blue = pids(&d);
    let (ok, failed) = under_load(&d, || {
        let r = post(
            &d,
            "/api/deploy",
            r#"{"version": "v2", "env": {"WORKER_VERSION": "v2"}}"#,
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let st = wait_deploy_finished(&d);
        assert_eq!(st["state"], "done", "{st}");
    });
    assert!(
        failed.is_empty(),
        "deploy: {} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50);
    let green = pids(&d);
    assert!(blue.is_disjoint(&green));
    for _ in 0..20 {
        let r = d.get("/").unwrap();
        assert_eq!(
            r.header("x-worker-version"),
            Some("v2"),
            "old colour still answering"
        );
    }
    let status = d.status();
    assert_eq!(status["image"]["version"], "v2");
    assert_eq!(status["previous_image"], "config");

    let (_, failed) = under_load(&d, || {
        let r = post(&d, "/api/rollback", "");
        assert_eq!(r.status, 202, "{}", r.body);
        let st = wait_deploy_finished(&d);
        assert_eq!(st["state"], "done", "{st}");
        assert_eq!(st["kind"], "rollback");
    });
    assert!(
        failed.is_empty(),
        "rollback: {:?}",
        &failed[..failed.len().min(5)]
    );
    for _ in 0..20 {
        let r = d.get("/").unwrap();
        assert_eq!(
            r.header("x-worker-version"),
            None,
            "v2 still answering after rollback"
        );
    }
    assert_eq!(d.status()["image"]["version"], "config");
}

#[test]
fn a_deploy_whose_workers_fail_health_checks_is_aborted_and_moves_no_traffic() {
    let d = Drover::start_with(2, "", Some(TOKEN));
    let fail = d.dir.path().join("unhealthy");
    std::fs::write(&fail, "").unwrap();
    let blue = pids(&d);
    let (_, failed) = under_load(&d, || {
        let body = format!(
            r#"{{"version": "bad", "env": {{"HEALTH_FAIL_FILE": "{}", "WORKER_VERSION": "bad"}}, "health_timeout": "2s"}}"#,
            fail.display()
        );
        let r = post(&d, "/api/deploy", &body);
        assert_eq!(r.status, 202, "{}", r.body);
        let st = wait_deploy_finished(&d);
        assert_eq!(st["state"], "aborted", "{st}");
        assert!(st["message"].as_str().unwrap().contains("health"), "{st}");
        for _ in 0..20 {
            let r = d.get("/").unwrap();
            assert_eq!(
                r.header("x-worker-version"),
                None,
                "traffic reached the bad version"
            );
        }
    });
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert_eq!(pids(&d), blue, "the running colour was touched");
    assert_eq!(d.status()["image"]["version"], "config");
    let r = post(&d, "/api/rollback", "");
    assert_eq!(r.status, 409, "nothing to roll back to: {}", r.body);
}

#[test]
fn mutating_operations_refuse_missing_or_wrong_tokens_and_config_is_redacted() {
    let d = Drover::start_with(1, "", Some(TOKEN));
    for path in [
        "/api/deploy",
        "/api/rollback",
        "/api/workers/restart",
        "/api/reload",
    ] {
        // A fresh connection each: a server may close one after refusing a request whose
        // body it did not read, and a pooled POST is not retried by the client.
        let agent = common::agent();
        let none = common::request(&agent, "POST", &d.admin_url(path), &[], Some("{}")).unwrap();
        let agent = common::agent();
        assert_eq!(none.status, 401, "{path} without token");
        let wrong = common::request(
            &agent,
            "POST",
            &d.admin_url(path),
            &[("authorization", "Bearer nope")],
            Some("{}"),
        )
        .unwrap();
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
    }
    let bad = post(&d, "/api/deploy", r#"{"command": []}"#);
    assert_eq!(bad.status, 400, "{}", bad.body);
    let typo = post(&d, "/api/deploy", r#"{"verison": "x"}"#);
    assert_eq!(typo.status, 400, "{}", typo.body);
    let cfg = d.admin_get("/api/config");
    assert_eq!(cfg.status, 200);
    assert!(!cfg.body.contains(TOKEN), "token leaked: {}", cfg.body);
    assert!(cfg.body.contains("<redacted>"));
    let v: serde_json::Value = serde_json::from_str(&cfg.body).unwrap();
    assert_eq!(v["config"]["workers"]["count"], 1);
}

#[test]
fn autoscale_adds_workers_under_load_and_removes_them_when_idle() {
    let keys = "  autoscale:\n    enabled: true\n    min: 1\n    max: 3\n    target_in_flight: 2\n    window: 1s\n    cooldown: 1s\n";
    let d = Drover::start_full(1, keys, "", Some(TOKEN));
    let workers = |d: &Drover| {
        d.status()["workers"]
            .as_array()
            .map(|w| w.len())
            .unwrap_or(0)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = common::load(d.url("/delay?ms=100"), 8, stop.clone(), 1_000_000);
    let mut most = 0;
    let up = wait_until(Duration::from_secs(20), || {
        let n = workers(&d);
        most = most.max(n);
        n == 3 && d.healthy_workers() == 3
    });
    // Stay loaded a little longer: the pool must not grow past max.
    for _ in 0..10 {
        most = most.max(workers(&d));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, _, failed) = load.join().unwrap();
    assert!(up, "did not scale up to 3: {}\n{}", d.status(), d.log());
    assert_eq!(most, 3, "went past max");
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(ok > 50);
    let down = wait_until(Duration::from_secs(20), || workers(&d) == 1);
    assert!(down, "did not scale down to min when idle: {}", d.status());
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(workers(&d), 1, "went below min or flapped");
    let log = d.log();
    assert!(
        log.contains("autoscale: up 1 -> 3 workers: mean in-flight"),
        "{log}"
    );
    assert!(log.contains("autoscale: down"), "{log}");
    assert!(d.metric("drover_autoscale_decisions_total{direction=\"up\"}") >= 1.0);
    assert!(d.metric("drover_autoscale_decisions_total{direction=\"down\"}") >= 2.0);
}

#[test]
fn graceful_binary_upgrade_hands_the_listener_over_without_failed_requests() {
    let mut d = Drover::start_with(2, "sessions:\n  enabled: true\n", Some(TOKEN));
    // A session on the old process, to be found on the new one.
    let first = d.get("/session/incr").unwrap();
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = d.get_with("/session/incr", &[("cookie", &cookie)]).unwrap();
    assert!(r.body.contains("\"counter\":2"), "{}", r.body);
    let old_pid = d.pid();
    let new_log = d.dir.path().join("drover-new.log");
    let stop = Arc::new(AtomicBool::new(false));
    let load = common::load(d.url("/delay?ms=2"), 4, stop.clone(), 1_000_000);
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::File::create(&new_log).unwrap();
    let mut new = std::process::Command::new(common::drover_bin())
        .arg("-u")
        .arg("-c")
        .arg(&d.config_path)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // The old process drains and exits by itself once the new one has the listener.
    let code = d.wait_exit(Duration::from_secs(40));
    let new_text = || std::fs::read_to_string(&new_log).unwrap_or_default();
    assert_eq!(
        code,
        Some(0),
        "old drover did not exit cleanly:\n{}\nnew:\n{}",
        d.log(),
        new_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, _, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed during the upgrade: {:?}\nnew:\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        new_text()
    );
    assert!(ok > 100, "too little load: {ok}");
    // The new process serves, on the same port, with its own workers and the admin plane.
    let r = d.get("/").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            common::request(&common::agent(), "GET", &d.admin_url("/readyz"), &[], None)
                .map(|r| r.status == 200)
                .unwrap_or(false)
        }),
        "admin plane not taken over:\n{}",
        new_text()
    );
    assert!(
        !common::process_alive(old_pid as u32),
        "old drover still running"
    );
    // The memory-store session came across through the snapshot.
    assert!(
        common::wait_until(Duration::from_secs(10), || new_text()
            .contains("sessions: merged")),
        "{}",
        new_text()
    );
    let r = d.get_with("/session/incr", &[("cookie", &cookie)]).unwrap();
    assert!(
        r.body.contains("\"counter\":3"),
        "session lost across the upgrade: {}",
        r.body
    );
    let _ = new.kill();
    let _ = new.wait();
}

#[test]
fn shipped_example_configs_pass_drover_t() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "conf/drover.yaml",
        "conf/examples/multi-node/drover-a.yaml",
        "conf/examples/multi-node/drover-b.yaml",
        "conf/examples/multi-node/drover-sentinel.yaml",
    ] {
        let out = std::process::Command::new(common::drover_bin())
            .arg("-t")
            .arg("-c")
            .arg(root.join(file))
            .env("SESSION_SECRET", "0123456789abcdef0123456789abcdef0123")
            .env("SESSION_DATA_KEY", "00".repeat(32))
            .env("DROVER_ADMIN_TOKEN", "example-token-0123456789")
            .env("REDIS_PASSWORD", "example-redis-password")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
