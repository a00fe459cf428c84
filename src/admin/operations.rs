//! Deploy operations and the running config:
//! - `POST /api/deploy` `{"version": "v2", "command": ["prog", "arg"], "env": {"K": "V"},
//!   "health_timeout": "30s"}`: blue-green deploy (every field optional; `command` and
//!   `env` default to the current image, `env` is merged over it). Token required.
//! - `POST /api/rollback`: blue-green back to the previous image. Token required.
//! - `POST /api/workers/restart`: rolling restart, one worker at a time. Token required.
//! - `GET /api/config`: the running config file as JSON, secrets redacted.
//!
//! Operations run in the background and answer 202 at once; progress is in
//! `/api/status` under `deploy`. A second operation while one runs gets 409.

use super::{denied, AdminState};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    version: Option<String>,
    command: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    health_timeout: Option<String>,
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
    if let Some(r) = denied(&s, &headers) {
        return r;
    }
    let req: DeployRequest = if body.is_empty() {
        DeployRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad(format!("body must be JSON like {{\"version\": \"v2\", \"command\": [\"/srv/app\"], \"env\": {{}}}}: {e}")),
        }
    };
    let timeout = match timeout_of(&s, req.health_timeout.as_deref()) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
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
    }
    if let Some(env) = req.env {
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

pub async fn rollback(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = denied(&s, &headers) {
        return r;
    }
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

pub async fn restart(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = denied(&s, &headers) {
        return r;
    }
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

/// Keys whose values never leave the process.
const SECRET_KEYS: &[&str] = &["token", "secrets", "keys", "url"];

fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) && !val.is_null() {
                    let redacted = match val {
                        serde_json::Value::Array(a) if a.is_empty() => continue,
                        serde_json::Value::String(u) if k == "url" => {
                            // Only a password in a URL is secret.
                            match u.split_once('@') {
                                Some((_, host)) => json!(format!("redis://<redacted>@{host}")),
                                None => continue,
                            }
                        }
                        _ => json!("<redacted>"),
                    };
                    *val = redacted;
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

pub async fn config(State(s): State<AdminState>) -> Response {
    let cfg = s.shared.config();
    let mut v = serde_json::to_value(&cfg.file).unwrap_or(serde_json::Value::Null);
    redact(&mut v);
    // Environment given to workers may carry credentials too.
    if let Some(env) = v
        .pointer_mut("/workers/env")
        .and_then(|e| e.as_object_mut())
    {
        for (_, val) in env.iter_mut() {
            *val = json!("<redacted>");
        }
    }
    Json(json!({
        "file": s.shared.config_path.display().to_string(),
        "version": s.shared.version.load(std::sync::atomic::Ordering::Relaxed),
        "config": v,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn redaction_hides_tokens_secrets_keys_and_url_passwords() {
        let mut v = serde_json::json!({
            "admin": {"token": "s3cret", "listen": "127.0.0.1:9090"},
            "sessions": {"secrets": ["a"], "encryption": {"keys": []},
                         "redis": {"url": "redis://user:pw@host:6379"}},
        });
        super::redact(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("\"a\"") && !text.contains("pw@"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:9090") && text.contains("host:6379"));
    }
}
