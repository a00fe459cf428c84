// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! A real Socket.IO application (Node: socket.io and socket.io-client from the npm
//! registry, `tests/apps/socketio/`, installed by `.ci/run`) in 4 workers forked by
//! drover, with drover's sticky sessions in front: long-polling clients (whose long
//! GET and their POSTs of the same session overlap all the time) and clients that
//! upgrade to WebSocket, on the memory store and on Redis.

mod common;

use common::{Drover, RedisServer};
use std::path::{Path, PathBuf};
use std::process::Command;

const SECRET: &str = "test-secret-0123456789abcdef0123456789";
const DATA_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const WORKERS: usize = 4;
const CLIENTS: usize = 20;
const MESSAGES: usize = 20;

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/socketio")
}

fn node() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "node is not installed (Node 18 or later)");
    assert!(
        app_dir().join("node_modules/socket.io").is_dir(),
        "tests/apps/socketio has no node_modules: run `npm ci` there (.ci/run does)"
    );
    path
}

/// Drover forking 4 Socket.IO workers, with `sessions` as the sessions section.
fn start(sessions: &str) -> Drover {
    let node = node();
    let server = app_dir().join("server.js");
    let sessions = sessions.to_string();
    Drover::start_config(WORKERS, move |port, admin, dir| {
        format!(
            "listen: 127.0.0.1:{port}\nruntime_dir: {rt}\nadmin:\n  listen: 127.0.0.1:{admin}\n\
             health_check:\n  interval: 200ms\n  timeout: 500ms\n\
             workers:\n  count: {WORKERS}\n  command: [\"{node}\", \"{server}\"]\n  stop_timeout: 3s\n\
             {sessions}",
            rt = dir.join("run").display(),
            server = server.display(),
        )
    })
}

#[derive(Debug)]
struct ClientResult {
    workers: Vec<String>,
    transports: Vec<String>,
    acks: u64,
    error: Option<String>,
}

/// Runs the Node clients against drover and returns one result per client.
fn run_clients(d: &Drover, mode: &str) -> Vec<ClientResult> {
    let out = Command::new(node())
        .arg(app_dir().join("client.js"))
        .arg(d.url(""))
        .arg(CLIENTS.to_string())
        .arg(MESSAGES.to_string())
        .arg(mode)
        .current_dir(app_dir())
        .output()
        .expect("run node client.js");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.js failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stdout}"));
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    v.as_array()
        .expect("an array of client results")
        .iter()
        .map(|c| ClientResult {
            workers: strings(&c["workers"]),
            transports: strings(&c["transports"]),
            acks: c["acks"].as_u64().unwrap_or(0),
            error: c["error"].as_str().map(String::from),
        })
        .collect()
}

/// Every client got every acknowledgement, from one worker, over `transport`; the
/// clients spread over the workers.
fn check(d: &Drover, results: &[ClientResult], transport: &str) {
    assert_eq!(results.len(), CLIENTS);
    let failed: Vec<_> = results.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} clients failed, e.g. {:?}\n{}",
        failed.len(),
        failed.first(),
        d.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut used = std::collections::HashSet::new();
    for r in results {
        assert_eq!(r.acks, MESSAGES as u64, "{r:?}");
        assert_eq!(
            r.workers.len(),
            1,
            "a client's messages reached several workers: {r:?}"
        );
        assert_eq!(r.transports, vec![transport.to_string()], "{r:?}");
        used.insert(r.workers[0].clone());
    }
    assert!(used.len() > 1, "all clients on one worker: {used:?}");
    assert_eq!(d.metric("drover_session_lock_timeouts_total"), 0.0);
}

fn polling_and_websocket_clients(d: &Drover) {
    let polling = run_clients(d, "polling");
    check(d, &polling, "polling");
    let upgraded = run_clients(d, "websocket");
    check(d, &upgraded, "websocket");
}

#[test]
fn socketio_long_polling_and_websocket_clients_stick_to_one_worker_on_the_memory_store() {
    let d = start("sessions:\n  enabled: true\n  store: memory\n");
    polling_and_websocket_clients(&d);
}

#[test]
fn socketio_long_polling_and_websocket_clients_stick_to_one_worker_on_redis() {
    let redis = RedisServer::start();
    let d = start(&format!(
        "sessions:\n  enabled: true\n  store: redis\n  secrets: [\"{SECRET}\"]\n  encryption:\n    keys: [\"{DATA_KEY}\"]\n  redis:\n    url: {}\n",
        redis.url()
    ));
    polling_and_websocket_clients(&d);
    let api: serde_json::Value = serde_json::from_str(&d.admin_get("/api/sessions").body).unwrap();
    assert_eq!(api["store"], "redis");
    assert_eq!(api["store_up"], true);
    assert!(api["active"].as_u64().unwrap() >= CLIENTS as u64, "{api}");
}
