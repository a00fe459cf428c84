//! Adaptive trip thresholds: a breaker rule relative to the backend's *own* learned
//! normal, in the spirit of Envoy's success-rate outlier detection (mean − k·σ) and
//! Netflix's concurrency limits (follow the measured baseline, not a fixed number).
//!
//! Every `window` (a period) the breaker folds the period's failure ratio and mean
//! latency into exponentially weighted baselines (mean and variance, weight
//! [`BASELINE_WEIGHT`] per period), once the period holds `min_requests`. After
//! `warmup_windows` such periods the rule may trip when, over the previous and the
//! current period together (at least `min_requests`):
//!
//! ```text
//! failure ratio  > baseline + max(sigmas × σ, min_increase)
//! mean latency   > max(baseline × latency_factor, baseline + sigmas × σ)
//! ```
//!
//! where σ is the larger of the baseline's own spread and the binomial noise of the
//! ratio at this sample size (`sqrt(p(1 − p)/n)`). So a worker that always fails 10% of
//! requests, noisily, sets a baseline near 10% and stays in; the same worker jumping to
//! 60% trips within a period. A slow drift is learned (a deliberate trade-off: the
//! absolute rules, `failure_ratio` and `slow_call_ratio`, still cap how bad "normal"
//! may become). Periods in which the rule fired are not learned, and a trip clears the
//! current periods but keeps the baseline. Pure arithmetic with the clock passed in,
//! unit-tested without sleeping; the request path pays three relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Weight of one period in the baselines (about the last 5-10 periods count).
pub const BASELINE_WEIGHT: f64 = 0.2;

/// `circuit_breaker.adaptive`, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptivePolicy {
    /// Off by default; when off the breaker keeps no adaptive state at all.
    pub enabled: bool,
    /// How many standard deviations above the baseline trip.
    pub sigmas: f64,
    /// The failure ratio must also exceed the baseline by at least this (absolute).
    pub min_increase: f64,
    /// Mean latency must also exceed the baseline by this factor; 0 = latency off.
    pub latency_factor: f64,
    /// Periods learned before the rule may trip.
    pub warmup_windows: u32,
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        AdaptivePolicy {
            enabled: false,
            sigmas: 3.0,
            min_increase: 0.1,
            latency_factor: 3.0,
            warmup_windows: 3,
        }
    }
}

/// What the rule saw when it tripped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdaptiveTrip {
    /// The failure ratio rose above its threshold.
    FailureRatio {
        /// Failure ratio (0 to 1) over the previous and current periods together.
        ratio: f64,
        /// The learned normal failure ratio (0 to 1).
        baseline: f64,
        /// What `ratio` had to exceed: baseline + max(sigmas × σ, min_increase).
        threshold: f64,
    },
    /// The mean latency rose above its threshold.
    Latency {
        /// Mean latency over the previous and current periods together, ms.
        mean_ms: f64,
        /// The learned normal mean latency, ms.
        baseline_ms: f64,
        /// What `mean_ms` had to exceed, ms.
        threshold_ms: f64,
    },
}

/// An exponentially weighted mean and variance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewm {
    /// Weighted mean of the samples; the first sample sets it.
    pub mean: f64,
    /// Weighted variance around `mean` (0 after one sample).
    pub var: f64,
    /// Samples pushed (periods learned), saturating.
    pub n: u32,
}

impl Ewm {
    fn push(&mut self, x: f64) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += BASELINE_WEIGHT * d;
            self.var = (1.0 - BASELINE_WEIGHT) * (self.var + BASELINE_WEIGHT * d * d);
        }
        self.n = self.n.saturating_add(1);
    }

    /// Standard deviation: the square root of `var` (never negative).
    pub fn sd(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// Counts of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Period {
    n: u64,
    failures: u64,
    latency_us: u64,
}

#[derive(Debug, Default)]
struct Learned {
    ratio: Ewm,
    latency_us: Ewm,
    previous: Period,
    /// The rule fired during the current period: do not learn it.
    tripped: bool,
}

/// A public view for `/api/breakers` and the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Baseline {
    /// Learned normal failure ratio, 0 to 1.
    pub failure_ratio: f64,
    /// Its spread (one standard deviation).
    pub failure_ratio_sd: f64,
    /// Learned normal mean latency, ms (0 while the latency rule is off).
    pub latency_ms: f64,
    /// Its spread (one standard deviation), ms.
    pub latency_sd_ms: f64,
    /// Periods learned so far; the rule may trip once this reaches `warmup_windows`.
    pub periods: u32,
}

