// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Sticky sessions end to end: the real drover binary, real workers, a real
//! `redis-server` on a free port, real HTTP clients.

mod common;

use common::{wait_until, Drover, RedisServer, Reply};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "test-secret-0123456789abcdef0123456789";
const DATA_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn memory_yaml(extra: &str) -> String {
    format!("sessions:\n  enabled: true\n  store: memory\n{extra}")
}

fn redis_yaml(redis: &RedisServer, extra: &str) -> String {
    format!(
        "sessions:\n  enabled: true\n  store: redis\n  secrets: [\"{SECRET}\"]\n  encryption:\n    keys: [\"{DATA_KEY}\"]\n  redis:\n    url: {}\n    timeout: 200ms\n{extra}",
        redis.url()
    )
}

/// The `name=value` part of the reply's Set-Cookie, if any.
fn set_cookie(r: &Reply) -> Option<String> {
    r.header("set-cookie")
        .map(|c| c.split(';').next().unwrap_or("").to_string())
}

fn counter(r: &Reply) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body));
    v["counter"].as_u64().unwrap_or(0)
}

fn incr(d: &Drover, cookie: &str) -> Reply {
    let r = d
        .get_with("/session/incr", &[("cookie", cookie)])
        .unwrap_or_else(|e| panic!("request failed: {e}\n{}", d.log()));
    assert_eq!(r.status, 200, "{}", r.body);
    r
}

/// Starts a session and returns its cookie (`name=value`).
fn new_session(d: &Drover) -> (String, Reply) {
    let r = d
        .get("/session/incr")
        .unwrap_or_else(|e| panic!("request failed: {e}\n{}", d.log()));
    assert_eq!(r.status, 200, "{}", r.body);
    let c = set_cookie(&r).expect("a new session sets a cookie");
    (c, r)
}

fn sessions_api(d: &Drover) -> serde_json::Value {
    serde_json::from_str(&d.admin_get("/api/sessions").body).expect("JSON")
}

#[test]
fn sessions_stick_for_200_requests_and_new_sessions_spread() {
    let d = Drover::start(3, &memory_yaml("  without_cookie: balance\n"));
    let mut workers = HashSet::new();
    for _ in 0..30 {
        let (_, r) = new_session(&d);
        workers.insert(r.worker().unwrap());
    }
    assert!(workers.len() > 1, "new sessions all landed on {workers:?}");

    let (cookie, first) = new_session(&d);
    let pinned = first.worker().unwrap();
    let sc = first.header("set-cookie").unwrap();
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Lax") && sc.contains("Path=/"),
        "{sc}"
    );
    for i in 2..=200 {
        let r = incr(&d, &cookie);
        assert_eq!(r.worker(), Some(pinned), "request {i} left its worker");
        assert_eq!(counter(&r), i, "request {i}");
        assert!(set_cookie(&r).is_none(), "cookie reissued on request {i}");
        assert!(r.header("x-drover-session-set").is_none());
    }
    let api = sessions_api(&d);
    assert_eq!(api["store"], "memory");
    assert_eq!(api["active"], 31);
    assert_eq!(api["counters"]["created"], 31);
    // Per-worker counts come from the sweeper's pass over all shards (6.4 s at the
    // default sweep interval).
    let per_worker_total = wait_until(Duration::from_secs(15), || {
        let api = sessions_api(&d);
        api["per_worker"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum::<u64>() == 31)
            .unwrap_or(false)
    });
    assert!(per_worker_total, "{}", sessions_api(&d));
    // The dashboard's live feed shows the same per-worker counts.
    let live_total = wait_until(Duration::from_secs(5), || {
        let live: serde_json::Value =
            serde_json::from_str(&d.admin_get("/api/live").body).unwrap_or_default();
        live["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter_map(|w| w["sessions"].as_u64())
                    .sum::<u64>()
                    == 31
            })
            .unwrap_or(false)
    });
    assert!(live_total, "{}", d.admin_get("/api/live").body);
    assert!(d.metric("drover_sessions_active") >= 31.0);
}

