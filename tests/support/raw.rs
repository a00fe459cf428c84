//! Raw HTTP/1 over sockets for the seam and differential tests: a client that sends exact
//! bytes and splits what comes back into responses, and a worker that records exactly the
//! bytes it receives and answers from a script.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One response as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    pub version: String,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What came back on one connection.
#[derive(Debug, Default)]
pub struct Conversation {
    /// Final and interim responses, in order.
    pub responses: Vec<RawResponse>,
    /// The server closed the connection.
    pub closed: bool,
    /// Bytes that did not parse as a response (stray bytes, a cut-off response).
    pub leftover: Vec<u8>,
    pub elapsed: Duration,
}

impl Conversation {
    pub fn finals(&self) -> Vec<&RawResponse> {
        self.responses
            .iter()
            .filter(|r| r.status >= 200 || r.status == 101)
            .collect()
    }
    pub fn statuses(&self) -> Vec<u16> {
        self.finals().iter().map(|r| r.status).collect()
    }
}

enum Parsed {
    Response(RawResponse, usize),
    Partial,
    Invalid,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response at the start of `buf`. `head_request`: the request was HEAD.
/// `closed`: the connection ended, so a close-delimited body is complete.
fn parse_response(buf: &[u8], head_request: bool, closed: bool) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 1 << 20 {
            Parsed::Invalid
        } else {
            Parsed::Partial
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Invalid;
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    if !version.starts_with("HTTP/1.") {
        return Parsed::Invalid;
    }
    let Some(status) = parts.next().and_then(|s| s.parse::<u16>().ok()) else {
        return Parsed::Invalid;
    };
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Parsed::Invalid;
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut at = end + 4;
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut resp = RawResponse {
        status,
        version,
        headers: headers.clone(),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Parsed::Response(resp, at);
    }
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked")) {
        loop {
            let Some(le) = find(&buf[at..], b"\r\n") else {
                return Parsed::Partial;
            };
            let line = String::from_utf8_lossy(&buf[at..at + le]).to_string();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                return Parsed::Invalid;
            };
            at += le + 2;
            if size == 0 {
                loop {
                    let Some(le) = find(&buf[at..], b"\r\n") else {
                        return Parsed::Partial;
                    };
                    let line = String::from_utf8_lossy(&buf[at..at + le]).to_string();
                    at += le + 2;
                    if line.is_empty() {
                        return Parsed::Response(resp, at);
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        resp.trailers
                            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return Parsed::Partial;
            }
            resp.body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Parsed::Invalid;
            }
            at += size + 2;
        }
    }
    if let Some(len) = get("content-length") {
        let Ok(len) = len.parse::<usize>() else {
            return Parsed::Invalid;
        };
        if buf.len() < at + len {
            return Parsed::Partial;
        }
        resp.body = buf[at..at + len].to_vec();
        return Parsed::Response(resp, at + len);
    }
    if closed {
        resp.body = buf[at..].to_vec();
        return Parsed::Response(resp, buf.len());
    }
    Parsed::Partial
}

