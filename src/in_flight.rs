//! Requests being proxied now: plain state owned by the data plane. A leaf: it imports
//! nothing of drover, so the proxy, `state` and `observe` can all use it.
//!
//! The edge limit (`limits.max_in_flight`), the autoscaler, the shutdown drain, the admin
//! API and the live sampler all read this counter; the Prometheus gauge
//! `drover_requests_in_flight` is only a view of it, set when `/metrics` is scraped
//! (`observe::metrics::Metrics::render`).

use std::sync::atomic::{AtomicI64, Ordering};

/// The number of requests between `admit` and `finish`. One atomic add each way.
///
/// Aligned to its own cache lines: every proxy thread writes it on every request, and
/// it sits in `Shared` next to fields those threads only read.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct InFlight(AtomicI64);

/// Proof that one request was counted in: handed back to [`InFlight::leave`] exactly
/// once. Holds no reference, so the request's state can keep it for free.
#[derive(Debug)]
#[must_use = "a request counted in must be counted out with `InFlight::leave`"]
pub struct Counted(());

impl InFlight {
    /// A counter at zero (`Shared` makes one at startup; the same as `default()`).
    pub const fn new() -> Self {
        InFlight(AtomicI64::new(0))
    }

    /// Counts one request in; returns its ticket and the count including it.
    #[inline]
    pub fn enter(&self) -> (Counted, i64) {
        let now = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (Counted(()), now)
    }

    /// Counts the request of `ticket` out.
    #[inline]
    pub fn leave(&self, ticket: Counted) {
        let Counted(()) = ticket;
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests in flight now.
    #[inline]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_in_and_out() {
        let f = InFlight::new();
        assert_eq!(f.get(), 0);
        let (a, n) = f.enter();
        assert_eq!(n, 1);
        let (b, n) = f.enter();
        assert_eq!(n, 2);
        assert_eq!(f.get(), 2);
        f.leave(a);
        assert_eq!(f.get(), 1);
        f.leave(b);
        assert_eq!(f.get(), 0);
    }

    #[test]
    fn balances_across_threads() {
        let f = Arc::new(InFlight::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let (t, n) = f.enter();
                        assert!(n >= 1);
                        f.leave(t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(f.get(), 0);
    }

    #[test]
    fn has_a_cache_line_of_its_own() {
        assert_eq!(std::mem::align_of::<InFlight>(), 128);
    }
}