#[test]
fn forged_tampered_and_expired_cookies_get_a_fresh_session_never_an_error() {
    let d = Drover::start(2, &memory_yaml("  ttl: 3s\n"));
    let (cookie, _) = new_session(&d);
    let r = incr(&d, &cookie);
    assert_eq!(counter(&r), 2);

    let (name, value) = cookie.split_once('=').unwrap();
    let mut tampered = value.as_bytes().to_vec();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(tampered).unwrap());
    let foreign = format!("{name}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let garbage = format!("{name}=%00';DROP TABLE");
    for bad in [&tampered, &foreign, &garbage] {
        let r = incr(&d, bad);
        assert_eq!(counter(&r), 1, "{bad} reached someone's session");
        let fresh = set_cookie(&r).expect("fresh cookie");
        assert_ne!(&fresh, bad);
    }
    assert!(d.metric("drover_sessions_cookie_rejected_total{reason=\"bad_signature\"}") >= 2.0);
    assert!(d.metric("drover_sessions_cookie_rejected_total{reason=\"malformed\"}") >= 1.0);

    // The absolute TTL ends the session even though it is in use.
    std::thread::sleep(Duration::from_millis(3200));
    let r = incr(&d, &cookie);
    assert_eq!(counter(&r), 1, "expired session still served");
    assert!(set_cookie(&r).is_some());
    assert!(d.metric("drover_sessions_cookie_rejected_total{reason=\"expired\"}") >= 1.0);
}

#[test]
fn sliding_idle_timeout_versus_absolute_ttl() {
    let d = Drover::start(2, &memory_yaml("  ttl: 5s\n  idle_timeout: 1s\n"));
    // Activity every 400 ms keeps a session alive past its idle timeout...
    let (active, _) = new_session(&d);
    let start = Instant::now();
    let mut n = 1;
    while start.elapsed() < Duration::from_millis(2600) {
        std::thread::sleep(Duration::from_millis(400));
        n += 1;
        assert_eq!(counter(&incr(&d, &active)), n, "slid session lost");
    }
    // ...an idle one expires: its data is gone. The signed id is still drover's, so
    // the session starts over under it (no new cookie).
    let (idle, _) = new_session(&d);
    std::thread::sleep(Duration::from_millis(1300));
    let r = incr(&d, &idle);
    assert_eq!(counter(&r), 1, "idle session survived its idle timeout");
    assert!(set_cookie(&r).is_none(), "the signed id is kept");
    // And the active one ends at the absolute TTL however busy it is.
    let ended = wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        counter(&incr(&d, &active)) == 1
    });
    assert!(ended, "absolute ttl not enforced");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "ended early: {:?}",
        start.elapsed()
    );
}

