//! Per-client rate limiting with bounded memory: GCRA (a token bucket kept as one
//! timestamp) in a fixed table of atomic slots.
//!
//! Each client key hashes to two candidate slots; a slot is one `u64` holding a 16-bit
//! fingerprint of the key and the bucket's "theoretical arrival time" (TAT, µs). The
//! table never grows: `max_clients` slots × 8 bytes, allocated once. Under a flood of
//! distinct clients:
//! - a slot whose TAT has passed holds a full bucket, which is exactly what a new client
//!   starts with, so it is reclaimed without losing anything;
//! - a client whose two slots both hold *active* buckets of other clients shares the
//!   emptier one. Sharing errs on the side of limiting (two clients spend one budget),
//!   never of letting a client through: an active bucket is never reset by someone
//!   else, so flooding with new keys cannot clear a limited client's state.
//!
//! No lock: a decision is a load and a compare-exchange on one slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What identifies a client.
///
/// A header key alone (an API key) is only as strong as the header: a client that
/// sends a new value on every request gets a new bucket every time. When the header is
/// not verified before drover (or anyone may mint values), use `header:NAME+client_ip`:
/// each request is then charged to its header's bucket *and* to its client address's
/// bucket, so rotating the header does not buy more than the address's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (as `forwarded.rs` settled it): one bucket per address.
    ClientIp,
    /// A request header (an API key); requests without it are keyed by client IP.
    Header(http::HeaderName),
    /// The header's bucket and the client IP's bucket, both must allow.
    HeaderAndClientIp(http::HeaderName),
    /// Everyone shares one bucket (a route-wide limit).
    All,
}

/// Why a rate-limit `key` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitKeyError {
    /// `header:NAME` with a NAME that is not a valid HTTP header name.
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    /// None of the accepted forms; holds the text given.
    #[error("`{0}` is not a rate-limit key; accepted: client_ip, header:NAME, header:NAME+client_ip, all")]
    Unknown(String),
}

impl std::str::FromStr for LimitKey {
    type Err = LimitKeyError;
    fn from_str(s: &str) -> Result<Self, LimitKeyError> {
        let header = |h: &str| {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| LimitKeyError::HeaderName(h.to_string()))
        };
        let combined = s
            .strip_suffix("+client_ip")
            .or_else(|| s.strip_prefix("client_ip+"))
            .and_then(|rest| rest.strip_prefix("header:"));
        match s {
            "client_ip" => Ok(LimitKey::ClientIp),
            "all" => Ok(LimitKey::All),
            _ => match (combined, s.strip_prefix("header:")) {
                (Some(h), _) => header(h).map(LimitKey::HeaderAndClientIp),
                (None, Some(h)) => header(h).map(LimitKey::Header),
                (None, None) => Err(LimitKeyError::Unknown(s.to_string())),
            },
        }
    }
}

/// The buckets one request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    /// Hash of the main key (header value, client IP, or 0 for `all`).
    pub first: u64,
    /// The client IP's hash as well, for `header:NAME+client_ip` when the header is set.
    pub second: Option<u64>,
}

impl LimitKey {
    /// The bucket keys of a request with `headers` from the client whose address hashes
    /// to `client_ip` (the address `forwarded.rs` settled on).
    pub fn buckets(&self, headers: &http::HeaderMap, client_ip: u64) -> Buckets {
        let header = |name: &http::HeaderName| {
            headers
                .get(name)
                .map(|v| crate::stable_hash::fnv1a(v.as_bytes()))
        };
        let (first, second) = match self {
            LimitKey::ClientIp => (client_ip, None),
            LimitKey::All => (0, None),
            LimitKey::Header(name) => (header(name).unwrap_or(client_ip), None),
            LimitKey::HeaderAndClientIp(name) => match header(name) {
                Some(h) => (h, Some(client_ip)),
                None => (client_ip, None),
            },
        };
        Buckets { first, second }
    }
}

/// A validated `rate_limit` section (top level or a route's); compared on reload
/// to keep the running limiter's buckets when unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePolicy {
    /// Sustained rate per key; above 0 (a limit of 0 is off and builds no limiter).
    pub requests_per_second: f64,
    /// Bucket size: requests a client may send at once.
    pub burst: u32,
    /// What a bucket belongs to.
    pub key: LimitKey,
    /// Table slots (a power of two).
    pub slots: usize,
    /// `Some(scope)`: the budget is shared through Redis under this name (`global` or a
    /// route's name); the table above is the fallback while Redis is unreachable.
    pub shared: Option<std::sync::Arc<str>>,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request may pass.
    Allow {
        /// Requests the bucket would still allow at once after this one (the smaller
        /// over two buckets).
        remaining: u32,
    },
    /// The request is over the limit (answered 429).
    Deny {
        /// Until one more request would be allowed.
        retry_after: Duration,
        /// Until the bucket is full again.
        reset: Duration,
    },
}

