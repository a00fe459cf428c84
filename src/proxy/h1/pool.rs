//! Idle connections to workers, kept for reuse by drover's engine.
//!
//! One pool per data-plane thread (a thread-local): each Pingora thread runs its own
//! single-threaded runtime, so a connection stays on the reactor that registered it and
//! taking one needs no lock. Connections are kept per backend; when the pool is full the
//! oldest idle connection (to any backend) makes room, and connections to a backend
//! that left the pool for good are closed the next time this thread uses the pool.
//!
//! A connection is only reused when it is clean: nothing arrived on it after its last
//! response ended. Liveness is read from the reactor's readiness state, so the check
//! costs a system call only when the worker sent something (or closed) while idle.

use crate::balancing::backend::{retirements, Backend};
use bytes::BytesMut;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Read buffer size of a worker connection; it grows for larger heads.
const READ_BUFFER: usize = 16 * 1024;
/// Free space made before each read from a worker.
pub const READ_CHUNK: usize = 8 * 1024;
/// Largest read of a response body.
pub const BODY_READ: usize = 64 * 1024;
/// What a worker connection's buffer grows to once a body needs more than one small read:
/// a whole `BODY_READ` plus room for a response head, so on a reused connection a 64 KiB
/// response arrives in one read and leaves in one write. A pooled connection keeps a
/// buffer at most this big, so the pool holds at most `keepalive_pool_size` x 80 KiB of
/// buffers (memory pages are only touched where data landed).
pub const LARGE_BUFFER: usize = BODY_READ + READ_BUFFER;

pub struct UpstreamConn {
    pub stream: TcpStream,
    /// Bytes read from the worker and not yet forwarded.
    pub buf: BytesMut,
    idle_since: Instant,
    /// The timer of this connection's response waits, kept while it is pooled.
    pub read_deadline: super::deadline::Deadline,
}

impl UpstreamConn {
    pub fn new(stream: TcpStream) -> Self {
        UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
            idle_since: Instant::now(),
            read_deadline: super::deadline::Deadline::default(),
        }
    }

    /// Empties the buffer for the next response and gives the next read the whole
    /// allocation again: forwarding advances the buffer's start, and only a reclaim moves
    /// it back (without it, a reused connection read a 64 KiB response as a short read
    /// and a tail). No allocation.
    pub fn start_response(&mut self) {
        self.buf.clear();
        let _ = self.buf.try_reclaim(LARGE_BUFFER) || self.buf.try_reclaim(READ_BUFFER);
    }

    /// Makes room in the buffer for a read of `want` bytes (at least `READ_CHUNK`). A body
    /// read (`want` above `READ_CHUNK`) grows the buffer to `LARGE_BUFFER` at once, which
    /// is kept while pooled, so the next large response on the connection arrives in one
    /// read.
    pub fn make_room(&mut self, want: usize) {
        let need = want.max(READ_CHUNK);
        if self.buf.capacity() - self.buf.len() >= need {
            return;
        }
        if want > READ_CHUNK && self.buf.is_empty() {
            // Nothing to carry over: the allocation's whole size if it is the large one,
            // else a fresh buffer of the large size (not a copy).
            if !self.buf.try_reclaim(LARGE_BUFFER) {
                self.buf = BytesMut::with_capacity(LARGE_BUFFER);
            }
        } else {
            self.buf.reserve(need);
        }
    }

    /// No bytes and no close arrived since the last response ended.
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

struct Idle {
    backend: Weak<Backend>,
    conns: Vec<UpstreamConn>,
}

#[derive(Default)]
struct Pool {
    /// Keyed by backend id, which drover assigns (no client picks it, so no flooding
    /// concern): foldhash instead of std's SipHash, which cost ~300 instructions a
    /// request for the two lookups.
    idle: HashMap<u64, Idle, foldhash::fast::FixedState>,
    count: usize,
    /// `retirements()` when this thread last dropped connections to retired backends.
    seen_retirements: u64,
}

impl Pool {
    /// Closes idle connections to backends that left the pool for good.
    fn purge_retired(&mut self) {
        let now = retirements();
        if now == self.seen_retirements {
            return;
        }
        self.seen_retirements = now;
        let mut dropped = 0;
        self.idle.retain(|_, idle| {
            let live = idle.backend.upgrade().is_some_and(|b| !b.is_retired());
            if !live {
                dropped += idle.conns.len();
            }
            live
        });
        self.count -= dropped;
    }

