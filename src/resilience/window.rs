//! A lock-free rolling window of request counts, split into a fixed number of buckets.
//!
//! Breakers (failure and slow-call ratios) and the retry budget need "how many of the
//! last N seconds' requests were X" on the hot path without a lock. Each bucket covers
//! `window / BUCKETS` and carries the epoch (bucket number since the window's start) it
//! counts for; a writer that finds an old epoch claims the bucket with a CAS and zeroes
//! it. Counts written by a racing writer in the instant between the claim and the zeroing
//! can be lost: the window is a statistic for thresholds, not an accounting ledger, and
//! a lost count out of thousands never changes a decision that matters.
//!
//! Time is passed in (`Instant`), so tests drive it without sleeping. Memory is fixed:
//! `BUCKETS` × 24 bytes per window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets per window: 10 gives a resolution of a tenth of the window.
pub const BUCKETS: usize = 10;

/// Three counters packed in one word (21 bits each, saturating at ~2 million per
/// bucket) so a record is one atomic add.
const FIELD_BITS: u32 = 21;
const FIELD_MAX: u64 = (1 << FIELD_BITS) - 1;

#[derive(Debug, Default)]
struct Bucket {
    /// Bucket number since `base` that `counts` belongs to, plus one (0 = never used).
    epoch: AtomicU64,
    counts: AtomicU64,
}

/// Sums over the live part of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Every request recorded with [`Window::record`] (not [`Window::record_a`]).
    pub total: u64,
    /// First counter (failures for breakers, retries for the retry budget).
    pub a: u64,
    /// Second counter (slow calls for breakers).
    pub b: u64,
}

/// A rolling window of [`BUCKETS`] buckets, each with three saturating counters;
/// lock-free, with fixed memory.
#[derive(Debug)]
pub struct Window {
    base: Instant,
    bucket_nanos: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// A window of length `len` (at least `BUCKETS` ms) starting at `base`.
    pub fn new(len: Duration, base: Instant) -> Self {
        let bucket_nanos = (len.as_nanos() as u64 / BUCKETS as u64).max(1_000_000);
        Window {
            base,
            bucket_nanos,
            buckets: Default::default(),
        }
    }

    /// The length covered: the `len` given to `new`, rounded down to whole buckets
    /// (at least `BUCKETS` ms).
    pub fn len(&self) -> Duration {
        Duration::from_nanos(self.bucket_nanos * BUCKETS as u64)
    }

    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_nanos() as u64 / self.bucket_nanos + 1
    }

    /// Adds one request (`total`), and `a`/`b` when set.
    pub fn record(&self, now: Instant, a: bool, b: bool) {
        self.add(
            now,
            1 | (a as u64) << FIELD_BITS | (b as u64) << (2 * FIELD_BITS),
        );
    }

    /// Adds to `a` only (the retry budget counts retries apart from requests).
    pub fn record_a(&self, now: Instant) {
        self.add(now, 1 << FIELD_BITS);
    }

    fn add(&self, now: Instant, packed: u64) {
        let epoch = self.epoch(now);
        let bucket = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen != epoch {
            if seen > epoch {
                // A writer with a later clock reading already moved on; count there.
                bucket.counts.fetch_add(packed, Ordering::Relaxed);
                return;
            }
            if bucket
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                bucket.counts.store(packed, Ordering::Relaxed);
                return;
            }
        }
        // Saturate each field rather than carry into the next one.
        let cur = bucket.counts.load(Ordering::Relaxed);
        let full = |shift: u32| (cur >> shift) & FIELD_MAX == FIELD_MAX;
        if full(0) || full(FIELD_BITS) || full(2 * FIELD_BITS) {
            return;
        }
        bucket.counts.fetch_add(packed, Ordering::Relaxed);
    }

    /// Sums the buckets of the last `BUCKETS` epochs (the current one included).
    pub fn totals(&self, now: Instant) -> Totals {
        let epoch = self.epoch(now);
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        let mut t = Totals::default();
        for b in &self.buckets {
            let e = b.epoch.load(Ordering::Acquire);
            if e >= oldest && e <= epoch && e != 0 {
                let c = b.counts.load(Ordering::Relaxed);
                t.total += c & FIELD_MAX;
                t.a += (c >> FIELD_BITS) & FIELD_MAX;
                t.b += (c >> (2 * FIELD_BITS)) & FIELD_MAX;
            }
        }
        t
    }

    /// Forgets everything (a breaker closing starts a fresh window).
    pub fn clear(&self) {
        for b in &self.buckets {
            b.epoch.store(0, Ordering::Release);
            b.counts.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_old_buckets() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(10), t0);
        w.record(t0, true, false);
        w.record(t0 + Duration::from_secs(1), false, true);
        w.record(t0 + Duration::from_secs(2), false, false);
        let t = w.totals(t0 + Duration::from_secs(2));
        assert_eq!(
            t,
            Totals {
                total: 3,
                a: 1,
                b: 1
            }
        );
        // 10.5 s later the first bucket (0..1 s) has left the window.
        let t = w.totals(t0 + Duration::from_millis(10_500));
        assert_eq!(
            t,
            Totals {
                total: 2,
                a: 0,
                b: 1
            }
        );
        // After a full window of silence nothing is left.
        assert_eq!(w.totals(t0 + Duration::from_secs(30)), Totals::default());
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(1), t0);
        for _ in 0..5 {
            w.record(t0, true, true);
        }
        // Same slot (epoch + BUCKETS), one window later.
        let later = t0 + Duration::from_secs(1);
        w.record(later, false, false);
        assert_eq!(
            w.totals(later),
            Totals {
                total: 1,
                a: 0,
                b: 0
            }
        );
    }

    #[test]
    fn record_a_counts_apart_from_total_and_clear_resets() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(10), t0);
        w.record_a(t0);
        w.record_a(t0);
        w.record(t0, false, false);
        assert_eq!(
            w.totals(t0),
            Totals {
                total: 1,
                a: 2,
                b: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(t0), Totals::default());
    }

    #[test]
    fn fields_saturate_instead_of_overflowing_into_each_other() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(10), t0);
        w.buckets[1].epoch.store(1, Ordering::Relaxed);
        w.buckets[1].counts.store(FIELD_MAX, Ordering::Relaxed);
        w.record(t0, false, false);
        let t = w.totals(t0);
        assert_eq!((t.total, t.a, t.b), (FIELD_MAX, 0, 0));
    }
}
