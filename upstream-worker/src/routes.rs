//! Request routing and the endpoint handlers.

use std::borrow::Cow;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::session::{is_json_object, FlatObject, Value};

pub type Resp = Response<Full<Bytes>>;

const X_WORKER_ID: HeaderName = HeaderName::from_static("x-worker-id");
const X_WORKER_PID: HeaderName = HeaderName::from_static("x-worker-pid");
const X_WORKER_VERSION: HeaderName = HeaderName::from_static("x-worker-version");
const X_DROVER_SESSION: HeaderName = HeaderName::from_static("x-drover-session");
const X_DROVER_SESSION_ID: HeaderName = HeaderName::from_static("x-drover-session-id");
const X_DROVER_SESSION_SET: HeaderName = HeaderName::from_static("x-drover-session-set");
const X_DROVER_SESSION_STATE: HeaderName = HeaderName::from_static("x-drover-session-state");
const X_DROVER_SESSION_CONTROL: HeaderName = HeaderName::from_static("x-drover-session-control");
const X_DROVER_METRIC: HeaderName = HeaderName::from_static("x-drover-metric");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

const MAX_MS: u64 = 60_000;
/// Big enough for any benchmark body, small enough that a typo cannot make a
/// worker allocate gigabytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Everything fixed at startup, leaked to `'static` so connections share it
/// without reference counting.
pub struct Worker {
    pub id: u64,
    id_header: HeaderValue,
    pid_header: HeaderValue,
    /// `WORKER_VERSION` from the environment, so deploy tests can see which version
    /// answered.
    version_header: Option<HeaderValue>,
    hello: Bytes,
    health_fail_file: Option<PathBuf>,
    slow_file: Option<PathBuf>,
    fail_file: Option<PathBuf>,
    multi_thread: bool,
}

impl Worker {
    pub fn new(
        id: u64,
        health_fail_file: Option<PathBuf>,
        slow_file: Option<PathBuf>,
        fail_file: Option<PathBuf>,
        multi_thread: bool,
    ) -> Self {
        // Leaked once per process so every response clones a static header
        // instead of formatting or bumping a refcount.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        Worker {
            id,
            id_header: HeaderValue::from_static(leak(id.to_string())),
            pid_header: HeaderValue::from_static(leak(std::process::id().to_string())),
            version_header: std::env::var("WORKER_VERSION")
                .ok()
                .and_then(|v| HeaderValue::from_str(&v).ok()),
            hello: Bytes::from_static(leak(format!("hello from worker {id}\n")).as_bytes()),
            health_fail_file,
            slow_file,
            fail_file,
            multi_thread,
        }
    }
}

/// Entry point for hyper: routes, then stamps the worker identity on every
/// response so tests can see which worker answered.
pub async fn handle(worker: &'static Worker, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let mut resp = route(worker, req).await;
    let headers = resp.headers_mut();
    headers.insert(X_WORKER_ID, worker.id_header.clone());
    headers.insert(X_WORKER_PID, worker.pid_header.clone());
    if let Some(v) = &worker.version_header {
        headers.insert(X_WORKER_VERSION, v.clone());
    }
    Ok(resp)
}

async fn route(w: &'static Worker, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();
    let get = parts.method == Method::GET || parts.method == Method::HEAD;

    if path != "/health" {
        if let Some(ms) = w
            .slow_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
        {
            let ms = ms.trim().parse::<u64>().unwrap_or(0).min(MAX_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    if path != "/health" && w.fail_file.as_ref().is_some_and(|f| f.exists()) {
        drain(body).await;
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"failing (FAIL_FILE)\n"),
        );
    }
    if path == "/echo" {
        return echo(w, &parts, body).await;
    }
    // Unread bodies would cost hyper the keep-alive connection.
    drain(body).await;

    match path {
        // POST and PUT too, after the body was read whole (drain above): what the load
        // harness's body scenarios measure.
        "/" if get || parts.method == Method::POST || parts.method == Method::PUT => {
            text(StatusCode::OK, w.hello.clone())
        }
        "/health" if get => health(w),
        "/delay" if get => delay(query).await,
        "/status" if get => status(query),
        "/cpu" if get => cpu(w, query).await,
        "/bytes" if get => bytes_body(query),
        "/crash" if get => {
            eprintln!("worker {} crashing on request", w.id);
            std::process::exit(3)
        }
        "/session" if get => session_show(w, &parts.headers),
        "/session/incr" if get || parts.method == Method::POST => {
            session_incr(w, query, &parts.headers).await
        }
        "/session/set" if get => session_set(query, &parts.headers),
        "/session/regenerate" if get || parts.method == Method::POST => {
            session_control(w, query, &parts.headers, "regenerate")
        }
        "/session/destroy" if get || parts.method == Method::POST => {
            session_control(w, query, &parts.headers, "destroy")
        }
        "/metrics-report" if get => metrics_report(query),
        _ => text(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    }
}

fn text(status: StatusCode, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    resp
}

fn json(body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    resp
}

fn bad_request(msg: String) -> Resp {
    text(StatusCode::BAD_REQUEST, Bytes::from(msg))
}

/// Reads and discards a body without buffering it; gives up past
/// `MAX_BODY`, in which case hyper simply closes the connection.
async fn drain(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen > MAX_BODY {
                return;
            }
        }
    }
}

