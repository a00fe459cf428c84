//! `GET /api/sessions`: session statistics as JSON (a read: see `auth.rs`).

use super::AdminState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub async fn sessions(State(s): State<AdminState>) -> Response {
    let Some(svc) = s.shared.sessions.get() else {
        return Json(json!({ "enabled": false })).into_response();
    };
    let m = &svc.metrics;
    let counters = json!({
        "created": m.created.get(),
        "migrated": m.migrated.get(),
        "cookies_rejected": {
            "malformed": m.rejected[0].get(),
            "bad_signature": m.rejected[1].get(),
            "expired": m.rejected[2].get(),
            "unknown_session": m.rejected[3].get(),
        },
        "lock_timeouts": m.lock_timeouts.get(),
        "write_conflicts": m.write_conflicts.get(),
        "data_refused": m.data_refused.get(),
        "writes_unreplicated": m.writes_unreplicated.get(),
    });
    let redis = svc.redis_link().map(|l| {
        json!({
            "topology": l.topology(),
            "master": l.current_master(),
            "master_switches": l.master_switches(),
            "cluster_connections_replaced": l.cluster_connections_replaced(),
            "local_cache": l.caches(),
        })
    });
    match svc.stats().await {
        Ok(st) => Json(json!({
            "enabled": true,
            "store": svc.store_kind(),
            "store_up": svc.store_up(),
            "active": st.active,
            "active_is_approximate": st.approximate,
            "expired": st.expired,
            "evicted": st.evicted,
            "per_worker": st.per_worker,
            "counters": counters,
            "redis": redis,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "enabled": true,
                "store": svc.store_kind(),
                "store_up": false,
                "error": e.to_string(),
                "counters": counters,
                "redis": redis,
            })),
        )
            .into_response(),
    }
}
