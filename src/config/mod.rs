//! Configuration: `file → FileConfig (serde) → validate → Config`.
//!
//! `load` is used at start, by `drover -t`, and on every reload, so all three report the
//! same errors in the same words.

mod autoscale;
mod duration;
mod edge;
mod error;
mod file;
mod model;
pub mod observability;
pub mod redis;
pub mod resilience;
mod resilience_file;
mod sessions;
pub mod strategy;
pub mod tls;
mod validate;

pub use autoscale::*;
pub use duration::{parse_duration, Dur, DurationError};
pub use edge::*;
pub use error::{locate, ConfigError, ConfigIssue};
pub use file::*;
pub use model::*;
pub use redis::{RedisConfig, RedisTls, RedisTopology};
pub use resilience_file::*;
pub use sessions::*;
pub use tls::{Http2Config, Link, Protocol, TlsConfig, UnknownProtocol, UpstreamTls};
pub use validate::*;

use std::path::Path;

/// Reads, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.clone(),
        issues: vec![ConfigIssue {
            field: "(file)".into(),
            line: None,
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&text, path)
}

/// Parses and validates YAML `text` as if read from `source`.
pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
    let name = source.display().to_string();
    let fail = |issues: Vec<ConfigIssue>| ConfigError {
        file: name.clone(),
        issues,
    };
    let Expanded { text: expanded, consumed } = expand_env(text).map_err(|(line, var)| {
        fail(vec![ConfigIssue {
            field: format!("${{{var}}}"),
            line: Some(line),
            message: format!("environment variable `{var}` is not set (write `${{{var}:-default}}` to give a default)"),
        }])
    })?;
    let file: FileConfig = if expanded.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_yaml::from_str(&expanded).map_err(|e| fail(vec![yaml_issue(&e)]))?
    };
    let with_lines = |issues: Vec<ConfigIssue>| {
        fail(
            issues
                .into_iter()
                .map(|mut i| {
                    i.line = i.line.or_else(|| locate(text, &i.field));
                    i
                })
                .collect(),
        )
    };
    let mut cfg = validate(file, source).map_err(with_lines)?;
    // What the file read from the environment is drover's (tokens, secrets): workers
    // never inherit it (`supervisor/env.rs`).
    let leaked: Vec<ConfigIssue> = cfg
        .workers
        .inherit_env
        .iter()
        .filter(|pattern| consumed.iter().any(|v| env_name_matches(pattern, v)))
        .map(|pattern| ConfigIssue {
            field: "workers.inherit_env".into(),
            line: None,
            message: format!("`{pattern}` names a variable this file reads through ${{...}}; drover keeps those from workers. Give workers a value explicitly under `workers.env` if they need it"),
        })
        .collect();
    if !leaked.is_empty() {
        return Err(with_lines(leaked));
    }
    cfg.workers.withheld_env = consumed;
    Ok(cfg)
}

/// `NAME` matches itself; `PREFIX*` matches every name starting with `PREFIX`.
pub fn env_name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The config text with `${...}` replaced, and the names of the variables it read.
pub struct Expanded {
    /// The text to parse as YAML; comment lines are copied unexpanded.
    pub text: String,
    /// Names of every variable referenced, set or defaulted; `parse` withholds them from
    /// workers (`workers.withheld_env`).
    pub consumed: std::collections::BTreeSet<String>,
}

