//! drover's own HTTP/1 engine: the front door of every HTTP/1 connection, and the
//! carrier for the common request (HTTP/1.1 or 1.0, origin form, with or without a
//! body, no upgrade).
//!
//! Why it exists: Pingora's generic proxy path costs ~60k instructions and ~75
//! allocations per request on top of drover's own work (docs/PERFORMANCE.md). This
//! engine serves the same request with the same pipeline (`proxy::pipeline`) and
//! forwards the worker's response head and body as bytes.
//!
//! Every request head is read, bounded and judged here, whichever carrier then serves it
//! (`limits.client_header_timeout`, `limits.max_header_bytes`, `limits.max_headers`,
//! `proxy::http::request`), so both carriers accept exactly the same requests. A request
//! this engine does not serve (an upgrade, `Expect: 100-continue`, another target form,
//! a request to an h2c or TLS backend, or every request with `proxy.fast_path: false`)
//! is handed to Pingora's proxy through
//! [`client::ClientStream`], which gives Pingora exactly that request's bytes; the
//! connection comes back afterwards with any pipelined request still in its buffer.

mod body;
mod client;
pub mod codec;
mod deadline;
mod pool;
mod recycle;

use crate::proxy::pingora_carrier::PingoraCarrier;
use crate::proxy::pipeline::{
    Exchange, LimitKind, LocalResponse, Pipeline, ResponseFieldNames, Target, WorkerResponse,
};
use crate::wire::chunked::ChunkedScanner;
use crate::wire::request::{Rejection, TargetForm};
use crate::wire::response::ResponseFraming;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use client::ClientStream;
use codec::{FieldAt, Head, HeadLimits, HeadParse, Persist, ResponseError};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::RequestHeader;
use pingora_proxy::HttpProxy;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Body bytes up to this size go out in the same write as the response head.
const COALESCE: usize = 16 * 1024;
/// How long an idle connection keeps its buffers before giving them back.
const IDLE_BUFFERS_KEPT: Duration = Duration::from_secs(1);

/// The data plane's `ServerApp`: drover's engine, with Pingora's proxy behind it.
pub struct H1App {
    pipeline: Pipeline,
    pingora: Arc<HttpProxy<PingoraCarrier>>,
    /// `drover_http1_engine_requests_total{engine="fast"}` and `{engine="pingora"}`:
    /// how much of the traffic each carrier serves.
    served_fast: prometheus::IntCounter,
    served_by_pingora: prometheus::IntCounter,
}

impl H1App {
    /// The HTTP/1 `ServerApp`; registers the per-carrier request counters in `pipeline`'s registry.
    /// `pingora` serves what drover's engine hands off.
    pub fn new(pipeline: Pipeline, pingora: HttpProxy<PingoraCarrier>) -> Self {
        let vec = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                crate::metric_names::HTTP1_ENGINE_REQUESTS_TOTAL,
                "HTTP/1 requests by the carrier that served them: drover's engine (fast), or \
                 Pingora's proxy (upgrades, Expect: 100-continue, absolute-form targets, h2c or TLS backends, proxy.fast_path off)",
            ),
            &["engine"],
        )
        .expect("valid metric");
        let _ = pipeline
            .shared()
            .metrics
            .registry
            .register(Box::new(vec.clone()));
        H1App {
            served_fast: vec.with_label_values(&["fast"]),
            served_by_pingora: vec.with_label_values(&["pingora"]),
            pipeline,
            pingora: Arc::new(pingora),
        }
    }

    /// Serves one request through Pingora's proxy and returns the connection when it can
    /// carry another request. Pingora reads exactly this request's bytes (see
    /// `ClientStream::allow_request`).
    async fn delegate(
        &self,
        mut io: Box<ClientStream>,
        head: &Head,
        keepalive: Duration,
        shutdown: &ShutdownWatch,
    ) -> Option<Box<ClientStream>> {
        self.served_by_pingora.inc();
        io.allow_request(head.len, head.facts.framing, head.facts.upgrade);
        let stream: Stream = io;
        let mut session = pingora_core::protocols::http::ServerSession::new_http1(stream);
        // After an upgrade request the connection is the new protocol's or closes.
        let keep = !*shutdown.borrow() && !head.facts.upgrade;
        session.set_keepalive(keep.then_some(keepalive.as_secs().max(1)));
        let reused = self.pingora.process_new_http(session, shutdown).await?;
        let (stream, _settings) = reused.consume();
        let mut io = stream.into_any().downcast::<ClientStream>().ok()?;
        if !io.request_consumed() {
            return None;
        }
        io.reclaim();
        Some(io)
    }
}

