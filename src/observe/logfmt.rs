//! `logging.format: json`: every log line as one JSON object, whoever logs it (drover,
//! Pingora, workers' forwarded output, alerts, events):
//! `{"time":"2026-01-01T12:00:00.123Z","level":"INFO","target":"drover::…","message":"…"}`.
//! Access lines, which are JSON already, are written as they are, with `"level"` and
//! `"target"` added.

use std::fmt::Write;

/// The JSON line for one record (without the newline).
pub fn json_line(level: log::Level, target: &str, message: &str, unix: f64) -> String {
    let mut out = String::with_capacity(96 + message.len());
    if target == "access" && message.starts_with('{') && message.ends_with('}') {
        out.push_str("{\"level\":\"INFO\",\"target\":\"access\",");
        out.push_str(&message[1..]);
        return out;
    }
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"level\":\"{}\",\"target\":\"",
        super::webhook::rfc3339(unix),
        level
    );
    super::access_log::escape_into(&mut out, target);
    out.push_str("\",\"message\":\"");
    super::access_log::escape_into(&mut out, message);
    out.push_str("\"}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_is_one_json_object() {
        let l = json_line(log::Level::Warn, "drover::x", "a \"quoted\"\nline", 1.5);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "drover::x");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert_eq!(v["time"], "1970-01-01T00:00:01.500Z");
        let a = json_line(
            log::Level::Info,
            "access",
            r#"{"time":1.0,"status":200}"#,
            0.0,
        );
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(
            (v["status"].as_u64(), v["target"].as_str()),
            (Some(200), Some("access"))
        );
    }
}