/// Splits `buf` into responses; `methods` says which requests were HEAD, in order.
fn parse_all(buf: &[u8], methods: &[&str], closed: bool) -> (Vec<RawResponse>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    let mut finals = 0;
    loop {
        if at >= buf.len() {
            break;
        }
        let head = methods.get(finals).is_some_and(|m| *m == "HEAD");
        match parse_response(&buf[at..], head, closed) {
            Parsed::Response(r, n) => {
                if r.status >= 200 || r.status == 101 {
                    finals += 1;
                }
                at += n;
                out.push(r);
            }
            Parsed::Partial | Parsed::Invalid => break,
        }
    }
    (out, at)
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to drover");
        stream.set_nodelay(true).ok();
        Client {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads until `finals` final responses are in, the server closes, or `timeout`.
    /// `methods`: the request methods sent on this connection so far, in order.
    pub fn read(&mut self, methods: &[&str], finals: usize, timeout: Duration) -> Conversation {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut chunk = [0u8; 65536];
        loop {
            let (responses, used) = parse_all(&self.buf, methods, self.closed);
            let done = responses
                .iter()
                .filter(|r| r.status >= 200 || r.status == 101)
                .count()
                >= finals;
            let now = Instant::now();
            if done || self.closed || now >= deadline {
                return Conversation {
                    responses,
                    closed: self.closed,
                    leftover: self.buf[used..].to_vec(),
                    elapsed: start.elapsed(),
                };
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .ok();
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// Whether the server closed the connection within `timeout` (bytes that arrive are
    /// kept for `read`).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        while !self.closed && Instant::now() < deadline {
            self.stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .ok();
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => self.closed = true,
            }
        }
        self.closed
    }
}

/// Sends `bytes` on a new connection and reads `finals` responses (or until close or
/// `timeout`).
pub fn exchange(port: u16, bytes: &[u8], methods: &[&str], finals: usize) -> Conversation {
    let mut c = Client::connect(port);
    c.send(bytes).expect("send");
    c.read(methods, finals, Duration::from_secs(5))
}

/// The methods of the requests in a raw stream, in order (for HEAD handling).
pub fn methods_of(stream: &[u8]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for line in stream.split(|b| *b == b'\n') {
        for m in [
            "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ",
        ] {
            if line.starts_with(m.as_bytes()) {
                out.push(m.trim_end());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------

/// A request as the raw worker received it: the head's bytes and the body's bytes as
/// they came (chunk framing included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub conn: usize,
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
    pub fn target(&self) -> String {
        self.head_text()
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string()
    }
    pub fn method(&self) -> String {
        self.head_text()
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }
    /// Header fields in order, names lower-cased.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.head_text()
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// What the worker does after reading a request.
pub enum Reply {
    /// Write these bytes.
    Bytes(Vec<u8>),
    /// Write the first, wait, write the second.
    Split(Vec<u8>, Duration, Vec<u8>),
    /// Write these bytes and close the connection.
    ThenClose(Vec<u8>),
    /// Close without answering.
    Close,
}

type Script = dyn Fn(&Received) -> Reply + Send + Sync;

/// A worker on a raw socket: records every request (except `GET /health`) and answers
/// with `script`.
pub struct RawWorker {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub accepted: Arc<AtomicUsize>,
    /// Connections the peer (drover) has closed.
    pub closed_by_peer: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RawWorker {
    pub fn start(script: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> RawWorker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        {
            let (received, accepted, closed, stop) = (
                received.clone(),
                accepted.clone(),
                closed_by_peer.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { return };
                    let id = accepted.fetch_add(1, Ordering::SeqCst);
                    let (received, closed, script) =
                        (received.clone(), closed.clone(), script.clone());
                    std::thread::spawn(move || serve(conn, id, &received, &closed, &*script));
                }
            });
        }
        RawWorker {
            port,
            received,
            accepted,
            closed_by_peer,
            stop,
        }
    }

    /// Requests received so far (health checks left out).
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.received.lock().unwrap().clear();
    }
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request (head and body) from the connection's buffer and socket.
fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(e) = find(buf, b"\r\n\r\n") {
            break e + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head: Vec<u8> = buf.drain(..head_end).collect();
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let field = |name: &str| {
        text.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let mut fill = |buf: &mut Vec<u8>, want: usize| -> bool {
        while buf.len() < want {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    let body = if field("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        let mut at = 0;
        loop {
            let line_end = loop {
                if let Some(e) = find(&buf[at..], b"\r\n") {
                    break at + e;
                }
                let want = buf.len() + 1;
                if !fill(buf, want) {
                    return None;
                }
            };
            let line = String::from_utf8_lossy(&buf[at..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailer section up to the empty line.
                loop {
                    let e = loop {
                        if let Some(e) = find(&buf[at..], b"\r\n") {
                            break at + e;
                        }
                        let want = buf.len() + 1;
                        if !fill(buf, want) {
                            return None;
                        }
                    };
                    let empty = e == at;
                    at = e + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            if !fill(buf, at + size + 2) {
                return None;
            }
            at += size + 2;
        }
        buf.drain(..at).collect()
    } else if let Some(len) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if !fill(buf, len) {
            return None;
        }
        buf.drain(..len).collect()
    } else {
        Vec::new()
    };
    Some((head, body))
}

fn serve(
    mut conn: TcpStream,
    id: usize,
    received: &Mutex<Vec<Received>>,
    closed: &AtomicUsize,
    script: &Script,
) {
    let mut buf = Vec::new();
    loop {
        let Some((head, body)) = read_request(&mut conn, &mut buf) else {
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let r = Received {
            conn: id,
            head,
            body,
        };
        if r.head.starts_with(b"GET /health ") {
            if conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            continue;
        }
        received.lock().unwrap().push(r.clone());
        match script(&r) {
            Reply::Bytes(b) => {
                if conn.write_all(&b).is_err() {
                    return;
                }
            }
            Reply::Split(a, pause, b) => {
                if conn.write_all(&a).is_err() {
                    return;
                }
                std::thread::sleep(pause);
                if conn.write_all(&b).is_err() {
                    return;
                }
            }
            Reply::ThenClose(b) => {
                let _ = conn.write_all(&b);
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
            Reply::Close => {
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// A plain 200 whose body names the request target (so clients see which request an
/// answer belongs to).
pub fn echo_target(r: &Received) -> Reply {
    let body = r.target();
    let len = body.len();
    let body = if r.method() == "HEAD" {
        String::new()
    } else {
        body
    };
    Reply::Bytes(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n{body}").into_bytes())
}