impl H1App {
    /// Serves one client connection; `Some`: Pingora gave back a connection that can
    /// carry another request (served by calling this again). drover's own accept loop
    /// (`proxy::listen`) calls it directly; Pingora's through [`ServerApp::process_new`].
    pub async fn serve_connection(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2, negotiated by ALPN, is Pingora's.
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return self.pingora.process_new(stream, shutdown).await;
        }
        let https = stream.get_ssl_digest().is_some();
        let (send_timeout, h2c, first_byte) = {
            let cfg = self.pipeline.shared().config.load();
            (
                cfg.limits.client_send_timeout,
                cfg.http2.cleartext,
                cfg.limits.client_keepalive_timeout,
            )
        };
        let stream = if h2c && !https {
            // HTTP/2 with prior knowledge on the cleartext listener: Pingora's too.
            match sniff_h2c(stream, first_byte).await? {
                Sniffed::H2(s) => return self.pingora.process_new(s, shutdown).await,
                Sniffed::Http1(s) => s,
            }
        } else {
            stream
        };
        let io = Box::new(ClientStream::new(stream, Some(send_timeout)));
        self.serve_client(io, https, shutdown).await;
        None
    }

    /// Serves a connection drover's own accept loop (`proxy::listen`) took from `peer`
    /// on the cleartext listener, until it closes.
    pub async fn serve_accepted(
        self: &Arc<Self>,
        socket: TcpStream,
        peer: std::net::SocketAddr,
        shutdown: &ShutdownWatch,
    ) {
        let (send_timeout, h2c) = {
            let cfg = self.pipeline.shared().config.load();
            (cfg.limits.client_send_timeout, cfg.http2.cleartext)
        };
        if h2c {
            // The h2c sniff, and Pingora's HTTP/2 server after it, need Pingora's stream.
            let Ok(stream) = pingora_stream(socket, peer) else {
                return;
            };
            let mut next = Box::pin(self.serve_connection(stream, shutdown)).await;
            while let Some(stream) = next {
                next = Box::pin(self.serve_connection(stream, shutdown)).await;
            }
            return;
        }
        let io = Box::new(ClientStream::accepted(socket, peer, Some(send_timeout)));
        self.serve_client(io, false, shutdown).await;
    }

    async fn serve_client(&self, io: Box<ClientStream>, https: bool, shutdown: &ShutdownWatch) {
        Conn {
            app: self,
            out: recycle::take(),
            fields: Vec::with_capacity(32),
            peer: None,
            https,
        }
        .run(io, shutdown)
        .await;
    }
}

/// An accepted socket as Pingora's stream, as Pingora's listener leaves it:
/// `TCP_NODELAY` set and the peer's address known.
fn pingora_stream(socket: TcpStream, peer: std::net::SocketAddr) -> std::io::Result<Stream> {
    use pingora_core::protocols::l4::stream::Stream as L4;
    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::AsRawFd;
    socket.set_nodelay(true)?;
    let mut l4 = L4::from(socket);
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    l4.set_socket_digest(digest);
    Ok(Box::new(l4))
}

#[async_trait]
impl ServerApp for H1App {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.serve_connection(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.pingora.http_cleanup().await;
    }
}

/// The HTTP/2 connection preface a cleartext h2c client starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum Sniffed {
    H2(Stream),
    Http1(Stream),
}

/// Reads the first bytes of a cleartext connection until they either are the HTTP/2
/// preface or cannot be, then puts them back (`rewind`) so whichever carrier follows
/// reads the connection from its first byte. Unlike a fixed-size peek, a short HTTP/1
/// request (`GET / HTTP/1.0` and a blank line is 18 bytes) is not held waiting for 24.
/// `None`: the client closed or sent nothing within `wait`.
async fn sniff_h2c(stream: Stream, wait: Duration) -> Option<Sniffed> {
    use pingora_core::protocols::l4::stream::Stream as L4;
    let any = stream.into_any();
    let mut l4: Box<L4> = match any.downcast::<L4>() {
        Ok(l4) => l4,
        // Not a plain socket (cannot happen on the TCP listener): no sniffing.
        Err(_) => return None,
    };
    let mut got = Vec::with_capacity(H2_PREFACE.len());
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 24];
    while got.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&got) {
        let want = H2_PREFACE.len() - got.len();
        match tokio::time::timeout_at(deadline, l4.read(&mut chunk[..want])).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    let h2 = got == H2_PREFACE;
    l4.rewind(&got);
    let stream: Stream = l4;
    Some(if h2 {
        Sniffed::H2(stream)
    } else {
        Sniffed::Http1(stream)
    })
}

/// One client connection.
struct Conn<'a> {
    app: &'a H1App,
    /// It came through an HTTPS listener.
    https: bool,
    /// Bytes to write: request heads to workers, response heads to the client.
    out: BytesMut,
    /// Where the fields of the last parsed request head are.
    fields: Vec<FieldAt>,
    peer: Option<PeerAddr>,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        recycle::give(std::mem::take(&mut self.out));
    }
}

/// drover's shutdown, as one wait kept for a connection's life.
type Stop<'w> = std::pin::Pin<
    &'w mut (dyn std::future::Future<Output = Result<(), tokio::sync::watch::error::RecvError>>
                 + Send),
>;

/// How a connection's busy spell ended.
enum Spell {
    /// The connection is done.
    Over,
    /// No request for `IDLE_BUFFERS_KEPT`: wait for one until the deadline given.
    Idle(Box<ClientStream>, Instant),
}

/// How a request ended for the client connection.
enum Next {
    KeepAlive,
    Close,
}

enum ReadHead {
    Head(Head),
    /// Idle for `IDLE_BUFFERS_KEPT` with no byte of a next request: wait on (until the
    /// deadline given) without the busy state.
    Idle(Instant),
    /// The client closed, stayed idle too long, or drover is shutting down while idle.
    Closed,
    Reject(Rejection),
}