fn health(w: &Worker) -> Resp {
    // Checked per request so a test can flip health by touching a file.
    match &w.health_fail_file {
        Some(path) if path.exists() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"unhealthy\n"),
        ),
        _ => text(StatusCode::OK, Bytes::from_static(b"ok\n")),
    }
}

async fn delay(query: Option<&str>) -> Resp {
    let ms = match required_num(query, "ms", 0, MAX_MS) {
        Ok(ms) => ms,
        Err(msg) => return bad_request(msg),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    text(StatusCode::OK, Bytes::from(format!("delayed {ms} ms\n")))
}

/// 1xx codes pass validation but are refused: hyper cannot send one as a
/// final response (it substitutes a bare 500, or ends the connection for
/// 101), which would also lose the worker headers tests rely on.
fn status(query: Option<&str>) -> Resp {
    let code = match required_num(query, "code", 100, 599) {
        Ok(code) => code,
        Err(msg) => return bad_request(msg),
    };
    if code < 200 {
        return bad_request(format!("bad code {code}: 1xx cannot be a final response\n"));
    }
    match u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) => text(status, Bytes::from(format!("status {code}\n"))),
        None => bad_request(format!("bad code {code}\n")),
    }
}

async fn cpu(w: &Worker, query: Option<&str>) -> Resp {
    let ms = match required_num(query, "ms", 0, MAX_MS) {
        Ok(ms) => ms,
        Err(msg) => return bad_request(msg),
    };
    let spin = move || {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut x = 0u64;
        while Instant::now() < deadline {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    };
    // block_in_place panics on a current_thread runtime; there, blocking the
    // whole worker is exactly what a CPU-bound request should look like.
    if w.multi_thread {
        tokio::task::block_in_place(spin);
    } else {
        spin();
    }
    text(
        StatusCode::OK,
        Bytes::from(format!("burned {ms} ms of cpu\n")),
    )
}

/// The largest body handed out so far; smaller requests are slices of it,
/// so repeated benchmark requests cost no allocation or fill.
static BYTES_CACHE: Mutex<Bytes> = Mutex::new(Bytes::new());

fn bytes_body(query: Option<&str>) -> Resp {
    let n = match required_num(query, "n", 0, MAX_BODY as u64) {
        Ok(n) => n as usize,
        Err(msg) => return bad_request(msg),
    };
    let body = {
        let mut cache = BYTES_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() < n {
            *cache = Bytes::from(vec![b'x'; n]);
        }
        cache.slice(..n)
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

async fn echo(w: &Worker, parts: &hyper::http::request::Parts, body: Incoming) -> Resp {
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                Bytes::from_static(b"body too large\n"),
            )
        }
        Err(_) => return bad_request("could not read body\n".into()),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());

    let mut out = String::with_capacity(128 + body.len() + parts.headers.len() * 48);
    out.push_str("{\"method\":");
    escape_json_into(&mut out, parts.method.as_str(), false);
    out.push_str(",\"path\":");
    escape_json_into(&mut out, path, false);
    out.push_str(",\"headers\":{");
    for (i, name) in parts.headers.keys().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // hyper already stores names lowercased.
        escape_json_into(&mut out, name.as_str(), false);
        out.push(':');
        let mut joined = String::new();
        for (j, value) in parts.headers.get_all(name).iter().enumerate() {
            if j > 0 {
                joined.push_str(", ");
            }
            joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        escape_json_into(&mut out, &joined, false);
    }
    out.push_str("},\"body\":");
    escape_json_into(&mut out, &String::from_utf8_lossy(&body), false);
    out.push_str(",\"worker_id\":");
    out.push_str(&w.id.to_string());
    out.push('}');
    json(out)
}

