//! Counting outcomes while CLOSED, lock-free, and deciding when and why to trip.

use super::policy::*;
use crate::resilience::adaptive::{Adaptive, Baseline};
use crate::resilience::window::{Totals, Window};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Outcome counting while CLOSED: lock-free, one or two atomic adds per request.
#[derive(Debug)]
pub struct ClosedCounter {
    pub(super) consecutive: AtomicU32,
    window: Option<Window>,
    adaptive: Option<Adaptive>,
}

impl ClosedCounter {
    /// Sets up only what `policy` uses: a window if a ratio rule is on, the
    /// adaptive rule's state if it is enabled (period: `policy.window`).
    pub fn new(policy: &BreakerPolicy, now: Instant) -> Self {
        ClosedCounter {
            consecutive: AtomicU32::new(0),
            window: (policy.failure_ratio > 0.0 || policy.slow_call_ratio > 0.0)
                .then(|| Window::new(policy.window, now)),
            adaptive: policy
                .adaptive
                .enabled
                .then(|| Adaptive::new(policy.window, now)),
        }
    }

    /// The learned baseline, when the adaptive rule is on.
    pub fn baseline(&self) -> Option<Baseline> {
        self.adaptive.as_ref().map(|a| a.baseline())
    }

    /// Counts one outcome; returns why to trip, if a rule now says so. Rules are only
    /// evaluated after a failure or a slow call, so successes cost no window scan.
    pub fn record(
        &self,
        p: &BreakerPolicy,
        failure: bool,
        slow: bool,
        latency: Duration,
        now: Instant,
    ) -> Option<TripReason> {
        let consecutive = if failure {
            self.consecutive.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            0
        };
        if let Some(w) = &self.window {
            w.record(now, failure, slow);
        }
        if let Some(a) = &self.adaptive {
            if let Some(t) = a.record(&p.adaptive, p.min_requests, failure, latency, now) {
                return Some(t.into());
            }
        }
        if !failure && !slow {
            return None;
        }
        if p.consecutive_failures > 0 && consecutive >= p.consecutive_failures {
            return Some(TripReason::ConsecutiveFailures {
                failures: consecutive,
            });
        }
        let w = self.window.as_ref()?;
        let t = w.totals(now);
        if t.total < p.min_requests.max(1) as u64 {
            return None;
        }
        let ratio = |n: u64| n as f64 / t.total as f64;
        if failure && p.failure_ratio > 0.0 && ratio(t.a) >= p.failure_ratio {
            return Some(TripReason::FailureRatio {
                failures: t.a,
                total: t.total,
            });
        }
        if slow && p.slow_call_ratio > 0.0 && ratio(t.b) >= p.slow_call_ratio {
            return Some(TripReason::SlowCallRatio {
                slow: t.b,
                total: t.total,
            });
        }
        None
    }

    /// Failures in a row so far (0 after any success or a reset).
    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// The window's counts at `now`; zero when no ratio rule keeps a window.
    pub fn totals(&self, now: Instant) -> Totals {
        self.window
            .as_ref()
            .map(|w| w.totals(now))
            .unwrap_or_default()
    }

    /// A breaker that opens or closes starts counting afresh.
    pub fn reset(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        if let Some(w) = &self.window {
            w.clear();
        }
        if let Some(a) = &self.adaptive {
            a.clear_periods();
        }
    }
}