    /// Closes the oldest idle connection, whichever backend it belongs to.
    fn evict_oldest(&mut self) {
        let oldest = self
            .idle
            .iter()
            .filter_map(|(id, idle)| idle.conns.first().map(|c| (c.idle_since, *id)))
            .min();
        if let Some((_, id)) = oldest {
            if let Some(idle) = self.idle.get_mut(&id) {
                idle.conns.remove(0);
                self.count -= 1;
                if idle.conns.is_empty() {
                    self.idle.remove(&id);
                }
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A live, clean idle connection to `backend`, the most recently used first.
pub fn take(backend: &Arc<Backend>, max_idle: Duration) -> Option<UpstreamConn> {
    POOL.with_borrow_mut(|p| {
        p.purge_retired();
        let idle = p.idle.get_mut(&backend.id)?;
        let mut found = None;
        while let Some(c) = idle.conns.pop() {
            p.count -= 1;
            if c.idle_since.elapsed() < max_idle && c.is_quiet() {
                found = Some(c);
                break;
            }
        }
        if idle.conns.is_empty() {
            p.idle.remove(&backend.id);
        }
        found
    })
}

/// Keeps a connection for reuse. It must be clean (its last response ended exactly at the
/// end of what was read, and nothing arrived since); when the pool holds `cap`
/// connections the oldest one makes room.
pub fn put(backend: &Arc<Backend>, mut conn: UpstreamConn, cap: usize) {
    if cap == 0 || !conn.buf.is_empty() || backend.is_retired() || !conn.is_quiet() {
        return;
    }
    if conn.buf.capacity() > LARGE_BUFFER {
        conn.buf = BytesMut::with_capacity(READ_BUFFER);
    }
    conn.idle_since = Instant::now();
    POOL.with_borrow_mut(|p| {
        p.purge_retired();
        while p.count >= cap && p.count > 0 {
            p.evict_oldest();
        }
        p.idle
            .entry(backend.id)
            .or_insert_with(|| Idle {
                backend: Arc::downgrade(backend),
                conns: Vec::new(),
            })
            .conns
            .push(conn);
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
    use crate::resilience::breaker::{Breaker, BreakerPolicy};
    use pingora_core::upstreams::peer::HttpPeer;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn backend(id: u64, addr: std::net::SocketAddr) -> Arc<Backend> {
        Arc::new(Backend::new(
            id,
            &format!("b{id}"),
            None,
            addr,
            1,
            HttpPeer::new(addr, false, String::new()),
            Breaker::new(BreakerPolicy::disabled()),
        ))
    }

    async fn connections(n: usize) -> (std::net::SocketAddr, Vec<TcpStream>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..n {
            ours.push(TcpStream::connect(addr).await.unwrap());
            theirs.push(listener.accept().await.unwrap().0);
        }
        (addr, ours, theirs)
    }

    #[tokio::test]
    async fn a_body_read_grows_the_buffer_once_and_the_next_response_gets_all_of_it() {
        let (_addr, mut ours, _theirs) = connections(1).await;
        let mut c = UpstreamConn::new(ours.remove(0));
        assert_eq!(c.buf.capacity(), READ_BUFFER);
        // A head read fits the fresh buffer: no growth.
        c.make_room(READ_CHUNK);
        assert_eq!(c.buf.capacity(), READ_BUFFER);
        // A 64 KiB body read: grown to the large size in one step.
        c.make_room(BODY_READ);
        assert!(c.buf.capacity() >= LARGE_BUFFER);
        // Forwarding consumed a whole response: the buffer's start moved forward...
        c.buf.extend_from_slice(&vec![b'x'; 70_000]);
        bytes::Buf::advance(&mut c.buf, 70_000);
        assert!(c.buf.capacity() < READ_BUFFER);
        // ...and the next response gets the whole allocation back, without allocating.
        let before = c.buf.as_ptr() as usize;
        c.start_response();
        assert!(c.buf.capacity() >= LARGE_BUFFER);
        assert!(c.buf.as_ptr() as usize <= before);
        // Bytes not yet forwarded are kept when room is made.
        c.buf.extend_from_slice(b"abc");
        c.make_room(BODY_READ);
        assert_eq!(&c.buf[..], b"abc");
        assert!(c.buf.capacity() - c.buf.len() >= BODY_READ);
    }

    #[tokio::test]
    async fn closed_and_dirty_connections_are_not_reused_and_the_cap_holds() {
        let (addr, ours, mut theirs) = connections(3).await;
        let b = backend(1, addr);
        for c in ours {
            put(&b, UpstreamConn::new(c), 2);
        }
        assert_eq!(idle_count(), 2, "the cap of 2 holds");
        // The worker closes the newest idle connection.
        let mut newest = theirs.pop().unwrap();
        newest.shutdown().await.unwrap();
        drop(newest);
        // A late byte arrives on the other.
        theirs[1].write_all(b"X").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(&b, Duration::from_secs(60)).is_none());
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test]
    async fn the_oldest_connection_of_any_backend_makes_room_and_retired_ones_go() {
        let (addr, ours, _theirs) = connections(3).await;
        let (a, b) = (backend(10, addr), backend(11, addr));
        let mut ours = ours.into_iter();
        put(&a, UpstreamConn::new(ours.next().unwrap()), 2);
        put(&a, UpstreamConn::new(ours.next().unwrap()), 2);
        put(&b, UpstreamConn::new(ours.next().unwrap()), 2);
        assert_eq!(idle_count(), 2);
        assert!(
            take(&b, Duration::from_secs(60)).is_some(),
            "b's connection was kept"
        );
        a.retire();
        assert!(take(&a, Duration::from_secs(60)).is_none());
        assert_eq!(idle_count(), 0, "a's connections were closed");
    }
}