/// serde_yaml puts the field path and position in its message; lift them out so the
/// output reads `file:line: field: problem` like every other config error.
fn yaml_issue(e: &serde_yaml::Error) -> ConfigIssue {
    let line = e.location().map(|l| l.line());
    let mut message = e.to_string();
    let mut field = String::from("(yaml)");
    if let Some((path, rest)) = message.split_once(": ") {
        if !path.contains(' ') && !path.is_empty() {
            field = path.to_string();
            message = rest.to_string();
        }
    }
    if let Some(idx) = message.find(" at line ") {
        message.truncate(idx);
    }
    ConfigIssue {
        field,
        line,
        message,
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` with the environment's value, so secrets can
/// stay out of the file. Returns the 1-based line and name of the first unset variable.
pub fn expand_env(text: &str) -> Result<Expanded, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut consumed = std::collections::BTreeSet::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let inner = &after[..end];
            let (var, default) = match inner.split_once(":-") {
                Some((v, d)) => (v, Some(d)),
                None => (inner, None),
            };
            consumed.insert(var.to_string());
            match (std::env::var(var), default) {
                (Ok(v), _) => out.push_str(&v),
                (Err(_), Some(d)) => out.push_str(d),
                (Err(_), None) => return Err((n + 1, var.to_string())),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(Expanded {
        text: out,
        consumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::strategy::StrategyKind;
    use std::path::PathBuf;

    fn src() -> PathBuf {
        PathBuf::from("/etc/drover/drover.yaml")
    }

    fn ok(yaml: &str) -> Config {
        let yaml = format!("workers:\n  command: [/bin/sh]\n{yaml}");
        parse(&yaml, &src()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(yaml: &str) -> String {
        parse(yaml, &src()).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = ok("");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.workers.count, 2);
        assert_eq!(
            c.balancing.strategy,
            StrategyChoice::Fixed(StrategyKind::RoundRobin)
        );
        assert_eq!(c.workers.backoff.initial.as_millis(), 100);
        assert_eq!(c.workers.backoff.max.as_secs(), 15);
        assert_eq!(c.shutdown_grace.as_secs(), 10);
    }

    #[test]
    fn shipped_config_is_valid_and_equals_the_defaults() {
        let text = include_str!("../../conf/drover.yaml");
        let file: FileConfig = serde_yaml::from_str(text).unwrap();
        let shipped = serde_yaml::to_string(&file).unwrap();
        let defaults = serde_yaml::to_string(&FileConfig::default()).unwrap();
        assert_eq!(
            shipped, defaults,
            "conf/drover.yaml drifted from the defaults in code"
        );
    }

    #[test]
    fn unknown_key_names_line_and_accepted_keys() {
        let e = err("listen: 127.0.0.1:1\nworkers:\n  cuont: 3\n");
        assert!(e.contains("drover.yaml:3"), "{e}");
        assert!(e.contains("unknown field `cuont`"), "{e}");
        assert!(e.contains("expected one of"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = err("workers:\n  count: many\n");
        assert!(e.contains(":2:"), "{e}");
        assert!(e.contains("workers.count"), "{e}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let e = err("listen: nope\nworkers:\n  command: [/bin/sh]\n  count: 9999\nbalancing:\n  strategy: fastest\n");
        assert!(e.contains("drover.yaml:1: listen:"), "{e}");
        assert!(
            e.contains("drover.yaml:4: workers.count: 9999 is out of range"),
            "{e}"
        );
        assert!(e.contains("drover.yaml:6: balancing.strategy:"), "{e}");
        assert!(e.contains("round_robin"), "{e}");
    }

    #[test]
    fn non_loopback_admin_requires_a_token() {
        let e = err("workers:\n  command: [/bin/sh]\nadmin:\n  listen: 0.0.0.0:9999\n");
        assert!(e.contains("admin.listen"), "{e}");
        assert!(e.contains("requires `admin.token`"), "{e}");
        let c = ok("admin:\n  listen: 0.0.0.0:9999\n  token: 0123456789abcdef0123\n");
        assert!(c.admin.token.is_some());
    }

    #[test]
    fn zero_workers_needs_upstreams() {
        let e = err("workers:\n  count: 0\n");
        assert!(e.contains("nothing to proxy"), "{e}");
        let c = ok("upstreams:\n  - address: 127.0.0.1:1234\n    weight: 3\n");
        assert_eq!(c.upstreams[0].weight, 3);
    }

    #[test]
    fn env_vars_are_expanded_and_missing_ones_reported() {
        std::env::set_var("DROVER_TEST_TOKEN", "abcdefghijklmnopqrstu");
        let c = ok("admin:\n  token: ${DROVER_TEST_TOKEN}\n");
        assert_eq!(c.admin.token.as_deref(), Some("abcdefghijklmnopqrstu"));
        let c = ok("logging:\n  level: ${DROVER_UNSET_LEVEL:-debug}\n");
        assert_eq!(c.logging.level, log::LevelFilter::Debug);
        let e = err("admin:\n  token: ${DROVER_SURELY_UNSET}\n");
        assert!(e.contains(":2:"), "{e}");
        assert!(e.contains("DROVER_SURELY_UNSET"), "{e}");
    }

    #[test]
    fn variables_the_file_reads_are_withheld_from_workers_and_cannot_be_inherited() {
        std::env::set_var("DROVER_TEST_WITHHELD", "abcdefghijklmnopqrstu");
        let c = ok("admin:\n  token: ${DROVER_TEST_WITHHELD}\nlogging:\n  level: ${DROVER_UNSET_X:-info}\n");
        assert!(c.workers.withheld_env.contains("DROVER_TEST_WITHHELD"));
        assert!(c.workers.withheld_env.contains("DROVER_UNSET_X"));
        let e = err("workers:\n  command: [/bin/sh]\n  inherit_env: [DROVER_TEST_*]\nadmin:\n  token: ${DROVER_TEST_WITHHELD}\n");
        assert!(e.contains(":3: workers.inherit_env"), "{e}");
        assert!(e.contains("DROVER_TEST_*"), "{e}");
        let e = err("workers:\n  command: [/bin/sh]\n  inherit_env: [\"*\", \"A=B\"]\n");
        assert!(
            e.contains("workers.inherit_env[0]") && e.contains("workers.inherit_env[1]"),
            "{e}"
        );
    }

    #[test]
    fn durations_need_units() {
        let e = err("health_check:\n  interval: 5\n");
        assert!(e.contains("health_check.interval"), "{e}");
        assert!(e.contains("no unit"), "{e}");
    }

    #[test]
    fn missing_file_is_reported() {
        let e = load(Path::new("/nonexistent/drover.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/drover.yaml"), "{e}");
        assert!(e.contains("cannot read"), "{e}");
    }
}
