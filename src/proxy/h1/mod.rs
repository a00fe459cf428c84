//! drover's own HTTP/1.1 engine for the common request: no request body, no upgrade.
//!
//! Why it exists: Pingora's generic proxy path (`proxy_1to1`) costs ~60k instructions
//! and ~75 allocations per request on top of drover's own work (docs/PERFORMANCE.md):
//! a cloned request header, an mpsc channel and a second future per request, a boxed
//! future per hook, a spawned idle-poll task per pooled connection. This engine serves
//! the same request with the same steps (`proxy/steps.rs`: limits, header hygiene, rate
//! limits, sessions, balancing, breakers, retries, metrics, access log), forwarding the
//! worker's response head and body as bytes.
//!
//! It is an accept-time choice per request, not per connection: a request it does not
//! serve (a body, `Upgrade`, `Expect`, HTTP/1.0, absolute form, a malformed head) is put
//! back into the stream and handed to Pingora's `HttpProxy` for that one request, and the
//! connection comes back afterwards. `proxy.fast_path: false` hands every request over.

mod codec;
mod pool;

use crate::proxy::{DroverProxy, LocalResponse, RequestCtx};
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use codec::{Framing, ParsedRequest, ResponseError};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::Peer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::RequestHeader;
use pingora_proxy::{HttpProxy, ProxyHttp};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long an idle client connection waits for its next request (as Pingora's path).
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(60);
/// A request head still incomplete after this many bytes goes to Pingora's path, which
/// applies the header limits and answers 431.
const MAX_BUFFERED_HEAD: usize = 16 * 1024;
/// Chunk size for client reads.
const CLIENT_READ: usize = 4096;
/// Body bytes up to this size go out in the same write as the response head.
const COALESCE: usize = 16 * 1024;

/// The data plane's `ServerApp`: the fast path, with Pingora's proxy behind it.
pub struct H1App {
    drover: DroverProxy,
    pingora: Arc<HttpProxy<DroverProxy>>,
    /// `drover_http1_engine_requests_total{engine="fast"}` and `{engine="pingora"}`:
    /// how much of the traffic the fast path serves.
    served_fast: prometheus::IntCounter,
    served_by_pingora: prometheus::IntCounter,
}

impl H1App {
    pub fn new(drover: DroverProxy, pingora: HttpProxy<DroverProxy>) -> Self {
        let vec = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                crate::observe::names::HTTP1_ENGINE_REQUESTS_TOTAL,
                "HTTP/1 requests by the engine that served them: drover's fast path, or \
                 Pingora's proxy (request bodies, upgrades, HTTP/1.0, proxy.fast_path off)",
            ),
            &["engine"],
        )
        .expect("valid metric");
        let _ = drover
            .shared
            .metrics
            .registry
            .register(Box::new(vec.clone()));
        H1App {
            served_fast: vec.with_label_values(&["fast"]),
            served_by_pingora: vec.with_label_values(&["pingora"]),
            drover,
            pingora: Arc::new(pingora),
        }
    }

    /// Serves one request through Pingora's path and returns the connection when it can
    /// carry another request.
    async fn delegate(
        &self,
        stream: Box<L4Stream>,
        shutdown: &ShutdownWatch,
    ) -> Option<Box<L4Stream>> {
        self.served_by_pingora.inc();
        let mut session = pingora_core::protocols::http::ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let reused = self.pingora.process_new_http(session, shutdown).await?;
        let (stream, _settings) = reused.consume();
        stream.into_any().downcast::<L4Stream>().ok()
    }
}

#[async_trait]
impl ServerApp for H1App {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !stream.as_any().is::<L4Stream>() {
            return self.pingora.process_new(stream, shutdown).await;
        }
        let stream = stream.into_any().downcast::<L4Stream>().ok()?;
        Conn {
            app: self,
            stream,
            buf: BytesMut::with_capacity(CLIENT_READ),
            out: BytesMut::with_capacity(CLIENT_READ),
            peer: None,
        }
        .run(shutdown)
        .await;
        None
    }

    async fn cleanup(&self) {
        self.pingora.http_cleanup().await;
    }
}