/// The settings one request reads, loaded once (one config load per request).
#[derive(Clone, Copy)]
struct ConnSettings {
    fast_path: bool,
    limits: HeadLimits,
    header_timeout: Duration,
    keepalive: Duration,
    body_timeout: Duration,
    max_body: u64,
    pool_cap: usize,
    pool_max_idle: Duration,
    max_response_head: usize,
}

impl Conn<'_> {
    fn settings(&self) -> ConnSettings {
        let cfg = self.app.pipeline.shared().config.load();
        ConnSettings {
            // Backends drover's engine cannot speak to (h2c, TLS) are Pingora's.
            fast_path: cfg.proxy.fast_path && cfg.plain_backends,
            limits: HeadLimits {
                max_bytes: cfg.limits.max_header_bytes,
                max_headers: cfg.limits.max_headers,
            },
            header_timeout: cfg.limits.client_header_timeout,
            keepalive: cfg.limits.client_keepalive_timeout,
            body_timeout: cfg.limits.client_body_timeout,
            max_body: cfg.limits.max_body_bytes,
            pool_cap: cfg.proxy.keepalive_pool_size,
            pool_max_idle: cfg.proxy.keepalive_timeout,
            max_response_head: cfg.proxy.max_response_header_bytes,
        }
    }

    async fn run(mut self, mut io: Box<ClientStream>, shutdown: &ShutdownWatch) {
        self.peer = io.peer_addr();
        // One wait for drover's shutdown for the connection's life: registered with the
        // watch once, instead of once per request (a lock, a list insert and a removal).
        let mut watch = shutdown.clone();
        let mut stop: Stop<'_> = std::pin::pin!(watch.changed());
        loop {
            // Boxed: the busy state (the pipeline's steps, ~15 KB) is allocated once per
            // busy spell, not once per request, and an idle connection holds only this
            // loop's state (~1.7 KB; docs/PERFORMANCE.md).
            let (back, until) = match Box::pin(self.busy(io, shutdown, &mut stop)).await {
                Spell::Over => return,
                Spell::Idle(io, until) => (io, until),
            };
            io = back;
            // Idle past `IDLE_BUFFERS_KEPT`: the buffers go back, many idle keep-alive
            // clients cost little memory; a busy connection never waits that long.
            io.release_buffer();
            recycle::give(std::mem::take(&mut self.out));
            self.fields = Vec::new();
            let read = tokio::select! {
                biased;
                r = io.fill_by(until) => r,
                _ = stop.as_mut() => return,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Serves requests until the connection closes or stays idle past
    /// `IDLE_BUFFERS_KEPT` (then it is handed back with the keep-alive deadline).
    async fn busy(
        &mut self,
        mut io: Box<ClientStream>,
        shutdown: &ShutdownWatch,
        stop: &mut Stop<'_>,
    ) -> Spell {
        loop {
            let settings = self.settings();
            let head = match self.read_head(&mut io, &settings, stop).await {
                ReadHead::Head(h) => h,
                ReadHead::Idle(until) => return Spell::Idle(io, until),
                ReadHead::Closed => return Spell::Over,
                ReadHead::Reject(r) => {
                    self.reject(&mut io, r).await;
                    return Spell::Over;
                }
            };
            if self.out.capacity() == 0 {
                // Released while idle (`run`): a spare one, if there is one.
                self.out = recycle::take();
            }
            let facts = &head.facts;
            let here = settings.fast_path
                && !facts.upgrade
                && !facts.expect_continue
                && facts.target == TargetForm::Origin;
            let next = if here {
                match codec::take_request(&mut io.buf, &head, &self.fields) {
                    Ok(req) => self.serve(&mut io, req, &head, &settings, shutdown).await,
                    Err(r) => {
                        self.reject(&mut io, r).await;
                        Next::Close
                    }
                }
            } else if !head.target_parses(&io.buf) {
                self.reject(
                    &mut io,
                    Rejection {
                        status: 400,
                        why: "invalid request target",
                    },
                )
                .await;
                Next::Close
            } else {
                // Boxed: Pingora's request future is large, and inline it would make
                // every busy connection's state that large (measured: ~85 KiB per
                // connection; docs/PERFORMANCE.md).
                match Box::pin(self.app.delegate(io, &head, settings.keepalive, shutdown)).await {
                    Some(back) => {
                        io = back;
                        Next::KeepAlive
                    }
                    None => return Spell::Over,
                }
            };
            if matches!(next, Next::Close) || *shutdown.borrow() {
                let _ = io.flush().await;
                return Spell::Over;
            }
        }
    }

    /// Reads until a whole request head is buffered, within the keep-alive timeout while
    /// idle (`ReadHead::Idle` after `IDLE_BUFFERS_KEPT` of it) and within
    /// `limits.client_header_timeout` once its first byte arrived.
    async fn read_head(
        &mut self,
        io: &mut ClientStream,
        settings: &ConnSettings,
        stop: &mut Stop<'_>,
    ) -> ReadHead {
        let mut deadline: Option<Instant> = None;
        loop {
            if !io.buf.is_empty() {
                match codec::parse_head(&io.buf, settings.limits, &mut self.fields) {
                    HeadParse::Complete(h) => return ReadHead::Head(h),
                    HeadParse::Reject(r) => return ReadHead::Reject(r),
                    HeadParse::Partial => {}
                }
                deadline.get_or_insert_with(|| Instant::now() + settings.header_timeout);
            }
            let read = match deadline {
                None => {
                    let idle_since = Instant::now();
                    let first = settings.keepalive.min(IDLE_BUFFERS_KEPT);
                    let r = tokio::select! {
                        biased;
                        r = io.fill_by(idle_since + first) => r,
                        _ = stop.as_mut() => return ReadHead::Closed,
                    };
                    match r {
                        Err(_) if first < settings.keepalive => {
                            return ReadHead::Idle(idle_since + settings.keepalive)
                        }
                        r => r,
                    }
                }
                Some(dl) => io.fill_by(dl).await,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return ReadHead::Closed,
                Err(_) if deadline.is_some() => {
                    return ReadHead::Reject(Rejection {
                        status: 408,
                        why: codec::WHY_HEAD_TIMEOUT,
                    })
                }
                Err(_) => return ReadHead::Closed,
            }
        }
    }

    /// Answers a refused request head and closes: after a malformed head the rest of
    /// the stream cannot be trusted.
    async fn reject(&mut self, io: &mut ClientStream, r: Rejection) {
        let p = &self.app.pipeline;
        p.rejected_head(r.status, r.why);
        log::debug!("refused a request head: {} {}", r.status, r.why);
        if let Ok(answer) = LocalResponse::failure(r.status, None) {
            self.out.clear();
            codec::write_local(
                &answer.header,
                &answer.body,
                true,
                Persist::Close,
                &mut self.out,
            );
            let _ = self.write_out(io).await;
        }
    }

    /// Serves one bodyless request with the pipeline.
    async fn serve(
        &mut self,
        io: &mut ClientStream,
        mut header: RequestHeader,
        head: &Head,
        settings: &ConnSettings,
        shutdown: &ShutdownWatch,
    ) -> Next {
        let p = &self.app.pipeline;
        self.app.served_fast.inc();
        let mut ex = Exchange::new();
        ex.set_https(self.https);
        let peer_ip = self.peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        match p.admit(&mut header, peer_ip, &mut ex).await {
            Ok(None) => {}
            Ok(Some(answer)) => {
                return Box::pin(self.answer(io, &header, answer, &mut ex, head)).await
            }
            Err(e) => return Box::pin(self.fail(io, &header, &e, &mut ex)).await,
        }
        let client = ClientSide {
            keep_alive: head.facts.keep_alive && !*shutdown.borrow(),
            http10: head.facts.http10,
        };
        let (body_timeout, max_body) = (settings.body_timeout, settings.max_body);
        let body = match body::read_small(io, head.facts.framing, body_timeout, max_body).await {
            Ok(b) => b,
            Err(e) => return Box::pin(self.body_failed(io, &header, e, &mut ex)).await,
        };
        if let body::RequestBody::Buffered(b) = &body {
            if p.body_chunk(&mut ex, b.len()).is_err() {
                return Box::pin(self.body_failed(io, &header, body::BodyError::TooLarge, &mut ex))
                    .await;
            }
        }
        if p.session_lock_pending(&ex) {
            // The body is here (or too large to wait for): no client holds the lock.
            let buffered = matches!(body, body::RequestBody::Buffered(_));
            p.acquire_session(&mut ex, buffered).await;
        }
        let sending = Sending {
            body: &body,
            timeout: body_timeout,
            max_body,
        };
        match self
            .proxy(io, &mut header, &mut ex, client, &sending, settings)
            .await
        {
            Ok((status, sent, next)) => {
                p.finish(&header, self.peer.as_ref(), status, sent, None, &mut ex)
                    .await;
                next
            }
            Err(Failure::Before(e)) => Box::pin(self.fail(io, &header, &e, &mut ex)).await,
            Err(Failure::Body(e)) => Box::pin(self.body_failed(io, &header, e, &mut ex)).await,
            Err(Failure::During {
                status,
                sent,
                error,
            }) => {
                if error.esource() == &ErrorSource::Downstream {
                    ex.client_gone();
                }
                p.finish(
                    &header,
                    self.peer.as_ref(),
                    status,
                    sent,
                    Some(&error),
                    &mut ex,
                )
                .await;
                Next::Close
            }
        }
    }

    /// drover's own answer (a limit, a rate limit, a fallback).
    async fn answer(
        &mut self,
        io: &mut ClientStream,
        header: &RequestHeader,
        answer: LocalResponse,
        ex: &mut Exchange,
        head: &Head,
    ) -> Next {
        let close = answer.close || !head.facts.keep_alive;
        let status = answer.header.status.as_u16();
        self.out.clear();
        codec::write_local(
            &answer.header,
            &answer.body,
            ex.head_request(),
            Persist::for_client(close, head.facts.http10),
            &mut self.out,
        );
        let sent = if LocalResponse::body_allowed(ex.head_request(), status) {
            answer.body.len()
        } else {
            0
        };
        let written = self.write_out(io).await;
        let e = written.err();
        self.app
            .pipeline
            .finish(header, self.peer.as_ref(), status, sent, e.as_deref(), ex)
            .await;
        if close || e.is_some() {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// The request failed before any response reached the client: answer as Pingora's
    /// carrier would, then close.
    async fn fail(
        &mut self,
        io: &mut ClientStream,
        header: &RequestHeader,
        e: &Error,
        ex: &mut Exchange,
    ) -> Next {
        let p = &self.app.pipeline;
        let code = p.failure_status(e);
        if code > 0 {
            if let Ok(answer) = LocalResponse::failure(code, ex.rejection()) {
                self.out.clear();
                codec::write_local(
                    &answer.header,
                    &answer.body,
                    ex.head_request(),
                    Persist::Close,
                    &mut self.out,
                );
                let _ = self.write_out(io).await;
            }
        }
        p.finish(header, self.peer.as_ref(), code, 0, Some(e), ex)
            .await;
        Next::Close
    }

    /// The client's body could not be carried (too slow, too large, malformed, gone):
    /// the worker is not to blame; answer if there is anyone to answer, then close.
    async fn body_failed(
        &mut self,
        io: &mut ClientStream,
        header: &RequestHeader,
        e: body::BodyError,
        ex: &mut Exchange,
    ) -> Next {
        let p = &self.app.pipeline;
        ex.client_gone();
        let status = e.status();
        match e {
            body::BodyError::Timeout => p.count_limit(LimitKind::BodyTimeout),
            body::BodyError::TooLarge => p.count_limit(LimitKind::BodyBytes),
            _ => {}
        }
        if status > 0 {
            if let Ok(answer) = LocalResponse::failure(status, None) {
                self.out.clear();
                codec::write_local(
                    &answer.header,
                    &answer.body,
                    ex.head_request(),
                    Persist::Close,
                    &mut self.out,
                );
                let _ = self.write_out(io).await;
            }
        }
        let mut err = Error::explain(ErrorType::ReadError, format!("request body: {e:?}"));
        err.esource = ErrorSource::Downstream;
        p.finish(header, self.peer.as_ref(), status, 0, Some(&err), ex)
            .await;
        Next::Close
    }

    /// Sends the first `take` bytes of the worker's buffer to the client: small ones are
    /// added to the pending output (written now when `flush`), large ones written straight
    /// from the buffer (no copy).
    async fn forward(
        &mut self,
        io: &mut ClientStream,
        up: &mut pool::UpstreamConn,
        take: usize,
        flush: bool,
    ) -> Result<(), Box<Error>> {
        if take <= COALESCE {
            self.out.extend_from_slice(&up.buf[..take]);
            up.buf.advance(take);
            return if flush {
                self.write_out(io).await
            } else {
                Ok(())
            };
        }
        // The pending bytes (a response head) go out in the same system call as the body
        // piece: written apart, the head is a packet of its own that wakes the client for
        // a partial response (measured: ~0.8x nginx on 64 KiB responses).
        let r = async {
            write_all_pair(io, &self.out, &up.buf[..take]).await?;
            io.flush().await
        }
        .await;
        self.out.clear();
        up.buf.advance(take);
        r.map_err(downstream_write_error)
    }

    async fn write_out(&mut self, io: &mut ClientStream) -> Result<(), Box<Error>> {
        let r = async {
            io.write_all(&self.out).await?;
            io.flush().await
        }
        .await;
        self.out.clear();
        r.map_err(downstream_write_error)
    }

    /// Picks a backend, sends the request and streams the response back, retrying on
    /// another backend as the pipeline decides. Returns the status, body bytes sent and
    /// whether the client connection stays open.
    async fn proxy(
        &mut self,
        io: &mut ClientStream,
        header: &mut RequestHeader,
        ex: &mut Exchange,
        client: ClientSide,
        sending: &Sending<'_>,
        settings: &ConnSettings,
    ) -> Result<(u16, usize, Next), Failure> {
        let p = &self.app.pipeline;
        let replayable = sending.body.replayable();
        let (cap, max_idle, max_head) = (
            settings.pool_cap,
            settings.pool_max_idle,
            settings.max_response_head,
        );
        let head_request = header.method == http::Method::HEAD;
        let names = p.response_field_names(ex);
        loop {
            let target = match p.choose(header, ex).await {
                Ok(t) => t,
                Err(e) if e.retry() => continue,
                Err(e) => return Err(Failure::Before(e)),
            };
            p.upstream_request(header, ex);
            self.out.clear();
            codec::write_request(header, &mut self.out);
            if let body::RequestBody::Buffered(b) = sending.body {
                self.out.extend_from_slice(b);
            }
            let expect = Expect {
                head_request,
                max_head,
                names: &names,
                read_timeout: target.read_timeout,
                client_http10: client.http10,
            };
            // A pooled connection the worker closed at the wrong moment is replaced by a
            // fresh one without counting against the backend.
            let mut fresh_only = false;
            let attempt = loop {
                let pooled = match (&target.backend, fresh_only) {
                    (Some(b), false) => pool::take(b, max_idle),
                    _ => None,
                };
                let reused = pooled.is_some();
                let mut up = match pooled {
                    Some(c) => c,
                    None => match connect(&target).await {
                        Ok(c) => c,
                        Err(e) => break Attempt::ConnectFailed(e),
                    },
                };
                match exchange(&mut up, &self.out, &expect, io, sending).await {
                    Ok(head) => break Attempt::Response(up, head),
                    Err(Exchanged::Body(e)) => return Err(Failure::Body(e)),
                    Err(Exchanged::Failed(_, unsent))
                        if reused && (unsent || (replayable && header.method.is_idempotent())) =>
                    {
                        fresh_only = true;
                    }
                    Err(Exchanged::Failed(e, _)) => break Attempt::Failed(e),
                }
            };
            let (up, head) = match attempt {
                Attempt::Response(up, head) => (up, head),
                Attempt::ConnectFailed(e) => {
                    if p.connect_failed(ex, &e) {
                        continue;
                    }
                    return Err(Failure::Before(e));
                }
                Attempt::Failed(e) => {
                    if p.proxy_failed(ex, &e, header, replayable) {
                        continue;
                    }
                    return Err(Failure::Before(e));
                }
            };
            return self
                .respond(io, up, head, ex, client, (&target, cap), &expect)
                .await;
        }
    }

    /// Forwards the worker's response head and body to the client.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &mut self,
        io: &mut ClientStream,
        mut up: pool::UpstreamConn,
        head: codec::ResponseHead,
        ex: &mut Exchange,
        client: ClientSide,
        (target, cap): (&Target, usize),
        expect: &Expect<'_>,
    ) -> Result<(u16, usize, Next), Failure> {
        let p = &self.app.pipeline;
        // A body delimited by the end of the connection (the worker's, or a chunked one
        // that an HTTP/1.0 client gets without framing) ends the client connection too.
        let close =
            !client.keep_alive || head.framing == ResponseFraming::UntilClose || head.dechunk;
        let persist = Persist::for_client(close, client.http10);
        let status = head.status;
        // The fields the pipeline acts on, picked out of the head before it is copied.
        let mut picked = WorkerResponse {
            status,
            ..Default::default()
        };
        let is = |name: &[u8], n: &Option<http::HeaderName>| {
            n.as_ref()
                .is_some_and(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
        };
        codec::for_each_picked(&up.buf, &head, |name, value| {
            if is(name, &expect.names.session_update) {
                picked.session_update.get_or_insert_with(|| value.to_vec());
            } else if is(name, &expect.names.session_control) {
                picked.session_control.get_or_insert_with(|| value.to_vec());
            } else if name.eq_ignore_ascii_case(crate::observe::custom::HEADER.as_bytes()) {
                p.worker_metrics(ex, value);
            }
        })
        .map_err(|_| Failure::Before(bad_response()))?;
        let adds = p.on_response(ex, picked).await;
        let mut extra: [(&[u8], &[u8]); 2] = [(b"", b""); 2];
        let mut n = 0;
        for f in adds.fields() {
            extra[n] = f;
            n += 1;
        }
        self.out.clear();
        codec::forward_parsed_head(&up.buf, &head, persist, &extra[..n], &mut self.out)
            .map_err(|_| Failure::Before(bad_response()))?;
        up.buf.advance(head.len);
        let during = |status, sent, error| Failure::During {
            status,
            sent,
            error,
        };
        let read_timeout = expect.read_timeout;
        let mut sent = 0usize;
        let reusable = match head.framing {
            ResponseFraming::Empty => {
                self.write_out(io).await.map_err(|e| during(status, 0, e))?;
                head.reusable && up.buf.is_empty()
            }
            ResponseFraming::Length(mut left) => {
                loop {
                    let take = (up.buf.len() as u64).min(left) as usize;
                    self.forward(io, &mut up, take, true)
                        .await
                        .map_err(|e| during(status, sent, e))?;
                    left -= take as u64;
                    sent += take;
                    if left == 0 {
                        break;
                    }
                    let want = left.min(pool::BODY_READ as u64) as usize;
                    read_upstream(&mut up, read_timeout, want, "the worker's body")
                        .await
                        .map_err(|e| during(status, sent, e))?;
                }
                head.reusable && up.buf.is_empty()
            }
            ResponseFraming::Chunked if head.dechunk => {
                // HTTP/1.0 client: chunk data only; the close ends the body.
                let mut scanner = ChunkedScanner::default();
                loop {
                    let out = &mut self.out;
                    let buf = &up.buf;
                    let scan = scanner
                        .scan_data(buf, |r| {
                            sent += r.len();
                            out.extend_from_slice(&buf[r]);
                        })
                        .map_err(|_| during(status, sent, bad_response()))?;
                    up.buf.advance(scan.consumed);
                    self.write_out(io)
                        .await
                        .map_err(|e| during(status, sent, e))?;
                    if scan.done {
                        break;
                    }
                    read_upstream(&mut up, read_timeout, pool::BODY_READ, "the worker's body")
                        .await
                        .map_err(|e| during(status, sent, e))?;
                }
                false
            }
            ResponseFraming::Chunked => {
                let mut scanner = ChunkedScanner::default();
                loop {
                    let scan = scanner
                        .scan(&up.buf)
                        .map_err(|_| during(status, sent, bad_response()))?;
                    // Trailer fields are not forwarded (see `proxy::http::chunked`).
                    self.forward(io, &mut up, scan.body, !scan.done)
                        .await
                        .map_err(|e| during(status, sent, e))?;
                    up.buf.advance(scan.consumed - scan.body);
                    sent += scan.body;
                    if scan.done {
                        self.out.extend_from_slice(b"\r\n");
                        self.write_out(io)
                            .await
                            .map_err(|e| during(status, sent, e))?;
                        break;
                    }
                    read_upstream(&mut up, read_timeout, pool::BODY_READ, "the worker's body")
                        .await
                        .map_err(|e| during(status, sent, e))?;
                }
                head.reusable && up.buf.is_empty()
            }
            ResponseFraming::UntilClose => {
                loop {
                    let take = up.buf.len();
                    self.forward(io, &mut up, take, true)
                        .await
                        .map_err(|e| during(status, sent, e))?;
                    sent += take;
                    match read_upstream(&mut up, read_timeout, pool::BODY_READ, "the worker's body")
                        .await
                    {
                        Ok(()) => {}
                        Err(e) if e.etype() == &ErrorType::ConnectionClosed => break,
                        Err(e) => return Err(during(status, sent, e)),
                    }
                }
                false
            }
        };
        if reusable {
            if let Some(b) = &target.backend {
                pool::put(b, up, cap);
            }
        }
        Ok((
            status,
            sent,
            if close { Next::Close } else { Next::KeepAlive },
        ))
    }
}

/// What the client asked of its connection.
#[derive(Clone, Copy)]
struct ClientSide {
    /// It may carry another request after this one (and drover is not shutting down).
    keep_alive: bool,
    /// It speaks HTTP/1.0: keep-alive is said out loud, bodies come without chunking.
    http10: bool,
}

/// The request body and the limits it is sent under.
struct Sending<'a> {
    body: &'a body::RequestBody,
    timeout: Duration,
    max_body: u64,
}

/// How an exchange with a worker failed.
enum Exchanged {
    /// The worker's side: the flag says the request surely did not reach it (the
    /// write of its head failed).
    Failed(Box<Error>, bool),
    /// The client's body could not be carried.
    Body(body::BodyError),
}

/// What an attempt expects from the worker's response.
struct Expect<'a> {
    head_request: bool,
    max_head: usize,
    /// The fields the pipeline takes out of the response (session update and control).
    names: &'a ResponseFieldNames,
    read_timeout: Option<Duration>,
    client_http10: bool,
}

/// Lives on the stack for one attempt; boxing the large variant would cost an allocation
/// per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Response(pool::UpstreamConn, codec::ResponseHead),
    ConnectFailed(Box<Error>),
    Failed(Box<Error>),
}

enum Failure {
    /// Nothing reached the client yet: answer with an error status.
    Before(Box<Error>),
    /// The client's body could not be carried.
    Body(body::BodyError),
    /// Part of the response reached the client: the connection can only be closed.
    During {
        status: u16,
        sent: usize,
        error: Box<Error>,
    },
}

fn downstream_write_error(e: std::io::Error) -> Box<Error> {
    let kind = if e.kind() == std::io::ErrorKind::TimedOut {
        ErrorType::WriteTimedout
    } else {
        ErrorType::WriteError
    };
    let mut e = Error::because(kind, "writing to the client", e);
    e.esource = ErrorSource::Downstream;
    e
}

/// An error on the worker's side (what breakers and retries judge the backend by).
fn upstream(mut e: Box<Error>) -> Box<Error> {
    e.esource = ErrorSource::Upstream;
    e
}

fn bad_response() -> Box<Error> {
    upstream(Error::explain(
        ErrorType::InvalidHTTPHeader,
        "invalid response from the worker",
    ))
}

fn upstream_error(e: std::io::Error) -> Box<Error> {
    let kind = match e.kind() {
        std::io::ErrorKind::TimedOut => ErrorType::ReadTimedout,
        std::io::ErrorKind::ConnectionReset => ErrorType::ConnectionClosed,
        _ => ErrorType::ReadError,
    };
    upstream(Error::because(kind, "reading from the worker", e))
}

/// Writes `first` then `second` with vectored writes (tokio's `write_all_buf` over the
/// chained slices): one system call for both when the socket takes them.
async fn write_all_pair<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    first: &[u8],
    second: &[u8],
) -> std::io::Result<()> {
    io.write_all_buf(&mut Buf::chain(first, second)).await
}

