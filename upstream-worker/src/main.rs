//! The HTTP/1.1 worker drover forks by default: one process is one worker.
//!
//! It exists to give drover something fast and controllable to balance in
//! demos, integration tests, chaos tests and benchmarks, so most endpoints
//! let a client dictate latency, status, CPU use, body size or a crash.
//!
//! Environment:
//! - `PORT` (default 3000), `BIND` (default 127.0.0.1), `WORKER_ID` (default 0)
//! - `WORKER_THREADS=N` with N > 1 selects a multi-thread runtime; the
//!   default current_thread runtime is what a process-per-core pool wants.
//! - `HEALTH_FAIL_FILE`: while this file exists, `/health` answers 503.
//! - `SLOW_FILE`: while this file exists, every request but `/health` first
//!   sleeps the number of milliseconds written in it (latency chaos for tests).
//! - `FAIL_FILE`: while this file exists, every request but `/health` answers 500
//!   (a worker that is up and healthy-looking but failing: breaker tests).
//! - `FAIL_SHARE_FILE`: while this file exists, the share written in it (0..1) of
//!   requests but `/health` answer 500 at random (a noisy worker).
//! - `SPEED_FACTORS`: comma list; worker `WORKER_ID % len` multiplies `/work` times by
//!   its entry (workers of different speed).
//! - `{id}` in any of these paths is replaced by `WORKER_ID`.
//! - `DROVER_PARENT_PID`: exit when the parent changes (orphan backstop).
//! - `WORKER_VERSION`: echoed in `X-Worker-Version` on every response.
//!
//! Every response carries `X-Worker-Id` and `X-Worker-Pid`.
//!
//! Endpoints:
//! - `GET /` → 200 `hello from worker <id>`; `POST /` and `PUT /` the same after
//!   reading the whole body
//! - `GET /health` → 200 `ok`, or 503 while `HEALTH_FAIL_FILE` exists
//! - `GET /delay?ms=N` → sleeps N ms (≤ 60000), then 200
//! - `GET /status?code=N` → status N (100..=599; 1xx get a 400, as hyper
//!   cannot send them as a final response)
//! - `GET /cpu?ms=N` → spins a CPU for N ms (≤ 60000), then 200
//! - `ANY /echo` → JSON with method, path, headers, body and worker_id
//! - `GET /bytes?n=N` → N bytes of `x` (≤ 16 MiB)
//! - `GET /crash` → exits the process with status 3 mid-request
//! - `GET /session` → JSON with the `X-Drover-Session` object,
//!   `X-Drover-Session-Id` and `X-Drover-Session-State`
//! - `GET|POST /session/incr[?ms=N]` → increments `counter` in the session,
//!   returns it (and the session state drover reported) in the body and the whole
//!   object in `X-Drover-Session-Set`
//! - `GET /session/set?key=K&value=V` → sets string field K, returns the
//!   object in the body and in `X-Drover-Session-Set`
//! - `GET|POST /session/regenerate[?key=K&value=V]` → like `/session`, with
//!   `X-Drover-Session-Control: regenerate` (a login: new id, same data, plus
//!   field K when given)
//! - `GET|POST /session/destroy` → like `/session`, with
//!   `X-Drover-Session-Control: destroy` (a logout)
//! - `GET /metrics-report?name=N&value=V` → 200 with `X-Drover-Metric: N=V`
//! - `GET /metrics-push?line=L` → sends L (StatsD lines) as a datagram to
//!   `DROVER_METRICS_SOCKET` (drover's worker metrics socket)
//! - `GET /work[/…]?ms=N` → holds the worker's single "core" (a mutex) for N ms ×
//!   its speed factor: requests queue inside the worker, no CPU is burnt
//! - `GET /alloc?mb=N` → keeps N more MiB resident (`mb=0` frees all; ≤ 1 GiB)
//! - anything else → 404
//!
//! Bad or missing numeric parameters get a 400 with a short text body.
//! SIGTERM or SIGINT stop accepting, let in-flight requests finish and exit 0;
//! after 30 s (or a second signal) the worker gives up and exits 1.
// clippy.toml's ban on std::thread::sleep is for drover's src/: this worker's parent
// watch is a plain thread of its own, where a sleep blocks nothing else.
#![allow(clippy::disallowed_methods)]

