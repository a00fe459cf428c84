//! The control thread: a single-threaded tokio runtime that runs for the whole life of
//! the process and hosts the supervisor, health checks, the admin plane, SIGHUP and the
//! shutdown sequence.
//!
//! It is a plain thread rather than a Pingora background service for two reasons:
//! workers must be forked from a thread that never exits (their parent-death signal is
//! tied to the forking thread), and shutdown must outlive Pingora's runtimes long enough
//! to stop the workers after the last request is answered.

use crate::admin::{self, AdminState};
use crate::lifecycle::signals::ShutdownKind;
use crate::reload;
use crate::state::Shared;
use crate::supervisor::Supervisor;
use crate::upstreams::{self, discovery::Discovery};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How often breaker timers and similar time-based eligibility are re-evaluated.
const REFRESH_TICK: Duration = Duration::from_millis(100);
/// `strategy: auto` re-decides every 2 s (20 ticks).
const AUTO_EVERY_TICKS: u64 = 20;
/// A shared session store is counted (bounded SCAN) every 10 s (100 ticks).
const SHARED_STATS_EVERY_TICKS: u64 = 100;
/// Pingora's `CLOSE_TIMEOUT` after sending the listening sockets, plus a margin.
const UPGRADE_CLOSE_TIMEOUT: Duration = Duration::from_millis(5500);
/// Percentile windows, history, resources and alerts are sampled every second (10 ticks).
const OBSERVE_EVERY_TICKS: u64 = 10;
/// The history store is saved to `runtime_dir` every minute (600 ticks).
const HISTORY_SAVE_EVERY_TICKS: u64 = 600;

/// One decision of `strategy: auto`; switches and logs only when the choice changes.
fn auto_strategy_step(shared: &Shared) {
    if !shared.auto_strategy.load(Ordering::Relaxed) {
        return;
    }
    let sel = shared.pool.selector();
    let (kind, reason) = crate::balancing::auto::decide(&sel.backends);
    drop(sel);
    if let Ok(mut r) = shared.auto_reason.lock() {
        *r = reason.clone();
    }
    if kind != shared.pool.strategy() {
        log::info!("auto strategy: switching to {kind}: {reason}");
        shared.pool.set_strategy(kind);
    }
}

fn autoscale_counter(shared: &Shared) -> prometheus::IntCounterVec {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            crate::metric_names::AUTOSCALE_DECISIONS_TOTAL,
            "Autoscaling decisions, by direction",
        ),
        &["direction"],
    )
    .expect("valid metric");
    let _ = shared.metrics.registry.register(Box::new(c.clone()));
    c
}

/// Samples load every tick; decides once a second (see `supervisor/autoscale.rs`).
fn autoscale_step(
    shared: &Shared,
    supervisor: &Arc<Supervisor>,
    autoscaler: &mut crate::supervisor::autoscale::Autoscaler,
    decisions: &prometheus::IntCounterVec,
    n: u64,
) {
    let cfg = shared.config.load();
    let a = &cfg.workers.autoscale;
    if !a.enabled || shared.is_shutting_down() {
        return;
    }
    let now = Instant::now();
    let load = shared.in_flight.get().max(0) as f64 + shared.pool.queue.len() as f64;
    autoscaler.sample(now, load, a.window);
    if !n.is_multiple_of(10) || supervisor.busy() {
        return;
    }
    let current = supervisor.len();
    if let Some(d) = autoscaler.decide(a, current, now) {
        let direction = if d.target > current { "up" } else { "down" };
        log::info!(
            "autoscale: {direction} {current} -> {} workers: {}",
            d.target,
            d.reason
        );
        decisions.with_label_values(&[direction]).inc();
        supervisor.scale_to(d.target);
    }
}

fn admin_listener_addr(shared: &Shared) -> std::net::SocketAddr {
    shared.config.load().admin.listen
}

