// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Micro-benchmarks for the pieces drover runs on every proxied request.
//!
//! Groups:
//! - `select/<strategy>/<backends>`: one `Pool::select` plus dropping the returned
//!   guard (taking and releasing the in-flight slot and breaker permit), for every
//!   `StrategyKind` at 4, 16 and 64 healthy backends. Target: under 200 ns each.
//!   Keys vary per iteration (precomputed FNV-1a hashes, so hashing is not timed);
//!   weights cycle 1, 2, 3; every backend has a latency sample, as in steady state.
//! - `breaker/*`: a closed breaker's `try_acquire` + `record`, for a success and for a
//!   failure that stays below the trip threshold (the lock-free fast path).
//! - `breaker/closed/*` also with the default rolling window (failure_ratio) and
//!   without it; the failure case pays the full rule evaluation (window scan).
//! - `rate_limit/check/*`: one limiter decision for 1024 rotating clients (allowed) and
//!   for one client over its limit (denied). `retry_budget/on_request`: counting a
//!   request in the budget window (includes reading the clock).
//! - `access_log/format/typical`: formatting one JSON access-log line.
//! - `headers/*`: `strip_internal_request` on 8 ordinary headers (none internal, the
//!   common case) and with one `x-drover-` header added; `request_id` when the client
//!   sent none (a fresh id is generated); `cookie` lookup.
//! - `fnv1a/15_bytes`: hashing a 15-byte key (consistent-hash keys).
//! - `sessions/*`: cookie encode and verify (HMAC-SHA256), sealing and opening 64 bytes
//!   of session data (ChaCha20-Poly1305), and a memory-store get + set of one record
//!   in a store of 100,000 sessions.
//! - `observe/*`: recording one latency into an HDR window recorder (single thread, and
//!   with a second thread recording into the same recorder, and while a harvester swaps
//!   the shards as the once-a-second sampler does); `trace/*`: continuing an incoming
//!   `traceparent` and writing drover's into the request.
//!
//! The bench uses mimalloc, as the drover binary does, so allocation costs match.
//! Run: `cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 2`.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use drover::balancing::{Backend, Pool, StrategyKind};
use drover::observe::access_log::{self, AccessRecord};
use drover::resilience::breaker::{Breaker, BreakerPolicy};
use drover::resilience::classify::{Classifier, Outcome};
use drover::resilience::rate_limit::{LimitKey, RateLimiter, RatePolicy};
use drover::resilience::retry::{BudgetPolicy, RetryBudget};
use drover::stable_hash::fnv1a;
use drover::wire::headers;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POOL_SIZES: [u64; 3] = [4, 16, 64];
/// Distinct request keys cycled through by the selection benchmarks (a power of two).
const KEYS: usize = 1024;

/// The defaults of `circuit_breaker` in the config file.
fn default_breaker_policy() -> BreakerPolicy {
    BreakerPolicy {
        enabled: true,
        consecutive_failures: 5,
        open_for: Duration::from_secs(5),
        max_open_for: Duration::from_secs(60),
        half_open_probes: 1,
        failure_ratio: 0.5,
        slow_call_ratio: 0.0,
        slow_call_duration: Duration::from_secs(1),
        min_requests: 20,
        window: Duration::from_secs(10),
        failure_on: Classifier::default(),
        adaptive: Default::default(),
    }
}

fn healthy_backend(id: u64) -> Arc<Backend> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + id as u16));
    let backend = Backend::new(
        id,
        &format!("worker-{id}"),
        Some(id as usize),
        addr,
        1 + (id % 3) as u32,
        HttpPeer::new(addr, false, String::new()),
        Breaker::new(default_breaker_policy()),
    );
    backend.set_health(true);
    // A steady-state latency estimate, so the latency strategy does its real work.
    backend.observe_latency(Duration::from_micros(2_000 + 37 * id));
    Arc::new(backend)
}

fn pool_of(kind: StrategyKind, n: u64) -> Pool {
    let pool = Pool::new(kind, 0.5);
    for id in 0..n {
        pool.add(healthy_backend(id));
    }
    assert_eq!(pool.selector().backends.len(), n as usize);
    assert!(!pool.in_panic());
    pool
}