/// Header text as UTF-8; `to_str` would reject non-ASCII that drover may
/// legitimately pass through.
fn header_text<'a>(headers: &'a hyper::HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

fn session_show(w: &Worker, headers: &hyper::HeaderMap) -> Resp {
    let mut out = format!("{{\"worker_id\":{},\"session\":", w.id);
    match header_text(headers, &X_DROVER_SESSION) {
        Some(s) if is_json_object(s) => out.push_str(s),
        _ => out.push_str("null"),
    }
    out.push_str(",\"session_id\":");
    match header_text(headers, &X_DROVER_SESSION_ID) {
        Some(id) => escape_json_into(&mut out, id, false),
        None => out.push_str("null"),
    }
    out.push_str(",\"state\":");
    match header_text(headers, &X_DROVER_SESSION_STATE) {
        Some(st) => escape_json_into(&mut out, st, false),
        None => out.push_str("null"),
    }
    out.push('}');
    json(out)
}

/// `/session/regenerate` (a login: new session id, same data, plus `key=value` when
/// given) and `/session/destroy` (a logout): the worker tells drover through the
/// control header; the body shows the session as the worker saw it.
fn session_control(
    w: &Worker,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
    what: &'static str,
) -> Resp {
    let mut resp = session_show(w, headers);
    if what == "regenerate" {
        if let (Some(key), Some(value)) = (query_param(query, "key"), query_param(query, "value")) {
            let mut session = FlatObject::parse_or_empty(header_text(headers, &X_DROVER_SESSION));
            session.set(&key, Value::Str(value.into_owned()));
            set_session_header(&mut resp, &session.to_json());
        }
    }
    resp.headers_mut()
        .insert(X_DROVER_SESSION_CONTROL, HeaderValue::from_static(what));
    resp
}

async fn session_incr(w: &Worker, query: Option<&str>, headers: &hyper::HeaderMap) -> Resp {
    match num_param(query, "ms", 0, MAX_MS) {
        Ok(Some(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Ok(None) => {}
        Err(msg) => return bad_request(msg),
    }
    let mut session = FlatObject::parse_or_empty(header_text(headers, &X_DROVER_SESSION));
    let counter = session.incr_counter();
    let mut out = format!("{{\"counter\":{counter},\"worker_id\":{},\"state\":", w.id);
    match header_text(headers, &X_DROVER_SESSION_STATE) {
        Some(st) => escape_json_into(&mut out, st, false),
        None => out.push_str("null"),
    }
    out.push('}');
    let mut resp = json(out);
    set_session_header(&mut resp, &session.to_json());
    resp
}

fn session_set(query: Option<&str>, headers: &hyper::HeaderMap) -> Resp {
    let key = match query_param(query, "key") {
        Some(k) if !k.is_empty() => k,
        _ => return bad_request("missing key\n".into()),
    };
    let Some(value) = query_param(query, "value") else {
        return bad_request("missing value\n".into());
    };
    let mut session = FlatObject::parse_or_empty(header_text(headers, &X_DROVER_SESSION));
    session.set(&key, Value::Str(value.into_owned()));
    let body = session.to_json();
    let mut resp = json(body.clone());
    set_session_header(&mut resp, &body);
    resp
}

fn set_session_header(resp: &mut Resp, json: &str) {
    // to_json escapes everything outside printable ASCII, so this only fails
    // if a preserved raw value smuggled in a byte headers cannot carry.
    match HeaderValue::from_str(json) {
        Ok(v) => {
            resp.headers_mut().insert(X_DROVER_SESSION_SET, v);
        }
        Err(_) => {
            *resp = text(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(b"session not representable as a header\n"),
            )
        }
    }
}

fn metrics_report(query: Option<&str>) -> Resp {
    let (Some(name), Some(value)) = (query_param(query, "name"), query_param(query, "value"))
    else {
        return bad_request("need name and value\n".into());
    };
    if name.is_empty() || name.contains('=') {
        return bad_request("bad name\n".into());
    }
    match HeaderValue::from_str(&format!("{name}={value}")) {
        Ok(v) => {
            let mut resp = text(StatusCode::OK, Bytes::from_static(b"ok\n"));
            resp.headers_mut().insert(X_DROVER_METRIC, v);
            resp
        }
        Err(_) => bad_request("metric not representable as a header\n".into()),
    }
}

/// First value of `key` in a raw query string, percent- and `+`-decoded.
/// A key without `=` yields an empty value.
pub fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<Cow<'a, str>> {
    query?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| percent_decode(k) == key)
        .map(|(_, v)| percent_decode(v))
}

