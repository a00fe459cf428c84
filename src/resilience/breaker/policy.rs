//! The breaker's policy and the words its parts share: states, admission, trip
//! reasons and transitions.

use crate::resilience::adaptive::{AdaptivePolicy, AdaptiveTrip};
use crate::resilience::classify::Classifier;
use std::fmt;
use std::time::Duration;

/// A validated `circuit_breaker` section (the workers' or a route's). Compared on
/// reload: a breaker whose policy is unchanged keeps its state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Off: every request is admitted and nothing is counted (`try_acquire` always allows).
    pub enabled: bool,
    /// Trip after this many failures in a row; 0 = rule off.
    pub consecutive_failures: u32,
    /// Trip when failures / requests in the window reach this; 0 = rule off.
    pub failure_ratio: f64,
    /// Trip when slow calls / requests in the window reach this; 0 = rule off.
    pub slow_call_ratio: f64,
    /// A call taking at least this long is slow.
    pub slow_call_duration: Duration,
    /// The ratio rules only judge a window holding at least this many requests.
    pub min_requests: u32,
    /// Rolling window of the ratio rules, and the adaptive rule's period (at least
    /// 100 ms; default 10 s).
    pub window: Duration,
    /// Open time after the first trip; the n-th trip in a row opens for n × this.
    pub open_for: Duration,
    /// Cap on the growing open time; never below `open_for`.
    pub max_open_for: Duration,
    /// Probes admitted at once while half-open, and successes needed to close (1 to
    /// 1000).
    pub half_open_probes: u32,
    /// Which outcomes count as failures (`failure_on`; default: connect errors,
    /// timeouts, resets and 5xx).
    pub failure_on: Classifier,
    /// Thresholds relative to the backend's own learned baseline (`adaptive.rs`).
    pub adaptive: AdaptivePolicy,
}

impl BreakerPolicy {
    /// A breaker that never trips (`enabled: false`, every rule off); code-built
    /// policies start from it with `..BreakerPolicy::disabled()`.
    pub fn disabled() -> Self {
        BreakerPolicy {
            enabled: false,
            consecutive_failures: 0,
            failure_ratio: 0.0,
            slow_call_ratio: 0.0,
            slow_call_duration: Duration::from_secs(1),
            min_requests: 1,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(1),
            half_open_probes: 1,
            failure_on: Classifier::default(),
            adaptive: AdaptivePolicy::default(),
        }
    }

    pub(super) fn uses_window(&self) -> bool {
        self.failure_ratio > 0.0 || self.slow_call_ratio > 0.0 || self.adaptive.enabled
    }

    pub(super) fn is_slow(&self, latency: Duration) -> bool {
        self.slow_call_ratio > 0.0 && latency >= self.slow_call_duration
    }

    /// Open time for the `trips`-th trip in a row: base × trips, capped.
    pub fn open_duration(&self, trips: u32) -> Duration {
        self.open_for
            .saturating_mul(trips.max(1))
            .min(self.max_open_for)
    }
}

/// The answer of [`Machine::acquire`] to a request that asks to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: the request goes as usual.
    Allowed,
    /// Half-open: the request goes as one of the probes whose outcomes decide.
    Probe,
    /// Open, or half-open with every probe place taken: the request does not go.
    Rejected,
}

/// Where a breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Normal: requests go, outcomes are counted.
    Closed,
    /// Tripped: requests are refused until the open time has passed.
    Open,
    /// Open time over: a few probes go, and their outcomes close or reopen it.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`: for logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// Why a breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    /// `consecutive_failures` failures in a row.
    ConsecutiveFailures {
        /// Failures in a row when it tripped.
        failures: u32,
    },
    /// The window's failure ratio reached `failure_ratio`.
    FailureRatio {
        /// Failures in the window.
        failures: u64,
        /// Requests in the window (at least `min_requests`).
        total: u64,
    },
    /// The window's slow-call ratio reached `slow_call_ratio`.
    SlowCallRatio {
        /// Calls at least `slow_call_duration` long in the window.
        slow: u64,
        /// Requests in the window (at least `min_requests`).
        total: u64,
    },
    /// A half-open probe failed (or was slow while the slow-call rule is on).
    ProbeFailed,
    /// An operator opened it (admin API).
    Forced,
    /// The failure ratio rose well above the backend's own baseline (per mille).
    AdaptiveFailureRatio {
        /// Failure ratio over the last two periods, ‰.
        ratio_pm: u32,
        /// The learned normal failure ratio, ‰.
        baseline_pm: u32,
        /// The ratio it had to exceed, ‰.
        threshold_pm: u32,
    },
    /// Mean latency rose well above the backend's own baseline (ms).
    AdaptiveLatency {
        /// Mean latency over the last two periods.
        mean_ms: u32,
        /// The learned normal mean latency.
        baseline_ms: u32,
        /// The mean it had to exceed.
        threshold_ms: u32,
    },
}