fn select(c: &mut Criterion) {
    let keys: Vec<u64> = (0..KEYS as u64).map(|k| fnv1a(&k.to_le_bytes())).collect();
    let mut group = c.benchmark_group("select");
    for kind in StrategyKind::ALL {
        for n in POOL_SIZES {
            let pool = pool_of(kind, n);
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new(kind.as_str(), n), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let key = keys[i & (KEYS - 1)];
                    let guard = pool.select(black_box(key), black_box(&[]));
                    // The guard drops at the end of this statement, releasing the slot.
                    black_box(guard.expect("a healthy pool always selects").backend().id)
                })
            });
        }
    }
    group.finish();
}

fn breaker(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");
    let ok = Outcome::Status(200);
    let lat = Duration::from_millis(2);
    let closed = Breaker::new(default_breaker_policy());
    group.bench_function("closed/acquire_record_success", |b| {
        b.iter(|| {
            let mut permit = closed.try_acquire().expect("closed breaker admits");
            closed.record(&mut permit, black_box(ok), lat)
        })
    });
    let consecutive_only = Breaker::new(BreakerPolicy {
        failure_ratio: 0.0,
        ..default_breaker_policy()
    });
    group.bench_function("closed/acquire_record_success_no_window", |b| {
        b.iter(|| {
            let mut permit = consecutive_only
                .try_acquire()
                .expect("closed breaker admits");
            consecutive_only.record(&mut permit, black_box(ok), lat)
        })
    });
    // Thresholds no benchmark run can reach, so every failure stays on the closed path
    // and pays the full rule evaluation (a window scan).
    let never_trips = Breaker::new(BreakerPolicy {
        consecutive_failures: u32::MAX,
        min_requests: u32::MAX,
        ..default_breaker_policy()
    });
    group.bench_function("closed/acquire_record_failure", |b| {
        b.iter(|| {
            let mut permit = never_trips.try_acquire().expect("closed breaker admits");
            never_trips.record(&mut permit, black_box(Outcome::Status(503)), lat)
        })
    });
    group.finish();
}

fn resilience(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit");
    let keys: Vec<u64> = (0..KEYS as u64).map(|k| fnv1a(&k.to_le_bytes())).collect();
    let limiter = |rps: f64| {
        RateLimiter::new(RatePolicy {
            requests_per_second: rps,
            burst: 20,
            key: LimitKey::ClientIp,
            slots: 65536,
            shared: None,
        })
    };
    let roomy = limiter(1e6);
    let mut i = 0usize;
    group.bench_function("check/allow_1024_clients", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            roomy.check(black_box(keys[i & (KEYS - 1)]))
        })
    });
    let tight = limiter(0.001);
    for _ in 0..100 {
        tight.check(keys[0]);
    }
    group.bench_function("check/deny", |b| b.iter(|| tight.check(black_box(keys[0]))));
    group.finish();
    let mut group = c.benchmark_group("retry_budget");
    let budget = RetryBudget::new(BudgetPolicy {
        ratio: 0.2,
        min_per_second: 10,
        window: Duration::from_secs(10),
    });
    group.bench_function("on_request", |b| {
        b.iter(|| budget.on_request(black_box(std::time::Instant::now())))
    });
    group.finish();
}

fn access_log(c: &mut Criterion) {
    let record = AccessRecord {
        client: "203.0.113.7:51234",
        method: "GET",
        path: "/api/v1/orders/12345?expand=items",
        status: 200,
        backend: "worker-3",
        worker_id: Some(3),
        latency_ms: 1.734,
        bytes: 5123,
        request_id: "9f86d081884c7d65",
        tries: 1,
        error: None,
        trace: None,
    };
    c.bench_function("access_log/format/typical", |b| {
        b.iter(|| access_log::format(black_box(&record)))
    });
}

/// A browser-like request with 8 ordinary headers.
fn ordinary_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/v1/orders/12345?expand=items", None)
        .expect("valid request line");
    for (name, value) in [
        ("Host", "shop.example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101",
        ),
        ("Accept", "application/json, text/plain, */*"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Accept-Language", "en-GB,en;q=0.9"),
        ("Cookie", "theme=dark; session=3f2a9c; user=bob"),
        ("Referer", "https://shop.example.com/orders"),
        ("Connection", "keep-alive"),
    ] {
        req.insert_header(name, value).expect("valid header");
    }
    req
}