/// One client connection.
struct Conn<'a> {
    app: &'a H1App,
    stream: Box<L4Stream>,
    /// Bytes read from the client and not yet handled (a pipelined next request).
    buf: BytesMut,
    /// Bytes to write: request heads to workers, response heads to the client.
    out: BytesMut,
    peer: Option<PeerAddr>,
}

/// How a request ended for the client connection.
enum Next {
    KeepAlive,
    Close,
}

impl Conn<'_> {
    async fn run(mut self, shutdown: &ShutdownWatch) {
        use pingora_core::protocols::GetSocketDigest;
        self.peer = self
            .stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        loop {
            let enabled = self.app.drover.shared.config.load().proxy.fast_path;
            let parsed = if enabled {
                match self.read_head(shutdown).await {
                    Some(p) => p,
                    None => return,
                }
            } else {
                ParsedRequest::Delegate
            };
            let next = match parsed {
                ParsedRequest::Fast(req) => self.serve(*req, shutdown).await,
                ParsedRequest::Partial | ParsedRequest::Delegate => {
                    let pending = std::mem::take(&mut self.buf);
                    self.stream.rewind(&pending);
                    self.buf = pending;
                    self.buf.clear();
                    let Some(stream) = self.app.delegate(self.stream, shutdown).await else {
                        return;
                    };
                    self.stream = stream;
                    Next::KeepAlive
                }
            };
            if matches!(next, Next::Close) || *shutdown.borrow() {
                let _ = self.stream.flush().await;
                return;
            }
        }
    }

    /// Reads until a whole request head is buffered. `None`: the client closed, went
    /// idle too long, or drover is shutting down while it was idle.
    async fn read_head(&mut self, shutdown: &ShutdownWatch) -> Option<ParsedRequest> {
        let mut shutdown = shutdown.clone();
        loop {
            if !self.buf.is_empty() {
                match codec::parse_request(&mut self.buf) {
                    ParsedRequest::Partial if self.buf.len() < MAX_BUFFERED_HEAD => {}
                    ParsedRequest::Partial => return Some(ParsedRequest::Delegate),
                    p => return Some(p),
                }
            }
            self.buf.reserve(CLIENT_READ);
            let idle = self.buf.is_empty();
            let read = tokio::time::timeout(CLIENT_KEEPALIVE, self.stream.read_buf(&mut self.buf));
            let n = if idle {
                tokio::select! {
                    r = read => r,
                    _ = shutdown.changed() => return None,
                }
            } else {
                read.await
            };
            match n {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Serves one bodyless request with the shared steps.
    async fn serve(&mut self, req: codec::Request, shutdown: &ShutdownWatch) -> Next {
        let drover = &self.app.drover;
        self.app.served_fast.inc();
        let mut ctx: RequestCtx = drover.new_ctx();
        let mut header = req.header;
        let peer_ip = self.peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        match drover.admit(&mut header, peer_ip, &mut ctx).await {
            Ok(None) => {}
            Ok(Some(answer)) => {
                return self.answer(&header, answer, &mut ctx, req.keep_alive).await
            }
            Err(e) => return self.fail(&header, &e, &mut ctx).await,
        }
        let keep_alive = req.keep_alive && !*shutdown.borrow();
        match self.proxy(&mut header, &mut ctx, keep_alive).await {
            Ok((status, sent, next)) => {
                drover
                    .finish(&header, self.peer.as_ref(), status, sent, None, &mut ctx)
                    .await;
                next
            }
            Err(Failure::Before(e)) => self.fail(&header, &e, &mut ctx).await,
            Err(Failure::During {
                status,
                sent,
                error,
            }) => {
                if error.esource() == &ErrorSource::Downstream {
                    // The client went away: nothing to blame the backend for.
                    ctx.guard = None;
                }
                drover
                    .finish(
                        &header,
                        self.peer.as_ref(),
                        status,
                        sent,
                        Some(&error),
                        &mut ctx,
                    )
                    .await;
                Next::Close
            }
        }
    }

    /// drover's own answer (a limit, a rate limit, a fallback).
    async fn answer(
        &mut self,
        header: &RequestHeader,
        answer: LocalResponse,
        ctx: &mut RequestCtx,
        keep_alive: bool,
    ) -> Next {
        let close = answer.close || !keep_alive;
        let status = answer.header.status.as_u16();
        self.out.clear();
        codec::write_local(&answer.header, &answer.body, close, &mut self.out);
        let sent = answer.body.len();
        let written = self.write_out().await;
        let e = written.err();
        self.app
            .drover
            .finish(header, self.peer.as_ref(), status, sent, e.as_deref(), ctx)
            .await;
        if close || e.is_some() {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// The request failed before any response reached the client: answer as Pingora's
    /// `fail_to_proxy` would, then close.
    async fn fail(&mut self, header: &RequestHeader, e: &Error, ctx: &mut RequestCtx) -> Next {
        let drover = &self.app.drover;
        let code = drover.failure_status(e);
        if code > 0 {
            if let Ok(answer) = LocalResponse::failure(code, ctx.reject) {
                self.out.clear();
                codec::write_local(&answer.header, &answer.body, true, &mut self.out);
                let _ = self.write_out().await;
            }
        }
        drover
            .finish(header, self.peer.as_ref(), code, 0, Some(e), ctx)
            .await;
        Next::Close
    }

    /// Sends the first `take` bytes of the worker's buffer to the client, together with
    /// the pending response head when they are small (one write), else straight from the
    /// buffer (no copy).
    async fn forward(
        &mut self,
        up: &mut pool::UpstreamConn,
        take: usize,
    ) -> Result<(), Box<Error>> {
        if take <= COALESCE {
            self.out.extend_from_slice(&up.buf[..take]);
            up.buf.advance(take);
            return self.write_out().await;
        }
        if !self.out.is_empty() {
            self.write_out().await?;
        }
        let r = async {
            self.stream.write_all(&up.buf[..take]).await?;
            self.stream.flush().await
        }
        .await;
        up.buf.advance(take);
        r.map_err(downstream_write_error)
    }

    async fn write_out(&mut self) -> Result<(), Box<Error>> {
        let r = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        }
        .await;
        self.out.clear();
        r.map_err(downstream_write_error)
    }

    /// Picks a backend, sends the request and streams the response back, retrying on
    /// another backend as the shared steps decide. Returns the status, body bytes sent
    /// and whether the client connection stays open.
    async fn proxy(
        &mut self,
        header: &mut RequestHeader,
        ctx: &mut RequestCtx,
        keep_alive: bool,
    ) -> Result<(u16, usize, Next), Failure> {
        let drover = &self.app.drover;
        let (cap, max_idle) = {
            let cfg = drover.shared.config.load();
            (cfg.proxy.keepalive_pool_size, cfg.proxy.keepalive_timeout)
        };
        let head_request = header.method == http::Method::HEAD;
        loop {
            let peer = match drover.pick_peer(header, ctx).await {
                Ok(p) => p,
                Err(e) if e.retry() => continue,
                Err(e) => return Err(Failure::Before(e)),
            };
            drover.prepare_upstream_request(header, ctx);
            self.out.clear();
            codec::write_request(header, &mut self.out);
            let Some(addr) = peer.address().as_inet().copied() else {
                return Err(Failure::Before(Error::explain(
                    ErrorType::ConnectError,
                    "fast path: backend is not a TCP address",
                )));
            };
            let timeouts = (peer.options.connection_timeout, peer.options.read_timeout);
            // A pooled connection the worker closed at the wrong moment is replaced by a
            // fresh one without counting against the backend.
            let mut fresh_only = false;
            let attempt = loop {
                let pooled = if fresh_only {
                    None
                } else {
                    pool::take(&addr, max_idle)
                };
                let reused = pooled.is_some();
                let mut up = match pooled {
                    Some(c) => c,
                    None => match connect(addr, timeouts.0).await {
                        Ok(c) => c,
                        Err(e) => break Attempt::ConnectFailed(e),
                    },
                };
                match exchange(&mut up, &self.out, timeouts.1, head_request).await {
                    Ok(head) => break Attempt::Response(up, head),
                    Err(e) if reused && (header.method.is_idempotent() || e.1) => {
                        fresh_only = true;
                    }
                    Err((e, _)) => break Attempt::Failed(e),
                }
            };
            let (up, head) = match attempt {
                Attempt::Response(up, head) => (up, head),
                Attempt::ConnectFailed(e) => {
                    if drover.connect_failed(ctx, &e) {
                        continue;
                    }
                    return Err(Failure::Before(e));
                }
                Attempt::Failed(e) => {
                    if drover.proxy_failed(ctx, &e, header, true) {
                        continue;
                    }
                    return Err(Failure::Before(e));
                }
            };
            return self
                .respond(up, head, ctx, keep_alive, (addr, cap), timeouts.1)
                .await;
        }
    }

    /// Forwards the worker's response head and body to the client.
    async fn respond(
        &mut self,
        mut up: pool::UpstreamConn,
        head: codec::ResponseHead,
        ctx: &mut RequestCtx,
        keep_alive: bool,
        (addr, cap): (SocketAddr, usize),
        read_timeout: Option<Duration>,
    ) -> Result<(u16, usize, Next), Failure> {
        let drover = &self.app.drover;
        let close = !keep_alive || head.framing == Framing::UntilClose;
        self.out.clear();
        let head_bytes = &up.buf[..head.len];
        let mut status = head.status;
        let sessions = drover.shared.sessions.get();
        // The worker's session update, when its header is an internal one (the default),
        // is picked out while the head is copied; a custom name needs the header map.
        // `None`: no session; `Some(None)`: a session with a custom update header name.
        let update_name = match (&ctx.session, sessions) {
            (Some(s), Some(svc)) => Some(svc.internal_update_header(s, head_bytes).cloned()),
            _ => None,
        };
        match update_name {
            Some(None) => {
                let mut resp = codec::build_response(head_bytes)
                    .map_err(|_| Failure::Before(bad_response()))?;
                drover.on_upstream_response(&mut resp, ctx).await;
                status = resp.status.as_u16();
                codec::write_response(&resp, close, &mut self.out);
            }
            update_name => {
                let update_name = update_name.flatten();
                ctx.response_started = true;
                let cookie = match (ctx.session.as_mut(), sessions) {
                    (Some(s), Some(svc)) => svc.take_set_cookie(s),
                    _ => None,
                };
                let backend = ctx.guard.as_ref().map(|g| g.backend().name.clone());
                let custom = &drover.shared.observe.custom;
                let mut update: Option<Vec<u8>> = None;
                let extra = cookie
                    .as_deref()
                    .map(|c| (http::header::SET_COOKIE.as_str().as_bytes(), c.as_bytes()));
                codec::forward_parsed_head(
                    &up.buf,
                    &head,
                    close,
                    extra,
                    &mut self.out,
                    |name, value| {
                        if let Some(u) = &update_name {
                            if update.is_none() && name.eq_ignore_ascii_case(u.as_str().as_bytes())
                            {
                                update = Some(value.to_vec());
                                return;
                            }
                        }
                        if let Some(b) = &backend {
                            if name.eq_ignore_ascii_case(crate::observe::custom::HEADER.as_bytes())
                            {
                                custom.ingest(b, value);
                            }
                        }
                    },
                )
                .map_err(|_| Failure::Before(bad_response()))?;
                if let (Some(s), Some(svc)) = (ctx.session.as_mut(), sessions) {
                    svc.save_update(s, update).await;
                }
            }
        }
        up.buf.advance(head.len);
        let during = |status, sent, error| Failure::During {
            status,
            sent,
            error,
        };
        let mut sent = 0usize;
        let reusable = match head.framing {
            Framing::Empty => {
                self.write_out().await.map_err(|e| during(status, 0, e))?;
                head.reusable
            }
            Framing::Length(mut left) => {
                loop {
                    let take = (up.buf.len() as u64).min(left) as usize;
                    self.forward(&mut up, take)
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
            Framing::Chunked => {
                let mut scanner = codec::ChunkedScanner::default();
                loop {
                    let end = scanner
                        .feed(&up.buf)
                        .map_err(|_| during(status, sent, bad_response()))?;
                    let take = end.unwrap_or(up.buf.len());
                    self.forward(&mut up, take)
                        .await
                        .map_err(|e| during(status, sent, e))?;
                    sent += take;
                    if end.is_some() {
                        break;
                    }
                    read_upstream(&mut up, read_timeout, pool::BODY_READ, "the worker's body")
                        .await
                        .map_err(|e| during(status, sent, e))?;
                }
                head.reusable && up.buf.is_empty()
            }
            Framing::UntilClose => {
                loop {
                    let take = up.buf.len();
                    self.forward(&mut up, take)
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
            pool::put(addr, up, cap);
        }
        Ok((
            status,
            sent,
            if close { Next::Close } else { Next::KeepAlive },
        ))
    }
}

enum Attempt {
    Response(pool::UpstreamConn, codec::ResponseHead),
    ConnectFailed(Box<Error>),
    Failed(Box<Error>),
}

enum Failure {
    /// Nothing reached the client yet: answer with an error status.
    Before(Box<Error>),
    /// Part of the response reached the client: the connection can only be closed.
    During {
        status: u16,
        sent: usize,
        error: Box<Error>,
    },
}

fn downstream_write_error(e: std::io::Error) -> Box<Error> {
    let mut e = Error::because(ErrorType::WriteError, "writing to the client", e);
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

async fn connect(
    addr: SocketAddr,
    timeout: Option<Duration>,
) -> Result<pool::UpstreamConn, Box<Error>> {
    let connecting = TcpStream::connect(addr);
    let stream = match timeout {
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

/// Sends the request head and reads the response head (skipping 1xx interim answers).
/// The error's flag: the request surely did not reach the worker (the write failed).
async fn exchange(
    up: &mut pool::UpstreamConn,
    request: &[u8],
    read_timeout: Option<Duration>,
    head_request: bool,
) -> Result<codec::ResponseHead, (Box<Error>, bool)> {
    if let Err(e) = up.stream.write_all(request).await {
        let e = Error::because(ErrorType::WriteError, "writing to the worker", e);
        return Err((upstream(e), true));
    }
    up.buf.clear();
    loop {
        match codec::parse_response(&up.buf, head_request) {
            Ok(head) if head.status == 101 => return Err((bad_response(), false)),
            Ok(head) if (100..200).contains(&head.status) => {
                up.buf.advance(head.len);
                continue;
            }
            Ok(head) => return Ok(head),
            Err(ResponseError::Invalid) => return Err((bad_response(), false)),
            Err(ResponseError::Partial) => {}
        }
        read_upstream(
            up,
            read_timeout,
            pool::READ_CHUNK,
            "the worker's response head",
        )
        .await
        .map_err(|e| (e, false))?;
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
    up.buf.reserve(want.max(pool::READ_CHUNK));
    let read = up.stream.read_buf(&mut up.buf);
    let n = match read_timeout {
        Some(t) => match tokio::time::timeout(t, read).await {
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
