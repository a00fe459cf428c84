//! `predictive`: route each request to the backend predicted to *finish it first*.
//!
//! The model (docs/MODELS.md, "Predictive balancing") treats each backend as a queue
//! that works through units of work at its own speed:
//!
//! ```text
//! finish(b, c) = s_b × (P_b + k_c)
//! ```
//!
//! - `k_c`: the expected cost of a request of class `c` (method + path shape, see
//!   [`class_key`]) in work units (nanoseconds on a backend of speed 1), learned online
//!   per class in a fixed table of [`CLASSES`] lock-free slots;
//! - `P_b`: the work already queued on backend `b`: the sum of `k` of its requests in
//!   flight (kept on `Backend`, so it survives strategy switches);
//! - `s_b`: the backend's time per unit of work, learned online (a slow machine, a
//!   noisy neighbour, a backend whose requests queue inside it).
//!
//! Each completion teaches both factors from what the request saw:
//! `t = s_b × (P_at_dispatch + k_c)` gives `s` ← t / (P + k) and `k` ← t / s − P,
//! each an EWMA ([`ALPHA`]). Failures are charged [`super::backend::ERROR_PENALTY`] so a
//! backend failing fast does not look fast. A backend that got no traffic forgets its
//! speed towards the pool's mean (decay `balancing.latency_decay`), so it is probed again.
//!
//! Least-connections counts requests but not what they cost; peak-EWMA knows a backend's
//! recent latency but neither the cost of what is queued there nor of the request being
//! placed. Predicting the finish time uses all three, which is what keeps a cheap
//! request from queueing behind an expensive one on a slow backend.

use super::backend::Backend;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Slots of the class table (a power of two). Classes that hash to the same slot share
/// an estimate; memory is fixed at `CLASSES × 16` bytes.
pub const CLASSES: usize = 1024;
/// Weight of one new observation in the EWMAs.
pub const ALPHA: f64 = 0.1;
/// Cost assumed for a class never seen (5 ms on a speed-1 backend).
pub const DEFAULT_COST_NANOS: f64 = 5_000_000.0;
/// Speeds are kept within these bounds (relative units; see module docs).
const MIN_SPEED: f64 = 1e-3;
const MAX_SPEED: f64 = 1e3;
/// Costs are kept within 1 µs .. 10 min.
const MIN_COST: f64 = 1_000.0;
const MAX_COST: f64 = 600e9;

struct Slot {
    cost_bits: AtomicU64,
    samples: AtomicU32,
}

static TABLE: [Slot; CLASSES] = [const {
    Slot {
        cost_bits: AtomicU64::new(0),
        samples: AtomicU32::new(0),
    }
}; CLASSES];

/// A request's class: which slot of the cost table it learns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class(u32);

impl Class {
    /// The slot `key` (a [`class_key`]) falls in: its low bits, modulo [`CLASSES`].
    pub fn of_key(key: u64) -> Class {
        Class((key as usize & (CLASSES - 1)) as u32)
    }

    fn slot(self) -> &'static Slot {
        &TABLE[self.0 as usize]
    }

    /// Expected cost in work units (ns on a speed-1 backend).
    pub fn cost(self) -> f64 {
        let v = f64::from_bits(self.slot().cost_bits.load(Ordering::Relaxed));
        if v == 0.0 {
            DEFAULT_COST_NANOS
        } else {
            v
        }
    }

    /// Observations learned so far (saturating).
    pub fn samples(self) -> u32 {
        self.slot().samples.load(Ordering::Relaxed)
    }

    fn learn(self, sample: f64) {
        let s = self.slot();
        let n = s.samples.load(Ordering::Relaxed);
        let prev = f64::from_bits(s.cost_bits.load(Ordering::Relaxed));
        // The first few observations weigh more, so a class is learned in a handful of
        // requests rather than tens.
        let alpha = if n < 10 {
            1.0 / (n as f64 + 1.0)
        } else {
            ALPHA
        };
        let next = if prev == 0.0 {
            sample
        } else {
            prev + alpha * (sample - prev)
        };
        s.cost_bits
            .store(next.clamp(MIN_COST, MAX_COST).to_bits(), Ordering::Relaxed);
        if n < u32::MAX {
            s.samples.store(n + 1, Ordering::Relaxed);
        }
    }

    /// Test hook: forget what the slot learned.
    #[cfg(test)]
    fn reset(self) {
        self.slot().cost_bits.store(0, Ordering::Relaxed);
        self.slot().samples.store(0, Ordering::Relaxed);
    }
}

