//! Retry pacing and the retry budget.
//!
//! Retries help when one backend fails and hurt when all do: every failed request then
//! becomes 1 + `proxy.retries` attempts and an outage triples the load on whatever is
//! left. The budget (as in Finagle and Linkerd) lets retries be at most `ratio` of the
//! requests seen over a rolling window, plus a small floor so a quiet proxy can still
//! retry. Backoff between attempts is exponential with full jitter (AWS's analysis:
//! uniformly random in [0, min(max, base × 2^(n-1))]) so retries of many requests that
//! failed together do not arrive together.

use super::window::Window;
use std::time::{Duration, Instant};

/// Exponential backoff with full jitter between attempts (`proxy.retry_backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay (default 10 ms); zero: retry at once.
    pub base: Duration,
    /// Cap on the delay ceiling (default 200 ms); never below `base`.
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `retry` (1 = first retry), given `unit` uniform in
    /// [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        if self.base.is_zero() || retry == 0 {
            return Duration::ZERO;
        }
        exponential(self.base, retry - 1, self.max).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// `base × 2^step`, capped at `max`: the ceiling of retry pacing here and the delay of
/// worker restarts in the supervisor (one formula for both).
pub fn exponential(base: Duration, step: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << step.min(20)).min(max)
}

/// `proxy.retry_budget`: how many retries the [`RetryBudget`] allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// Retries may be at most this share of requests in the window (default 0.2)...
    pub ratio: f64,
    /// ...plus this many per second of window (default 10), so a quiet proxy can retry.
    pub min_per_second: u32,
    /// Rolling window counted over (default 10 s, at least 100 ms).
    pub window: Duration,
}

/// Counts requests and retries in one window; lock-free.
#[derive(Debug)]
pub struct RetryBudget {
    /// Compared on reload: an unchanged policy keeps the running budget's counts.
    pub policy: BudgetPolicy,
    /// `total` = requests, `a` = retries.
    window: Window,
}

impl RetryBudget {
    /// An empty budget whose window starts now.
    pub fn new(policy: BudgetPolicy) -> Self {
        RetryBudget {
            policy,
            window: Window::new(policy.window, Instant::now()),
        }
    }

    /// Counts one request (its first attempt).
    pub fn on_request(&self, now: Instant) {
        self.window.record(now, false, false);
    }

    /// Takes one retry from the budget if there is room. Concurrent callers may
    /// overshoot by a few (check, then add): the budget bounds amplification, it is not
    /// an exact quota.
    pub fn try_retry(&self, now: Instant) -> bool {
        let t = self.window.totals(now);
        if t.a < self.allowed(t.total) {
            self.window.record_a(now);
            true
        } else {
            false
        }
    }

    fn allowed(&self, requests: u64) -> u64 {
        let floor = self.policy.min_per_second as f64 * self.window.len().as_secs_f64();
        (self.policy.ratio * requests as f64 + floor) as u64
    }

    /// (requests, retries, retries allowed) in the window now, for the admin API.
    pub fn usage(&self, now: Instant) -> (u64, u64, u64) {
        let t = self.window.totals(now);
        (t.total, t.a, self.allowed(t.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_capped_with_full_jitter() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        assert_eq!(b.delay(1, 0.999_999).as_millis(), 9);
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(10));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(20));
        assert_eq!(b.delay(10, 0.5), Duration::from_millis(50), "capped at max");
        assert_eq!(b.delay(3, 0.0), Duration::ZERO, "jitter reaches zero");
        assert_eq!(b.delay(40, 1.0), Duration::from_millis(100), "no overflow");
        let none = Backoff {
            base: Duration::ZERO,
            max: Duration::from_millis(100),
        };
        assert_eq!(none.delay(3, 0.9), Duration::ZERO);
    }

    #[test]
    fn budget_allows_ratio_of_requests_plus_floor() {
        let b = RetryBudget::new(BudgetPolicy {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        // Floor alone: 1/s × 10 s = 10 retries with no requests at all.
        let floor = (0..50).filter(|_| b.try_retry(t0)).count();
        assert_eq!(floor, 10);
        for _ in 0..100 {
            b.on_request(t0);
        }
        // 20% of 100 more.
        let more = (0..50).filter(|_| b.try_retry(t0)).count();
        assert_eq!(more, 20);
        assert_eq!(b.usage(t0), (100, 30, 30));
        // A window later the budget is fresh again.
        let t1 = t0 + Duration::from_secs(11);
        assert!(b.try_retry(t1));
    }
}
