//! The admin plane (axum on hyper, on the control thread), loopback by default.
//!
//! Endpoints:
//! - `GET /metrics`: Prometheus text format.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when drover can serve (not shutting down, a backend in rotation), else 503.
//! - `GET /api/status`: JSON: config version, strategy, workers, backends.
//! - `GET /api/sessions`: JSON: session store, active sessions, per worker, counters.
//! - `POST /api/reload`: re-read the config file (like SIGHUP).
//! - `POST /api/strategy` `{"strategy": "least_connections"}`: switch strategy live.
//! - `GET /api/config`, `POST /api/deploy`, `POST /api/rollback`, `POST /api/workers/restart`:
//!   see `operations.rs`.
//! - `POST /api/workers/{id}/drain`: drain worker `id` and start a fresh one.
//! - `/api/breakers*`, `/api/chaos*`: see `resilience.rs`.
//! - `/dashboard`, `/api/live`, `/api/stream`, `/api/history`, `/api/events`,
//!   `/api/alerts`: observability, listed in `observe.rs`.
//!
//! Every request first passes `guard.rs` (Host, cross-site, token; see `auth.rs` for
//! which endpoints need the token), and the listener caps connections and times out
//! slow or idle clients (`server.rs`). Refusals and failures are `error::AdminError`,
//! which alone decides their HTTP status.

pub mod auth;
pub mod error;
pub mod guard;
pub mod observe;
mod operations;
mod resilience;
pub mod server;
mod sessions;

use crate::balancing::StrategyKind;
use crate::reload;
use crate::state::Shared;
use crate::supervisor::Supervisor;
use crate::upstreams::discovery::Discovery;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::AdminError;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Shared state of every admin handler and of the guard middleware; cheap to clone per request
/// (every field is an `Arc`).
#[derive(Clone)]
pub struct AdminState {
    /// The proxy's shared state: live config, metrics registry, balancer, sessions, observability.
    pub shared: Arc<Shared>,
    /// The worker processes: status, drain, deploys, rollbacks and rolling restarts.
    pub supervisor: Arc<Supervisor>,
    /// DNS discovery of upstreams, which a reload re-syncs.
    pub discovery: Arc<Discovery>,
    /// The admin token in force (configured, or generated in `runtime_dir`), checked by `guard.rs`.
    pub tokens: Arc<auth::Tokens>,
    /// Refusal and connection counters of the admin plane itself.
    pub metrics: Arc<AdminMetrics>,
    /// `/api/stream` subscribers connected now.
    pub subscribers: Arc<AtomicUsize>,
}

impl AdminState {
    /// Built once on the control thread; registers the admin metrics in the shared registry. The
    /// generated token is not read or created until first needed.
    pub fn new(
        shared: Arc<Shared>,
        supervisor: Arc<Supervisor>,
        discovery: Arc<Discovery>,
    ) -> Self {
        let runtime_dir = shared.config().runtime_dir.clone();
        let metrics = Arc::new(AdminMetrics::new(&shared.metrics.registry));
        AdminState {
            shared,
            supervisor,
            discovery,
            tokens: Arc::new(auth::Tokens::new(&runtime_dir)),
            metrics,
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.metrics.refused(reason);
    }
}

/// The admin plane's own metrics.
pub struct AdminMetrics {
    refused: prometheus::IntCounterVec,
    /// Open admin connections: `server.rs` increments it on accept and decrements it when the
    /// connection ends.
    pub connections: prometheus::IntGauge,
}

impl AdminMetrics {
    fn new(registry: &prometheus::Registry) -> Self {
        use crate::metric_names::{ADMIN_CONNECTIONS, ADMIN_REFUSED_TOTAL};
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                ADMIN_REFUSED_TOTAL,
                "Admin requests and connections refused: host, cross_site, token, connection_cap, subscriber_cap",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let connections = prometheus::IntGauge::new(
            ADMIN_CONNECTIONS,
            "Open admin connections (WebSocket subscribers not included)",
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(refused.clone()));
        let _ = registry.register(Box::new(connections.clone()));
        AdminMetrics {
            refused,
            connections,
        }
    }