/// The class key of a request: FNV-1a over the method and the first four path segments,
/// where a segment holding a digit counts as `:n` (so `/users/42` and `/users/7` are one
/// class) and the query is ignored.
pub fn class_key(method: &[u8], path: &[u8]) -> u64 {
    use crate::stable_hash::fnv1a;
    let mut h = fnv1a(method);
    let path = path.split(|c| *c == b'?').next().unwrap_or(b"");
    for seg in path.split(|c| *c == b'/').filter(|s| !s.is_empty()).take(4) {
        let part: &[u8] = if seg.iter().any(u8::is_ascii_digit) {
            b":n"
        } else {
            seg
        };
        h = (h ^ fnv1a(part)).wrapping_mul(0x100000001b3);
    }
    h
}

/// What a request placed by this strategy charged its backend, for the completion.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    /// The request's class, which the completion teaches.
    pub class: Class,
    /// Work units added to the backend's queued work (its class cost at dispatch).
    pub work: u64,
    /// The backend's queued work when this request was dispatched (excluding it).
    pub queued_before: u64,
}

/// Time per unit of work of `b`, decayed towards `mean` while it gets no completions.
fn speed_of(b: &Backend, mean: f64, now: u64) -> f64 {
    let s = b.speed();
    let idle = now.saturating_sub(b.speed_stamp()) as f64;
    let w = (-idle / super::backend::decay_nanos()).exp();
    s * w + mean * (1.0 - w)
}

/// Predicted finish time (ns) of a request of cost `k` on `b`.
pub fn predicted_finish(b: &Backend, k: f64, mean_speed: f64, now: u64) -> f64 {
    speed_of(b, mean_speed, now) * (b.queued_work() as f64 + k) / b.weight as f64
}

/// The mean learned speed of `backends` (the decay target).
pub fn mean_speed(backends: &[Arc<Backend>]) -> f64 {
    if backends.is_empty() {
        return 1.0;
    }
    backends.iter().map(|b| b.speed()).sum::<f64>() / backends.len() as f64
}

/// The backend with the earliest predicted finish for a request of class `key`. A full
/// scan (exact; n is small), starting at a rotating offset so ties spread.
pub fn pick(cursor: &AtomicUsize, backends: &[Arc<Backend>], key: u64) -> usize {
    let n = backends.len();
    if n == 1 {
        return 0;
    }
    let k = Class::of_key(key).cost();
    let now = super::backend::now_nanos();
    let mean = mean_speed(backends);
    let start = cursor.fetch_add(1, Ordering::Relaxed) % n;
    let mut best = start;
    let mut best_t = predicted_finish(&backends[start], k, mean, now);
    for i in (start + 1..n).chain(0..start) {
        let t = predicted_finish(&backends[i], k, mean, now);
        if t < best_t {
            best = i;
            best_t = t;
        }
    }
    best
}

