//! Idle connections to workers, kept for reuse by the fast path.
//!
//! One pool per data-plane thread (a thread-local): each Pingora thread runs its own
//! single-threaded runtime, so a connection stays on the reactor that registered it and
//! taking one needs no lock. Liveness is read from the reactor's readiness state: a
//! connection the worker closed while idle shows as readable, and only then does the
//! check cost a system call.

use bytes::BytesMut;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Read buffer size of a worker connection; it grows for larger heads.
const READ_BUFFER: usize = 16 * 1024;
/// Free space made before each read from a worker.
pub const READ_CHUNK: usize = 8 * 1024;
/// Largest read of a response body; a pooled connection keeps a buffer at most this big,
/// so the pool holds at most `keepalive_pool_size` x 64 KiB of buffers.
pub const BODY_READ: usize = 64 * 1024;

pub struct UpstreamConn {
    pub stream: TcpStream,
    /// Bytes read from the worker and not yet forwarded.
    pub buf: BytesMut,
    idle_since: Instant,
}

impl UpstreamConn {
    pub fn new(stream: TcpStream) -> Self {
        UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
            idle_since: Instant::now(),
        }
    }

    /// No bytes and no close arrived while the connection sat idle.
    fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be stale: ask the socket.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<UpstreamConn>>,
    count: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A live idle connection to `addr`, the most recently used first.
pub fn take(addr: &SocketAddr, max_idle: Duration) -> Option<UpstreamConn> {
    POOL.with_borrow_mut(|p| {
        let conns = p.idle.get_mut(addr)?;
        while let Some(c) = conns.pop() {
            p.count -= 1;
            if c.idle_since.elapsed() < max_idle && c.is_quiet() {
                return Some(c);
            }
        }
        None
    })
}

/// Keeps a connection for reuse; when the pool holds `cap` connections, the oldest
/// idle connection to the same worker makes room (or this one is closed).
pub fn put(addr: SocketAddr, mut conn: UpstreamConn, cap: usize) {
    if cap == 0 || !conn.buf.is_empty() {
        return;
    }
    if conn.buf.capacity() > BODY_READ {
        conn.buf = BytesMut::with_capacity(READ_BUFFER);
    }
    conn.idle_since = Instant::now();
    POOL.with_borrow_mut(|p| {
        let conns = p.idle.entry(addr).or_default();
        if p.count >= cap {
            if conns.is_empty() {
                return;
            }
            conns.remove(0);
            p.count -= 1;
        }
        conns.push(conn);
        p.count += 1;
    })
}

/// Idle connections held by this thread.
#[cfg(test)]
pub fn idle_count() -> usize {
    POOL.with_borrow(|p| p.count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_connection_the_worker_closed_is_not_reused_and_the_cap_holds() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.unwrap();
            accepted.push(listener.accept().await.unwrap().0);
            put(addr, UpstreamConn::new(c), 2);
        }
        assert_eq!(idle_count(), 2, "the cap of 2 holds");
        // The worker closes the newest idle connection.
        let mut newest = accepted.pop().unwrap();
        newest.shutdown().await.unwrap();
        drop(newest);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = take(&addr, Duration::from_secs(60)).expect("the older one is alive");
        assert!(got.is_quiet());
        assert!(take(&addr, Duration::from_secs(60)).is_none());
        assert_eq!(idle_count(), 0);
        // Too long idle: closed instead of reused.
        put(addr, got, 2);
        assert!(take(&addr, Duration::ZERO).is_none());
    }
}