    /// Counts one refused request or connection under `reason` (`host`, `cross_site`, `token`,
    /// `connection_cap` or `subscriber_cap`).
    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

/// The whole admin API, every route behind the `guard.rs` middleware (Host, cross-site, token,
/// `admin.request_timeout`).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/status", get(status))
        .route("/api/sessions", get(sessions::sessions))
        .route("/api/config", get(operations::config))
        .route("/api/deploy", post(operations::deploy))
        .route("/api/rollback", post(operations::rollback))
        .route("/api/workers/restart", post(operations::restart))
        .route("/api/reload", post(reload_config))
        .route("/api/strategy", post(set_strategy))
        .route("/api/workers/{id}/drain", post(drain_worker))
        .merge(resilience::router())
        .merge(observe::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let crash_looping = s
        .supervisor
        .status()
        .iter()
        .filter(|w| w.crash_looping)
        .count();
    s.shared
        .metrics
        .workers_crash_looping
        .set(crash_looping as i64);
    let res = s.shared.config().resilience.clone();
    s.shared.metrics.resilience.refresh(&res, &s.shared.pool);
    let mut body = s.shared.metrics.render(&s.shared.pool, &s.shared.in_flight);
    body.push_str(&s.shared.observe.custom.render());
    body.push_str(&crate::observe::otlp::render());
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.shared.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if s.shared.pool.selector().backends.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no backend in rotation\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let shared = &s.shared;
    let cfg = shared.config();
    let members = shared.pool.members();
    let slots = s.supervisor.status();
    let workers: Vec<_> = slots
        .iter()
        .map(|w| {
            let backend = w
                .backend_id
                .and_then(|id| members.iter().find(|b| b.id == id));
            json!({
                "id": w.id,
                "pid": w.pid,
                "port": w.port,
                "phase": w.phase,
                "state": backend.map(|b| b.state().as_str()).unwrap_or("down"),
                "healthy": backend.map(|b| b.in_rotation()).unwrap_or(false),
                "in_flight": backend.map(|b| b.inflight()).unwrap_or(0),
                "requests": backend.map(|b| b.requests()).unwrap_or(0),
                "breaker": backend.map(|b| b.breaker.state().as_str()).unwrap_or("closed"),
                "restarts": w.restarts,
                "crash_looping": w.crash_looping,
                "last_exit": w.last_exit,
                "uptime_seconds": w.since.map(|t| t.elapsed().as_secs_f64()),
            })
        })
        .collect();
    let backends: Vec<_> = members
        .iter()
        .map(|b| {
            json!({
                "id": b.id,
                "name": &*b.name,
                "address": b.addr.to_string(),
                "worker_id": b.worker_id,
                "weight": b.weight,
                "state": b.state().as_str(),
                "in_flight": b.inflight(),
                "requests": b.requests(),
                "failures": b.failures(),
                "latency_ewma_ms": b.latency_nanos() / 1e6,
                "breaker": b.breaker.state().as_str(),
            })
        })
        .collect();
    // The image's environment may carry credentials: not shown; secret arguments hidden.
    let i = s.supervisor.image();
    let image = json!({
        "version": i.version,
        "program": i.program.display().to_string(),
        "args": crate::redact::args(&i.args),
    });
    Json(json!({
        "config_version": shared.version.load(Ordering::Relaxed),
        "config_file": shared.config_path.display().to_string(),
        "strategy": shared.pool.strategy().as_str(),
        "strategy_auto": shared.auto_strategy.load(Ordering::Relaxed),
        "strategy_auto_reason": shared.auto_reason.lock().map(|r| r.clone()).unwrap_or_default(),
        "queue_length": shared.pool.queue.len(),
        "panic_mode": shared.pool.in_panic(),
        "shutting_down": shared.is_shutting_down(),
        "uptime_seconds": shared.started.elapsed().as_secs_f64(),
        "listen": cfg.listen.to_string(),
        "in_flight": shared.in_flight.get(),
        "workers": workers,
        "backends": backends,
        "deploy": s.supervisor.deploy_status(),
        "image": image,
        "previous_image": s.supervisor.previous_image().map(|i| i.version.clone()),
        "latency": observe::latency_status(&s),
        "scaling": s.shared.observe.alerts.scaling(),
    }))
}

async fn reload_config(State(s): State<AdminState>) -> Result<Response, AdminError> {
    let version = reload::reload(&s.shared, &s.supervisor, &s.discovery).await?;
    Ok(Json(json!({ "ok": true, "config_version": version })).into_response())
}

#[derive(Deserialize)]
struct StrategyRequest {
    strategy: String,
}

async fn set_strategy(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let req = guard::json_body::<StrategyRequest>(
        &headers,
        &body,
        r#"{"strategy": "least_connections"}"#,
    )?;
    let before = s.shared.pool.strategy();
    let now = if req.strategy == "auto" {
        s.shared.auto_strategy.store(true, Ordering::Relaxed);
        "auto".to_string()
    } else {
        let kind = req.strategy.parse::<StrategyKind>()?;
        // An explicit choice overrides auto until the file's choice changes.
        s.shared.auto_strategy.store(false, Ordering::Relaxed);
        s.shared.pool.set_strategy(kind);
        kind.as_str().to_string()
    };
    log::info!("admin: strategy {before} -> {now}");
    Ok(Json(json!({ "ok": true, "strategy": now, "previous": before.as_str() })).into_response())
}

async fn drain_worker(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id = id.parse::<usize>().map_err(|_| AdminError::WorkerId)?;
    if !s.supervisor.recycle(id) {
        return Err(AdminError::NoWorker(id));
    }
    log::info!("admin: draining worker-{id}; a fresh worker replaces it");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "ok": true, "worker": id })),
    )
        .into_response())
}
