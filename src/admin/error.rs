//! Every way an admin request is refused or fails, and the one place ([`AdminError::status`])
//! where each maps to an HTTP status. Handlers return `Result<Response, AdminError>`; the
//! guard and the handlers never pick a status for an error themselves.
//!
//! The body is `{"ok": false, "error": "<message>"}`, with two exceptions kept from
//! before this type existed: `/api/history` also lists the series it has, and
//! `/api/capacity` answers `{"error": ...}` without `ok`.

use super::guard::JsonBodyError;
use crate::balancing::UnknownStrategy;
use crate::config::{ConfigError, DurationError};
use crate::resilience::breaker::UnknownAction;
use crate::resilience::chaos::FaultError;
use crate::supervisor::deploy::DeployError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

/// Why an admin request was not served.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    // The guard (`guard.rs`).
    #[error("Host `{0}` is not this admin listener; add the name to admin.allowed_hosts if it is")]
    Host(String),
    /// Why the request is cross-site (`guard::cross_site`).
    #[error("{0}")]
    CrossSite(String),
    #[error("no admin token available; see drover's log")]
    NoToken,
    /// Why the token was refused (`auth::check`).
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("request not completed within admin.request_timeout ({0:?})")]
    Timeout(Duration),
    #[error(transparent)]
    Body(#[from] JsonBodyError),

    // Workers, strategy, reload.
    #[error("worker id must be a number")]
    WorkerId,
    #[error("no worker {0}")]
    NoWorker(usize),
    #[error("no running worker {0}")]
    NoRunningWorker(usize),
    #[error("{0}, auto")]
    Strategy(#[from] UnknownStrategy),
    /// The config file on disk is invalid; the running config stays.
    #[error(transparent)]
    Reload(#[from] ConfigError),

    // Deploy operations (`operations.rs`).
    #[error("health_timeout: {0}")]
    HealthTimeout(#[source] DurationError),
    #[error("command must not be empty")]
    EmptyCommand,
    #[error("`command` differs from workers.command; deploy another program by changing workers.command and reloading, or set admin.allow_deploy_command: true")]
    CommandNotAllowed,
    /// The code-loading variable the request's `env` sets.
    #[error("`env` sets {0}, which can make workers run other code; set it in workers.env and reload, or set admin.allow_deploy_command: true")]
    EnvNotAllowed(String),
    #[error(transparent)]
    Deploy(#[from] DeployError),

    // Breakers and chaos (`resilience.rs`).
    #[error(transparent)]
    BreakerAction(#[from] UnknownAction),
    #[error("no breaker `{0}`; see GET /api/breakers")]
    NoBreaker(String),
    #[error("chaos is disabled; set `chaos.enabled: true` and reload")]
    ChaosDisabled,
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error("pid out of range")]
    PidOutOfRange,
    #[error("kill {pid}: {source}")]
    Kill { pid: u32, source: nix::Error },

    // Observability (`observe.rs`).
    #[error("range: {0}")]
    Range(#[source] DurationError),
    #[error("range: accepted: 1s to 7d (e.g. 15m, 6h, 7d)")]
    RangeBounds,
    /// `metrics`: the series there are, listed in the answer.
    #[error("no series `{name}`; per-backend series take `backend=`")]
    NoSeries { name: String, metrics: Vec<String> },
    #[error(
        "{0} stream subscribers already (admin.max_stream_subscribers); poll /api/live instead"
    )]
    Subscribers(usize),
    #[error("target_p99 must be a duration of at least 1ms, e.g. 250ms")]
    TargetP99,
    #[error("target_rps must be between 0 and 1e9")]
    TargetRps,
}

impl AdminError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        use AdminError::*;
        match self {
            Host(_) | CrossSite(_) | CommandNotAllowed | EnvNotAllowed(_) | ChaosDisabled => {
                StatusCode::FORBIDDEN
            }
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NoToken | Subscribers(_) => StatusCode::SERVICE_UNAVAILABLE,
            Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Body(JsonBodyError::NotJson) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Body(JsonBodyError::Malformed { .. })
            | WorkerId
            | Strategy(_)
            | Reload(_)
            | HealthTimeout(_)
            | EmptyCommand
            | BreakerAction(_)
            | Fault(_)
            | Range(_)
            | RangeBounds
            | TargetP99
            | TargetRps => StatusCode::BAD_REQUEST,
            NoWorker(_) | NoRunningWorker(_) | NoBreaker(_) | NoSeries { .. } => {
                StatusCode::NOT_FOUND
            }
            Deploy(DeployError::Busy | DeployError::NothingToRollBack) => StatusCode::CONFLICT,
            // Operations run in the background; their failures are in `/api/status`.
            Deploy(_) | PidOutOfRange | Kill { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let error = self.to_string();
        match self {
            AdminError::Unauthorized(_) => (
                status,
                [("www-authenticate", "Bearer")],
                Json(json!({ "ok": false, "error": error })),
            )
                .into_response(),
            AdminError::NoSeries { metrics, .. } => (
                status,
                Json(json!({ "ok": false, "error": error, "metrics": metrics })),
            )
                .into_response(),
            AdminError::TargetP99 | AdminError::TargetRps => {
                (status, Json(json!({ "error": error }))).into_response()
            }
            _ => (status, Json(json!({ "ok": false, "error": error }))).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let e = AdminError::Deploy(DeployError::Busy);
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(
            e.to_string(),
            "another deploy, rollback or rolling restart is running"
        );
        let e = AdminError::from(UnknownStrategy("fastest".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().ends_with("predictive, auto"), "{e}");
        let e = AdminError::HealthTimeout(DurationError::NoUnit("30".into()));
        assert_eq!(
            e.to_string(),
            "health_timeout: `30` has no unit; write e.g. `250ms`, `15s`, `5m` or `1h`"
        );
        assert_eq!(
            AdminError::Body(JsonBodyError::NotJson).status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
