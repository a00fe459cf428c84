// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! End-to-end balancing tests: real drover, real workers, each strategy's distribution.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The p99 comparison measures latency: it runs alone (write lock) while the other tests
/// of this file share the machine among themselves (read lock).
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_machine() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|p| p.into_inner())
}

/// Sends `n` GETs from `threads` clients and counts answers per worker id.
fn spread(d: &Drover, path: &str, n: usize, threads: usize) -> HashMap<usize, usize> {
    let per = n / threads;
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let url = d.url(path);
            std::thread::spawn(move || {
                let a = agent();
                let mut m: HashMap<usize, usize> = HashMap::new();
                for _ in 0..per {
                    let r = request(&a, "GET", &url, &[], None).expect("request");
                    assert_eq!(r.status, 200, "{}", r.body);
                    *m.entry(r.worker().unwrap()).or_default() += 1;
                }
                m
            })
        })
        .collect();
    let mut total = HashMap::new();
    for h in hs {
        for (k, v) in h.join().unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[test]
fn weighted_round_robin_3_to_1_over_4000_requests_within_5_percent() {
    let _machine = shared_machine();
    let d = Drover::start(
        2,
        "  weights: [3, 1]\nbalancing:\n  strategy: weighted_round_robin\n",
    );
    let m = spread(&d, "/", 4000, 4);
    let share = m[&0] as f64 / 4000.0;
    assert!(
        (share - 0.75).abs() <= 0.05 * 0.75,
        "worker 0 share {share}: {m:?}"
    );
}

#[test]
fn random_follows_weights_loosely() {
    let _machine = shared_machine();
    let d = Drover::start(2, "  weights: [1, 1]\nbalancing:\n  strategy: random\n");
    let m = spread(&d, "/", 1000, 2);
    assert!(m[&0] > 350 && m[&1] > 350, "{m:?}");
}

#[test]
fn least_connections_avoids_a_backend_held_busy_and_counts_survive_a_switch() {
    let _machine = shared_machine();
    // Pin slow requests to one worker with consistent hashing, then switch to least
    // connections live: the in-flight counts carry over, so new requests avoid that worker.
    let d = Drover::start(
        2,
        "balancing:\n  strategy: consistent_hash\n  hash_key: header:x-key\n",
    );
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = d.url("/delay?ms=2000");
            std::thread::spawn(move || request(&agent(), "GET", &url, &[("x-key", "pinned")], None))
        })
        .collect();
    let busy = wait_until(Duration::from_secs(5), || {
        d.status()["backends"]
            .as_array()
            .is_some_and(|bs| bs.iter().any(|b| b["in_flight"] == 4))
    });
    assert!(
        busy,
        "slow requests did not pile onto one worker: {}",
        d.status()
    );
    let busy_worker = d.status()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["in_flight"] == 4)
        .unwrap()["worker_id"]
        .as_u64()
        .unwrap() as usize;
    let r = d.admin_post("/api/strategy", r#"{"strategy":"least_connections"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..20 {
        let r = d.get("/").unwrap();
        assert_ne!(
            r.worker(),
            Some(busy_worker),
            "least connections sent a request to the busy worker"
        );
    }
    let mut slow_workers = Vec::new();
    for h in slow {
        let r = h.join().unwrap().unwrap();
        assert_eq!(r.status, 200);
        slow_workers.push(r.worker().unwrap());
    }
    assert!(slow_workers.iter().all(|w| *w == busy_worker));
    assert!(
        wait_until(Duration::from_secs(2), || {
            d.status()["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["in_flight"] == 0)
        }),
        "in-flight counts return to exactly 0"
    );
}

