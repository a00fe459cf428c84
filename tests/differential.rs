// A test may unwrap and sleep; src/ may not (Cargo.toml workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
//! Differential tests of drover's two HTTP/1 carriers.
//!
//! The same raw byte streams go to drover with `proxy.fast_path: true` (drover's engine
//! serves what it can and hands the rest to Pingora) and with `false` (Pingora serves
//! everything), each in front of its own raw-socket worker that records exactly what it
//! receives. The test asserts that both reach the worker with the same requests and
//! send the client the same number, order, status and bodies of responses.
//!
//! Requests are compared in a canonical form: method, target, field names lower-cased
//! and sorted (the carriers write fields in different orders and cases), chunked bodies
//! decoded (Pingora re-frames chunks), the per-request random `X-Request-Id` and
//! `traceparent` values left out, and the fields of the drover-to-worker hop itself
//! (`Content-Length`, `Transfer-Encoding`, `Connection`) left to each carrier.
//!
//! Two corpora: at least 200 request streams (desync payloads: CL.TE, TE.CL, TE.TE,
//! CL.0 and obfuscated framing fields; pipelining; odd targets, Host fields, versions,
//! methods and field syntax; hop-by-hop nominations; oversized and trickled heads), and
//! at least 50 worker responses (every framing, interim responses, malformed heads).
//!
//! With `DROVER_DIFF_NGINX=1` and nginx installed, the same corpora also run against
//! nginx; differences are written to `target/differential-nginx.md`, not asserted.

mod common;
#[path = "support/raw.rs"]
mod raw;

use common::Drover;
use raw::{Client, RawWorker, Received, Reply};
use std::time::Duration;

/// One stream of the corpus: raw bytes, sent in pieces with pauses between them.
#[derive(Clone)]
struct Stream {
    name: String,
    pieces: Vec<Vec<u8>>,
}

impl Stream {
    fn one(name: impl Into<String>, bytes: impl AsRef<[u8]>) -> Stream {
        Stream {
            name: name.into(),
            pieces: vec![bytes.as_ref().to_vec()],
        }
    }
    fn trickled(name: impl Into<String>, pieces: Vec<Vec<u8>>) -> Stream {
        Stream {
            name: name.into(),
            pieces,
        }
    }
    fn all(&self) -> Vec<u8> {
        self.pieces.concat()
    }
}

const GET_NEXT: &str = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

