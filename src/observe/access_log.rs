//! One JSON line per request on the `access` log target.
//!
//! Written by serde_json from a borrowed, derived struct: no map per request (what
//! `json!` would build), and the escaping is serde_json's, not ours.

use std::fmt::Write;

/// What the pipeline knows of one finished request, borrowed for [`format`].
pub struct AccessRecord<'a> {
    /// Client IP (as resolved from trusted proxy headers), else the peer's `ip:port`.
    pub client: &'a str,
    /// HTTP method as sent.
    pub method: &'a str,
    /// Path and query as received; `/` if the request had none.
    pub path: &'a str,
    /// Status written to the client; 0 if no response was written.
    pub status: u16,
    /// Name of the backend that served the last try; `-` if none was chosen.
    pub backend: &'a str,
    /// Supervised worker behind that backend; `None` for remote/discovered backends or
    /// when no backend was chosen (logged as `null`).
    pub worker_id: Option<usize>,
    /// Total time from request start to finish, in milliseconds (rounded to µs in the line).
    pub latency_ms: f64,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    /// The request id (`x-request-id`); empty when there is none.
    pub request_id: &'a str,
    /// Backend choices made, one per attempt including retries; 0 if the request was
    /// answered before choosing one (e.g. an HTTPS redirect or a rate limit).
    pub tries: u32,
    /// The proxy error's text when the request failed; left out of the line when `None`.
    pub error: Option<&'a str>,
    /// W3C trace ids (`observe::trace`): trace, drover's span, the caller's span.
    pub trace: Option<&'a super::trace::TraceContext>,
}

/// The access log file (`logging.access_log_file`): lines are buffered and written by
/// [`flush`] (the control thread's 100 ms ticker), when the buffer passes
/// [`FLUSH_BYTES`], on [`reopen`] (SIGUSR1, after logrotate moved the file) and at
/// shutdown, so a request costs a copy into memory, not a system call.
struct Sink {
    path: Option<std::path::PathBuf>,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
}

static SINK: std::sync::Mutex<Sink> = std::sync::Mutex::new(Sink {
    path: None,
    file: None,
    buf: Vec::new(),
});
/// Buffered bytes that trigger a write from the request path.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Buffered bytes beyond which lines are dropped (the disk is not keeping up).
const MAX_BUFFER: usize = 4 * 1024 * 1024;

fn sink() -> std::sync::MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // Never write through a symlink someone planted where the log goes.
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

impl Sink {
    fn write_out(&mut self) {
        use std::io::Write;
        if self.buf.is_empty() {
            return;
        }
        if self.file.is_none() {
            if let Some(p) = &self.path {
                match open_append(p) {
                    Ok(f) => self.file = Some(f),
                    Err(e) => {
                        log::error!("access log {}: {e}; lines dropped", p.display());
                        self.buf.clear();
                        return;
                    }
                }
            }
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(&self.buf) {
                log::error!(
                    "access log: write failed: {e}; {} bytes dropped",
                    self.buf.len()
                );
            }
        }
        self.buf.clear();
    }
}

/// One access line: to `file` when set (buffered), else to the `access` log target.
pub fn write(file: Option<&std::path::Path>, line: &str) {
    let Some(path) = file else {
        log::info!(target: "access", "{line}");
        return;
    };
    let mut s = sink();
    if s.path.as_deref() != Some(path) {
        // First line, or the config named another file (reload).
        s.write_out();
        s.path = Some(path.to_path_buf());
        s.file = None;
    }
    if s.buf.len() + line.len() + 1 > MAX_BUFFER {
        return;
    }
    s.buf.extend_from_slice(line.as_bytes());
    s.buf.push(b'\n');
    if s.buf.len() >= FLUSH_BYTES {
        s.write_out();
    }
}

/// Writes buffered lines out.
pub fn flush() {
    sink().write_out();
}

/// SIGUSR1: writes what is buffered to the old file, then opens the path afresh (after
/// logrotate renamed the old one).
pub fn reopen() {
    let mut s = sink();
    s.write_out();
    s.file = None;
    if let Some(p) = s.path.clone() {
        match open_append(&p) {
            Ok(f) => {
                s.file = Some(f);
                log::info!("access log reopened: {}", p.display());
            }
            Err(e) => log::error!("access log {}: cannot reopen: {e}", p.display()),
        }
    }
}

/// Appends `s` escaped for the inside of a JSON string literal (quotes, backslashes and
/// control characters); used by `logfmt` to build JSON log lines by hand.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Hex text of an id, written straight into the line (no String per id).
struct Hex<const WIDTH: usize>(u128);

impl<const WIDTH: usize> serde::Serialize for Hex<WIDTH> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:0width$x}", self.0, width = WIDTH))
    }
}

/// The line as serde writes it: field order is the order below, absent options are
/// left out (except `worker_id`, which is `null`), borrowed strings are escaped by
/// serde_json, and nothing is collected into a map first.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: f64,
    client: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    backend: &'a str,
    worker_id: Option<usize>,
    latency_ms: f64,
    bytes: usize,
    tries: u32,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<Hex<32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<Hex<16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<Hex<16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Rounds to thousandths, as the log shows milliseconds of a second and microseconds of
/// a millisecond.
fn milli(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The JSON access line for `r` (without the newline), stamped with the current Unix time
/// in seconds.
pub fn format(r: &AccessRecord<'_>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let line = Line {
        time: milli(now),
        client: r.client,
        method: r.method,
        path: r.path,
        status: r.status,
        backend: r.backend,
        worker_id: r.worker_id,
        latency_ms: milli(r.latency_ms),
        bytes: r.bytes,
        tries: r.tries,
        request_id: r.request_id,
        trace_id: r.trace.map(|t| Hex(t.trace_id)),
        span_id: r.trace.map(|t| Hex(u128::from(t.span_id))),
        parent_span_id: r
            .trace
            .and_then(|t| t.parent_id)
            .map(|p| Hex(u128::from(p))),
        error: r.error,
    };
    // Serialising borrowed strings and numbers into a Vec cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produces_valid_json_with_escaping() {
        let line = format(&AccessRecord {
            client: "127.0.0.1:5000",
            method: "GET",
            path: "/a\"b\\c\n",
            status: 200,
            backend: "worker-1",
            worker_id: Some(1),
            latency_ms: 1.25,
            bytes: 42,
            request_id: "abc",
            tries: 1,
            error: Some("x\u{1}"),
            trace: Some(&crate::observe::trace::TraceContext {
                trace_id: 0xab,
                parent_id: Some(0xcd),
                span_id: 0xef,
                flags: 1,
            }),
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["worker_id"], 1);
        assert_eq!(v["error"], "x\u{1}");
        assert_eq!(v["trace_id"], format!("{:032x}", 0xab));
        assert_eq!(v["span_id"], "00000000000000ef");
        assert_eq!(v["parent_span_id"], "00000000000000cd");
    }
}
