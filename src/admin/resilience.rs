//! Admin endpoints of the resilience features (merged into the admin router).
//!
//! - `GET /api/breakers`: every breaker (workers `worker-N`, routes `route:NAME`) with
//!   state, reason of the last trip, time left open, window counts; the retry budget.
//! - `POST /api/breakers/{name}/{open|close|reset}`: force a breaker.
//! - `GET /api/chaos`: installed faults. `POST /api/chaos/faults` installs one, e.g.
//!   `{"target": {"worker": 1}, "kind": "error", "status": 500, "share": 0.5,
//!   "duration_s": 30}` (kinds: `latency` + `ms`, `error` + `status`, `reset`; targets:
//!   `{"route": NAME}`, `{"worker": ID}`, `"all"`). `DELETE /api/chaos/faults` clears
//!   them. `POST /api/chaos/workers/{id}/kill` SIGKILLs a worker (the supervisor
//!   restarts it). Chaos endpoints need the token and `chaos.enabled: true`.

use super::error::AdminError;
use super::guard::json_body;
use super::AdminState;
use crate::resilience::breaker::{Breaker, Force};
use crate::resilience::chaos::FaultSpec;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/api/breakers", get(list_breakers))
        .route("/api/breakers/{name}/{action}", post(force_breaker))
        .route("/api/chaos", get(list_faults))
        .route("/api/chaos/faults", post(add_fault).delete(clear_faults))
        .route("/api/chaos/workers/{id}/kill", post(kill_worker))
}

pub(crate) fn describe(name: &str, scope: &str, b: &Breaker) -> Value {
    let s = b.snapshot();
    json!({
        "name": name,
        "scope": scope,
        "state": s.state.as_str(),
        "enabled": b.policy().enabled,
        "trips_in_a_row": s.trips_in_a_row,
        "open_remaining_ms": s.open_remaining.map(|d| d.as_millis() as u64),
        "last_trip_reason": s.last_reason.map(|r| r.to_string()),
        "consecutive_failures": s.consecutive_failures,
        "window": { "requests": s.window.total, "failures": s.window.a, "slow": s.window.b },
        "probes_in_flight": s.probes_inflight,
        "last_trip_kind": s.last_reason.map(|r| r.label()),
        "adaptive": b.policy().adaptive.enabled,
        "baseline": s.baseline.map(|b| json!({
            "failure_ratio": b.failure_ratio,
            "failure_ratio_sd": b.failure_ratio_sd,
            "latency_ms": b.latency_ms,
            "latency_sd_ms": b.latency_sd_ms,
            "windows": b.periods,
        })),
        "transitions": b.recent_transitions().iter().map(|t| json!({
            "at": t.at, "from": t.from, "to": t.to, "reason": t.reason,
        })).collect::<Vec<_>>(),
    })
}

/// Every breaker by the name the API and metrics use.
fn find(s: &AdminState, name: &str) -> Option<Arc<Breaker>> {
    if let Some(route) = name.strip_prefix("route:") {
        let cfg = s.shared.config();
        return cfg.resilience.routes.by_name(route)?.breaker.clone();
    }
    None
}

async fn list_breakers(State(s): State<AdminState>) -> Json<Value> {
    let cfg = s.shared.config();
    let mut out: Vec<Value> = s
        .shared
        .pool
        .members()
        .iter()
        .map(|b| describe(&b.name, "worker", &b.breaker))
        .collect();
    for r in cfg.resilience.routes.iter() {
        if let Some(b) = &r.breaker {
            out.push(describe(&format!("route:{}", r.name), "route", b));
        }
    }
    let (requests, retries, allowed) = cfg.resilience.budget.usage(Instant::now());
    let sel = s.shared.pool.selector();
    Json(json!({
        "breakers": out,
        "ejection_capped": sel.breakers_capped,
        "retry_budget": { "requests": requests, "retries": retries, "allowed": allowed },
    }))
}

async fn force_breaker(
    State(s): State<AdminState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    let action = action.parse::<Force>()?;
    let members = s.shared.pool.members();
    let done = if let Some(b) = members.iter().find(|b| *b.name == name) {
        b.breaker.force(action);
        describe(&name, "worker", &b.breaker)
    } else if let Some(b) = find(&s, &name) {
        b.force(action);
        describe(&name, "route", &b)
    } else {
        return Err(AdminError::NoBreaker(name));
    };
    s.shared.pool.refresh();
    log::warn!("admin: breaker {name}: {action:?}");
    Ok(Json(json!({ "ok": true, "breaker": done })).into_response())
}

fn chaos_allowed(s: &AdminState) -> Result<(), AdminError> {
    if !s.shared.config().resilience.chaos_enabled {
        return Err(AdminError::ChaosDisabled);
    }
    Ok(())
}

async fn list_faults(State(s): State<AdminState>) -> Json<Value> {
    let faults: Vec<Value> = s
        .shared
        .chaos
        .list()
        .iter()
        .map(|f| {
            let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
            v["remaining_s"] = json!(f.remaining().as_secs_f64());
            v
        })
        .collect();
    Json(json!({
        "enabled": s.shared.config().resilience.chaos_enabled,
        "faults": faults,
    }))
}

async fn add_fault(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    chaos_allowed(&s)?;
    let spec: FaultSpec = json_body(
        &headers,
        &body,
        r#"{"target": {"worker": 0}, "kind": "error", "status": 500, "share": 0.5}"#,
    )?;
    let id = s.shared.chaos.add(spec)?;
    Ok((StatusCode::CREATED, Json(json!({ "ok": true, "id": id }))).into_response())
}

async fn clear_faults(State(s): State<AdminState>) -> Result<Response, AdminError> {
    chaos_allowed(&s)?;
    let n = s.shared.chaos.clear();
    Ok(Json(json!({ "ok": true, "cleared": n })).into_response())
}

async fn kill_worker(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    chaos_allowed(&s)?;
    let id = id.parse::<usize>().map_err(|_| AdminError::WorkerId)?;
    let pid = s
        .supervisor
        .status()
        .iter()
        .find(|w| w.id == id)
        .and_then(|w| w.pid)
        .ok_or(AdminError::NoRunningWorker(id))?;
    let raw = i32::try_from(pid).map_err(|_| AdminError::PidOutOfRange)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|source| AdminError::Kill { pid, source })?;
    s.shared
        .metrics
        .resilience
        .chaos_injected
        .with_label_values(&["kill", &format!("worker-{id}")])
        .inc();
    log::warn!(target: "chaos", "chaos: killed worker-{id} (pid {pid})");
    Ok(Json(json!({ "ok": true, "worker": id, "pid": pid })).into_response())
}