#[test]
fn clients_can_neither_inject_nor_read_session_internals() {
    let d = Drover::start(2, &memory_yaml(""));
    let (cookie, _) = new_session(&d);
    let r = d
        .get_with(
            "/session/incr",
            &[
                ("cookie", &cookie),
                ("x-drover-session", "{\"counter\":999}"),
                ("X-Drover-Session-Id", "forged"),
                ("x-drover-session-state", "existing"),
            ],
        )
        .unwrap();
    assert_eq!(
        counter(&r),
        2,
        "client-supplied session data reached the worker"
    );
    assert!(
        r.headers.keys().all(|k| !k.starts_with("x-drover-")),
        "{:?}",
        r.headers
    );
    let show = d.get_with("/session", &[("cookie", &cookie)]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&show.body).unwrap();
    assert_eq!(v["session"]["counter"], 2);
    let id = v["session_id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "hex id of 128 bits: {id}");
    assert!(
        !cookie.contains(id),
        "the cookie must not carry the raw id in clear hex"
    );
}

#[test]
fn killing_the_pinned_worker_migrates_its_sessions_with_data_intact() {
    let d = Drover::start(3, &memory_yaml("  without_cookie: balance\n"));
    let mut sessions: Vec<(String, usize)> = Vec::new();
    for _ in 0..12 {
        let (c, r) = new_session(&d);
        for _ in 0..2 {
            incr(&d, &c);
        }
        sessions.push((c, r.worker().unwrap()));
    }
    let victim = sessions[0].1;
    let pid = d.status()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == victim)
        .and_then(|w| w["pid"].as_u64())
        .unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    // kill() returns before the kernel has torn the process down; until then its listening
    // socket still completes connections, which it then resets (a request racing a crash,
    // which drover does not replay by default). Wait until it is gone or a zombie.
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }));

    // The first session is the victim's and is asked for at once, while the victim is
    // surely down; later ones may find it restarted (same worker slot, new process).
    let mut moved = 0;
    for (cookie, worker) in &sessions {
        let r = incr(&d, cookie);
        assert_eq!(counter(&r), 4, "session data lost (was on worker {worker})");
        assert!(set_cookie(&r).is_none(), "cookie changed on migration");
        if *worker == victim {
            assert_ne!(r.pid(), Some(pid as u32), "served by the killed process");
            if r.worker() != Some(victim) {
                moved += 1;
            }
        } else {
            assert_eq!(
                r.worker(),
                Some(*worker),
                "a session of a healthy worker moved"
            );
        }
    }
    assert!(
        moved >= 1,
        "the first victim session was served by another worker"
    );
    assert!(d.metric("drover_sessions_migrated_total") >= moved as f64);
    // Once the worker is back, migrated sessions stay where they now live.
    assert!(wait_until(Duration::from_secs(15), || d.healthy_workers() == 3));
    for (cookie, worker) in &sessions {
        let r = incr(&d, cookie);
        assert_eq!(counter(&r), 5);
        if *worker != victim {
            assert_eq!(r.worker(), Some(*worker));
        }
    }
}

/// A POST with the session cookie; `body` makes it take Pingora's path (the session
/// lock then waits for the whole body), none drover's HTTP/1 engine.
fn post(d: &Drover, path: &str, cookie: &str, body: &str) -> Result<Reply, String> {
    common::request(
        &d.agent,
        "POST",
        &d.url(path),
        &[("cookie", cookie), ("content-type", "text/plain")],
        Some(body),
    )
}

/// 100 clients POST `/session/incr` to one session at once (half with a body, half
/// without, so both HTTP/1 engines serve them); the count must be exactly 100.
fn hundred_concurrent_increments(drovers: &[&Drover], cookie: &str) {
    std::thread::scope(|s| {
        for i in 0..100 {
            let d = drovers[i % drovers.len()];
            s.spawn(move || {
                let body = if i % 2 == 0 { "n=1" } else { "" };
                let r = post(d, "/session/incr?ms=1", cookie, body).expect("answered");
                assert_eq!(r.status, 200, "{}", r.body);
                assert!(set_cookie(&r).is_none(), "session lost under contention");
            });
        }
    });
    let show = drovers[0]
        .get_with("/session", &[("cookie", cookie)])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&show.body).unwrap();
    assert_eq!(v["session"]["counter"], 101, "lost updates: {}", show.body);
}

#[test]
fn no_lost_updates_with_100_concurrent_increments_on_the_memory_store() {
    for fast_path in [true, false] {
        let d = Drover::start(
            2,
            &format!("proxy:\n  fast_path: {fast_path}\n{}", memory_yaml("")),
        );
        let (cookie, _) = new_session(&d);
        hundred_concurrent_increments(&[&d], &cookie);
        assert_eq!(
            d.metric("drover_session_write_conflicts_total"),
            0.0,
            "fast_path {fast_path}"
        );
        assert_eq!(d.metric("drover_session_lock_timeouts_total"), 0.0);
    }
}

#[test]
fn memory_sessions_survive_a_graceful_restart_through_the_snapshot() {
    let mut d = Drover::start(2, &memory_yaml(""));
    let (cookie, _) = new_session(&d);
    incr(&d, &cookie);
    d.restart_gracefully(2);
    assert!(d.log().contains("sessions: saved"), "{}", d.log());
    assert!(d.log().contains("sessions: restored"), "{}", d.log());
    let r = incr(&d, &cookie);
    assert_eq!(counter(&r), 3, "session lost across a graceful restart");
    assert!(set_cookie(&r).is_none());
}

