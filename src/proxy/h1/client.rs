//! The client side of one HTTP/1 connection, whichever carrier serves its requests.
//!
//! drover's engine reads every request head itself (so the same head deadline, size cap
//! and validation apply to both carriers), then either serves the request or hands it to
//! Pingora's proxy. Pingora then reads through this wrapper, which lets it see exactly
//! the bytes of that one request (its head, then its body as framed by `proxy::http`)
//! and nothing of the next one: bytes of a pipelined next request stay here for drover's
//! engine to read after Pingora gives the connection back. A hand-over is therefore
//! atomic (Pingora receives the request byte-for-byte or not at all) and pipelining
//! works across carriers.
//!
//! Writes carry the send timeout (`limits.client_send_timeout`): a client that stops
//! reading is dropped once no byte could be written for that long, freeing the request's
//! backend slot (nginx's `send_timeout`).
//!
//! A socket from drover's own accept loop is read and written directly ([`Transport::Tcp`])
//! rather than through Pingora's L4 stream, whose construction reads the clock and
//! allocates a socket digest, and whose drop makes a `getsockopt` call to check the socket:
//! per connection that is a system call and two allocations, which a client opening a
//! connection per request (`ab`, HTTP/1.0) pays on every request. `TCP_NODELAY` is set as
//! nginx does, not at accept but only once a second write is due: the first write of a
//! connection is never held by Nagle's algorithm (nothing is unacknowledged yet), so a
//! connection that carries one response and closes never needs the call.

use super::deadline::{Deadline, Elapsed};
use crate::wire::chunked::ChunkedScanner;
use crate::wire::request::BodyFraming;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Free space made before each read from the client.
const READ_CHUNK: usize = 4096;
/// Most bytes of a next pipelined request read while the current one is served by Pingora.
const IDLE_READ: usize = 4096;

/// What a reader of this stream (Pingora) may still take.
enum Allowance {
    /// Everything: drover's own engine, or a protocol upgrade's tunnel.
    Unlimited,
    /// The rest of one request: `left` bytes known to belong to it, then, for a chunked
    /// body, whatever the scanner finds up to the body's end.
    Request {
        left: u64,
        chunked: Option<ChunkedScanner>,
    },
}

/// The client's connection underneath the stream.
enum Transport {
    /// A socket drover's own accept loop took (the cleartext listener).
    Tcp(AcceptedTcp),
    /// A stream Pingora's listeners made: TLS, a listening socket inherited in a binary
    /// upgrade, or a cleartext connection sniffed for h2c.
    Pingora(Stream),
}

struct AcceptedTcp {
    socket: TcpStream,
    peer: SocketAddr,
    /// Pingora's view of the socket, built only when a request is handed to Pingora.
    digest: OnceLock<Arc<SocketDigest>>,
    /// Bytes were written already: a next write sets `TCP_NODELAY` first.
    wrote: bool,
    nodelay: bool,
}

impl AcceptedTcp {
    /// Before a write that is not the connection's first: from now on no small write
    /// may wait for an acknowledgement (a streamed body, a keep-alive connection's next
    /// response).
    fn before_write(&mut self) {
        if self.wrote && !self.nodelay {
            self.nodelay = true;
            if let Err(e) = self.socket.set_nodelay(true) {
                log::debug!("TCP_NODELAY on a client connection from {}: {e}", self.peer);
            }
        }
    }