mod routes;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use routes::Worker;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("upstream-worker: {msg}");
            std::process::exit(2);
        }
    };
    if let Some(ppid) = config.parent_pid {
        watch_parent(ppid);
    }

    let mut builder = if config.threads > 1 {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.threads);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upstream-worker: cannot start runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(serve(config));
    // Connections still running after a forced drain must not hold up exit.
    runtime.shutdown_background();
    std::process::exit(code);
}

struct Config {
    addr: SocketAddr,
    id: u64,
    threads: usize,
    health_fail_file: Option<PathBuf>,
    slow_file: Option<PathBuf>,
    fail_file: Option<PathBuf>,
    parent_pid: Option<u32>,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        }
        fn parsed<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid {name}={v:?}")),
            }
        }
        let port: u16 = parsed("PORT", 3000)?;
        let bind: std::net::IpAddr = parsed("BIND", [127, 0, 0, 1].into())?;
        let id: u64 = parsed("WORKER_ID", 0)?;
        // `{id}` in a file path becomes this worker's id, so one env setting for the
        // whole pool can still target a single worker.
        let id_text = id.to_string();
        let per_worker_path = |f: &str, id: &str| PathBuf::from(f.replace("{id}", id));
        Ok(Config {
            addr: SocketAddr::new(bind, port),
            id,
            threads: parsed("WORKER_THREADS", 1)?,
            health_fail_file: var("HEALTH_FAIL_FILE").map(|f| per_worker_path(&f, &id_text)),
            slow_file: var("SLOW_FILE").map(|f| per_worker_path(&f, &id_text)),
            fail_file: var("FAIL_FILE").map(|f| per_worker_path(&f, &id_text)),
            parent_pid: match var("DROVER_PARENT_PID") {
                Some(_) => Some(parsed("DROVER_PARENT_PID", 0)?),
                None => None,
            },
        })
    }
}

/// Backstop for PR_SET_PDEATHSIG, which misses some cases (e.g. the forking
/// thread exiting). A plain thread keeps polling even while a `/cpu` request
/// monopolises a current_thread runtime.
fn watch_parent(expected: u32) {
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || loop {
            if std::os::unix::process::parent_id() != expected {
                eprintln!(
                    "worker pid {} lost parent {expected}, exiting",
                    std::process::id()
                );
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(500));
        });
    if let Err(e) = spawned {
        eprintln!("upstream-worker: cannot watch parent: {e}");
    }
}

/// Returns the process exit code.
async fn serve(config: Config) -> i32 {
    let listener = match TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream-worker: cannot listen on {}: {e}", config.addr);
            return 2;
        }
    };
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("upstream-worker: cannot install signal handlers: {e}");
            return 2;
        }
    };
    let worker: &'static Worker = Box::leak(Box::new(Worker::new(
        config.id,
        config.health_fail_file,
        config.slow_file,
        config.fail_file,
        config.threads > 1,
    )));
    let pid = std::process::id();
    let local = listener.local_addr().unwrap_or(config.addr);
    eprintln!("worker {} pid {pid} listening on {local}", worker.id);

    let mut http = http1::Builder::new();
    // Flushing pipelined responses together helps pipelining load generators
    // and costs nothing otherwise.
    http.keep_alive(true).pipeline_flush(true);
    let graceful = GracefulShutdown::new();

    let signal_name = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE; back off instead of spinning.
                        eprintln!("worker {} accept error: {e}", worker.id);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small responses must not wait on Nagle.
                let _ = stream.set_nodelay(true);
                let service = service_fn(move |req| routes::handle(worker, req));
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // Client resets and malformed requests are routine here.
                    let _ = conn.await;
                });
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };

    drop(listener);
    eprintln!(
        "worker {} pid {pid} got {signal_name}, draining {} connection(s)",
        worker.id,
        graceful.count()
    );
    tokio::select! {
        res = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()) => match res {
            Ok(()) => 0,
            Err(_) => {
                eprintln!("worker {} pid {pid} drain timed out, forcing exit", worker.id);
                1
            }
        },
        _ = second_signal(&mut sigterm, &mut sigint) => {
            eprintln!("worker {} pid {pid} got a second signal, forcing exit", worker.id);
            1
        }
    }
}

async fn second_signal(sigterm: &mut Signal, sigint: &mut Signal) {
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
}