#[test]
fn consistent_hash_keeps_a_key_on_one_worker_and_spreads_keys() {
    let _machine = shared_machine();
    let d = Drover::start(
        3,
        "balancing:\n  strategy: consistent_hash\n  hash_key: header:x-user\n",
    );
    let mut owners = HashMap::new();
    for user in 0..60 {
        let key = format!("user-{user}");
        let first = request(&d.agent, "GET", &d.url("/"), &[("x-user", &key)], None)
            .unwrap()
            .worker();
        for _ in 0..5 {
            let again = request(&d.agent, "GET", &d.url("/"), &[("x-user", &key)], None)
                .unwrap()
                .worker();
            assert_eq!(again, first, "key {key} moved");
        }
        *owners.entry(first.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        owners.len(),
        3,
        "60 keys spread over all 3 workers: {owners:?}"
    );
}

/// Two workers that sleep the milliseconds written in `<dir>/slow-<worker id>` while
/// that file exists.
fn start_with_slow_files(extra: &str) -> (tempfile::TempDir, Drover) {
    let dir = tempfile::tempdir().unwrap();
    let slow_file = dir.path().join("slow-{id}");
    let d = Drover::start(
        2,
        &format!(
            "  env:\n    SLOW_FILE: \"{}\"\n{extra}",
            slow_file.display()
        ),
    );
    (dir, d)
}

#[test]
fn latency_strategy_moves_traffic_off_a_slow_worker_and_back() {
    let _machine = shared_machine();
    let (dir, d) = start_with_slow_files("balancing:\n  strategy: latency\n  latency_decay: 1s\n");
    std::fs::write(dir.path().join("slow-0"), "40").unwrap();
    // Let the estimate learn (a few hundred requests), then measure the share.
    spread(&d, "/", 200, 4);
    let slow = spread(&d, "/", 400, 4);
    let share0 = *slow.get(&0).unwrap_or(&0) as f64 / 400.0;
    assert!(
        share0 < 0.15,
        "slow worker kept {share0} of traffic: {slow:?}"
    );
    std::fs::remove_file(dir.path().join("slow-0")).unwrap();
    // Its estimate decays (1 s decay time here), it gets probed and regains its share.
    let regained = wait_until(Duration::from_secs(15), || {
        let m = spread(&d, "/", 200, 4);
        *m.get(&0).unwrap_or(&0) >= 60
    });
    assert!(regained, "recovered worker did not regain its share");
}

#[test]
fn auto_strategy_picks_latency_when_one_worker_is_slow_and_explains_why() {
    let _machine = shared_machine();
    let (dir, d) = start_with_slow_files("balancing:\n  strategy: auto\n");
    assert_eq!(d.status()["strategy_auto"], true);
    std::fs::write(dir.path().join("slow-1"), "30").unwrap();
    let picked = wait_until(Duration::from_secs(15), || {
        spread(&d, "/", 40, 4);
        d.status()["strategy"] == "latency"
    });
    let s = d.status();
    assert!(picked, "auto did not switch: {s}");
    assert!(
        s["strategy_auto_reason"]
            .as_str()
            .unwrap()
            .contains("latencies differ"),
        "{s}"
    );
    assert!(d.log().contains("auto strategy: switching to latency"));
}

#[test]
fn strategy_switches_under_continuous_load_fail_no_request() {
    let _machine = shared_machine();
    let d = Drover::start(3, "");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(d.url("/"), 4, stop.clone(), usize::MAX);
    let names = [
        "least_connections",
        "weighted_round_robin",
        "latency",
        "consistent_hash",
        "random",
        "round_robin",
    ];
    for round in 0..3 {
        for n in names {
            let r = d.admin_post("/api/strategy", &format!("{{\"strategy\":\"{n}\"}}"));
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            std::thread::sleep(Duration::from_millis(80));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, bad, why) = loader.join().unwrap();
    assert!(ok > 200, "{ok}");
    assert_eq!(bad, 0, "{:?}", &why[..why.len().min(5)]);
    let text = d.metrics();
    let selections: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("drover_backend_selections_total"))
        .collect();
    for n in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with("drover_backend_selections_total")
                    && l.contains(&format!("strategy=\"{n}\""))),
            "no selections recorded for {n}: {selections:?}"
        );
    }
    let r = d.admin_post("/api/strategy", r#"{"strategy":"fastest"}"#);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("accepted"), "{}", r.body);
}