/// A request charged by this strategy completed after `elapsed` (upstream time).
pub fn learn(b: &Backend, charge: Charge, elapsed_nanos: f64, failed: bool) {
    let t = if failed {
        elapsed_nanos.max(super::backend::ERROR_PENALTY.as_nanos() as f64)
    } else {
        elapsed_nanos
    }
    .max(MIN_COST);
    let queued = charge.queued_before as f64;
    let k = charge.class.cost();
    let s_sample = (t / (queued + k)).clamp(MIN_SPEED, MAX_SPEED);
    b.observe_speed(s_sample, ALPHA);
    if !failed {
        // The request's own share of its time: what it took minus the queue it found
        // (at least a tenth of its time, so a busy backend's samples stay positive).
        let s = b.speed();
        let own = (t / s - queued).max(0.1 * t / s);
        charge.class.learn(own);
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::test_util::backend;
    use super::*;
    use crate::resilience::breaker::Permit;

    #[test]
    fn class_keys_ignore_ids_and_queries_but_not_methods_or_paths() {
        let k = |m: &str, p: &str| class_key(m.as_bytes(), p.as_bytes());
        assert_eq!(k("GET", "/users/42"), k("GET", "/users/7?x=1"));
        assert_ne!(k("GET", "/users/42"), k("POST", "/users/42"));
        assert_ne!(k("GET", "/work/fast"), k("GET", "/work/slow"));
        assert_eq!(k("GET", "/a/b/c/d/e"), k("GET", "/a/b/c/d/f"), "4 segments");
    }

    #[test]
    fn a_class_learns_its_cost_from_uncontended_requests() {
        let c = Class::of_key(class_key(b"GET", b"/test/learn-cost"));
        c.reset();
        let b = backend(1, 1);
        for _ in 0..50 {
            let charge = Charge {
                class: c,
                work: c.cost() as u64,
                queued_before: 0,
            };
            learn(&b, charge, 20_000_000.0, false);
        }
        // speed × cost converges on the observed 20 ms (the split between the two
        // factors is free; their product is what predictions use).
        let product = b.speed() * c.cost();
        assert!((product / 20e6 - 1.0).abs() < 0.05, "{product}");
        assert!(c.samples() >= 50);
    }

    #[test]
    fn picks_the_earliest_finish_not_the_fewest_requests() {
        let fast = Class::of_key(class_key(b"GET", b"/test/pick-fast"));
        let slow = Class::of_key(class_key(b"GET", b"/test/pick-slow"));
        fast.reset();
        slow.reset();
        fast.learn(2e6);
        slow.learn(50e6);
        let bs: Vec<_> = (0..2).map(|i| backend(i, 1)).collect();
        // Backend 0 holds one expensive request, backend 1 three cheap ones.
        let _a = bs[0].begin_charged(Permit::none(), Some(charge(slow, 0)));
        let _b: Vec<_> = (0..3)
            .map(|_| bs[1].begin_charged(Permit::none(), Some(charge(fast, 0))))
            .collect();
        let c = AtomicUsize::new(0);
        for _ in 0..10 {
            assert_eq!(pick(&c, &bs, class_key(b"GET", b"/test/pick-fast")), 1);
        }
        assert_eq!(bs[0].queued_work(), 50_000_000);
        assert_eq!(bs[1].queued_work(), 6_000_000);
    }

    fn charge(c: Class, queued_before: u64) -> Charge {
        Charge {
            class: c,
            work: c.cost() as u64,
            queued_before,
        }
    }

    #[test]
    fn a_slow_backend_is_learned_and_gets_less_work() {
        let c = Class::of_key(class_key(b"GET", b"/test/slow-backend"));
        c.reset();
        c.learn(10e6);
        let bs: Vec<_> = (0..2).map(|i| backend(i, 1)).collect();
        for _ in 0..30 {
            learn(&bs[0], charge(c, 0), 10e6, false);
            learn(&bs[1], charge(c, 0), 40e6, false);
        }
        assert!(
            bs[1].speed() > 3.0 * bs[0].speed(),
            "{:?}",
            (bs[0].speed(), bs[1].speed())
        );
        // Backend 0 takes requests until its queue is about 4x backend 1's.
        let cur = AtomicUsize::new(0);
        let key = class_key(b"GET", b"/test/slow-backend");
        let mut held = Vec::new();
        let mut counts = [0; 2];
        for _ in 0..10 {
            let i = pick(&cur, &bs, key);
            counts[i] += 1;
            held.push(bs[i].begin_charged(Permit::none(), Some(charge(c, 0))));
        }
        assert!(counts[0] >= 7, "{counts:?}");
        drop(held);
        assert_eq!(bs[0].queued_work() + bs[1].queued_work(), 0);
    }

    #[test]
    fn failures_make_a_backend_look_slow() {
        let c = Class::of_key(class_key(b"GET", b"/test/failing"));
        c.reset();
        c.learn(1e6);
        let b = backend(1, 1);
        let before = b.speed();
        learn(&b, charge(c, 0), 1e5, true);
        assert!(b.speed() > 10.0 * before, "{}", b.speed());
    }
}