async fn connect(target: &Target) -> Result<pool::UpstreamConn, Box<Error>> {
    let addr = target.addr;
    let connecting = TcpStream::connect(addr);
    let stream = match target.connect_timeout {
        Some(t) => match tokio::time::timeout(t, connecting).await {
            Ok(r) => r,
            Err(_) => {
                return Err(upstream(Error::explain(
                    ErrorType::ConnectTimedout,
                    format!("connecting to {addr}"),
                )))
            }
        },
        None => connecting.await,
    };
    let stream = stream.map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ErrorType::ConnectRefused
        } else {
            ErrorType::ConnectError
        };
        upstream(Error::because(kind, format!("connecting to {addr}"), e))
    })?;
    let _ = stream.set_nodelay(true);
    Ok(pool::UpstreamConn::new(stream))
}

/// Sends the request head (with a buffered body), streams a large body, and reads the
/// response head (skipping 1xx interim answers).
async fn exchange(
    up: &mut pool::UpstreamConn,
    request: &[u8],
    expect: &Expect<'_>,
    io: &mut ClientStream,
    sending: &Sending<'_>,
) -> Result<codec::ResponseHead, Exchanged> {
    if let Err(e) = up.stream.write_all(request).await {
        let e = Error::because(ErrorType::WriteError, "writing to the worker", e);
        return Err(Exchanged::Failed(upstream(e), true));
    }
    if let body::RequestBody::Streamed(framing) = sending.body {
        match body::stream(
            io,
            &mut up.stream,
            *framing,
            sending.timeout,
            sending.max_body,
        )
        .await
        {
            Ok(()) => {}
            Err(body::BodyError::Upstream) => {
                let e = Error::explain(ErrorType::WriteError, "writing the body to the worker");
                return Err(Exchanged::Failed(upstream(e), false));
            }
            Err(e) => return Err(Exchanged::Body(e)),
        }
    }
    up.start_response();
    loop {
        let expectations = codec::Expectations {
            head_request: expect.head_request,
            max_bytes: expect.max_head,
            picked: expect.names.all(),
            client_http10: expect.client_http10,
        };
        // Nothing read yet (the usual case right after sending): nothing to parse.
        let parsed = if up.buf.is_empty() {
            Err(ResponseError::Partial)
        } else {
            codec::parse_response(&up.buf, &expectations)
        };
        match parsed {
            Ok(head) if head.status == 101 => return Err(Exchanged::Failed(bad_response(), false)),
            Ok(head) if (100..200).contains(&head.status) => {
                up.buf.advance(head.len);
                continue;
            }
            Ok(head) => return Ok(head),
            Err(ResponseError::Invalid(why)) => {
                log::warn!("invalid response from the worker: {why}");
                return Err(Exchanged::Failed(bad_response(), false));
            }
            Err(ResponseError::TooLarge) => {
                log::warn!("the worker sent a response head over proxy.max_response_header_bytes");
                return Err(Exchanged::Failed(bad_response(), false));
            }
            Err(ResponseError::Partial) => {}
        }
        read_upstream(
            up,
            expect.read_timeout,
            pool::READ_CHUNK,
            "the worker's response head",
        )
        .await
        .map_err(|e| Exchanged::Failed(e, false))?;
    }
}