    fn after_write(&mut self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote = true;
        }
    }

    fn digest(&self) -> Arc<SocketDigest> {
        self.digest
            .get_or_init(|| {
                let digest = SocketDigest::from_raw_fd(self.socket.as_raw_fd());
                let _ = digest.peer_addr.set(Some(self.peer.into()));
                Arc::new(digest)
            })
            .clone()
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp(t) => f
                .debug_struct("Tcp")
                .field("socket", &t.socket)
                .field("nodelay", &t.nodelay)
                .finish(),
            Transport::Pingora(s) => s.fmt(f),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(&mut t.socket).poll_read(cx, out),
            Transport::Pingora(s) => Pin::new(s).poll_read(cx, out),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(t) => {
                t.before_write();
                let r = Pin::new(&mut t.socket).poll_write(cx, data);
                t.after_write(&r);
                r
            }
            Transport::Pingora(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(t) => {
                t.before_write();
                let r = Pin::new(&mut t.socket).poll_write_vectored(cx, bufs);
                t.after_write(&r);
                r
            }
            Transport::Pingora(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(t) => t.socket.is_write_vectored(),
            Transport::Pingora(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(&mut t.socket).poll_flush(cx),
            Transport::Pingora(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(&mut t.socket).poll_shutdown(cx),
            Transport::Pingora(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

pub struct ClientStream {
    inner: Transport,
    /// Bytes read from the client and not yet taken by a carrier.
    pub buf: BytesMut,
    allowance: Allowance,
    send_timeout: Option<Duration>,
    send_timer: Option<Pin<Box<Sleep>>>,
    /// The timer of this connection's read waits (`fill_by`), kept across requests.
    read_deadline: Deadline,
    /// A byte of the next request arrived while Pingora polled for a client close; it is
    /// kept, and Pingora's further polls wait instead of reading on.
    idle_stashed: bool,
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("inner", &self.inner)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl ClientStream {
    /// A connection from one of Pingora's listeners.
    pub fn new(inner: Stream, send_timeout: Option<Duration>) -> Self {
        Self::over(Transport::Pingora(inner), send_timeout)
    }

    /// A connection drover's own accept loop took from `peer`.
    pub fn accepted(socket: TcpStream, peer: SocketAddr, send_timeout: Option<Duration>) -> Self {
        Self::over(
            Transport::Tcp(AcceptedTcp {
                socket,
                peer,
                digest: OnceLock::new(),
                wrote: false,
                nodelay: false,
            }),
            send_timeout,
        )
    }

    fn over(inner: Transport, send_timeout: Option<Duration>) -> Self {
        ClientStream {
            inner,
            buf: super::recycle::take(),
            allowance: Allowance::Unlimited,
            send_timeout,
            send_timer: None,
            read_deadline: Deadline::default(),
            idle_stashed: false,
        }
    }

    #[cfg(test)]
    pub fn set_send_timeout(&mut self, t: Option<Duration>) {
        self.send_timeout = t;
    }

    /// Gives the read buffer's memory back while the connection is idle (it is empty
    /// then); the next read allocates it again.
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            super::recycle::give(std::mem::take(&mut self.buf));
        }
        self.read_deadline.release();
    }

    /// Reads more bytes from the client into `buf` until `deadline`, on the
    /// connection's kept timer; `Ok(Ok(0))`: the client closed.
    pub async fn fill_by(&mut self, deadline: Instant) -> Result<io::Result<usize>, Elapsed> {
        let ClientStream {
            inner,
            buf,
            read_deadline,
            ..
        } = self;
        if buf.capacity() == 0 {
            // Released while idle (`release_buffer`): a spare one, if there is one.
            *buf = super::recycle::take();
        }
        let fill = std::future::poll_fn(|cx| {
            buf.reserve(READ_CHUNK);
            tokio_util::io::poll_read_buf(Pin::new(&mut *inner), cx, &mut *buf)
        });
        read_deadline.run(deadline, fill).await
    }

    /// Reads more bytes from the client into `buf`; `Ok(0)`: the client closed. (The
    /// engine reads with [`fill_by`](Self::fill_by), which has a deadline.)
    #[cfg(test)]
    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, READ_CHUNK)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf)
    }

    /// Lets a reader take the next request (`head_len` bytes of head, then its body) and
    /// nothing after it. `tunnel`: a protocol upgrade; once it is accepted the bytes that
    /// follow are the new protocol's, so the reader may take everything.
    pub fn allow_request(&mut self, head_len: usize, framing: BodyFraming, tunnel: bool) {
        self.idle_stashed = false;
        self.allowance = if tunnel {
            Allowance::Unlimited
        } else {
            let (body, chunked) = match framing {
                BodyFraming::None => (0, None),
                BodyFraming::Length(n) => (n, None),
                BodyFraming::Chunked => (0, Some(ChunkedScanner::default())),
            };
            Allowance::Request {
                left: head_len as u64 + body,
                chunked,
            }
        };
    }

    /// Back to drover's engine: reads are no longer limited.
    pub fn reclaim(&mut self) {
        self.allowance = Allowance::Unlimited;
        self.idle_stashed = false;
    }

    /// The request handed to a reader was read completely.
    pub fn request_consumed(&self) -> bool {
        match &self.allowance {
            Allowance::Unlimited => true,
            Allowance::Request { left, chunked } => *left == 0 && chunked.is_none(),
        }
    }

    /// The client's address, when the socket has one.
    pub fn peer_addr(&self) -> Option<PeerAddr> {
        match &self.inner {
            Transport::Tcp(t) => Some(t.peer.into()),
            Transport::Pingora(s) => s.get_socket_digest().and_then(|d| d.peer_addr().cloned()),
        }
    }

    fn copy_out(&mut self, out: &mut ReadBuf<'_>, max: u64) -> usize {
        let n = (self.buf.len() as u64).min(max).min(out.remaining() as u64) as usize;
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        n
    }

    fn poll_send_deadline<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(limit) = self.send_timeout else {
            return Poll::Pending;
        };
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        self.send_timer = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no response bytes within limits.client_send_timeout",
        )))
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        super::recycle::give(std::mem::take(&mut self.buf));
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let (left, scanning) = match &this.allowance {
                Allowance::Unlimited => {
                    if !this.buf.is_empty() {
                        this.copy_out(out, u64::MAX);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                Allowance::Request { left, chunked } => (*left, chunked.is_some()),
            };
            if left > 0 {
                if this.buf.is_empty() && ready!(this.poll_fill(cx, READ_CHUNK))? == 0 {
                    // The client closed in the middle of the request: the reader sees EOF.
                    return Poll::Ready(Ok(()));
                }
                let n = this.copy_out(out, left) as u64;
                if let Allowance::Request { left, .. } = &mut this.allowance {
                    *left -= n;
                }
                return Poll::Ready(Ok(()));
            }
            if scanning {
                if this.buf.is_empty() && ready!(this.poll_fill(cx, READ_CHUNK))? == 0 {
                    return Poll::Ready(Ok(()));
                }
                if let Allowance::Request { left, chunked } = &mut this.allowance {
                    if let Some(scanner) = chunked {
                        let scan = scanner.scan(&this.buf).map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body")
                        })?;
                        *left = scan.consumed as u64;
                        if scan.done {
                            *chunked = None;
                        }
                    }
                }
                continue;
            }
            // The request is complete. A reader polling now is waiting for the client to
            // close (Pingora's idle check): report a close, but keep any byte of a next
            // request here and let the reader wait instead.
            if !this.buf.is_empty() || this.idle_stashed {
                return Poll::Pending;
            }
            if ready!(this.poll_fill(cx, IDLE_READ))? == 0 {
                return Poll::Ready(Ok(()));
            }
            this.idle_stashed = true;
            return Poll::Pending;
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                this.send_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_send_deadline(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.send_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_send_deadline(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.send_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_send_deadline(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        let limit = self.send_timeout.unwrap_or(Duration::from_secs(5));
        match &mut self.inner {
            Transport::Tcp(t) => {
                let _ = tokio::time::timeout(limit, t.socket.shutdown()).await;
            }
            Transport::Pingora(s) => {
                let _ = tokio::time::timeout(limit, s.shutdown()).await;
            }
        }
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        match &self.inner {
            // The descriptor, as Pingora's L4 stream answers.
            Transport::Tcp(t) => t.socket.as_raw_fd(),
            Transport::Pingora(s) => s.id(),
        }
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        match &self.inner {
            Transport::Tcp(_) => None,
            Transport::Pingora(s) => s.get_ssl(),
        }
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        match &self.inner {
            Transport::Tcp(_) => None,
            Transport::Pingora(s) => s.get_ssl_digest(),
        }
    }
    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        match &self.inner {
            Transport::Tcp(_) => None,
            Transport::Pingora(s) => s.selected_alpn_proto(),
        }
    }
}

