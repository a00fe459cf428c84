//! Observability endpoints of the admin plane (nested into the main router):
//!
//! - `GET /dashboard`: the live dashboard, one self-contained HTML page (no CDN).
//! - `GET /api/live`: the latest once-a-second snapshot the dashboard shows (JSON).
//! - `GET /api/stream`: WebSocket pushing that snapshot every second. Same-origin only
//!   (`guard.rs`); with an operator token, the token goes in the `Authorization` header
//!   or the `drover-token.<base64url>` subprotocol (`auth.rs`). At most
//!   `admin.max_stream_subscribers` at once (503 beyond); a subscriber that stops
//!   reading is dropped after `admin.idle_timeout`.
//! - `GET /api/history?metric=NAME&range=15m[&backend=NAME]`: a time series from the
//!   history store; without `metric`, the list of series.
//! - `GET /api/events`: recent events (restarts, breaker trips, reloads, alerts).
//! - `GET /api/alerts`: alert rules with their state, SLOs and the scaling recommendation.
//! - `GET /api/capacity[?target_rps=R&target_p99=250ms]`: sustainable rate, headroom
//!   and the workers needed for a target rate and p99 (`observe::capacity`).

use super::error::AdminError;
use super::AdminState;
use crate::config::{parse_duration, DurationError};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DASHBOARD_HTML: &str = include_str!("dashboard.html");
/// Longest range `/api/history` answers (the coarsest tier's span).
const MAX_RANGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The observability routes (dashboard, live, stream, history, events, alerts, capacity), merged
/// into [`super::router`].
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/api/live", get(live))
        .route("/api/stream", get(stream))
        .route("/api/history", get(history))
        .route("/api/events", get(events))
        .route("/api/alerts", get(alerts))
        .route("/api/capacity", get(capacity))
}

async fn dashboard() -> Response {
    (
        [
            ("cache-control", "no-store"),
            // Everything the page needs is inline or same-origin.
            (
                "content-security-policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
            ),
        ],
        Html(DASHBOARD_HTML),
    )
        .into_response()
}

fn json_text(body: std::sync::Arc<str>) -> Response {
    (
        [
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CapacityQuery {
    target_rps: Option<f64>,
    target_p99: Option<String>,
}

async fn capacity(
    State(s): State<AdminState>,
    Query(q): Query<CapacityQuery>,
) -> Result<Response, AdminError> {
    let p99 = match q.target_p99.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) if d >= Duration::from_millis(1) => Some(d),
        Some(_) => return Err(AdminError::TargetP99),
    };
    if q.target_rps
        .is_some_and(|r| !r.is_finite() || !(0.0..=1e9).contains(&r))
    {
        return Err(AdminError::TargetRps);
    }
    Ok(Json(
        s.shared
            .observe
            .capacity_estimate(&s.shared.config(), q.target_rps, p99),
    )
    .into_response())
}

async fn live(State(s): State<AdminState>) -> Response {
    json_text(s.shared.observe.live_json())
}

/// Holds one subscriber place while alive (also when the upgrade never completes).
struct Subscriber(std::sync::Arc<AtomicUsize>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn stream(State(s): State<AdminState>, ws: WebSocketUpgrade) -> Result<Response, AdminError> {
    let cap = s.shared.config().admin.max_stream_subscribers;
    let taken = s
        .subscribers
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        });
    if taken.is_err() {
        s.refused("subscriber_cap");
        return Err(AdminError::Subscribers(cap));
    }
    let place = Subscriber(s.subscribers.clone());
    Ok(ws
        .protocols([super::auth::WS_PROTOCOL])
        .on_upgrade(move |socket| push_snapshots(s, socket, place)))
}

/// Sends the snapshot at once, then every second, until the client goes away.
async fn push_snapshots(s: AdminState, mut socket: WebSocket, _place: Subscriber) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let text = s.shared.observe.live_json().to_string();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    metric: Option<String>,
    range: Option<String>,
    backend: Option<String>,
}

async fn history(
    State(s): State<AdminState>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, AdminError> {
    let h = s
        .shared
        .observe
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(metric) = q.metric else {
        let names: Vec<&str> = h.names().collect();
        return Ok(Json(json!({ "metrics": names })).into_response());
    };
    let range = q
        .range
        .as_deref()
        .map(parse_range)
        .transpose()
        .map_err(AdminError::Range)?
        .unwrap_or(Duration::from_secs(900));
    if range.is_zero() || range > MAX_RANGE {
        return Err(AdminError::RangeBounds);
    }
    let name = match &q.backend {
        Some(b) => format!("{metric}/{b}"),
        None => metric,
    };
    let now = super::super::observe::events::unix_now() as u64;
    match h.query(&name, now, range.as_secs().max(1)) {
        Some(points) => Ok(Json(points).into_response()),
        None => Err(AdminError::NoSeries {
            name,
            metrics: h.names().map(String::from).collect(),
        }),
    }
}

/// A config duration (`90s`, `15m`, `6h`) or whole days (`7d`).
fn parse_range(text: &str) -> Result<Duration, DurationError> {
    match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => Ok(Duration::from_secs(days.saturating_mul(86_400))),
        _ => parse_duration(text),
    }
}

async fn events(State(s): State<AdminState>) -> Response {
    Json(json!({
        "total": s.shared.observe.events.total(),
        "events": s.shared.observe.events.recent(crate::observe::events::MAX_EVENTS),
    }))
    .into_response()
}

async fn alerts(State(s): State<AdminState>) -> Response {
    let a = &s.shared.observe.alerts;
    Json(json!({
        "alerts": a.rules(),
        "slos": a.slo_status(),
        "scaling": a.scaling(),
    }))
    .into_response()
}

/// Sliding-window percentiles for `/api/status`: overall and per backend, in seconds.
pub fn latency_status(s: &AdminState) -> serde_json::Value {
    let p = s.shared.observe.published();
    json!({
        "overall": p.latency,
        "backends": p.backends,
        "error_bound": "HDR histogram, 2 significant digits: at most 1% above the exact value",
    })
}