#[test]
fn the_memory_store_cap_holds_under_a_flood_of_new_sessions() {
    let d = Drover::start(1, &memory_yaml("  memory:\n    max_sessions: 128\n"));
    // Each first request sets data, so each creates a record (cookieless requests
    // without data store nothing at all; see the flood test below).
    for _ in 0..1000 {
        assert_eq!(d.get("/session/incr").unwrap().status, 200);
    }
    let api = sessions_api(&d);
    let active = api["active"].as_u64().unwrap();
    assert!(active <= 128, "{api}");
    assert!(active >= 100, "cap badly used: {api}");
    assert!(api["evicted"].as_u64().unwrap() >= 872, "{api}");
    assert!(wait_until(Duration::from_secs(3), || d
        .metric("drover_sessions_evicted_total")
        >= 800.0));
}

#[test]
fn redis_sessions_are_shared_by_two_instances_and_survive_a_drover_restart() {
    let redis = RedisServer::start();
    let yaml = redis_yaml(&redis, "");
    let mut a = Drover::start(2, &yaml);
    let b = Drover::start(2, &yaml);
    let (cookie, _) = new_session(&a);
    assert_eq!(counter(&incr(&a, &cookie)), 2);
    assert_eq!(
        counter(&incr(&b, &cookie)),
        3,
        "instance b did not see a's session"
    );
    let show = b.get_with("/session", &[("cookie", &cookie)]).unwrap();
    assert!(show.body.contains("\"counter\":3"), "{}", show.body);
    a.restart_hard(2);
    assert_eq!(
        counter(&incr(&a, &cookie)),
        4,
        "session lost across a drover restart"
    );
    let api = sessions_api(&a);
    assert_eq!(api["store"], "redis");
    assert_eq!(api["store_up"], true);
    assert!(api["active"].as_u64().unwrap() >= 1, "{api}");
}

#[test]
fn no_lost_updates_on_redis_with_one_and_with_two_instances() {
    let redis = RedisServer::start();
    let yaml = redis_yaml(&redis, "");
    let a = Drover::start(2, &yaml);
    let b = Drover::start(2, &yaml);
    let (one, _) = new_session(&a);
    hundred_concurrent_increments(&[&a], &one);
    let (two, _) = new_session(&a);
    hundred_concurrent_increments(&[&a, &b], &two);
}