async fn bind_with_retry(addr: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    for _ in 0..600 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            log::info!("admin plane on {addr}");
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The running control thread, returned by [`start`].
pub struct ControlHandle {
    /// Joined by `main` after Pingora's runtimes stop; the thread ends the process itself
    /// (`std::process::exit(0)`) once the workers are stopped.
    pub thread: std::thread::JoinHandle<()>,
}

/// The admin listener: bound by `main` (a normal start), or bound here once the old
/// process of a graceful upgrade has let go of the address.
pub enum AdminBind {
    /// Already bound by `main`; switched to non-blocking and served at once.
    Bound(std::net::TcpListener),
    /// `drover -u`: the address the old process still holds; bound with retries
    /// (every 100 ms, for up to 60 s) once it lets go.
    Later(std::net::SocketAddr),
}

/// Why the control thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The OS refused to spawn the `drover-control` thread.
    #[error("{0}")]
    Spawn(#[source] std::io::Error),
    /// The current-thread tokio runtime could not be built.
    #[error("cannot build control runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The SIGHUP (reload) handler could not be installed.
    #[error("cannot handle SIGHUP: {0}")]
    Sighup(#[source] std::io::Error),
    /// The SIGUSR1 (reopen the access log) handler could not be installed.
    #[error("cannot handle SIGUSR1: {0}")]
    Sigusr1(#[source] std::io::Error),
    /// The listener from [`AdminBind::Bound`] could not be handed to tokio.
    #[error("admin listener: {0}")]
    AdminListener(#[source] std::io::Error),
    /// The admin token (configured or `runtime_dir/admin-token`) could not be loaded.
    #[error(transparent)]
    AdminToken(#[from] admin::auth::TokenError),
    /// The thread ended before reporting whether it started.
    #[error("control thread died during start")]
    Died,
}

/// Starts the control thread and returns once SIGHUP is handled and the admin listener
/// is serving, so no signal or request can arrive before drover is ready for it.
/// `shutdown` is fed by [`DroverSignals`](crate::lifecycle::signals::DroverSignals)
/// and by `main` once Pingora's runtimes are down.
pub fn start(
    shared: Arc<Shared>,
    admin_listener: AdminBind,
    shutdown: watch::Receiver<ShutdownKind>,
) -> Result<ControlHandle, StartError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StartError>>();
    let thread = std::thread::Builder::new()
        .name("drover-control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StartError::Runtime(e)));
                    return;
                }
            };
            rt.block_on(run(shared, admin_listener, shutdown, ready_tx));
        })
        .map_err(StartError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ControlHandle { thread }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StartError::Died),
    }
}