const TAT_BITS: u32 = 48;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;

/// The GCRA buckets of one policy in a fixed table of atomic slots (see the
/// module doc); shared by every request of its scope, lock-free.
pub struct RateLimiter {
    /// As configured; the table's parameters are derived from it at creation.
    pub policy: RatePolicy,
    /// Emission interval (1 / rate) and tolerance (burst × interval), in µs.
    interval: u64,
    tolerance: u64,
    base: Instant,
    slots: Box<[AtomicU64]>,
    mask: u64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policy", &self.policy)
            .finish()
    }
}

/// splitmix64's finalizer: spreads FNV's weaker bits over the whole word so the slot
/// index and the fingerprint are independent.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

impl RateLimiter {
    /// Allocates the whole table now (`slots` rounded up to a power of two, 8 bytes
    /// each); every bucket starts full.
    pub fn new(policy: RatePolicy) -> Self {
        let n = policy.slots.max(1).next_power_of_two();
        let interval = (1e6 / policy.requests_per_second.max(1e-6)).max(1.0) as u64;
        RateLimiter {
            interval,
            tolerance: interval.saturating_mul(policy.burst.max(1) as u64),
            base: Instant::now(),
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n as u64 - 1,
            policy,
        }
    }

    /// Memory held by the table (fixed at creation).
    pub fn table_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU64>()
    }

    /// Slots in the table: `policy.slots` rounded up to a power of two.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// (emission interval, tolerance) in µs: the GCRA parameters, for the shared
    /// (Redis) form of the same limit.
    pub fn gcra_us(&self) -> (u64, u64) {
        (self.interval, self.tolerance)
    }

    /// [`RateLimiter::check_at`] now: charges one request to `key_hash`'s bucket.
    pub fn check(&self, key_hash: u64) -> Decision {
        self.check_at(key_hash, Instant::now())
    }

    /// Charges every bucket of a request; allowed only if each allows (a bucket charged
    /// before another one refused keeps the charge: errs on the side of limiting).
    pub fn check_buckets(&self, b: Buckets) -> Decision {
        self.check_buckets_at(b, Instant::now())
    }

    /// [`RateLimiter::check_buckets`] at `now` (tests drive time); `remaining` is
    /// the smaller of the two buckets'.
    pub fn check_buckets_at(&self, b: Buckets, now: Instant) -> Decision {
        let first = self.check_at(b.first, now);
        match (first, b.second) {
            (Decision::Allow { remaining }, Some(k)) => match self.check_at(k, now) {
                Decision::Allow { remaining: r } => Decision::Allow {
                    remaining: remaining.min(r),
                },
                deny => deny,
            },
            (d, _) => d,
        }
    }

    /// Decides for the client whose key hashes to `key_hash`, at time `now`.
    pub fn check_at(&self, key_hash: u64, now: Instant) -> Decision {
        let h = mix(key_hash);
        let fp = (h >> TAT_BITS) | 1; // never 0, so an empty slot matches nobody
        let i1 = (h & self.mask) as usize;
        let i2 = ((h >> 24) & self.mask) as usize;
        let now_us = now.saturating_duration_since(self.base).as_micros() as u64 + 1;
        for _ in 0..8 {
            let (a, b) = (
                self.slots[i1].load(Ordering::Acquire),
                self.slots[i2].load(Ordering::Acquire),
            );
            // Own slot first; else a free one (never used, or its bucket refilled);
            // else share the one closest to full.
            let (idx, cur, own) = if a >> TAT_BITS == fp {
                (i1, a, true)
            } else if b >> TAT_BITS == fp {
                (i2, b, true)
            } else if a & TAT_MASK <= now_us {
                (i1, a, false)
            } else if b & TAT_MASK <= now_us {
                (i2, b, false)
            } else if a & TAT_MASK <= b & TAT_MASK {
                (i1, a, true)
            } else {
                (i2, b, true)
            };
            let tat = if own {
                (cur & TAT_MASK).max(now_us)
            } else {
                now_us
            };
            let next = tat + self.interval;
            let ahead = next - now_us;
            if ahead > self.tolerance {
                let retry = ahead - self.tolerance;
                return Decision::Deny {
                    retry_after: Duration::from_micros(retry),
                    reset: Duration::from_micros(tat - now_us),
                };
            }
            let owner = if own { cur >> TAT_BITS } else { fp };
            let value = owner << TAT_BITS | (next & TAT_MASK);
            if self.slots[idx]
                .compare_exchange(cur, value, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Decision::Allow {
                    remaining: ((self.tolerance - ahead) / self.interval) as u32,
                };
            }
        }
        // Lost eight races in a row on the same slots: heavy contention on one key.
        Decision::Deny {
            retry_after: Duration::from_micros(self.interval),
            reset: Duration::from_micros(self.tolerance),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: u32, slots: usize) -> RateLimiter {
        RateLimiter::new(RatePolicy {
            requests_per_second: rps,
            burst,
            key: LimitKey::ClientIp,
            slots,
            shared: None,
        })
    }

    #[test]
    fn burst_then_sustained_rate_with_retry_after() {
        let l = limiter(10.0, 5, 1024);
        let t0 = l.base + Duration::from_secs(1);
        for left in (0..5).rev() {
            assert_eq!(l.check_at(7, t0), Decision::Allow { remaining: left });
        }
        match l.check_at(7, t0) {
            Decision::Deny { retry_after, reset } => {
                assert_eq!(retry_after, Duration::from_millis(100));
                assert_eq!(reset, Duration::from_millis(500));
            }
            d => panic!("{d:?}"),
        }
        // One interval later exactly one more request fits.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check_at(7, t1), Decision::Allow { remaining: 0 });
        assert!(matches!(l.check_at(7, t1), Decision::Deny { .. }));
        // Another client is unaffected.
        assert_eq!(l.check_at(8, t1), Decision::Allow { remaining: 4 });
    }

    #[test]
    fn flood_of_distinct_clients_keeps_memory_fixed_and_cannot_clear_a_limited_client() {
        let l = limiter(1.0, 2, 4096);
        let bytes = l.table_bytes();
        assert_eq!(bytes, 4096 * 8);
        let t0 = l.base + Duration::from_secs(1);
        let heavy = 0xdead_beef;
        assert!(matches!(l.check_at(heavy, t0), Decision::Allow { .. }));
        assert!(matches!(l.check_at(heavy, t0), Decision::Allow { .. }));
        assert!(matches!(l.check_at(heavy, t0), Decision::Deny { .. }));
        // A million distinct clients, one request each, in the same instant.
        let mut allowed = 0u32;
        for k in 0..1_000_000u64 {
            if matches!(l.check_at(k, t0), Decision::Allow { .. }) {
                allowed += 1;
            }
        }
        assert_eq!(l.table_bytes(), bytes, "no growth");
        // Every slot holds at most `burst` requests' worth of one instant.
        assert!(allowed as usize <= 4096 * 2, "{allowed}");
        assert!(
            matches!(l.check_at(heavy, t0), Decision::Deny { .. }),
            "the flood did not reset the limited client's bucket"
        );
        // Once buckets refill, slots are reclaimed and new clients get a full burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            l.check_at(12_345_678_901, later),
            Decision::Allow { remaining: 1 }
        );
        assert!(matches!(l.check_at(heavy, later), Decision::Allow { .. }));
    }

    #[test]
    fn concurrent_clients_never_exceed_the_burst() {
        let l = std::sync::Arc::new(limiter(0.001, 50, 64));
        let t0 = l.base + Duration::from_secs(1);
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| matches!(l.check_at(1, t0), Decision::Allow { .. }))
                        .count()
                })
            })
            .collect();
        let total: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 50);
    }

    #[test]
    fn header_and_client_ip_stops_a_client_rotating_its_header() {
        let rotating = |key: &str| {
            let l = RateLimiter::new(RatePolicy {
                requests_per_second: 1.0,
                burst: 3,
                key: key.parse().unwrap(),
                slots: 1024,
                shared: None,
            });
            let t0 = l.base + Duration::from_secs(1);
            (0..10)
                .filter(|i| {
                    let mut h = http::HeaderMap::new();
                    h.insert("x-api-key", format!("key-{i}").parse().unwrap());
                    let b = l.policy.key.buckets(&h, 42);
                    matches!(l.check_buckets_at(b, t0), Decision::Allow { .. })
                })
                .count()
        };
        assert_eq!(rotating("header:x-api-key"), 10, "the documented bypass");
        assert_eq!(rotating("header:x-api-key+client_ip"), 3);
        assert_eq!(rotating("client_ip+header:x-api-key"), 3);
    }

    #[test]
    fn parses_keys() {
        assert!(matches!(
            "header:x-api-key+client_ip".parse::<LimitKey>(),
            Ok(LimitKey::HeaderAndClientIp(_))
        ));
        assert!("header:+client_ip".parse::<LimitKey>().is_err());
        assert_eq!("client_ip".parse::<LimitKey>(), Ok(LimitKey::ClientIp));
        assert_eq!("all".parse::<LimitKey>(), Ok(LimitKey::All));
        assert!(matches!(
            "header:x-api-key".parse::<LimitKey>(),
            Ok(LimitKey::Header(_))
        ));
        assert!("cookie:x".parse::<LimitKey>().is_err());
    }
}