fn request_corpus() -> Vec<Stream> {
    let mut c = Vec::new();
    let mut add = |name: String, bytes: String| c.push(Stream::one(name, bytes));

    // Framing fields of a POST, each followed by a pipelined GET (where desync shows).
    let framings: Vec<(&str, String)> = vec![
        ("cl", "Content-Length: 5\r\n\r\nhello".into()),
        ("cl-zero", "Content-Length: 0\r\n\r\n".into()),
        ("cl-leading-zero", "Content-Length: 005\r\n\r\nhello".into()),
        ("cl-space-after", "Content-Length: 5 \r\n\r\nhello".into()),
        ("cl-tab", "Content-Length:\t5\r\n\r\nhello".into()),
        ("cl-plus", "Content-Length: +5\r\n\r\nhello".into()),
        ("cl-minus", "Content-Length: -5\r\n\r\nhello".into()),
        ("cl-hex", "Content-Length: 0x5\r\n\r\nhello".into()),
        ("cl-list-same", "Content-Length: 5, 5\r\n\r\nhello".into()),
        ("cl-list-diff", "Content-Length: 5, 6\r\n\r\nhello".into()),
        ("cl-dup-same", "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello".into()),
        ("cl-dup-diff", "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello".into()),
        ("cl-huge", "Content-Length: 99999999999999999999\r\n\r\nhello".into()),
        ("cl-space-before-colon", "Content-Length : 5\r\n\r\nhello".into()),
        ("cl-underscore", "Content_Length: 5\r\n\r\nhello".into()),
        ("cl-short-body", "Content-Length: 10\r\n\r\nhello".into()),
        ("cl-long-body", "Content-Length: 3\r\n\r\nhello".into()),
        ("te", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-upper", "Transfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-xchunked", "Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-quoted", "Transfer-Encoding: \"chunked\"\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-space-before-colon", "Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-tab", "Transfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-dup", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-dup-other", "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-identity-chunked", "Transfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-chunked-identity", "Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-gzip-chunked", "Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-param", "Transfer-Encoding: chunked;q=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-obs-fold", "Transfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-underscore", "Transfer_Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-empty", "Transfer-Encoding:\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("te-nul", "Transfer-Encoding: chu\0nked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("cl-te", "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG".into()),
        ("te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n".into()),
        ("chunk-ext", "Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n".into()),
        ("chunk-ext-quoted", "Transfer-Encoding: chunked\r\n\r\n5;a=\"b;c\"\r\nhello\r\n0\r\n\r\n".into()),
        ("chunk-upper-hex", "Transfer-Encoding: chunked\r\n\r\nA\r\nhellohello\r\n0\r\n\r\n".into()),
        ("chunk-leading-zeros", "Transfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0000\r\n\r\n".into()),
        ("chunk-space-after-size", "Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n".into()),
        ("chunk-bare-lf", "Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n".into()),
        ("chunk-no-crlf-after-data", "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n".into()),
        ("chunk-empty-size", "Transfer-Encoding: chunked\r\n\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("chunk-overlong-size", "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n".into()),
        ("chunk-negative", "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n".into()),
        ("chunk-0x", "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".into()),
        ("chunk-trailer", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n".into()),
        ("chunk-trailer-internal", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Drover-Session: x\r\n\r\n".into()),
        ("chunk-unterminated", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".into()),
        ("chunk-many", format!("Transfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n", "1\r\na\r\n".repeat(50))),
    ];
    for (name, rest) in &framings {
        add(
            format!("post-{name}"),
            format!("POST /f HTTP/1.1\r\nHost: a\r\n{rest}"),
        );
        add(
            format!("post-{name}+get"),
            format!("POST /f HTTP/1.1\r\nHost: a\r\n{rest}{GET_NEXT}"),
        );
    }
    // CL.0: a bodyless method with a body.
    for method in ["GET", "HEAD", "OPTIONS", "DELETE"] {
        add(
            format!("cl0-{method}"),
            format!("{method} /z HTTP/1.1\r\nHost: a\r\nContent-Length: 34\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        );
        add(
            format!("te0-{method}"),
            format!("{method} /z HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{GET_NEXT}"),
        );
    }

    // Pipelining.
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: a\r\n\r\n");
    let post = |p: &str| format!("POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    let chunked = |p: &str| {
        format!("POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    };
    add("pipe-get-get".into(), format!("{}{}", get("/1"), get("/2")));
    add(
        "pipe-get-post-get".into(),
        format!("{}{}{}", get("/1"), post("/2"), get("/3")),
    );
    add(
        "pipe-post-post".into(),
        format!("{}{}", post("/1"), post("/2")),
    );
    add(
        "pipe-chunked-get".into(),
        format!("{}{}", chunked("/1"), get("/2")),
    );
    add(
        "pipe-get-chunked-get".into(),
        format!("{}{}{}", get("/1"), chunked("/2"), get("/3")),
    );
    add(
        "pipe-head-get".into(),
        format!("HEAD /1 HTTP/1.1\r\nHost: a\r\n\r\n{}", get("/2")),
    );
    add(
        "pipe-close-then-get".into(),
        format!(
            "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n{}",
            get("/2")
        ),
    );
    add(
        "pipe-10-gets".into(),
        (0..10).map(|i| get(&format!("/{i}"))).collect(),
    );
    add(
        "pipe-bad-then-get".into(),
        format!("GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n{}", get("/2")),
    );
    add(
        "pipe-get-bad".into(),
        format!("{}GET / HTTP/1.1\r\n\r\n", get("/1")),
    );
    add(
        "pipe-http10-get".into(),
        format!("GET /1 HTTP/1.0\r\n\r\n{}", get("/2")),
    );
    add(
        "pipe-http10-keepalive-get".into(),
        format!(
            "GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{}",
            get("/2")
        ),
    );
    add(
        "pipe-expect-get".into(),
        format!(
            "POST /1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc{}",
            get("/2")
        ),
    );
    add(
        "pipe-leading-crlf".into(),
        format!("\r\n{}\r\n{}", get("/1"), get("/2")),
    );

    // Request targets.
    for t in [
        "/",
        "/a?b=c",
        "/a%20b",
        "/%",
        "/%zz",
        "/a\"b",
        "/a<b",
        "/a`b",
        "/a{b}",
        "/a|b",
        "/a\\b",
        "/a^b",
        "/a#frag",
        "/é",
        "/\u{80}",
        "//double",
        "/..%2f..",
        "/./a/../b",
        "*",
        "a",
        "http://a/x",
        "http://a:80/x?y",
        "https://a/x",
        "http://u:p@a/",
        "HTTP://A/x",
        "ftp://a/x",
        "/a?x\"y",
    ] {
        add(
            format!("target {t}"),
            format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n"),
        );
    }
    add(
        "target OPTIONS *".into(),
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".into(),
    );
    add(
        "target long".into(),
        format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(8000)),
    );
    add(
        "target tab".into(),
        "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n".into(),
    );

    // Host fields.
    for (name, h) in [
        ("missing", ""),
        ("empty", "Host:\r\n"),
        ("port", "Host: a:8080\r\n"),
        ("ipv6", "Host: [::1]:80\r\n"),
        ("two-same", "Host: a\r\nHost: a\r\n"),
        ("two-diff", "Host: a\r\nHost: b\r\n"),
        ("userinfo", "Host: u:p@a\r\n"),
        ("space", "Host: a b\r\n"),
        ("underscore", "Host: a_b\r\n"),
        ("bad-port", "Host: a:xx\r\n"),
        ("big-port", "Host: a:99999\r\n"),
        ("upper-name", "HOST: a\r\n"),
        ("comma", "Host: a, b\r\n"),
        ("slash", "Host: a/b\r\n"),
        ("trailing-dot", "Host: a.\r\n"),
    ] {
        add(
            format!("host {name} 1.1"),
            format!("GET /h HTTP/1.1\r\n{h}\r\n"),
        );
        add(
            format!("host {name} 1.0"),
            format!("GET /h HTTP/1.0\r\n{h}\r\n"),
        );
    }
    add(
        "host absolute-form mismatch".into(),
        "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n".into(),
    );

    // Hop-by-hop fields and nominations.
    for (name, h) in [
        ("close", "Connection: close\r\n"),
        ("keep-alive", "Connection: keep-alive\r\n"),
        ("x-foo", "Connection: X-Foo\r\nX-Foo: 1\r\n"),
        (
            "x-real-ip",
            "Connection: X-Real-IP\r\nX-Real-IP: 6.6.6.6\r\n",
        ),
        ("host", "Connection: Host\r\n"),
        ("x-forwarded-for", "Connection: X-Forwarded-For\r\n"),
        (
            "content-length",
            "Connection: Content-Length\r\nContent-Length: 0\r\n",
        ),
        ("cookie", "Connection: Cookie\r\nCookie: a=1\r\n"),
        (
            "authorization",
            "Connection: Authorization\r\nAuthorization: x\r\n",
        ),
        ("pseudo", "Connection: :authority\r\n"),
        ("quoted", "Connection: \"x\"\r\n"),
        (
            "many",
            "Connection: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t\r\n",
        ),
        ("upgrade-only", "Connection: upgrade\r\n"),
        ("upgrade-no-conn", "Upgrade: websocket\r\n"),
        ("keep-alive-field", "Keep-Alive: timeout=5\r\n"),
        ("te-trailers", "TE: trailers\r\n"),
        ("proxy-connection", "Proxy-Connection: keep-alive\r\n"),
        ("proxy-authorization", "Proxy-Authorization: Basic eA==\r\n"),
        ("http2-settings", "HTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
        ("trailer", "Trailer: X-T\r\n"),
        ("internal", "X-Drover-Session: {\"admin\":true}\r\n"),
        (
            "internal-underscore",
            "X_Drover_Session: {\"admin\":true}\r\n",
        ),
        ("xff-underscore", "X_Forwarded_For: 6.6.6.6\r\n"),
        ("xff", "X-Forwarded-For: 6.6.6.6\r\n"),
        ("forwarded", "Forwarded: for=6.6.6.6\r\n"),
        ("request-id", "X-Request-Id: mine\r\n"),
        (
            "two-connection",
            "Connection: keep-alive\r\nConnection: X-Foo\r\nX-Foo: 1\r\n",
        ),
    ] {
        add(
            format!("hop {name}"),
            format!("GET /hop HTTP/1.1\r\nHost: a\r\n{h}\r\n"),
        );
    }

    // Versions and request lines.
    for (name, line) in [
        ("http10", "GET /v HTTP/1.0"),
        ("http09", "GET /v"),
        ("http12", "GET /v HTTP/1.2"),
        ("http20", "GET /v HTTP/2.0"),
        ("http11-lower", "GET /v http/1.1"),
        ("trailing-space", "GET /v HTTP/1.1 "),
        ("double-space", "GET  /v HTTP/1.1"),
        ("tab-separated", "GET\t/v\tHTTP/1.1"),
        ("lower-method", "get /v HTTP/1.1"),
        ("odd-method", "G@T /v HTTP/1.1"),
        ("long-method", &format!("{} /v HTTP/1.1", "X".repeat(100))),
        ("connect", "CONNECT a:443 HTTP/1.1"),
        ("trace", "TRACE /v HTTP/1.1"),
        ("options", "OPTIONS /v HTTP/1.1"),
        ("delete", "DELETE /v HTTP/1.1"),
        ("patch-no-body", "PATCH /v HTTP/1.1"),
        ("custom-method", "PURGE /v HTTP/1.1"),
    ] {
        add(format!("line {name}"), format!("{line}\r\nHost: a\r\n\r\n"));
    }
    add(
        "http10 keep-alive".into(),
        "GET /v HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".into(),
    );
    add(
        "http10 post cl".into(),
        "POST /v HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc".into(),
    );
    add(
        "http10 post te".into(),
        "POST /v HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
    );

    // Field syntax.
    for (name, h) in [
        ("no-colon", "X-A\r\n"),
        ("empty-name", ": v\r\n"),
        ("space-in-name", "X A: v\r\n"),
        ("obs-fold", "X-A: a\r\n b\r\n"),
        ("nul-value", "X-A: a\0b\r\n"),
        ("del-value", "X-A: a\x7fb\r\n"),
        ("cr-value", "X-A: a\rb\r\n"),
        ("obs-text-value", "X-A: caf\u{e9}\r\n"),
        ("empty-value", "X-A:\r\n"),
        ("long-value", &format!("X-A: {}\r\n", "v".repeat(20_000))),
        (
            "many-fields",
            &(0..120)
                .map(|i| format!("X-{i}: v\r\n"))
                .collect::<String>(),
        ),
        ("expect-continue", "Expect: 100-continue\r\n"),
        ("expect-other", "Expect: something\r\n"),
        ("dup-custom", "X-A: 1\r\nX-A: 2\r\n"),
    ] {
        add(
            format!("field {name}"),
            format!("GET /fld HTTP/1.1\r\nHost: a\r\n{h}\r\n"),
        );
    }
    add(
        "lf-only lines".into(),
        "GET /lf HTTP/1.1\nHost: a\n\n".into(),
    );
    add(
        "mixed line endings".into(),
        "GET /lf HTTP/1.1\r\nHost: a\n\r\n".into(),
    );
    add(
        "oversized head".into(),
        format!(
            "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(40_000)
        ),
    );

    // Trickled heads and bodies (sent in pieces with pauses).
    let trickles: Vec<(&str, Vec<&str>)> = vec![
        ("head split", vec!["GET /t HTTP/1.1\r\nHo", "st: a\r\n\r\n"]),
        (
            "head split at crlf",
            vec!["GET /t HTTP/1.1\r\nHost: a\r\n", "\r\n"],
        ),
        (
            "body split",
            vec![
                "POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe",
                "llo",
            ],
        ),
        (
            "chunk split",
            vec![
                "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe",
                "llo\r\n0\r\n\r\n",
            ],
        ),
        (
            "pipeline split",
            vec![
                "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTT",
                "P/1.1\r\nHost: a\r\n\r\n",
            ],
        ),
        (
            "body then get",
            vec![
                "POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                GET_NEXT,
            ],
        ),
    ];
    for (name, pieces) in trickles {
        c.push(Stream::trickled(
            format!("trickle {name}"),
            pieces.iter().map(|p| p.as_bytes().to_vec()).collect(),
        ));
    }
    c
}

/// Raw worker responses, served for `GET /r/<index>`.
fn response_corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("cl", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("cl-zero", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
        ("chunked-ext", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\n\r\n".to_vec()),
        ("chunked-trailer", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n".to_vec()),
        ("chunked-internal-trailer", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Drover-Session-Set: {}\r\n\r\n".to_vec()),
        ("chunked-upper", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
        ("chunked-many", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), b"1\r\nx\r\n".repeat(100), b"0\r\n\r\n".to_vec()].concat()),
        ("gzip-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
        ("cl-te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
        ("te-identity", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\nuntil close".to_vec()),
        ("cl-dup-same", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("cl-dup-diff", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec()),
        ("cl-plus", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok".to_vec()),
        ("cl-space", b"HTTP/1.1 200 OK\r\nContent-Length:  2 \r\n\r\nok".to_vec()),
        ("cl-bad", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok".to_vec()),
        ("cl-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok".to_vec()),
        ("no-length-close", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close".to_vec()),
        ("http10-cl", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("http10-chunked", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
        ("http10-keepalive", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("interim-100", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("interim-103", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("interim-two", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("204-with-cl", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("204-plain", b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        ("304-with-cl", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n".to_vec()),
        ("201-created", b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("404", b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno".to_vec()),
        ("500", b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nxx".to_vec()),
        ("503-retry-after", b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\nxx".to_vec()),
        ("no-reason", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("odd-reason", b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("status-599", b"HTTP/1.1 599 Odd\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("status-600", b"HTTP/1.1 600 Bad\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("status-two-digit", b"HTTP/1.1 20 Bad\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("http2-line", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("garbage", b"hello there\r\n\r\n".to_vec()),
        ("lf-only", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok".to_vec()),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("space-before-colon", b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("nominated", b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("hop-fields", b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nTrailer: X-T\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("internal", b"HTTP/1.1 200 OK\r\nX-Drover-Session-Set: {}\r\nX-Drover-Metric: a=1\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("internal-underscore", b"HTTP/1.1 200 OK\r\nX_Drover_Secret: s\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("set-cookies", b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("body-short-then-close", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nok".to_vec()),
        ("body-extra", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA".to_vec()),
        ("chunk-bad-size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n".to_vec()),
        ("chunk-bare-lf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\n0\n\n".to_vec()),
        ("chunk-empty-size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
        ("chunk-missing-crlf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n".to_vec()),
        ("large-body", [b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec(), vec![b'z'; 100_000]].concat()),
        ("large-chunked", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n186a0\r\n".to_vec(), vec![b'z'; 100_000], b"\r\n0\r\n\r\n".to_vec()].concat()),
        ("many-fields", [b"HTTP/1.1 200 OK\r\n".to_vec(), (0..100).map(|i| format!("X-{i}: v\r\n")).collect::<String>().into_bytes(), b"Content-Length: 2\r\n\r\nok".to_vec()].concat()),
        ("big-field", [b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec(), vec![b'b'; 30_000], b"\r\nContent-Length: 2\r\n\r\nok".to_vec()].concat()),
        ("huge-field", [b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec(), vec![b'b'; 200_000], b"\r\nContent-Length: 2\r\n\r\nok".to_vec()].concat()),
        ("101-unasked", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n".to_vec()),
        ("close-no-answer", Vec::new()),
    ]
}

/// A request as a worker received it, in the form the carriers must agree on.
fn canonical(r: &Received) -> String {
    let text = r.head_text();
    let line = text.split("\r\n").next().unwrap_or("").to_string();
    let mut fields: Vec<(String, String)> = r
        .headers()
        .into_iter()
        .filter(|(k, _)| k != "x-request-id" && k != "traceparent")
        .collect();
    fields.sort();
    let chunked = fields
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        decode_chunked(&r.body)
    } else {
        r.body.clone()
    };
    // Framing and connection-management fields are each carrier's own business with
    // the worker (Pingora re-frames bodies; it closes upstream connections after HEAD).
    let fields: Vec<String> = fields
        .into_iter()
        .filter(|(k, _)| k != "transfer-encoding" && k != "content-length" && k != "connection")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!(
        "{line} | {} | body {:?}",
        fields.join("; "),
        String::from_utf8_lossy(&body)
    )
}

fn decode_chunked(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(e) = raw[at..].windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&raw[at..at + e]).to_string();
        let Ok(n) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        at += e + 2;
        if n == 0 || at + n > raw.len() {
            break;
        }
        out.extend_from_slice(&raw[at..at + n]);
        at += n + 2;
    }
    out
}

/// What one stream produced on one carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// Final responses the client got: status and body.
    responses: Vec<(u16, String)>,
    /// Requests the worker got, canonical.
    forwarded: Vec<String>,
}

fn body_summary(b: &[u8]) -> String {
    if b.len() > 64 {
        format!("<{} bytes>", b.len())
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

/// Sends a stream on a new connection and collects what comes back until the connection
/// closes or stays quiet.
fn run_stream(port: u16, worker: &RawWorker, s: &Stream) -> Outcome {
    worker.clear();
    let mut c = Client::connect(port);
    let bytes = s.all();
    let methods = raw::methods_of(&bytes);
    for (i, piece) in s.pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        if c.send(piece).is_err() {
            break;
        }
    }
    // Until closed, or no new response within the quiet period.
    let mut conv = c.read(&methods, usize::MAX, Duration::from_millis(400));
    loop {
        let before = conv.responses.len();
        if conv.closed {
            break;
        }
        conv = c.read(&methods, before + 1, Duration::from_millis(250));
        if conv.responses.len() == before {
            break;
        }
    }
    // Let the worker's log settle (a request may still be on its way).
    std::thread::sleep(Duration::from_millis(20));
    Outcome {
        responses: conv
            .finals()
            .iter()
            .map(|r| (r.status, body_summary(&r.body)))
            .collect(),
        forwarded: worker.requests().iter().map(canonical).collect(),
    }
}

fn request_worker() -> RawWorker {
    RawWorker::start(|r| {
        if let Some(n) = r
            .target()
            .strip_prefix("/r/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            return match response_corpus().get(n) {
                Some((_, bytes)) if bytes.is_empty() => Reply::Close,
                Some((_, bytes)) => Reply::ThenClose(bytes.clone()),
                None => raw::echo_target(r),
            };
        }
        raw::echo_target(r)
    })
}

fn drover_for(worker: &RawWorker, fast: bool) -> Drover {
    Drover::start(
        0,
        &format!(
            "threads: 1\nproxy:\n  fast_path: {fast}\nupstreams:\n  - address: 127.0.0.1:{}\nlimits:\n  client_header_timeout: 2s\ncircuit_breaker:\n  enabled: false\n",
            worker.port
        ),
    )
}

/// Runs every stream on both carriers (in parallel, one drover each) and returns the
/// streams whose outcomes differ.
fn differences(streams: &[Stream]) -> Vec<(String, Outcome, Outcome)> {
    let run = |fast: bool| {
        let w = request_worker();
        let d = drover_for(&w, fast);
        let out: Vec<Outcome> = streams.iter().map(|s| run_stream(d.port, &w, s)).collect();
        out
    };
    let (fast, pingora) = std::thread::scope(|s| {
        let f = s.spawn(|| run(true));
        let p = s.spawn(|| run(false));
        (f.join().unwrap(), p.join().unwrap())
    });
    streams
        .iter()
        .zip(fast.into_iter().zip(pingora))
        .filter(|(_, (f, p))| f != p)
        .map(|(s, (f, p))| (s.name.clone(), f, p))
        .collect()
}

/// Streams on which the carriers are known to differ, and why that is acceptable. The
/// tests assert that exactly these differ, so the list cannot hide a new difference.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "response chunk-empty-size",
        "Pingora's chunked decoder (httparse::parse_chunk_size) reads an empty size line \
         as the last chunk and sends the client a well-formed empty body; drover's engine, \
         which passes chunks through as bytes, refuses the malformed body and closes. \
         Neither passes malformed framing to the client.",
    ),
    (
        "response chunk-bad-size to HTTP/1.0 keep-alive",
        MALFORMED_CHUNKS_TO_HTTP10,
    ),
    (
        "response chunk-bare-lf to HTTP/1.0 keep-alive",
        MALFORMED_CHUNKS_TO_HTTP10,
    ),
    (
        "response chunk-empty-size to HTTP/1.0 keep-alive",
        MALFORMED_CHUNKS_TO_HTTP10,
    ),
    (
        "response chunk-missing-crlf to HTTP/1.0 keep-alive",
        MALFORMED_CHUNKS_TO_HTTP10,
    ),
];

const MALFORMED_CHUNKS_TO_HTTP10: &str = "An HTTP/1.0 client gets a chunked body without \
     framing, ended by closing the connection, so it cannot tell a cut body from a whole \
     one. Pingora has sent the head when it finds the chunks malformed and closes: the \
     client sees a complete, empty 200. drover's engine checks the first chunks before \
     sending the head and closes without an answer: the client sees an error. drover's \
     is the safer reading; Pingora's carrier cannot be changed here.";

fn unexpected(diffs: Vec<(String, Outcome, Outcome)>) -> Vec<(String, Outcome, Outcome)> {
    diffs
        .into_iter()
        .filter(|(name, _, _)| !KNOWN_DIFFERENCES.iter().any(|(k, _)| k == name))
        .collect()
}

fn report(diffs: &[(String, Outcome, Outcome)]) -> String {
    diffs
        .iter()
        .map(|(name, f, p)| format!("\n== {name}\n  fast path: {f:?}\n  pingora:   {p:?}"))
        .collect()
}

#[test]
fn the_request_corpus_reaches_workers_and_clients_the_same_on_both_carriers() {
    let corpus = request_corpus();
    assert!(corpus.len() >= 200, "corpus has {} streams", corpus.len());
    let diffs = unexpected(differences(&corpus));
    assert!(
        diffs.is_empty(),
        "{} of {} streams differ between the carriers:{}",
        diffs.len(),
        corpus.len(),
        report(&diffs)
    );
}

#[test]
fn the_response_corpus_reaches_clients_the_same_on_both_carriers() {
    let responses = response_corpus();
    assert!(responses.len() >= 50, "{} responses", responses.len());
    let mut streams = Vec::new();
    for (i, (name, _)) in responses.iter().enumerate() {
        streams.push(Stream::one(
            format!("response {name}"),
            format!("GET /r/{i} HTTP/1.1\r\nHost: a\r\n\r\n"),
        ));
        streams.push(Stream::one(
            format!("response {name} to HEAD"),
            format!("HEAD /r/{i} HTTP/1.1\r\nHost: a\r\n\r\n"),
        ));
        streams.push(Stream::one(
            format!("response {name} to HTTP/1.0 keep-alive"),
            format!("GET /r/{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ));
    }
    let all = differences(&streams);
    for (known, _) in KNOWN_DIFFERENCES {
        assert!(
            all.iter().any(|(n, _, _)| n == known),
            "`{known}` no longer differs: take it off KNOWN_DIFFERENCES"
        );
    }
    let diffs = unexpected(all);
    assert!(
        diffs.is_empty(),
        "{} of {} responses differ between the carriers:{}",
        diffs.len(),
        streams.len(),
        report(&diffs)
    );
}

/// nginx in front of a raw worker, configured like the load harness's nginx
/// (`benches/load/templates/nginx.conf.tmpl`): forwarding fields, keep-alive upstream.
struct Nginx {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(worker: &RawWorker) -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().ok()?;
        let port = common::free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n\
               fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
               upstream w {{ server 127.0.0.1:{}; keepalive 16; }}\n\
               server {{ listen 127.0.0.1:{port}; client_header_timeout 2s;\n\
                 location / {{ proxy_pass http://w; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $remote_addr;\n\
                   proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host;\n\
                   proxy_set_header X-Real-IP $remote_addr; proxy_next_upstream off; }} }} }}\n",
            worker.port
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).ok()?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        common::wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .then_some(Nginx {
            port,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a pass/fail test: with `DROVER_DIFF_NGINX=1` and nginx installed, runs both
/// corpora through drover's default carrier and through nginx and writes where they
/// differ to `target/differential-nginx.md` (summarised in docs/TESTING.md).
#[test]
fn record_differences_from_nginx() {
    if std::env::var("DROVER_DIFF_NGINX").as_deref() != Ok("1") {
        return;
    }
    let mut streams = request_corpus();
    for (i, (name, _)) in response_corpus().iter().enumerate() {
        streams.push(Stream::one(
            format!("response {name}"),
            format!("GET /r/{i} HTTP/1.1\r\nHost: a\r\n\r\n"),
        ));
    }
    let (ours, theirs) = std::thread::scope(|s| {
        let d = s.spawn(|| {
            let w = request_worker();
            let d = drover_for(&w, true);
            streams
                .iter()
                .map(|st| run_stream(d.port, &w, st))
                .collect::<Vec<_>>()
        });
        let n = s.spawn(|| {
            let w = request_worker();
            let n = Nginx::start(&w)?;
            Some(
                streams
                    .iter()
                    .map(|st| run_stream(n.port, &w, st))
                    .collect::<Vec<_>>(),
            )
        });
        (d.join().unwrap(), n.join().unwrap())
    });
    let Some(theirs) = theirs else {
        eprintln!("nginx not found: nothing recorded");
        return;
    };
    let mut out = String::from(
        "# drover (default carrier) vs nginx on the differential corpora\n\n\
         | stream | drover: responses | nginx: responses | same at the worker |\n| --- | --- | --- | --- |\n",
    );
    let mut count = 0;
    for (s, (a, b)) in streams.iter().zip(ours.iter().zip(theirs.iter())) {
        let statuses = |o: &Outcome| {
            o.responses
                .iter()
                .map(|(st, _)| st.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        if statuses(a) != statuses(b) || a.forwarded.len() != b.forwarded.len() {
            count += 1;
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                s.name.replace('|', "\\|"),
                statuses(a),
                statuses(b),
                if a.forwarded.len() == b.forwarded.len() {
                    "yes"
                } else {
                    "no"
                }
            ));
        }
    }
    out.push_str(&format!(
        "\n{count} of {} streams differ (status sequence or number of requests forwarded).\n",
        streams.len()
    ));
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/differential-nginx.md");
    std::fs::write(&path, out).unwrap();
    eprintln!("wrote {}", path.display());
}