#[test]
fn a_dead_or_hung_redis_degrades_service_and_it_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let d = Drover::start(2, &redis_yaml(&redis, ""));
    let (cookie, _) = new_session(&d);
    assert_eq!(counter(&incr(&d, &cookie)), 2);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let url = d.url("/session");
            let cookie = cookie.clone();
            std::thread::spawn(move || {
                let agent = common::agent();
                while !stop.load(Ordering::Relaxed) {
                    match common::request(&agent, "GET", &url, &[("cookie", &cookie)], None) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.body)),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    // A hung Redis (SIGSTOP): calls time out, requests are served without data.
    std::thread::sleep(Duration::from_millis(300));
    let rpid = Pid::from_raw(redis_pid(&redis));
    kill(rpid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let during = d.get_with("/session", &[("cookie", &cookie)]).unwrap();
    assert_eq!(during.status, 200);
    assert!(during.body.contains("\"session\":null"), "{}", during.body);
    kill(rpid, Signal::SIGCONT).unwrap();
    let mut last = String::new();
    let back = wait_until(Duration::from_secs(10), || {
        d.get_with("/session", &[("cookie", &cookie)])
            .map(|r| {
                last = format!("{} {:?}", r.body, r.headers);
                r.body.contains("\"counter\":2")
            })
            .unwrap_or(false)
    });
    assert!(
        back,
        "session data did not come back after Redis resumed: {last}\n{}\n{}",
        d.admin_get("/api/sessions").body,
        d.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A dead Redis (SIGKILL, restarted empty): still no failed request.
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    redis.spawn();
    let recovered = wait_until(Duration::from_secs(10), || {
        let (c, _) = new_session(&d);
        d.get_with("/session/incr", &[("cookie", &c)])
            .map(|r| counter(&r) == 2)
            .unwrap_or(false)
    });
    assert!(
        recovered,
        "sessions did not work again after Redis came back"
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert!(
        d.metric("drover_session_store_errors_total{kind=\"timeout\"}")
            + d.metric("drover_session_store_errors_total{kind=\"circuit_open\"}")
            > 0.0
    );
}

fn redis_pid(r: &RedisServer) -> i32 {
    // The server's pid from its own INFO, so the test signals exactly that process.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.write_all(b"INFO server\r\n").unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    let line = text
        .lines()
        .find(|l| l.starts_with("process_id:"))
        .expect("process_id in INFO");
    line["process_id:".len()..].trim().parse().unwrap()
}

// ---------------------------------------------------------------------------------
// Sessions on the shipped defaults (issue 14): conf/drover.yaml with only its ports and
// paths replaced.

/// Drover on the shipped `conf/drover.yaml`; only the listen and admin ports and the
/// runtime folder are replaced, plus `overrides` (old text, new text) for variants.
fn shipped(overrides: &[(&str, &str)]) -> Drover {
    common::worker_bin(); // `upstream-worker` is found next to drover
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/drover.yaml"),
    )
    .unwrap();
    let workers = 2;
    Drover::start_config(workers, |port, admin, dir| {
        let mut yaml = text
            .replacen(
                "\nlisten: 127.0.0.1:8080\n",
                &format!("\nlisten: 127.0.0.1:{port}\n"),
                1,
            )
            .replacen(
                "  listen: 127.0.0.1:9090\n",
                &format!("  listen: 127.0.0.1:{admin}\n"),
                1,
            )
            .replacen(
                "\nruntime_dir: null\n",
                &format!("\nruntime_dir: {}\n", dir.join("run").display()),
                1,
            );
        for (from, to) in overrides {
            assert!(yaml.contains(from), "`{from}` not in conf/drover.yaml");
            yaml = yaml.replacen(from, to, 1);
        }
        assert!(yaml.contains(&format!("127.0.0.1:{port}")));
        yaml
    })
}

const FAST_PATH_OFF: (&str, &str) = ("  fast_path: true\n", "  fast_path: false\n");

fn session_json(d: &Drover, cookie: &str) -> serde_json::Value {
    let r = d.get_with("/session", &[("cookie", cookie)]).unwrap();
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[test]
fn shipped_defaults_place_first_requests_by_round_robin_then_the_cookie_pins() {
    let d = shipped(&[]);
    let mut per_worker = [0usize; 2];
    let mut first = Vec::new();
    for _ in 0..20 {
        let r = d.get("/").unwrap();
        assert_eq!(r.status, 200);
        per_worker[r.worker().unwrap()] += 1;
        first.push((
            set_cookie(&r).expect("a first request gets a cookie"),
            r.worker().unwrap(),
        ));
    }
    // Round robin, as the dashboard says: not all on one worker by client IP.
    assert_eq!(
        per_worker,
        [10, 10],
        "cookieless requests were not balanced"
    );
    for (cookie, worker) in &first {
        for _ in 0..3 {
            let r = d.get_with("/", &[("cookie", cookie)]).unwrap();
            assert_eq!(
                r.worker(),
                Some(*worker),
                "a cookie's requests left its worker"
            );
            assert!(set_cookie(&r).is_none());
        }
    }
}

#[test]
fn shipped_defaults_keep_100_cookie_jar_clients_on_their_workers() {
    let d = shipped(&[]);
    let placed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..10 {
            s.spawn(|| {
                for _ in 0..10 {
                    // One client: a fresh agent, its own cookie jar (the Cookie header).
                    let agent = common::agent();
                    let url = d.url("/session/incr");
                    let r = common::request(&agent, "GET", &d.url("/"), &[], None).unwrap();
                    let cookie = set_cookie(&r).unwrap();
                    let worker = r.worker().unwrap();
                    for i in 1..=10 {
                        let r = common::request(&agent, "GET", &url, &[("cookie", &cookie)], None)
                            .unwrap();
                        assert_eq!(r.worker(), Some(worker), "request {i} moved");
                        assert_eq!(counter(&r), i);
                        assert!(set_cookie(&r).is_none());
                    }
                    placed.lock().unwrap().push(worker);
                }
            });
        }
    });
    let placed = placed.into_inner().unwrap();
    assert_eq!(placed.len(), 100);
    let on_0 = placed.iter().filter(|w| **w == 0).count();
    assert!(
        (40..=60).contains(&on_0),
        "{on_0} of 100 clients on worker 0"
    );
    let api = sessions_api(&d);
    assert_eq!(api["active"], 100, "{api}");
    assert_eq!(api["counters"]["write_conflicts"], 0, "{api}");
}

/// `n` cookieless GETs over 8 keep-alive connections.
fn cookieless_flood(d: &Drover, n: usize) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let agent = common::agent();
                let url = d.url("/");
                for _ in 0..n / 8 {
                    let r = common::request(&agent, "GET", &url, &[], None).unwrap();
                    assert_eq!(r.status, 200);
                    assert!(set_cookie(&r).is_some());
                }
            });
        }
    });
    start.elapsed()
}

