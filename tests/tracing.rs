// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! OTLP span export, checked by an independent decoder: a Python receiver
//! (`tests/support/otlp_receiver.py`) decodes drover's protobuf with the reference
//! `opentelemetry-proto` package (installed by `.ci/run` into `target/ci-venv`).

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "tracing-test-token-0123456789";

fn python() -> PathBuf {
    std::env::var_os("DROVER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python")
        })
}

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver() -> Receiver {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spans.jsonl");
    let port = free_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(port.to_string())
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run .ci/run once: it makes target/ci-venv with opentelemetry-proto)",
                python().display()
            )
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "receiver did not start");
    Receiver {
        child,
        port,
        out,
        _dir: dir,
    }
}

fn spans(r: &Receiver) -> Vec<Value> {
    std::fs::read_to_string(&r.out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

fn of_trace<'a>(all: &'a [Value], trace: &str) -> Vec<&'a Value> {
    all.iter().filter(|s| s["trace_id"] == trace).collect()
}

/// Spans of sampled requests reach an OTLP receiver in protobuf it decodes with the
/// reference implementation: the request span (SERVER) continues the caller's trace,
/// each upstream attempt is a CLIENT child naming its backend, the worker's
/// `traceparent` names the attempt, a retry shows as a failed attempt, a backoff span
/// and a second attempt; a caller that says "not sampled" is not traced.
#[test]
fn sampled_requests_export_linked_spans_over_otlp_http() {
    let rx = receiver();
    let d = Drover::start_with(
        2,
        &format!(
            "chaos:\n  enabled: true\nobservability:\n  tracing:\n    endpoint: http://127.0.0.1:{}/v1/traces\n    sample_ratio: 1.0\n    flush_interval: 100ms\n    service_name: edge-test\n",
            rx.port
        ),
        Some(TOKEN),
    );
    // 1. A continued, sampled trace; the worker echoes what it received.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = d
        .get_with(
            "/echo",
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let echoed: Value = serde_json::from_str(&r.body).unwrap();
    let sent = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    // 2. Not sampled by the caller: no spans.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    d.get_with(
        "/",
        &[("traceparent", &format!("00-{quiet}-b7ad6b7169203331-00"))],
    )
    .unwrap();
    // 3. A retry: worker 0 resets every connection (chaos), so a request sent there is
    //    retried on worker 1.
    let auth = format!("Bearer {TOKEN}");
    let f = request(
        &d.agent,
        "POST",
        &d.admin_url("/api/chaos/faults"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(r#"{"target": {"worker": 0}, "kind": "reset", "share": 1.0, "duration_s": 60}"#),
    )
    .unwrap();
    assert_eq!(f.status, 201, "{}", f.body);
    let mut retried = None;
    for i in 0..10 {
        let id = format!("{:032x}", 0xabc0 + i);
        let r = d
            .get_with(
                "/",
                &[("traceparent", &format!("00-{id}-1111111111111111-01"))],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        if r.worker() == Some(1) {
            // Either worker 1 was picked first, or a retry; the spans say which.
            retried.get_or_insert_with(Vec::new).push(id);
        }
    }
    let candidates = retried.expect("some request landed on worker 1");

    let ok = wait_until(Duration::from_secs(10), || {
        let all = spans(&rx);
        of_trace(&all, trace).len() >= 2
            && candidates.iter().any(|id| of_trace(&all, id).len() >= 4)
    });
    let all = spans(&rx);
    assert!(ok, "spans: {all:#?}\nlog:\n{}", d.log());
    assert!(
        all.iter().all(|s| s.get("error").is_none()),
        "decode errors: {all:?}"
    );

    // The continued trace.
    let t = of_trace(&all, trace);
    let root = t.iter().find(|s| s["name"] == "request").unwrap();
    assert_eq!(root["kind"], 2, "SERVER");
    assert_eq!(root["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(root["resource"]["service.name"], "edge-test");
    assert_eq!(root["scope"], "drover");
    assert_eq!(root["attributes"]["http.request.method"], "GET");
    assert_eq!(root["attributes"]["url.path"], "/echo");
    assert_eq!(root["attributes"]["http.response.status_code"], 200);
    assert_eq!(root["status_code"], 1);
    let attempt = t.iter().find(|s| s["name"] == "upstream attempt").unwrap();
    assert_eq!(attempt["kind"], 3, "CLIENT");
    assert_eq!(attempt["parent_span_id"], root["span_id"]);
    assert!(attempt["attributes"]["drover.backend"]
        .as_str()
        .unwrap()
        .starts_with("worker-"));
    assert_eq!(attempt["attributes"]["drover.attempt"], 1);
    assert!(root["start"].as_u64() <= attempt["start"].as_u64());
    assert!(attempt["end"].as_u64() <= root["end"].as_u64());
    assert_eq!(
        sent,
        format!("00-{trace}-{}-01", attempt["span_id"].as_str().unwrap()),
        "the worker's parent is the attempt span"
    );

    // Not sampled: nothing.
    assert!(of_trace(&all, quiet).is_empty());

    // The retried request.
    let id = candidates
        .iter()
        .find(|id| of_trace(&all, id).len() >= 4)
        .unwrap();
    let t = of_trace(&all, id);
    let root = t.iter().find(|s| s["name"] == "request").unwrap();
    assert_eq!(root["attributes"]["drover.tries"], 2);
    let mut attempts: Vec<&&Value> = t
        .iter()
        .filter(|s| s["name"] == "upstream attempt")
        .collect();
    attempts.sort_by_key(|s| s["attributes"]["drover.attempt"].as_i64());
    assert_eq!(attempts.len(), 2, "{t:#?}");
    assert_eq!(attempts[0]["attributes"]["drover.backend"], "worker-0");
    assert_eq!(attempts[0]["status_code"], 2, "the reset attempt failed");
    assert_eq!(attempts[1]["attributes"]["drover.backend"], "worker-1");
    assert_eq!(attempts[1]["attributes"]["drover.retry"], true);
    assert_eq!(attempts[1]["status_code"], 1);
    let backoff = t.iter().find(|s| s["name"] == "retry backoff");
    assert!(backoff.is_some(), "{t:#?}");
    for s in &t {
        if s["name"] != "request" {
            assert_eq!(s["parent_span_id"], root["span_id"], "{s}");
        }
    }
    assert!(d.metric("drover_trace_spans_total{result=\"exported\"}") >= 6.0);
    assert_eq!(
        d.metric("drover_trace_spans_total{result=\"dropped\"}"),
        0.0
    );
}
