// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Capacity planning end to end: the estimate `/api/capacity` makes under moderate load
//! is checked against the saturation point measured by driving the pool flat out.

mod common;

use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `clients` closed-loop clients on `path` for `run`, each pausing `think` between
/// requests; returns the requests completed.
fn drive(d: &Drover, path: &str, clients: usize, think: Duration, run: Duration) -> usize {
    let done = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..clients)
        .map(|_| {
            let url = d.url(path);
            let done = done.clone();
            std::thread::spawn(move || {
                let a = agent();
                let end = Instant::now() + run;
                while Instant::now() < end {
                    let r = request(&a, "GET", &url, &[], None).expect("request");
                    assert_eq!(r.status, 200, "{}", r.body);
                    done.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(think);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    done.load(Ordering::Relaxed)
}

/// Two workers doing one 10 ms unit of work at a time (`/work`): the model must place
/// the saturation point, measured at about half load, within 15% of the rate the pool
/// actually reaches when 24 clients drive it flat out.
#[test]
fn capacity_estimate_at_half_load_predicts_the_measured_saturation_within_15_percent() {
    let d = Drover::start(2, "balancing:\n  strategy: least_connections\n");
    // About half load: 4 clients, 10 ms of work + ~30 ms pause each.
    drive(
        &d,
        "/work?ms=10",
        4,
        Duration::from_millis(30),
        Duration::from_secs(6),
    );
    let est: Value = serde_json::from_str(
        &d.admin_get("/api/capacity?target_rps=300&target_p99=250ms")
            .body,
    )
    .unwrap();
    let estimate = est["saturation_rps"]
        .as_f64()
        .unwrap_or_else(|| panic!("{est}"));
    let load = est["load_share"].as_f64().unwrap();
    assert!((0.2..0.8).contains(&load), "not a moderate load: {est}");
    for w in ["worker-0", "worker-1"] {
        let s = est["workers"][w]["service_ms"].as_f64().unwrap();
        assert!((9.5..14.0).contains(&s), "{w} service time {s} ms: {est}");
    }
    // The plan: 300 req/s at p99 250 ms needs ceil(300 / per-worker rate) workers.
    let per_worker = est["sustainable_rps"].as_f64().unwrap() / 2.0;
    assert_eq!(
        est["workers_needed"].as_u64(),
        Some((300.0 / per_worker).ceil() as u64),
        "{est}"
    );
    assert_eq!(est["binding"], "workers", "{est}");

    // Flat out: the pool's real saturation point.
    let run = Duration::from_secs(5);
    let done = drive(&d, "/work?ms=10", 24, Duration::ZERO, run);
    let measured = done as f64 / run.as_secs_f64();
    let error = (estimate - measured).abs() / measured;
    println!(
        "capacity: estimated saturation {estimate:.1} req/s at {:.0}% load, measured {measured:.1} req/s: error {:.1}%",
        load * 100.0,
        error * 100.0
    );
    assert!(
        error < 0.15,
        "estimate {estimate:.1} vs measured {measured:.1}: {est}"
    );
    // Flat out, the estimate says there is no headroom left.
    let now: Value = serde_json::from_str(&d.admin_get("/api/capacity").body).unwrap();
    assert!(now["load_share"].as_f64().unwrap() > 0.8, "{now}");
    assert_eq!(
        d.admin_get("/api/capacity?target_p99=fast").status,
        400,
        "a bad target is refused"
    );
}