#[test]
fn drained_worker_takes_no_new_requests_and_finishes_its_in_flight_one() {
    let _machine = shared_machine();
    let d = Drover::start(2, "");
    let url = d.url("/delay?ms=1500");
    let slow = std::thread::spawn(move || request(&agent(), "GET", &url, &[], None));
    assert!(wait_until(Duration::from_secs(5), || {
        d.status()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["in_flight"] == 1)
    }));
    let s = d.status();
    let busy = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["in_flight"] == 1)
        .unwrap()["worker_id"]
        .as_u64()
        .unwrap() as usize;
    let old_pid = s["workers"][busy]["pid"].as_u64().unwrap();
    let r = d.admin_post(&format!("/api/workers/{busy}/drain"), "");
    assert_eq!(r.status, 202, "{}", r.body);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(800) {
        let r = d.get("/").unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.worker(), Some(busy), "draining worker got a new request");
    }
    let r = slow.join().unwrap().unwrap();
    assert_eq!(
        r.status, 200,
        "in-flight request on the draining worker completed"
    );
    assert_eq!(r.worker(), Some(busy));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = d.status();
            s["workers"][busy]["healthy"] == true
                && s["workers"][busy]["pid"].as_u64() != Some(old_pid)
        }),
        "a fresh worker replaces the drained one"
    );
    assert_eq!(d.admin_post("/api/workers/99/drain", "").status, 404);
}