#[test]
fn shipped_defaults_a_cookieless_flood_stores_no_session() {
    let d = shipped(&[]);
    let took = cookieless_flood(&d, 20_000);
    let api = sessions_api(&d);
    eprintln!("20,000 cookieless requests in {took:?}: {api}");
    assert_eq!(api["active"], 0, "{api}");
    assert_eq!(api["counters"]["created"], 0, "{api}");
    assert_eq!(d.metric("drover_sessions_active"), 0.0);
}

#[test]
fn a_cookieless_flood_stores_no_session_on_pingoras_path_either() {
    let d = shipped(&[FAST_PATH_OFF]);
    cookieless_flood(&d, 2_000);
    let api = sessions_api(&d);
    assert_eq!(api["active"], 0, "{api}");
    assert_eq!(api["counters"]["created"], 0, "{api}");
}

/// While a 3 s request of a session is in flight, the session's other requests (a
/// read, and a write) answer at once.
fn fast_requests_beside_a_slow_one(d: &Drover, slow_method: &str, slow_path: &str) {
    let (cookie, _) = new_session(d);
    let slow = {
        let url = d.url(slow_path);
        let cookie = cookie.clone();
        let method = slow_method.to_string();
        std::thread::spawn(move || {
            let start = Instant::now();
            let body = (method == "POST").then_some("slow");
            let r = common::request(
                &common::agent(),
                &method,
                &url,
                &[("cookie", &cookie)],
                body,
            )
            .unwrap();
            (r.status, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut took = Vec::new();
    let mut timed = |f: &mut dyn FnMut() -> Reply| {
        let t = Instant::now();
        let r = f();
        took.push(t.elapsed());
        r
    };
    for _ in 0..5 {
        let r = timed(&mut || d.get_with("/", &[("cookie", &cookie)]).unwrap());
        assert_eq!(r.status, 200);
        let r = timed(&mut || d.get_with("/session", &[("cookie", &cookie)]).unwrap());
        assert_eq!(r.status, 200);
    }
    if slow_method == "GET" {
        // A write of the session does not wait for a read either.
        let r = timed(&mut || post(d, "/session/incr", &cookie, "").unwrap());
        assert_eq!(counter(&r), 2);
        let r = timed(&mut || post(d, "/session/incr", &cookie, "with a body").unwrap());
        assert_eq!(counter(&r), 3);
    }
    let (status, slow_took) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(slow_took >= Duration::from_secs(3), "{slow_took:?}");
    took.sort();
    let (median, worst) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!(
        "{slow_method} {slow_path} in flight: {} fast requests of the session, median {median:?}, slowest {worst:?}",
        took.len()
    );
    assert!(
        median < Duration::from_millis(50),
        "fast requests took {median:?} (median) beside a slow one of their session"
    );
    // Waiting for the slow request would take seconds; a loaded CI box takes far less.
    assert!(
        worst < Duration::from_secs(1),
        "a fast request waited {worst:?}"
    );
}

#[test]
fn shipped_defaults_a_fast_request_does_not_wait_for_a_slow_one_of_its_session() {
    let d = shipped(&[]);
    fast_requests_beside_a_slow_one(&d, "GET", "/delay?ms=3000");
    fast_requests_beside_a_slow_one(&d, "POST", "/session/incr?ms=3000");
}

#[test]
fn a_fast_request_does_not_wait_for_a_slow_one_of_its_session_on_pingoras_path() {
    let d = shipped(&[FAST_PATH_OFF]);
    fast_requests_beside_a_slow_one(&d, "GET", "/delay?ms=3000");
    fast_requests_beside_a_slow_one(&d, "POST", "/session/incr?ms=3000");
}

fn regenerate_and_destroy(d: &Drover, method: &str) {
    let send = |path: &str, cookie: &str| {
        let body = (method == "POST").then_some("");
        common::request(&d.agent, method, &d.url(path), &[("cookie", cookie)], body).unwrap()
    };
    let r = d.get("/session/set?key=user&value=anonymous").unwrap();
    let old = set_cookie(&r).unwrap();
    let before = session_json(d, &old);
    assert_eq!(before["session"]["user"], "anonymous");
    assert_eq!(before["state"], "existing");

    // Login: a new id with the same data (plus the login's own update).
    let r = send("/session/regenerate?key=user&value=ann", &old);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("x-drover-session-control").is_none());
    let new = set_cookie(&r).expect("regenerate sets a new cookie");
    assert_ne!(new, old);
    let after = session_json(d, &new);
    assert_eq!(after["session"]["user"], "ann", "{after}");
    assert_eq!(after["state"], "existing");
    assert_ne!(after["session_id"], before["session_id"]);
    // The old id is dead: it reaches no data and is replaced by a fresh session.
    let stale = d.get_with("/session", &[("cookie", &old)]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stale.body).unwrap();
    assert_eq!(v["session"], serde_json::Value::Null, "{}", stale.body);
    assert_eq!(v["state"], "new");
    assert_ne!(v["session_id"], before["session_id"]);
    assert!(set_cookie(&stale).is_some());

    // Logout: the record is gone and the cookie expired.
    let active = sessions_api(d)["active"].as_u64().unwrap();
    let r = send("/session/destroy", &new);
    assert_eq!(r.status, 200);
    let sc = r.header("set-cookie").expect("destroy expires the cookie");
    assert!(
        sc.starts_with("drover_session=;") && sc.contains("Max-Age=0"),
        "{sc}"
    );
    assert_eq!(sessions_api(d)["active"].as_u64().unwrap(), active - 1);
    let gone = session_json(d, &new);
    assert_eq!(gone["session"], serde_json::Value::Null, "{gone}");
    assert_eq!(gone["state"], "new");
}

#[test]
fn shipped_defaults_workers_regenerate_and_destroy_sessions() {
    let d = shipped(&[]);
    regenerate_and_destroy(&d, "GET");
    regenerate_and_destroy(&d, "POST");
}

#[test]
fn workers_regenerate_and_destroy_sessions_on_pingoras_path() {
    let d = shipped(&[FAST_PATH_OFF]);
    regenerate_and_destroy(&d, "GET");
}

#[test]
fn ip_hashing_places_cookieless_clients_when_enabled() {
    let d = shipped(&[(
        "  without_cookie: balance\n",
        "  without_cookie: client_ip\n",
    )]);
    let workers: HashSet<usize> = (0..20)
        .map(|_| d.get("/").unwrap().worker().unwrap())
        .collect();
    assert_eq!(workers.len(), 1, "one client IP, one worker: {workers:?}");
    assert_eq!(sessions_api(&d)["active"], 0);
}

#[test]
fn get_writers_that_overlap_are_counted_and_a_serialised_route_loses_nothing() {
    // GET /session/incr writes, but GET is not serialised by default: overlapping
    // writes are refused and counted, never silently applied.
    let d = Drover::start(2, &memory_yaml(""));
    let (cookie, _) = new_session(&d);
    std::thread::scope(|s| {
        for _ in 0..40 {
            s.spawn(|| {
                let r = d
                    .get_with("/session/incr?ms=20", &[("cookie", &cookie)])
                    .unwrap();
                assert_eq!(r.status, 200);
            });
        }
    });
    let counted = session_json(&d, &cookie)["session"]["counter"]
        .as_u64()
        .unwrap();
    let conflicts = d.metric("drover_session_write_conflicts_total") as u64;
    assert!(conflicts > 0, "40 overlapping GET writers and no conflict");
    assert_eq!(
        counted - 1 + conflicts,
        40,
        "every update either applied or counted"
    );
    // Listed in serialize_paths, the same route loses nothing.
    let d = Drover::start(2, &memory_yaml("  serialize_paths: [/session/incr]\n"));
    let (cookie, _) = new_session(&d);
    std::thread::scope(|s| {
        for _ in 0..100 {
            s.spawn(|| {
                d.get_with("/session/incr?ms=1", &[("cookie", &cookie)])
                    .unwrap();
            });
        }
    });
    assert_eq!(session_json(&d, &cookie)["session"]["counter"], 101);
    assert_eq!(d.metric("drover_session_write_conflicts_total"), 0.0);
}

/// The lock stripe drover used to map a session to (4,096 stripes over the id).
fn old_stripe(session_id_hex: &str) -> u64 {
    let mut b = [0u8; 8];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&session_id_hex[2 * i..2 * i + 2], 16).unwrap();
    }
    u64::from_le_bytes(b) % 4096
}

/// Opens a POST of `cookie`'s session that declares a body it never finishes.
fn stalled_post(d: &Drover, cookie: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    write!(
        s,
        "POST /session/incr HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nonly ten b"
    )
    .unwrap();
    s
}

#[test]
fn a_stalled_body_blocks_neither_its_session_nor_a_session_of_its_old_stripe() {
    // Issue 21: with 4,096 lock stripes, a client owning a cookie in the victim's
    // stripe could hold the victim's lock with a never-finished body.
    let d = Drover::start(2, &memory_yaml(""));
    let mut by_stripe = std::collections::HashMap::new();
    let (attacker, victim) = loop {
        assert!(by_stripe.len() < 2000, "no stripe collision found");
        let (cookie, _) = new_session(&d);
        let id = session_json(&d, &cookie)["session_id"]
            .as_str()
            .unwrap()
            .to_string();
        if let Some(other) = by_stripe.insert(old_stripe(&id), cookie.clone()) {
            break (other, cookie);
        }
    };
    let _stall_other = stalled_post(&d, &attacker);
    let _stall_own = stalled_post(&d, &victim);
    std::thread::sleep(Duration::from_millis(200));
    for (i, body) in ["", "a body"].iter().enumerate() {
        let t = Instant::now();
        let r = post(&d, "/session/incr", &victim, body).unwrap();
        let took = t.elapsed();
        assert_eq!(counter(&r), 2 + i as u64, "the victim's write was dropped");
        // Held behind the stalled body, it would wait 5 s (lock_timeout) or 30 s.
        assert!(took < Duration::from_secs(1), "victim waited {took:?}");
    }
    assert_eq!(session_json(&d, &victim)["session"]["counter"], 3);
    assert_eq!(session_json(&d, &attacker)["session"]["counter"], 1);
    assert_eq!(d.metric("drover_session_lock_timeouts_total"), 0.0);
    assert_eq!(d.metric("drover_session_write_conflicts_total"), 0.0);
}

#[test]
fn redis_stores_nothing_for_cookieless_clients_and_workers_regenerate_and_destroy() {
    let redis = RedisServer::start();
    let d = Drover::start(2, &redis_yaml(&redis, ""));
    cookieless_flood(&d, 2_000);
    let api = sessions_api(&d);
    assert_eq!(api["active"], 0, "{api}");
    assert_eq!(api["counters"]["created"], 0, "{api}");
    regenerate_and_destroy(&d, "POST");
    regenerate_and_destroy(&d, "GET");
    assert_eq!(d.metric("drover_session_write_conflicts_total"), 0.0);
}