/// One breaker's adaptive state: the current period's counts (atomics) and the
/// learned baselines (behind a mutex, taken on each recorded outcome).
#[derive(Debug)]
pub struct Adaptive {
    base: Instant,
    period_nanos: u64,
    /// Index of the current period (since `base`).
    epoch: AtomicU64,
    n: AtomicU64,
    failures: AtomicU64,
    latency_us: AtomicU64,
    learned: Mutex<Learned>,
}

impl Adaptive {
    /// Nothing learned yet; periods of `period` (at least 1 ms) counted from `now`.
    pub fn new(period: Duration, now: Instant) -> Self {
        Adaptive {
            base: now,
            period_nanos: (period.as_nanos() as u64).max(1_000_000),
            epoch: AtomicU64::new(0),
            n: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            learned: Mutex::new(Learned::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_current(&self) -> Period {
        Period {
            n: self.n.swap(0, Ordering::Relaxed),
            failures: self.failures.swap(0, Ordering::Relaxed),
            latency_us: self.latency_us.swap(0, Ordering::Relaxed),
        }
    }

    /// Closes the period(s) that ended before `now`: learns the last one (when it holds
    /// `min_requests` and did not trip), and makes it the "previous" one.
    fn roll(&self, p: &AdaptivePolicy, min_requests: u64, now: Instant) {
        let epoch = now.saturating_duration_since(self.base).as_nanos() as u64 / self.period_nanos;
        let seen = self.epoch.load(Ordering::Acquire);
        if epoch <= seen
            || self
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let done = self.take_current();
        let mut l = self.lock();
        if done.n >= min_requests && !l.tripped {
            l.ratio.push(done.failures as f64 / done.n as f64);
            if p.latency_factor > 0.0 {
                l.latency_us.push(done.latency_us as f64 / done.n as f64);
            }
        }
        l.tripped = false;
        // A gap of more than one period leaves nothing recent to compare with.
        l.previous = if epoch == seen + 1 {
            done
        } else {
            Period::default()
        };
    }

    /// Counts one outcome; returns a trip when the rule now says so. The threshold is
    /// only evaluated after a failure, or a call slower than the latency threshold.
    pub fn record(
        &self,
        p: &AdaptivePolicy,
        min_requests: u32,
        failure: bool,
        latency: Duration,
        now: Instant,
    ) -> Option<AdaptiveTrip> {
        let min = min_requests.max(1) as u64;
        self.roll(p, min, now);
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
        let f = if failure {
            self.failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.failures.load(Ordering::Relaxed)
        };
        let lat = self.latency_us.fetch_add(us, Ordering::Relaxed) + us;
        let mut l = self.lock();
        if l.ratio.n < p.warmup_windows.max(1) {
            return None;
        }
        let total = n + l.previous.n;
        if total < min {
            return None;
        }
        if failure {
            let ratio = (f + l.previous.failures) as f64 / total as f64;
            let b = l.ratio.mean;
            let binomial =
                (b.clamp(0.01, 0.99) * (1.0 - b.clamp(0.01, 0.99)) / total as f64).sqrt();
            let threshold = b + (p.sigmas * l.ratio.sd().max(binomial)).max(p.min_increase);
            if ratio > threshold {
                l.tripped = true;
                return Some(AdaptiveTrip::FailureRatio {
                    ratio,
                    baseline: b,
                    threshold,
                });
            }
        }
        if p.latency_factor > 0.0 && l.latency_us.n >= p.warmup_windows.max(1) {
            let b = l.latency_us.mean;
            let threshold = (b * p.latency_factor).max(b + p.sigmas * l.latency_us.sd());
            if us as f64 > threshold {
                let mean = (lat + l.previous.latency_us) as f64 / total as f64;
                if mean > threshold {
                    l.tripped = true;
                    return Some(AdaptiveTrip::Latency {
                        mean_ms: mean / 1000.0,
                        baseline_ms: b / 1000.0,
                        threshold_ms: threshold / 1000.0,
                    });
                }
            }
        }
        None
    }

    /// A trip or a close starts the periods afresh; the baseline stays.
    pub fn clear_periods(&self) {
        self.take_current();
        let mut l = self.lock();
        l.previous = Period::default();
        l.tripped = false;
    }

    /// The baselines learned so far (all zero before the first period is learned).
    pub fn baseline(&self) -> Baseline {
        let l = self.lock();
        Baseline {
            failure_ratio: l.ratio.mean,
            failure_ratio_sd: l.ratio.sd(),
            latency_ms: l.latency_us.mean / 1000.0,
            latency_sd_ms: l.latency_us.sd() / 1000.0,
            periods: l.ratio.n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdaptivePolicy {
        AdaptivePolicy {
            enabled: true,
            ..AdaptivePolicy::default()
        }
    }

    /// Deterministic "random" draws so the test is repeatable.
    fn draws(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// `secs` seconds from second `from` of `rps` requests failing with probability
    /// `share` and taking `lat`.
    struct Phase {
        from: u64,
        secs: u64,
        rps: u64,
        share: f64,
        lat: Duration,
    }

    /// Feeds a phase; returns the first trip.
    fn run(
        a: &Adaptive,
        t0: Instant,
        ph: Phase,
        rnd: &mut impl FnMut() -> f64,
    ) -> Option<AdaptiveTrip> {
        let Phase {
            from: from_s,
            secs,
            rps,
            share,
            lat,
        } = ph;
        for s in from_s..from_s + secs {
            for i in 0..rps {
                let now = t0 + Duration::from_secs(s) + Duration::from_micros(i * 1_000_000 / rps);
                let fail = rnd() < share;
                if let Some(t) = a.record(&policy(), 20, fail, lat, now) {
                    return Some(t);
                }
            }
        }
        None
    }

    #[test]
    fn a_noisy_but_normal_backend_is_not_tripped_and_a_sudden_change_is() {
        let t0 = Instant::now();
        let a = Adaptive::new(Duration::from_secs(10), t0);
        let mut rnd = draws(0x1234_5678_9abc_def1);
        // Ten minutes at 15% failures, 30 requests a second: windows vary a lot (a
        // fixed 20% failure_ratio rule would trip on many of them) but never this rule.
        let noisy = Phase {
            from: 0,
            secs: 600,
            rps: 30,
            share: 0.15,
            lat: 5 * MS,
        };
        assert_eq!(run(&a, t0, noisy, &mut rnd), None);
        let b = a.baseline();
        assert!((b.failure_ratio - 0.15).abs() < 0.04, "{b:?}");
        assert!(b.periods > 50);
        // Then it jumps to 60%: tripped within one period.
        let jump = Phase {
            from: 600,
            secs: 10,
            rps: 30,
            share: 0.6,
            lat: 5 * MS,
        };
        let trip = run(&a, t0, jump, &mut rnd);
        match trip {
            Some(AdaptiveTrip::FailureRatio {
                ratio,
                baseline,
                threshold,
            }) => {
                assert!(ratio > threshold && baseline < 0.2, "{trip:?}");
            }
            other => panic!("not tripped on failures: {other:?}"),
        }
    }

    #[test]
    fn latency_well_above_its_own_normal_trips_but_its_jitter_does_not() {
        let t0 = Instant::now();
        let a = Adaptive::new(Duration::from_secs(5), t0);
        let mut rnd = draws(42);
        // 20-40 ms, jittery: the normal.
        for s in 0..120 {
            for i in 0..20u64 {
                let now = t0 + Duration::from_secs(s) + Duration::from_millis(i * 50);
                let lat = Duration::from_millis(20 + (rnd() * 20.0) as u64);
                assert_eq!(a.record(&policy(), 20, false, lat, now), None);
            }
        }
        let b = a.baseline();
        assert!((b.latency_ms - 30.0).abs() < 3.0, "{b:?}");
        // Then every call takes 200 ms.
        let mut tripped = None;
        for i in 0..200u64 {
            let now = t0 + Duration::from_secs(120) + Duration::from_millis(i * 50);
            if let Some(t) = a.record(&policy(), 20, false, 200 * MS, now) {
                tripped = Some(t);
                break;
            }
        }
        assert!(
            matches!(tripped, Some(AdaptiveTrip::Latency { mean_ms, baseline_ms, threshold_ms })
                if mean_ms > threshold_ms && threshold_ms >= 3.0 * baseline_ms && baseline_ms < 35.0),
            "{tripped:?}"
        );
    }

    #[test]
    fn nothing_trips_during_warmup_or_below_min_requests() {
        let t0 = Instant::now();
        let a = Adaptive::new(Duration::from_secs(1), t0);
        // Everything fails from the start: no baseline yet, so the rule stays quiet
        // (the absolute rules are the ones for a backend that is bad from the start).
        for i in 0..25u64 {
            let now = t0 + Duration::from_millis(i * 100);
            assert_eq!(a.record(&policy(), 5, true, MS, now), None);
        }
        assert_eq!(a.baseline().periods, 2);
    }
}
