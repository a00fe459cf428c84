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

use super::guard::json_body;
use super::AdminState;
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

fn forbidden(msg: impl Into<String>) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "ok": false, "error": msg.into() })),
    )
        .into_response()
}

fn bad(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "ok": false, "error": msg.into() })),
    )
        .into_response()
}

fn busy() -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({ "ok": false, "error": "another deploy, rollback or rolling restart is running" })),
    )
        .into_response()
}

fn accepted(kind: &str, version: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "ok": true, "operation": kind, "version": version, "progress": "/api/status (deploy)" })),
    )
        .into_response()
}

fn timeout_of(s: &AdminState, text: Option<&str>) -> Result<Duration, String> {
    match text {
        None => Ok(s.shared.config().workers.health_timeout),
        Some(t) => crate::config::parse_duration(t).map_err(|e| format!("health_timeout: {e}")),
    }
}

pub async fn deploy(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: DeployRequest = if body.is_empty() {
        DeployRequest::default()
    } else {
        match json_body(
            &headers,
            &body,
            r#"{"version": "v2", "command": ["/srv/app"], "env": {}}"#,
        ) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        }
    };
    let timeout = match timeout_of(&s, req.health_timeout.as_deref()) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let cfg = s.shared.config();
    let current = s.supervisor.image();
    let mut image = (*current).clone();
    if let Some(cmd) = req.command {
        let Some((program, args)) = cmd.split_first() else {
            return bad("command must not be empty");
        };
        if program.trim().is_empty() {
            return bad("command must not be empty");
        }
        image.program = crate::config::resolve_program(&s.shared.config_path, program);
        image.args = args.to_vec();
        let configured = image.program == cfg.workers.program && image.args == cfg.workers.args;
        if !configured && !cfg.admin.allow_deploy_command {
            log::warn!("admin: deploy refused: command differs from workers.command");
            return forbidden("`command` differs from workers.command; deploy another program by changing workers.command and reloading, or set admin.allow_deploy_command: true");
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
                return forbidden(format!("`env` sets {k}, which can make workers run other code; set it in workers.env and reload, or set admin.allow_deploy_command: true"));
            }
        }
        image.env.extend(env);
    }
    image.version = req
        .version
        .unwrap_or_else(|| format!("deploy-{}", s.shared.started.elapsed().as_secs()));
    if s.supervisor.busy() {
        return busy();
    }
    let version = image.version.clone();
    let sup = s.supervisor.clone();
    tokio::spawn(async move {
        let _ = sup.deploy(image, timeout).await;
    });
    accepted("deploy", &version)
}

pub async fn rollback(State(s): State<AdminState>) -> Response {
    let Some(previous) = s.supervisor.previous_image() else {
        return (
            StatusCode::CONFLICT,
            Json(
                json!({ "ok": false, "error": "nothing to roll back to: no deploy has completed" }),
            ),
        )
            .into_response();
    };
    if s.supervisor.busy() {
        return busy();
    }
    let timeout = s.shared.config().workers.health_timeout;
    let sup = s.supervisor.clone();
    tokio::spawn(async move {
        let _ = sup.rollback(timeout).await;
    });
    accepted("rollback", &previous.version)
}

pub async fn restart(State(s): State<AdminState>) -> Response {
    if s.supervisor.busy() {
        return busy();
    }
    let timeout = s.shared.config().workers.health_timeout;
    let sup = s.supervisor.clone();
    let version = sup.image().version.clone();
    tokio::spawn(async move {
        let _ = sup.rolling_restart(None, timeout).await;
    });
    accepted("rolling_restart", &version)
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
