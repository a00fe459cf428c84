//! Spare connection buffers, kept per thread.
//!
//! Why: every client connection needs a read buffer and a write buffer of
//! [`BUFFER`] bytes. At that size mimalloc leaves its small-object fast path (objects up
//! to 1 KiB): with them recycled (in the same step an empty worker buffer stopped being
//! parsed), callgrind counts ~850 fewer instructions per request
//! when each request brings its own connection (`ab`, HTTP/1.0 clients, `Connection:
//! close`), 25.2k -> 24.3k (docs/PERFORMANCE.md). A closed or idle
//! connection gives its buffers back here and the next connection takes them.
//!
//! Bounded: at most [`KEPT`] buffers per thread, each of at most [`LARGEST`] bytes; a
//! buffer another holder still shares (a request head that outlives its connection) is
//! freed by its last holder instead of kept.

use bytes::BytesMut;
use std::cell::RefCell;

/// The size of a new connection buffer.
pub const BUFFER: usize = 4096;
/// Buffers kept per thread (at most `KEPT * LARGEST` bytes: 1 MiB).
pub const KEPT: usize = 64;
/// A buffer that grew past this (a large head, a coalesced body) is freed, not kept.
pub const LARGEST: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`BUFFER`] bytes.
pub fn take() -> BytesMut {
    SPARE
        .with_borrow_mut(|spare| spare.pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUFFER))
}

/// Keeps `buf` for another connection when it is whole, unshared and not oversized.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    // `try_reclaim` makes the whole allocation usable again without allocating, and
    // fails when another handle (a frozen request head) still shares it.
    if !buf.try_reclaim(BUFFER) || buf.capacity() > LARGEST {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(buf);
        }
    });
}

/// Buffers kept on this thread now.
#[cfg(test)]
fn kept() -> usize {
    SPARE.with_borrow(|spare| spare.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_empty_and_whole() {
        let mut buf = take();
        let ptr = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        let head = buf.split_to(10).freeze();
        drop(head);
        give(buf);
        let again = take();
        assert!(again.is_empty());
        assert!(again.capacity() >= BUFFER);
        assert_eq!(again.as_ptr(), ptr, "the same allocation, from its start");
    }

    #[test]
    fn a_buffer_still_shared_is_not_kept() {
        while kept() > 0 {
            drop(take());
        }
        let mut buf = take();
        buf.extend_from_slice(&[b'x'; 100]);
        let head = buf.split_to(100).freeze();
        give(buf);
        assert_eq!(
            kept(),
            0,
            "a frozen request head still holds the allocation"
        );
        drop(head);
    }

    #[test]
    fn at_most_kept_buffers_and_none_oversized() {
        let many: Vec<BytesMut> = (0..KEPT + 10).map(|_| take()).collect();
        for b in many {
            give(b);
        }
        assert_eq!(kept(), KEPT);
        let before = kept();
        give(BytesMut::with_capacity(LARGEST * 2));
        assert_eq!(kept(), before, "full, and oversized anyway");
        while kept() > 0 {
            drop(take());
        }
        give(BytesMut::with_capacity(LARGEST * 2));
        assert_eq!(kept(), 0, "an oversized buffer is freed");
        give(BytesMut::with_capacity(16));
        assert_eq!(kept(), 0, "one too small for BUFFER bytes is freed");
    }
}
