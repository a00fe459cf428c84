// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Resident memory per session in the embedded store: fills a `MemoryStore` with N
//! sessions (pinned to one of 4 workers, no data, as after a first request) and prints
//! the growth of this process's RSS divided by N, plus the same with 64 bytes of data.
//!
//!     cargo bench --bench session_memory            # 1,000,000 sessions
//!     SESSIONS=200000 cargo bench --bench session_memory

use drover::sessions::cookie::SessionId;
use drover::sessions::record::Record;
use drover::sessions::store::memory::MemoryStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn fill(n: usize, data: usize) -> (f64, Duration) {
    let workers: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("worker-{i}"))).collect();
    let before = rss_bytes();
    // Headroom: the cap is per shard, and random ids fill shards unevenly.
    let store = MemoryStore::new(n * 2);
    let start = Instant::now();
    for i in 0..n {
        let mut r = Record::new(1);
        r.worker = Some(workers[i % 4].clone());
        if data > 0 {
            r.data = Some(vec![b'x'; data].into());
        }
        store.set_now(&SessionId::random(), r, Duration::from_secs(3600), 1);
    }
    let took = start.elapsed();
    let per = (rss_bytes().saturating_sub(before)) as f64 / n as f64;
    assert_eq!(store.len(), n);
    drop(store);
    (per, took)
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (per, took) = fill(n, 0);
    println!(
        "memory store: {n} sessions without data: {per:.0} bytes resident per session ({:.0} ns per insert)",
        took.as_nanos() as f64 / n as f64
    );
    let (per, _) = fill(n, 64);
    println!(
        "memory store: {n} sessions with 64 bytes of data: {per:.0} bytes resident per session"
    );
}