/// Malformed escapes are kept literally rather than rejected, as browsers do.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex.filter(|_| bytes[i + 1] != b'+') {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `Ok(None)` when absent; an error message (not a response) keeps this
/// testable and lets callers decide whether absence is an error.
pub fn num_param(
    query: Option<&str>,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, String> {
    let Some(raw) = query_param(query, key) else {
        return Ok(None);
    };
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad {key}: expected a number\n"));
    }
    match raw.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(format!("bad {key}: must be in {min}..={max}\n")),
    }
}

fn required_num(query: Option<&str>, key: &str, min: u64, max: u64) -> Result<u64, String> {
    num_param(query, key, min, max)?.ok_or_else(|| format!("missing {key}\n"))
}

/// Appends `s` as a quoted JSON string. `ascii_only` also escapes DEL and
/// everything non-ASCII (as UTF-16 `\uXXXX`), which is what a header value
/// needs.
pub fn escape_json_into(out: &mut String, s: &str, ascii_only: bool) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' || (ascii_only && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_finds_and_decodes() {
        let q = Some("a=1&ms=250&x=hello+w%6Frld&empty=&flag&ms=9");
        assert_eq!(query_param(q, "ms").as_deref(), Some("250"));
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "x").as_deref(), Some("hello world"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(query_param(None, "ms"), None);
        assert_eq!(query_param(Some("k%65y=v"), "key").as_deref(), Some("v"));
    }

    #[test]
    fn percent_decode_keeps_malformed_escapes() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%+1"), "% 1");
        assert_eq!(percent_decode("%C3%A9"), "\u{e9}");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn num_param_validates_range_and_syntax() {
        assert_eq!(num_param(Some("ms=0"), "ms", 0, MAX_MS), Ok(Some(0)));
        assert_eq!(
            num_param(Some("ms=60000"), "ms", 0, MAX_MS),
            Ok(Some(60000))
        );
        assert_eq!(num_param(Some("x=1"), "ms", 0, MAX_MS), Ok(None));
        for bad in [
            "ms=60001",
            "ms=",
            "ms=-1",
            "ms=+1",
            "ms=1.5",
            "ms=abc",
            "ms=99999999999999999999999",
        ] {
            assert!(num_param(Some(bad), "ms", 0, MAX_MS).is_err(), "{bad}");
        }
        assert!(num_param(Some("code=99"), "code", 100, 599).is_err());
        assert!(num_param(Some("code=600"), "code", 100, 599).is_err());
        assert_eq!(num_param(Some("code=599"), "code", 100, 599), Ok(Some(599)));
    }

    fn esc(s: &str, ascii: bool) -> String {
        let mut out = String::new();
        escape_json_into(&mut out, s, ascii);
        out
    }

    #[test]
    fn json_escaping() {
        assert_eq!(esc("plain", false), "\"plain\"");
        assert_eq!(esc("a\"b\\c", false), r#""a\"b\\c""#);
        assert_eq!(
            esc("\n\t\u{0}\u{1f}", false),
            r#""\u000a\u0009\u0000\u001f""#
        );
        assert_eq!(esc("\u{e9}\u{7f}", false), "\"\u{e9}\u{7f}\"");
        assert_eq!(
            esc("\u{e9}\u{7f}\u{1F600}", true),
            r#""\u00e9\u007f\ud83d\ude00""#
        );
        assert_eq!(esc("/~ ", true), "\"/~ \"");
    }
}