#[test]
fn full_queue_answers_503_with_retry_after_and_a_free_slot_serves_the_queued() {
    let _machine = shared_machine();
    let d = Drover::start(
        1,
        "balancing:\n  max_inflight_per_backend: 1\n  queue:\n    size: 1\n    timeout: 600ms\n",
    );
    // One request holds the only slot, one waits in the queue, the third finds it full.
    let mut hs = Vec::new();
    for i in 0..3 {
        let url = d.url("/delay?ms=1500");
        hs.push(std::thread::spawn(move || {
            request(&agent(), "GET", &url, &[], None).unwrap()
        }));
        std::thread::sleep(Duration::from_millis(if i == 0 { 300 } else { 100 }));
    }
    let rs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = rs.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok, 1);
    assert_eq!(busy.len(), 2);
    for r in &busy {
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert!(busy.iter().any(|r| r.body == "queue full"));
    assert!(busy.iter().any(|r| r.body == "queue wait timed out"));
    assert_eq!(
        d.metric("drover_queue_rejected_total{reason=\"full\"}"),
        1.0
    );
    assert_eq!(
        d.metric("drover_queue_rejected_total{reason=\"timeout\"}"),
        1.0
    );

    // A queued request is served as soon as the slot frees up.
    let url = d.url("/delay?ms=300");
    let first = std::thread::spawn(move || request(&agent(), "GET", &url, &[], None).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let second = d.get("/delay?ms=10").unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(first.join().unwrap().status, 200);
    assert!(d.metric("drover_queue_wait_seconds_count") >= 2.0);
}

#[test]
fn remote_upstreams_are_balanced_and_resynced_on_reload() {
    let _machine = shared_machine();
    // Two standalone workers stand in for remote hosts.
    let ports = [free_port(), free_port()];
    let mut procs: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            std::process::Command::new(worker_bin())
                .env("PORT", p.to_string())
                .env("WORKER_ID", (10 + i).to_string())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let up = |n: usize| {
        let mut y = String::from("upstreams:\n");
        for p in &ports[..n] {
            y.push_str(&format!("  - address: 127.0.0.1:{p}\n"));
        }
        y
    };
    let d = Drover::start(0, &up(1));
    assert!(wait_until(Duration::from_secs(5), || d
        .get("/")
        .map(|r| r.status == 200)
        .unwrap_or(false)));
    assert_eq!(d.get("/").unwrap().worker(), Some(10));
    d.rewrite_config(0, &up(2));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let both = wait_until(Duration::from_secs(10), || {
        let m = spread(&d, "/", 20, 1);
        m.contains_key(&10) && m.contains_key(&11)
    });
    for p in procs.iter_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert!(both, "second upstream not added on reload: {}", d.log());
}

/// Requests answered per worker, from the client's side, and the counters drover
/// exports for the same backends must agree exactly (no retries happen here).
#[test]
fn per_backend_counters_match_the_split_clients_saw_for_every_strategy() {
    let _machine = shared_machine();
    let d = Drover::start(3, "  weights: [3, 2, 1]\n");
    let names = [
        "round_robin",
        "random",
        "least_connections",
        "weighted_round_robin",
        "latency",
        "consistent_hash",
        "predictive",
    ];
    let requests = |text: &str, w: usize| {
        metric_value(
            text,
            &format!("drover_backend_requests_total{{backend=\"worker-{w}\"}}"),
        )
    };
    let selections = |text: &str, w: usize, s: &str| {
        metric_value(
            text,
            &format!("drover_backend_selections_total{{backend=\"worker-{w}\",strategy=\"{s}\"}}"),
        )
    };
    for s in names {
        let r = d.admin_post("/api/strategy", &format!("{{\"strategy\":\"{s}\"}}"));
        assert_eq!(r.status, 200, "{}", r.body);
        let before = d.metrics();
        let seen = spread(&d, "/", 300, 3);
        assert_eq!(seen.values().sum::<usize>(), 300);
        // drover counts a request once its response is written (`finish`), so the last
        // responses' counts may land just after the client saw them: wait for all 300.
        let mut after = d.metrics();
        wait_until(Duration::from_secs(5), || {
            after = d.metrics();
            (0..3)
                .map(|w| requests(&after, w) - requests(&before, w))
                .sum::<f64>()
                >= 300.0
        });
        for w in 0..3 {
            let client = *seen.get(&w).unwrap_or(&0) as f64;
            assert_eq!(
                requests(&after, w) - requests(&before, w),
                client,
                "{s}: worker-{w} requests counter vs client split {seen:?}"
            );
            assert_eq!(
                selections(&after, w, s) - selections(&before, w, s),
                client,
                "{s}: worker-{w} selections counter vs client split {seen:?}"
            );
        }
        println!("{s}: client split {seen:?}");
    }
}

/// One latency sample per request of a closed-loop client with random think time.
fn mixed_load(d: &Drover, clients: usize, run: Duration) -> Vec<f64> {
    let hs: Vec<_> = (0..clients)
        .map(|_| {
            let fast = d.url("/work/fast?ms=2");
            let slow = d.url("/work/slow?ms=20");
            std::thread::spawn(move || {
                let a = agent();
                let mut out = Vec::new();
                let end = Instant::now() + run;
                while Instant::now() < end {
                    let url = if rand::random::<f64>() < 0.15 {
                        &slow
                    } else {
                        &fast
                    };
                    let t = Instant::now();
                    let r = request(&a, "GET", url, &[], None).expect("request");
                    assert_eq!(r.status, 200, "{}", r.body);
                    out.push(t.elapsed().as_secs_f64());
                    // Exponential think time, mean 15 ms.
                    let think = -0.015 * (1.0 - rand::random::<f64>()).ln();
                    std::thread::sleep(Duration::from_secs_f64(think.min(0.2)));
                }
                out
            })
        })
        .collect();
    hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

fn p99(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[((samples.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)]
}

/// Three workers, one three times slower (`SPEED_FACTORS`), each doing one unit of work
/// at a time (`/work`); 85% cheap (2 ms) and 15% expensive (20 ms) requests. The
/// strategies take turns twice so machine noise hits each alike; the predictive one
/// must have the lowest p99 (figures in docs/MODELS.md).
#[test]
fn predictive_beats_least_connections_and_peak_ewma_on_p99() {
    let _alone = MACHINE.write().unwrap_or_else(|p| p.into_inner());
    let d = Drover::start_full(
        3,
        "  env:\n    SPEED_FACTORS: \"1,1,3\"\n",
        "balancing:\n  strategy: least_connections\n",
        None,
    );
    let strategies = ["least_connections", "latency", "predictive"];
    let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
    for _round in 0..2 {
        for s in strategies {
            let r = d.admin_post("/api/strategy", &format!("{{\"strategy\":\"{s}\"}}"));
            assert_eq!(r.status, 200, "{}", r.body);
            // Let the strategy settle (and learn) before measuring.
            mixed_load(&d, 8, Duration::from_millis(1500));
            samples
                .entry(s)
                .or_default()
                .extend(mixed_load(&d, 8, Duration::from_secs(4)));
        }
    }
    let mut p: HashMap<&str, f64> = HashMap::new();
    for s in strategies {
        let v = samples.get_mut(s).unwrap();
        assert!(v.len() > 500, "{s}: only {} requests", v.len());
        p.insert(s, p99(v) * 1000.0);
        println!("{s}: {} requests, p99 {:.1} ms", v.len(), p[s]);
    }
    assert!(
        p["predictive"] < p["least_connections"] && p["predictive"] < p["latency"],
        "p99 ms: {p:?}"
    );
}
