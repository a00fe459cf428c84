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
    /// The `Host` header names neither the listen address nor an `admin.allowed_hosts` entry (403).
    #[error("Host `{0}` is not this admin listener; add the name to admin.allowed_hosts if it is")]
    Host(String),
    /// Why the request is cross-site (`guard::cross_site`).
    #[error("{0}")]
    CrossSite(String),
    /// No token is configured and the generated one could not be read or created (503).
    #[error("no admin token available; see drover's log")]
    NoToken,
    /// Why the token was refused (`auth::check`).
    #[error("{0}")]
    Unauthorized(#[from] super::auth::TokenRefusal),
    /// The request ran past `admin.request_timeout`, the value carried (408).
    #[error("request not completed within admin.request_timeout ({0:?})")]
    Timeout(Duration),
    /// The JSON body was refused: wrong Content-Type (415) or malformed (400).
    #[error(transparent)]
    Body(#[from] JsonBodyError),

    // Workers, strategy, reload.
    /// The `{id}` path segment is not a number (400).
    #[error("worker id must be a number")]
    WorkerId,
    /// Drain: no worker slot has this id (404).
    #[error("no worker {0}")]
    NoWorker(usize),
    /// Chaos kill: no worker with this id has a live pid (404).
    #[error("no running worker {0}")]
    NoRunningWorker(usize),
    /// Unknown strategy name in `POST /api/strategy` (400).
    #[error("{0}, auto")]
    Strategy(#[from] UnknownStrategy),
    /// The config file on disk is invalid; the running config stays.
    #[error(transparent)]
    Reload(#[from] ConfigError),

    // Deploy operations (`operations.rs`).
    /// A deploy's `health_timeout` is not a valid duration (400).
    #[error("health_timeout: {0}")]
    HealthTimeout(#[source] DurationError),
    /// A deploy's `command` is an empty list or its program is blank (400).
    #[error("command must not be empty")]
    EmptyCommand,
    /// A deploy's `command` differs from `workers.command` while `admin.allow_deploy_command` is
    /// off (403).
    #[error("`command` differs from workers.command; deploy another program by changing workers.command and reloading, or set admin.allow_deploy_command: true")]
    CommandNotAllowed,
    /// The code-loading variable the request's `env` sets.
    #[error("`env` sets {0}, which can make workers run other code; set it in workers.env and reload, or set admin.allow_deploy_command: true")]
    EnvNotAllowed(String),
    /// Deploy, rollback or restart refused (another is running, nothing to roll back: 409) or
    /// failed (500).
    #[error(transparent)]
    Deploy(#[from] DeployError),

    // Breakers and chaos (`resilience.rs`).
    /// Unknown action on a breaker (400).
    #[error(transparent)]
    BreakerAction(#[from] UnknownAction),
    /// No breaker has this name (404).
    #[error("no breaker `{0}`; see GET /api/breakers")]
    NoBreaker(String),
    /// A chaos endpoint was called while `chaos.enabled` is false (403).
    #[error("chaos is disabled; set `chaos.enabled: true` and reload")]
    ChaosDisabled,
    /// The fault to inject is out of range (share, latency, status, duration, count) (400).
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// The worker's pid does not fit a signed `pid_t` (500).
    #[error("pid out of range")]
    PidOutOfRange,
    /// `kill(SIGKILL)` of the worker failed (500).
    #[error("kill {pid}: {source}")]
    Kill {
        /// The worker's pid.
        pid: u32,
        /// The errno `kill(2)` returned.
        source: nix::Error,
    },

    // Observability (`observe.rs`).
    /// `/api/history` `range` is not a valid duration (400).
    #[error("range: {0}")]
    Range(#[source] DurationError),
    /// `/api/history` `range` is zero or longer than 7 days (400).
    #[error("range: accepted: 1s to 7d (e.g. 15m, 6h, 7d)")]
    RangeBounds,
    /// `metrics`: the series there are, listed in the answer.
    #[error("no series `{name}`; per-backend series take `backend=`")]
    NoSeries {
        /// The series asked for: `metric`, or `metric/backend` with `backend=`.
        name: String,
        /// Every series name the history holds.
        metrics: Vec<String>,
    },
    /// `/api/stream` already has `admin.max_stream_subscribers` subscribers, the value carried
    /// (503).
    #[error(
        "{0} stream subscribers already (admin.max_stream_subscribers); poll /api/live instead"
    )]
    Subscribers(usize),
    /// `/api/capacity` `target_p99` is not a duration of at least 1 ms (400); answered without
    /// `ok`.
    #[error("target_p99 must be a duration of at least 1ms, e.g. 250ms")]
    TargetP99,
    /// `/api/capacity` `target_rps` is not finite or outside 0 to 1e9 (400); answered without `ok`.
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
