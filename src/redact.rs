//! Hiding secrets wherever drover shows configuration: `/api/config`, `/api/status`
//! and log lines.
//!
//! - Tokens, session secrets and keys, and every value of `workers.env`: replaced.
//! - URLs: the userinfo (`user:password@`) is replaced, cut at the *last* `@` of the
//!   authority so a password containing `@` does not leak its tail; webhook URLs also
//!   lose their path and query (receivers put tokens there, e.g. Slack's hooks).
//! - Command-line arguments: the value of a flag whose name looks secret (`password`,
//!   `secret`, `token`, `key`, `auth`, `credential`, ...) in `--flag=value`,
//!   `--flag value` or `NAME=value` form, and URL userinfo in any argument.

use serde_json::{json, Value};

/// What every hidden value is replaced with, in JSON and in log lines alike.
pub const REDACTED: &str = "<redacted>";

/// Parts of names that mark a value as secret (compared lower-case).
const SECRET_WORDS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "cookie",
    "session",
    "private",
    "signature",
    "dsn",
];

/// Whether a flag or variable name looks like it carries a secret.
pub fn secret_name(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| n.contains(w))
}

/// Where the authority of `url` starts and ends (after `scheme://`).
fn authority(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    Some((start, end))
}

/// `url` with its userinfo replaced (cut at the last `@` of the authority).
pub fn url_userinfo(url: &str) -> String {
    let Some((start, end)) = authority(url) else {
        return url.to_string();
    };
    match url[start..end].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

/// `url` reduced to scheme and host (`http://host:port/<redacted>`): for webhooks,
/// whose path and query often are the credential.
pub fn url_path(url: &str) -> String {
    let shown = url_userinfo(url);
    let Some((_, end)) = authority(&shown) else {
        return REDACTED.to_string();
    };
    let rest = &shown[end..];
    if rest.is_empty() || rest == "/" {
        shown
    } else {
        format!("{}/{REDACTED}", &shown[..end])
    }
}

/// Command-line arguments with secret values hidden (see the module doc).
pub fn args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next && !a.starts_with('-') {
            out.push(REDACTED.to_string());
            hide_next = false;
            continue;
        }
        hide_next = false;
        if let Some((name, _)) = a.split_once('=') {
            if secret_name(name) {
                out.push(format!("{name}={REDACTED}"));
                continue;
            }
        } else if a.starts_with('-') && secret_name(a) {
            hide_next = true;
        }
        out.push(url_userinfo(a));
    }
    out
}

/// Keys of the config file whose values are replaced wholesale.
const SECRET_KEYS: &[&str] = &["token", "secrets", "keys", "password"];

/// Redacts a serialized config file (`/api/config`).
pub fn config(v: &mut Value) {
    walk(v);
    if let Some(env) = v
        .pointer_mut("/workers/env")
        .and_then(|e| e.as_object_mut())
    {
        for (_, val) in env.iter_mut() {
            *val = json!(REDACTED);
        }
    }
    if let Some(cmd) = v
        .pointer_mut("/workers/command")
        .and_then(|c| c.as_array_mut())
    {
        let words: Vec<String> = cmd
            .iter()
            .map(|w| w.as_str().unwrap_or_default().to_string())
            .collect();
        if let Some((program, rest)) = words.split_first() {
            let mut shown = vec![json!(program)];
            shown.extend(args(rest).into_iter().map(Value::String));
            *cmd = shown;
        }
    }
}

fn walk(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match (k.as_str(), &*val) {
                    (_, Value::Null) => {}
                    (_, Value::Array(a)) if a.is_empty() => {}
                    (k, _) if SECRET_KEYS.contains(&k) => *val = json!(REDACTED),
                    ("url", Value::String(u)) => *val = json!(url_userinfo(u)),
                    ("webhook", Value::String(u)) => *val = json!(url_path(u)),
                    _ => walk(val),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(walk),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_cut_at_the_last_at_sign() {
        assert_eq!(
            url_userinfo("redis://:p@ss@word@host:6379/0"),
            "redis://<redacted>@host:6379/0"
        );
        assert_eq!(
            url_userinfo("redis://host:6379/0?x=a@b"),
            "redis://host:6379/0?x=a@b"
        );
        assert_eq!(url_userinfo("not a url"), "not a url");
    }

    #[test]
    fn webhook_path_and_query_are_hidden() {
        assert_eq!(
            url_path("http://hooks.example:80/services/T0/B0/XYZ?token=abc"),
            "http://hooks.example:80/<redacted>"
        );
        assert_eq!(url_path("http://127.0.0.1:9093/"), "http://127.0.0.1:9093/");
    }

    #[test]
    fn secret_arguments_are_hidden() {
        let a: Vec<String> = [
            "--port=8000",
            "--db-password=hunter2",
            "--api-key",
            "k3y",
            "--verbose",
            "postgres://app:pw@db:5432/app",
            "AUTH_TOKEN=xyz",
            "--token",
            "--next",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            args(&a),
            [
                "--port=8000",
                "--db-password=<redacted>",
                "--api-key",
                "<redacted>",
                "--verbose",
                "postgres://<redacted>@db:5432/app",
                "AUTH_TOKEN=<redacted>",
                "--token",
                "--next",
            ]
        );
    }

    #[test]
    fn config_redaction_hides_every_secret() {
        let mut v = json!({
            "admin": {"token": "s3cret", "listen": "127.0.0.1:9090"},
            "workers": {"command": ["/srv/app", "--db-password=hunter2"], "env": {"DB": "pw"}},
            "sessions": {"secrets": ["a"], "encryption": {"keys": []},
                         "redis": {"url": "redis://user:p@ss@host:6379", "password": "redisPW",
                                   "sentinel": {"password": "sentinelPW"}}},
            "observability": {"alerts": {"webhook": "http://hooks:80/T/B/XYZ"}},
        });
        config(&mut v);
        let text = v.to_string();
        for secret in [
            "s3cret",
            "hunter2",
            "\"pw\"",
            "\"a\"",
            "p@ss",
            "ss@",
            "XYZ",
            "redisPW",
            "sentinelPW",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("127.0.0.1:9090") && text.contains("host:6379"));
        assert!(text.contains("/srv/app") && text.contains("http://hooks:80/<redacted>"));
    }
}