impl GetTimingDigest for ClientStream {
    /// An accepted socket keeps no establishment time: nothing drover runs reads it, and
    /// taking it would cost a clock read per connection.
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        match &self.inner {
            Transport::Tcp(_) => vec![None],
            Transport::Pingora(s) => s.get_timing_digest(),
        }
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        match &self.inner {
            Transport::Tcp(_) => None,
            Transport::Pingora(s) => s.get_proxy_digest(),
        }
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        match &self.inner {
            Transport::Tcp(t) => Some(t.digest()),
            Transport::Pingora(s) => s.get_socket_digest(),
        }
    }
}

impl Peek for ClientStream {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ClientStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let std = server.into_std().unwrap();
        let l4: pingora_core::protocols::l4::stream::Stream =
            pingora_core::protocols::l4::stream::Stream::from(
                tokio::net::TcpStream::from_std(std).unwrap(),
            );
        (ClientStream::new(Box::new(l4), None), client)
    }

    async fn accepted_pair() -> (ClientStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = l.accept().await.unwrap();
        (ClientStream::accepted(server, peer, None), client)
    }

    fn nodelay(s: &ClientStream) -> bool {
        match &s.inner {
            Transport::Tcp(t) => t.socket.nodelay().unwrap(),
            Transport::Pingora(_) => unreachable!("an accepted socket"),
        }
    }

    #[tokio::test]
    async fn an_accepted_socket_sets_nodelay_only_before_its_second_write() {
        let (mut s, mut client) = accepted_pair().await;
        assert!(!nodelay(&s), "not at accept");
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(!nodelay(&s), "the first write is never held by Nagle");
        let parts = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"c")];
        let n = s.write_vectored(&parts).await.unwrap();
        assert!(nodelay(&s), "set before the second write");
        let mut got = vec![0u8; 19 + n];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[19..], &b"abc"[..n]);
    }

    #[tokio::test]
    async fn an_accepted_socket_tells_pingora_its_peer_and_descriptor() {
        let (s, client) = accepted_pair().await;
        let peer: PeerAddr = client.local_addr().unwrap().into();
        assert_eq!(s.peer_addr(), Some(peer.clone()));
        let digest = s.get_socket_digest().expect("a socket digest");
        assert_eq!(digest.peer_addr(), Some(&peer));
        let again = s.get_socket_digest().expect("a socket digest");
        assert!(Arc::ptr_eq(&digest, &again), "built once");
        match &s.inner {
            Transport::Tcp(t) => assert_eq!(s.id(), t.socket.as_raw_fd()),
            Transport::Pingora(_) => unreachable!("an accepted socket"),
        }
        assert!(s.get_ssl_digest().is_none() && s.selected_alpn_proto().is_none());
    }

    #[tokio::test]
    async fn a_reader_gets_exactly_one_request_and_the_next_stays() {
        let (mut s, mut client) = pair().await;
        let first = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut all = first.to_vec();
        all.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        client.write_all(&all).await.unwrap();
        while s.buf.len() < all.len() {
            s.fill().await.unwrap();
        }
        let head_len = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        s.allow_request(head_len, BodyFraming::Chunked, false);
        let mut got = vec![0u8; first.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, first);
        assert!(s.request_consumed());
        // Nothing more for this reader: an idle poll waits (the next request is held).
        let mut one = [0u8; 1];
        let idle = tokio::time::timeout(Duration::from_millis(50), s.read(&mut one)).await;
        assert!(idle.is_err(), "the reader must not see the next request");
        s.reclaim();
        assert_eq!(&s.buf[..], b"GET /next HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_client_close_after_the_request_reads_as_eof() {
        let (mut s, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        s.fill().await.unwrap();
        s.allow_request(s.buf.len(), BodyFraming::None, false);
        let mut head = vec![0u8; s.buf.len()];
        s.read_exact(&mut head).await.unwrap();
        client.shutdown().await.unwrap();
        let mut one = [0u8; 1];
        assert_eq!(s.read(&mut one).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_to_a_client_that_never_reads_time_out() {
        let (mut s, _client) = pair().await;
        s.set_send_timeout(Some(Duration::from_secs(1)));
        let chunk = vec![0u8; 1 << 20];
        let r = async {
            loop {
                s.write_all(&chunk).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        }
        .await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