impl From<AdaptiveTrip> for TripReason {
    fn from(t: AdaptiveTrip) -> Self {
        let pm = |x: f64| (x * 1000.0).round().clamp(0.0, 1000.0) as u32;
        let ms = |x: f64| x.round().clamp(0.0, u32::MAX as f64) as u32;
        match t {
            AdaptiveTrip::FailureRatio {
                ratio,
                baseline,
                threshold,
            } => TripReason::AdaptiveFailureRatio {
                ratio_pm: pm(ratio),
                baseline_pm: pm(baseline),
                threshold_pm: pm(threshold),
            },
            AdaptiveTrip::Latency {
                mean_ms,
                baseline_ms,
                threshold_ms,
            } => TripReason::AdaptiveLatency {
                mean_ms: ms(mean_ms),
                baseline_ms: ms(baseline_ms),
                threshold_ms: ms(threshold_ms),
            },
        }
    }
}

impl TripReason {
    /// Metric label of each reason, indexed by [`TripReason::index`] (and
    /// `TransitionCounts::trips`).
    pub const LABELS: [&'static str; 7] = [
        "consecutive_failures",
        "failure_ratio",
        "slow_call_ratio",
        "probe_failed",
        "forced",
        "adaptive_failure_ratio",
        "adaptive_latency",
    ];

    /// Position of this reason's kind in [`TripReason::LABELS`], 0 to 6.
    pub fn index(self) -> usize {
        match self {
            TripReason::ConsecutiveFailures { .. } => 0,
            TripReason::FailureRatio { .. } => 1,
            TripReason::SlowCallRatio { .. } => 2,
            TripReason::ProbeFailed => 3,
            TripReason::Forced => 4,
            TripReason::AdaptiveFailureRatio { .. } => 5,
            TripReason::AdaptiveLatency { .. } => 6,
        }
    }

    /// The reason's kind as a metric label (`consecutive_failures`, ...).
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

impl fmt::Display for TripReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TripReason::ConsecutiveFailures { failures } => {
                write!(f, "{failures} consecutive failures")
            }
            TripReason::FailureRatio { failures, total } => {
                write!(f, "failure ratio {failures}/{total} in the window")
            }
            TripReason::SlowCallRatio { slow, total } => {
                write!(f, "slow-call ratio {slow}/{total} in the window")
            }
            TripReason::ProbeFailed => f.write_str("a half-open probe failed"),
            TripReason::Forced => f.write_str("forced open by an operator"),
            TripReason::AdaptiveFailureRatio {
                ratio_pm,
                baseline_pm,
                threshold_pm,
            } => write!(
                f,
                "failure ratio {:.1}% well above its baseline {:.1}% (threshold {:.1}%)",
                *ratio_pm as f64 / 10.0,
                *baseline_pm as f64 / 10.0,
                *threshold_pm as f64 / 10.0
            ),
            TripReason::AdaptiveLatency {
                mean_ms,
                baseline_ms,
                threshold_ms,
            } => write!(
                f,
                "mean latency {mean_ms} ms well above its baseline {baseline_ms} ms (threshold {threshold_ms} ms)"
            ),
        }
    }
}

/// A state change, returned by the machine so the caller logs and counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// → open: a rule tripped (from closed), a probe failed (from half-open), or an
    /// operator forced it (from any state).
    Opened {
        /// The state it left.
        from: CircuitState,
        /// Why it opened.
        reason: TripReason,
        /// How long it stays open before probing (grows with trips in a row).
        open_for: Duration,
    },
    /// Open → half-open: the open time has passed.
    HalfOpened,
    /// Half-open → closed: enough probes succeeded.
    Closed {
        /// Successful probes that closed it (`half_open_probes`).
        probe_successes: u32,
    },
    /// An operator closed it (`close` or `reset`).
    ForcedClosed,
}