async fn run(
    shared: Arc<Shared>,
    admin_listener: AdminBind,
    mut shutdown: watch::Receiver<ShutdownKind>,
    ready: std::sync::mpsc::Sender<Result<(), StartError>>,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(StartError::Sighup(e)));
            return;
        }
    };
    // SIGUSR1 reopens the access log file (logrotate); unhandled it would kill drover.
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(StartError::Sigusr1(e)));
            return;
        }
    };
    let listener = match admin_listener {
        AdminBind::Bound(l) => {
            match l
                .set_nonblocking(true)
                .and_then(|_| tokio::net::TcpListener::from_std(l))
            {
                Ok(l) => Some(l),
                Err(e) => {
                    let _ = ready.send(Err(StartError::AdminListener(e)));
                    return;
                }
            }
        }
        AdminBind::Later(_) => None,
    };
    let admin_addr = admin_listener_addr(&shared);
    let supervisor = Supervisor::new(shared.clone());
    // Before the first worker starts, so every worker gets the socket's path.
    crate::supervisor::metrics_socket::start(shared.clone(), supervisor.clone());
    let cfg = shared.config();
    crate::observe::otlp::start(&cfg.observability.tracing);
    shared.observe.load_history(&cfg.runtime_dir);
    crate::balancing::backend::set_latency_decay(cfg.balancing.latency_decay);
    let initial = if cfg.workers.autoscale.enabled {
        cfg.workers
            .count
            .clamp(cfg.workers.autoscale.min, cfg.workers.autoscale.max)
    } else {
        cfg.workers.count
    };
    supervisor.scale_to(initial);
    let discovery = Arc::new(Discovery::default());
    upstreams::sync(&shared, &discovery, &cfg);

    let admin_state = AdminState::new(shared.clone(), supervisor.clone(), discovery.clone());
    // The admin token exists (and its place is logged) before anything can call in.
    if let Err(e) = admin_state.tokens.effective(cfg.admin.token.as_deref()) {
        let _ = ready.send(Err(e.into()));
        return;
    }
    let admin_metrics = admin_state.metrics.clone();
    let app = admin::router(admin_state);
    let admin_shared = shared.clone();
    let mut admin_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let listener = match listener {
            Some(l) => l,
            // Upgrade: the old process releases the address when it gets SIGQUIT.
            None => match bind_with_retry(admin_addr).await {
                Some(l) => l,
                None => {
                    log::error!(
                        "admin plane: {admin_addr} still taken after 60 s; running without it"
                    );
                    return;
                }
            },
        };
        admin::server::serve(listener, app, admin_shared, admin_metrics, async move {
            // An upgrade hands the admin address to the new process at once.
            let _ = admin_shutdown
                .wait_for(|k| matches!(*k, ShutdownKind::Fast | ShutdownKind::Upgrade))
                .await;
        })
        .await;
    });

    let ticker_shared = shared.clone();
    let ticker_supervisor = supervisor.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_TICK);
        let mut n: u64 = 0;
        let mut autoscaler = crate::supervisor::autoscale::Autoscaler::default();
        let decisions = autoscale_counter(&ticker_shared);
        loop {
            tick.tick().await;
            ticker_shared.pool.refresh();
            crate::observe::access_log::flush();
            n += 1;
            autoscale_step(
                &ticker_shared,
                &ticker_supervisor,
                &mut autoscaler,
                &decisions,
                n,
            );
            if let Some(sessions) = ticker_shared.sessions.get() {
                let every = (ticker_shared
                    .config
                    .load()
                    .sessions
                    .sweep_interval
                    .as_millis()
                    / REFRESH_TICK.as_millis())
                .max(1) as u64;
                sessions.tick(n.is_multiple_of(every));
                if sessions.store_kind() == "redis" && n.is_multiple_of(SHARED_STATS_EVERY_TICKS) {
                    let s = sessions.clone();
                    tokio::spawn(async move {
                        let _ = s.stats().await;
                    });
                }
            }
            if n.is_multiple_of(AUTO_EVERY_TICKS) {
                auto_strategy_step(&ticker_shared);
            }
            if n.is_multiple_of(OBSERVE_EVERY_TICKS) {
                let slots = ticker_supervisor.status();
                ticker_shared.observe.sample(&ticker_shared.view(&slots));
            }
            if n.is_multiple_of(HISTORY_SAVE_EVERY_TICKS) && !ticker_shared.is_shutting_down() {
                let s = ticker_shared.clone();
                tokio::task::spawn_blocking(move || {
                    s.observe.save_history(&s.config().runtime_dir)
                });
            }
        }
    });

    let _ = ready.send(Ok(()));
    // Pingora binds the data plane after this thread is up: tell systemd once it accepts.
    let listen = cfg.listen;
    tokio::spawn(async move {
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                super::notify::ready();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log::warn!("data plane on {listen} did not accept connections within 30 s");
    });
    log::info!(
        "drover: data plane on http://{}/, admin on {} (dashboard: http://{}/dashboard), {} workers, strategy {}",
        cfg.listen,
        cfg.admin.listen,
        cfg.admin.listen,
        cfg.workers.count,
        cfg.balancing.strategy
    );

    let kind = loop {
        tokio::select! {
            _ = hup.recv() => {
                log::info!("SIGHUP: reloading {}", shared.config_path.display());
                let _ = reload::reload(&shared, &supervisor, &discovery).await;
            }
            _ = usr1.recv() => {
                log::info!("SIGUSR1: reopening the access log");
                crate::observe::access_log::reopen();
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break ShutdownKind::Fast;
                }
                let k = *shutdown.borrow();
                if k != ShutdownKind::None {
                    break k;
                }
            }
        }
    };
    shared.shutting_down.store(true, Ordering::Release);
    super::notify::stopping();
    if kind == ShutdownKind::Upgrade {
        // Pingora hands the listening socket over, keeps accepting for its close timeout
        // (5 s) while the new process starts accepting too, then stops: requests
        // accepted until then are served here before the drain below.
        tokio::time::sleep(UPGRADE_CLOSE_TIMEOUT).await;
    }
    if matches!(kind, ShutdownKind::Graceful | ShutdownKind::Upgrade) {
        let grace = shared.config().shutdown_grace;
        let deadline = Instant::now() + grace;
        // Let Pingora close its listeners and requests already read get counted.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while shared.in_flight.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = shared.in_flight.get();
        if left > 0 {
            log::warn!(
                "shutdown: grace period {grace:?} over with {left} requests still in flight"
            );
        } else {
            log::info!("shutdown: all in-flight requests finished");
        }
    }
    if matches!(kind, ShutdownKind::Graceful | ShutdownKind::Upgrade) {
        if let Some(sessions) = shared.sessions.get() {
            sessions.save_snapshot();
        }
        shared.observe.save_history(&shared.config().runtime_dir);
    }
    log::info!("shutdown: stopping workers");
    supervisor.stop_all().await;
    log::info!("shutdown: done");
    crate::observe::access_log::flush();
    log::logger().flush();
    std::process::exit(0);
}
