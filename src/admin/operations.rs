//! Deploy operations and the running config:
//! - `POST /api/deploy` `{"version": "v2", "command": ["prog", "arg"], "env": {"K": "V"},
//!   "health_timeout": "30s"}`: blue-green deploy (every field optional; `command` and
//!   `env` default to the current image, `env` is merged over it). A `command` other than
//!   `workers.command`, or an `env` variable that makes programs load other code
//!   (`LD_PRELOAD`, `PATH`, `NODE_OPTIONS`, ...: [`CODE_LOADING_ENV`]), is refused (403)
//!   unless `admin.allow_deploy_command: true`: the token then cannot be turned into
//!   running an arbitrary program.
//! - `POST /api/rollback`: blue-green back to the previous image.
//! - `POST /api/workers/restart`: rolling restart, one worker at a time.
//! - `GET /api/config`: the running config file as JSON, secrets redacted (`crate::redact`).
//!
//! Operations run in the background and answer 202 at once; progress is in
//! `/api/status` under `deploy`. A second operation while one runs gets 409.

use super::error::AdminError;
use super::guard::json_body;
use super::AdminState;
use crate::supervisor::deploy::DeployError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Variables through which a process can be made to load or run other code.
pub const CODE_LOADING_ENV: &[&str] = &[
    "LD_*",
    "DYLD_*",
    "PATH",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "PS4",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "GCONV_PATH",
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    version: Option<String>,
    command: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    health_timeout: Option<String>,
}

fn accepted(kind: &str, version: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "ok": true, "operation": kind, "version": version, "progress": "/api/status (deploy)" })),
    )
        .into_response()
}

fn timeout_of(s: &AdminState, text: Option<&str>) -> Result<Duration, AdminError> {
    match text {
        None => Ok(s.shared.config().workers.health_timeout),
        Some(t) => crate::config::parse_duration(t).map_err(AdminError::HealthTimeout),
    }
}

fn not_busy(s: &AdminState) -> Result<(), AdminError> {
    if s.supervisor.busy() {
        return Err(DeployError::Busy.into());
    }
    Ok(())
}

pub async fn deploy(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let req: DeployRequest = if body.is_empty() {
        DeployRequest::default()
    } else {
        json_body(
            &headers,
            &body,
            r#"{"version": "v2", "command": ["/srv/app"], "env": {}}"#,
        )?
    };
    let timeout = timeout_of(&s, req.health_timeout.as_deref())?;
    let cfg = s.shared.config();
    let current = s.supervisor.image();
    let mut image = (*current).clone();
    if let Some(cmd) = req.command {
        let Some((program, args)) = cmd.split_first() else {
            return Err(AdminError::EmptyCommand);
        };
        if program.trim().is_empty() {
            return Err(AdminError::EmptyCommand);
        }
        image.program = crate::config::resolve_program(&s.shared.config_path, program);
        image.args = args.to_vec();
        let configured = image.program == cfg.workers.program && image.args == cfg.workers.args;
        if !configured && !cfg.admin.allow_deploy_command {
            log::warn!("admin: deploy refused: command differs from workers.command");
            return Err(AdminError::CommandNotAllowed);
        }
    }
    if let Some(env) = req.env {
        if !cfg.admin.allow_deploy_command {
            let loading = env.keys().find(|k| {
                CODE_LOADING_ENV
                    .iter()
                    .any(|p| crate::config::env_name_matches(p, k))
            });
            if let Some(k) = loading {
                log::warn!("admin: deploy refused: env sets {k}");
                return Err(AdminError::EnvNotAllowed(k.clone()));
            }
        }
        image.env.extend(env);
    }
    image.version = req
        .version
        .unwrap_or_else(|| format!("deploy-{}", s.shared.started.elapsed().as_secs()));
    not_busy(&s)?;
    let version = image.version.clone();
    let sup = s.supervisor.clone();
    tokio::spawn(async move {
        let _ = sup.deploy(image, timeout).await;
    });
    Ok(accepted("deploy", &version))
}

pub async fn rollback(State(s): State<AdminState>) -> Result<Response, AdminError> {
    let previous = s
        .supervisor
        .previous_image()
        .ok_or(DeployError::NothingToRollBack)?;
    not_busy(&s)?;
    let timeout = s.shared.config().workers.health_timeout;
    let sup = s.supervisor.clone();
    tokio::spawn(async move {
        let _ = sup.rollback(timeout).await;
    });
    Ok(accepted("rollback", &previous.version))
}

pub async fn restart(State(s): State<AdminState>) -> Result<Response, AdminError> {
    not_busy(&s)?;
    let timeout = s.shared.config().workers.health_timeout;
    let sup = s.supervisor.clone();
    let version = sup.image().version.clone();
    tokio::spawn(async move {
        let _ = sup.rolling_restart(None, timeout).await;
    });
    Ok(accepted("rolling_restart", &version))
}

pub async fn config(State(s): State<AdminState>) -> Response {
    let cfg = s.shared.config();
    let mut v = serde_json::to_value(&cfg.file).unwrap_or(serde_json::Value::Null);
    crate::redact::config(&mut v);
    Json(json!({
        "file": s.shared.config_path.display().to_string(),
        "version": s.shared.version.load(std::sync::atomic::Ordering::Relaxed),
        "config": v,
    }))
    .into_response()
}