/// Reads more of the response (`what`: which part, for the error) from the worker; the
/// connection ending before the framing says is an error (`ConnectionClosed`).
async fn read_upstream(
    up: &mut pool::UpstreamConn,
    read_timeout: Option<Duration>,
    want: usize,
    what: &'static str,
) -> Result<(), Box<Error>> {
    up.make_room(want);
    let pool::UpstreamConn {
        stream,
        buf,
        read_deadline,
        ..
    } = up;
    let read = stream.read_buf(buf);
    let n = match read_timeout {
        Some(t) => match read_deadline.run(Instant::now() + t, read).await {
            Ok(r) => r,
            Err(_) => {
                let e = Error::explain(ErrorType::ReadTimedout, format!("waiting for {what}"));
                return Err(upstream(e));
            }
        },
        None => read.await,
    };
    match n {
        Ok(0) => {
            let e = Error::explain(
                ErrorType::ConnectionClosed,
                format!("the worker closed the connection before the end of {what}"),
            );
            Err(upstream(e))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(upstream_error(e)),
    }
}

impl Pipeline {
    /// A request head drover refused before any step ran: counted like an answered
    /// request, and against the edge limit it broke.
    fn rejected_head(&self, status: u16, why: &'static str) {
        match why {
            codec::WHY_HEAD_BYTES => self.count_limit(LimitKind::HeaderBytes),
            codec::WHY_HEADER_COUNT => self.count_limit(LimitKind::HeaderCount),
            codec::WHY_HEAD_TIMEOUT => self.count_limit(LimitKind::HeaderTimeout),
            _ => {}
        }
        self.shared().metrics.status_class(status).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::write_all_pair;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most `limit` bytes per write, as a socket with a full send buffer does.
    struct Trickle {
        got: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.limit);
            this.got.extend_from_slice(&data[..n]);
            this.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(this.limit - n);
                this.got.extend_from_slice(&b[..take]);
                n += take;
            }
            this.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_head_and_a_body_piece_go_out_whole_and_in_order_across_short_writes() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n".to_vec();
        let body = b"abcdefghijklmnopqrst".to_vec();
        for limit in [1, 7, head.len(), head.len() + 3, 10_000] {
            let mut w = Trickle {
                got: Vec::new(),
                limit,
                calls: 0,
            };
            write_all_pair(&mut w, &head, &body).await.unwrap();
            assert_eq!(
                w.got,
                [head.as_slice(), body.as_slice()].concat(),
                "limit {limit}"
            );
            if limit == 10_000 {
                assert_eq!(w.calls, 1, "one write for both when the socket takes them");
            }
        }
        // Nothing pending: only the body.
        let mut w = Trickle {
            got: Vec::new(),
            limit: 5,
            calls: 0,
        };
        write_all_pair(&mut w, b"", &body).await.unwrap();
        assert_eq!(w.got, body);
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_is_an_error_not_a_spin() {
        let mut w = Trickle {
            got: Vec::new(),
            limit: 0,
            calls: 0,
        };
        let e = write_all_pair(&mut w, b"head", b"body").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