fn header_hygiene(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");
    let mut clean = ordinary_request();
    group.bench_function("strip_internal_request/8_ordinary", |b| {
        // Nothing to strip, so the request is unchanged and can be reused.
        b.iter(|| headers::strip_internal_request(black_box(&mut clean)))
    });
    let mut forged = ordinary_request();
    forged
        .insert_header("X-Drover-Session", "forged")
        .expect("valid header");
    group.bench_function("strip_internal_request/8_ordinary_1_internal", |b| {
        // Each iteration needs a fresh copy; cloning and dropping it is not timed.
        b.iter_batched_ref(
            || forged.clone(),
            headers::strip_internal_request,
            BatchSize::SmallInput,
        )
    });
    group.bench_function("request_id/absent", |b| {
        b.iter(|| headers::request_id(black_box(&clean), true))
    });
    group.bench_function("cookie/3_pairs", |b| {
        b.iter(|| headers::cookie(black_box(&clean), black_box("user")).map(str::len))
    });
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let key: &[u8; 15] = b"user-1234567890";
    let mut group = c.benchmark_group("fnv1a");
    group.throughput(Throughput::Bytes(key.len() as u64));
    group.bench_function("15_bytes", |b| b.iter(|| fnv1a(black_box(key))));
    group.finish();
}

fn sessions(c: &mut Criterion) {
    use drover::sessions::cookie::{CookieCodec, SessionId};
    use drover::sessions::record::Record;
    use drover::sessions::seal::Sealer;
    use drover::sessions::store::memory::MemoryStore;
    let mut group = c.benchmark_group("sessions");
    let codec = CookieCodec::new(
        &[b"0123456789abcdef0123456789abcdef".to_vec()],
        Duration::from_secs(86_400),
    );
    let id = SessionId::random();
    let value = codec.encode(&id, 1_000, Some(1));
    group.bench_function("cookie/encode", |b| {
        b.iter(|| codec.encode(black_box(&id), 1_000, Some(1)))
    });
    group.bench_function("cookie/verify", |b| {
        b.iter(|| codec.decode(black_box(&value), 1_001))
    });
    let sealer = Sealer::new(&[[7u8; 32]]);
    let data = [b'x'; 64];
    let blob = sealer.seal(&id.0, &data);
    group.bench_function("seal/64_bytes", |b| {
        b.iter(|| sealer.seal(black_box(&id.0), black_box(&data)))
    });
    group.bench_function("open/64_bytes", |b| {
        b.iter(|| sealer.open(black_box(&id.0), black_box(&blob)))
    });
    let store = MemoryStore::new(200_000);
    let ids: Vec<SessionId> = (0..100_000).map(|_| SessionId::random()).collect();
    let worker: Arc<str> = Arc::from("worker-1");
    for i in &ids {
        let mut r = Record::new(1);
        r.worker = Some(worker.clone());
        store.set_now(i, r, Duration::from_secs(3600), 1);
    }
    let mut n = 0usize;
    group.bench_function("memory_store/get_set", |b| {
        b.iter(|| {
            n = (n + 7919) % ids.len();
            let id = &ids[n];
            let r = store.get_now(id, 2).unwrap_or_default();
            store.set_now(id, r, Duration::from_secs(3600), 2);
        })
    });
    group.finish();
}

fn observe(c: &mut Criterion) {
    use drover::observe::latency::{Recorder, Windows};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut group = c.benchmark_group("observe");
    let rec = Arc::new(Recorder::new());
    let mut i = 0u64;
    group.bench_function("latency_record/1_thread", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            rec.record(black_box(Duration::from_micros(200 + (i & 0xffff))))
        })
    });
    // Another data-plane thread records into the same recorder (a different shard), and a
    // harvester swaps shards out as fast as it can (the sampler does it once a second).
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (rec, stop) = (rec.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut windows = Windows::new(rec.clone());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rec.record(Duration::from_micros(300));
                n += 1;
                if n.is_multiple_of(100_000) {
                    windows.tick();
                }
            }
        })
    };
    group.bench_function("latency_record/2_threads_with_harvest", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            rec.record(black_box(Duration::from_micros(200 + (i & 0xffff))))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    group.finish();

    let mut group = c.benchmark_group("trace");
    let mut req = ordinary_request();
    req.insert_header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .expect("valid header");
    group.bench_function("continue_and_apply", |b| {
        b.iter_batched_ref(
            || req.clone(),
            |r| {
                let t = drover::observe::trace::TraceContext::from_request(r);
                t.apply(r);
                t.span_id
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    observe,
    select,
    breaker,
    resilience,
    access_log,
    header_hygiene,
    hashing,
    sessions
);
criterion_main!(benches);
