//! Circuit breaker: CLOSED → OPEN → HALF_OPEN → CLOSED, for a worker or a route.
//!
//! Three pieces, each testable with an injected clock and no sleeping:
//! - [`ClosedCounter`] counts outcomes while CLOSED (consecutive failures, and a rolling
//!   window of failures and slow calls) and says when, and why, to trip. It is all
//!   atomics, so the CLOSED path (the common case) takes no lock.
//! - [`Machine`] is the pure state machine: open time growing per trip (base × trips,
//!   capped, like Envoy's ejection time), HALF_OPEN admitting at most K probes at once,
//!   enough probe successes closing it, one probe failure reopening it.
//! - [`Breaker`] joins them for concurrent use; the machine sits behind a mutex that is
//!   only taken off the CLOSED fast path (trips, probes, an open breaker's checks).
//!
//! Every transition is logged with its reason and counted (`TransitionCounts`, turned
//! into Prometheus series at scrape time by `observe::resilience_metrics`).

use super::adaptive::{Adaptive, AdaptivePolicy, AdaptiveTrip, Baseline};
use super::classify::{Classifier, Outcome};
use super::window::{Totals, Window};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
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
    pub window: Duration,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
    pub failure_on: Classifier,
    /// Thresholds relative to the backend's own learned baseline (`adaptive.rs`).
    pub adaptive: AdaptivePolicy,
}

impl BreakerPolicy {
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

    fn uses_window(&self) -> bool {
        self.failure_ratio > 0.0 || self.slow_call_ratio > 0.0 || self.adaptive.enabled
    }

    fn is_slow(&self, latency: Duration) -> bool {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
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
    ConsecutiveFailures {
        failures: u32,
    },
    FailureRatio {
        failures: u64,
        total: u64,
    },
    SlowCallRatio {
        slow: u64,
        total: u64,
    },
    ProbeFailed,
    Forced,
    /// The failure ratio rose well above the backend's own baseline (per mille).
    AdaptiveFailureRatio {
        ratio_pm: u32,
        baseline_pm: u32,
        threshold_pm: u32,
    },
    /// Mean latency rose well above the backend's own baseline (ms).
    AdaptiveLatency {
        mean_ms: u32,
        baseline_ms: u32,
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
    pub const LABELS: [&'static str; 7] = [
        "consecutive_failures",
        "failure_ratio",
        "slow_call_ratio",
        "probe_failed",
        "forced",
        "adaptive_failure_ratio",
        "adaptive_latency",
    ];

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
    Opened {
        from: CircuitState,
        reason: TripReason,
        open_for: Duration,
    },
    HalfOpened,
    Closed {
        probe_successes: u32,
    },
    /// An operator closed it (`close` or `reset`).
    ForcedClosed,
}

/// Outcome counting while CLOSED: lock-free, one or two atomic adds per request.
#[derive(Debug)]
pub struct ClosedCounter {
    consecutive: AtomicU32,
    window: Option<Window>,
    adaptive: Option<Adaptive>,
}

impl ClosedCounter {
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

    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

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

/// The pure state machine. Counting while CLOSED is [`ClosedCounter`]'s job; the
/// machine is told when to trip.
#[derive(Debug)]
pub struct Machine {
    policy: BreakerPolicy,
    state: CircuitState,
    /// Trips in a row without a close in between; sets the open time.
    trips: u32,
    open_until: Option<Instant>,
    probes_inflight: u32,
    probe_successes: u32,
    last_reason: Option<TripReason>,
}

impl Machine {
    pub fn new(policy: BreakerPolicy) -> Self {
        Machine {
            policy,
            state: CircuitState::Closed,
            trips: 0,
            open_until: None,
            probes_inflight: 0,
            probe_successes: 0,
            last_reason: None,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn trips(&self) -> u32 {
        self.trips
    }

    pub fn last_reason(&self) -> Option<TripReason> {
        self.last_reason
    }

    pub fn probes_inflight(&self) -> u32 {
        self.probes_inflight
    }

    /// Time left before an open breaker lets a probe through.
    pub fn open_remaining(&self, now: Instant) -> Option<Duration> {
        match (self.state, self.open_until) {
            (CircuitState::Open, Some(t)) => Some(t.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// Moves OPEN → HALF_OPEN once the open time has passed.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        if self.state == CircuitState::Open && self.open_until.is_some_and(|t| now >= t) {
            self.state = CircuitState::HalfOpen;
            self.probes_inflight = 0;
            self.probe_successes = 0;
            return Some(Transition::HalfOpened);
        }
        None
    }

    /// Asks to send a request: whether it may go, and if so whether it is a half-open
    /// probe.
    pub fn acquire(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let t = self.tick(now);
        let r = match self.state {
            CircuitState::Closed => Admission::Allowed,
            CircuitState::Open => Admission::Rejected,
            CircuitState::HalfOpen => {
                if self.probes_inflight < self.policy.half_open_probes {
                    self.probes_inflight += 1;
                    Admission::Probe
                } else {
                    Admission::Rejected
                }
            }
        };
        (r, t)
    }

    /// A probe that ended without an outcome (cancelled) gives its slot back.
    pub fn release_probe(&mut self) {
        self.probes_inflight = self.probes_inflight.saturating_sub(1);
    }

    /// CLOSED → OPEN because a rule fired. Ignored unless CLOSED (a late trip signal
    /// from a request admitted before an earlier trip changes nothing).
    pub fn trip(&mut self, reason: TripReason, now: Instant) -> Option<Transition> {
        if self.state != CircuitState::Closed {
            return None;
        }
        Some(self.open(reason, now))
    }

    /// The result of a half-open probe: enough successes close, one failure reopens.
    pub fn on_probe(&mut self, success: bool, now: Instant) -> Option<Transition> {
        self.release_probe();
        if self.state != CircuitState::HalfOpen {
            return None;
        }
        if !success {
            return Some(self.open(TripReason::ProbeFailed, now));
        }
        self.probe_successes += 1;
        if self.probe_successes < self.policy.half_open_probes {
            return None;
        }
        let n = self.probe_successes;
        self.close();
        Some(Transition::Closed { probe_successes: n })
    }

    fn open(&mut self, reason: TripReason, now: Instant) -> Transition {
        let from = self.state;
        self.trips = self.trips.saturating_add(1);
        let open_for = self.policy.open_duration(self.trips);
        self.state = CircuitState::Open;
        self.open_until = Some(now + open_for);
        self.probes_inflight = 0;
        self.probe_successes = 0;
        self.last_reason = Some(reason);
        Transition::Opened {
            from,
            reason,
            open_for,
        }
    }

    fn close(&mut self) {
        self.state = CircuitState::Closed;
        self.trips = 0;
        self.open_until = None;
        self.probes_inflight = 0;
        self.probe_successes = 0;
    }

    /// Operator override from the admin API.
    pub fn force(&mut self, action: Force, now: Instant) -> Option<Transition> {
        match action {
            Force::Open => Some(self.open(TripReason::Forced, now)),
            Force::Close | Force::Reset => {
                let was = self.state;
                self.close();
                if action == Force::Reset {
                    self.last_reason = None;
                }
                (was != CircuitState::Closed).then_some(Transition::ForcedClosed)
            }
        }
    }
}

/// What an operator can do to a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Open now (counts as a trip: the open time grows as for any trip).
    Open,
    /// Close now; keeps the record of the last trip.
    Close,
    /// Close and forget counts, trips and the last reason.
    Reset,
}

/// A breaker action drover does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an action; accepted: open, close, reset")]
pub struct UnknownAction(pub String);

impl std::str::FromStr for Force {
    type Err = UnknownAction;
    fn from_str(s: &str) -> Result<Self, UnknownAction> {
        match s {
            "open" => Ok(Force::Open),
            "close" => Ok(Force::Close),
            "reset" => Ok(Force::Reset),
            _ => Err(UnknownAction(s.to_string())),
        }
    }
}

/// A right to send one request; tells the breaker whether the result is a probe.
#[derive(Debug)]
pub struct Permit {
    probe: bool,
    settled: bool,
}

impl Permit {
    /// A permit no breaker tracks (unit tests, breaker bypassed by the ejection cap).
    pub fn none() -> Self {
        Permit {
            probe: false,
            settled: true,
        }
    }

    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Counts of transitions, for metrics.
#[derive(Debug, Default)]
pub struct TransitionCounts {
    pub opened: AtomicU64,
    pub half_opened: AtomicU64,
    pub closed: AtomicU64,
    /// Opens by reason, indexed like [`TripReason::LABELS`].
    pub trips: [AtomicU64; 7],
}

/// A point-in-time view for `/api/breakers`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: CircuitState,
    pub trips_in_a_row: u32,
    pub open_remaining: Option<Duration>,
    pub consecutive_failures: u32,
    pub window: Totals,
    pub probes_inflight: u32,
    pub last_reason: Option<TripReason>,
    /// The adaptive rule's learned baseline, when it is on.
    pub baseline: Option<Baseline>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Transitions each breaker remembers for the dashboard.
pub const RECENT_TRANSITIONS: usize = 16;

/// One remembered transition.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRecord {
    /// Unix time, seconds.
    pub at: f64,
    pub from: &'static str,
    pub to: &'static str,
    /// Why it opened (opens only).
    pub reason: Option<String>,
}

pub struct Breaker {
    /// Unique per breaker instance (metrics keep per-instance delta state by it).
    pub id: u64,
    policy: BreakerPolicy,
    /// Mirrors `state == Closed` so the hot path needs no lock.
    closed: AtomicBool,
    counter: ClosedCounter,
    machine: Mutex<Machine>,
    pub counts: TransitionCounts,
    name: Mutex<String>,
    /// The last [`RECENT_TRANSITIONS`] transitions, oldest first.
    recent: Mutex<std::collections::VecDeque<TransitionRecord>>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            policy,
            closed: AtomicBool::new(true),
            counter: ClosedCounter::new(&policy, Instant::now()),
            machine: Mutex::new(Machine::new(policy)),
            counts: TransitionCounts::default(),
            name: Mutex::new(String::new()),
            recent: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Names the breaker in its log lines.
    pub fn set_name(&self, name: &str) {
        if let Ok(mut n) = self.name.lock() {
            *n = name.to_string();
        }
    }

    pub fn state(&self) -> CircuitState {
        if self.closed.load(Ordering::Acquire) {
            return CircuitState::Closed;
        }
        self.lock().state()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // A panic while holding this lock cannot leave the machine inconsistent
        // (every method is a few assignments), so a poisoned lock is still usable.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the breaker could take a request now (used when building the eligible set).
    pub fn admits_traffic(&self) -> bool {
        self.admits_traffic_at(Instant::now())
    }

    pub fn admits_traffic_at(&self, now: Instant) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let mut m = self.lock();
        let t = m.tick(now);
        self.note(t);
        m.state() == CircuitState::HalfOpen
    }

    pub fn try_acquire(&self) -> Option<Permit> {
        if !self.policy.enabled || self.closed.load(Ordering::Acquire) {
            return Some(Permit {
                probe: false,
                settled: false,
            });
        }
        self.try_acquire_at(Instant::now())
    }

    pub fn try_acquire_at(&self, now: Instant) -> Option<Permit> {
        if !self.policy.enabled {
            return Some(Permit {
                probe: false,
                settled: false,
            });
        }
        if self.closed.load(Ordering::Acquire) {
            return Some(Permit {
                probe: false,
                settled: false,
            });
        }
        let mut m = self.lock();
        let (r, t) = m.acquire(now);
        self.note(t);
        let probe = match r {
            Admission::Allowed => false,
            Admission::Probe => true,
            Admission::Rejected => return None,
        };
        Some(Permit {
            probe,
            settled: false,
        })
    }

    /// Records the outcome of a request sent under `permit`. Returns whether the policy
    /// counts it as a failure (callers reuse the verdict for their own counters).
    pub fn record(&self, permit: &mut Permit, outcome: Outcome, latency: Duration) -> bool {
        let failure = self.policy.failure_on.is_failure(outcome);
        if permit.settled || !self.policy.enabled {
            permit.settled = true;
            return failure;
        }
        if !failure
            && !permit.probe
            && !self.policy.uses_window()
            && self.closed.load(Ordering::Acquire)
        {
            // The commonest case, kept to two atomics: a success while CLOSED.
            permit.settled = true;
            if self.counter.consecutive.load(Ordering::Relaxed) != 0 {
                self.counter.consecutive.store(0, Ordering::Relaxed);
            }
            return false;
        }
        self.record_at(permit, failure, latency, Instant::now());
        failure
    }

    /// [`Breaker::record`] with the failure verdict made and the clock given.
    pub fn record_at(&self, permit: &mut Permit, failure: bool, latency: Duration, now: Instant) {
        if permit.settled {
            return;
        }
        permit.settled = true;
        let slow = self.policy.is_slow(latency);
        if !permit.probe {
            if !self.closed.load(Ordering::Acquire) {
                // Admitted before the trip; its result says nothing new.
                return;
            }
            if let Some(reason) = self
                .counter
                .record(&self.policy, failure, slow, latency, now)
            {
                let t = self.lock().trip(reason, now);
                self.after_machine(t);
            }
            return;
        }
        // A slow probe is a failed probe when slowness is a trip rule.
        let t = self.lock().on_probe(!failure && !slow, now);
        self.after_machine(t);
    }

    /// Publishes the machine's state to the lock-free flag and logs the transition.
    fn after_machine(&self, t: Option<Transition>) {
        if t.is_none() {
            return;
        }
        let closed = self.lock().state() == CircuitState::Closed;
        self.counter.reset();
        self.closed.store(closed, Ordering::Release);
        self.note(t);
    }

    /// Returns an unused probe slot (request ended without a result).
    pub fn release(&self, permit: &mut Permit) {
        if permit.settled {
            return;
        }
        permit.settled = true;
        if permit.probe {
            self.lock().release_probe();
        }
    }

    pub fn force(&self, action: Force) {
        self.force_at(action, Instant::now())
    }

    pub fn force_at(&self, action: Force, now: Instant) {
        let t = self.lock().force(action, now);
        self.counter.reset();
        let closed = self.lock().state() == CircuitState::Closed;
        self.closed.store(closed, Ordering::Release);
        log::warn!(
            "breaker {}: operator {:?}; now {}",
            self.name(),
            action,
            self.state().as_str()
        );
        self.note(t);
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let m = self.lock();
        Snapshot {
            state: m.state(),
            trips_in_a_row: m.trips(),
            open_remaining: m.open_remaining(now),
            consecutive_failures: self.counter.consecutive(),
            window: self.counter.totals(now),
            probes_inflight: m.probes_inflight(),
            last_reason: m.last_reason(),
            baseline: self.counter.baseline(),
        }
    }

    pub fn name(&self) -> String {
        self.name.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Recent transitions, oldest first.
    pub fn recent_transitions(&self) -> Vec<TransitionRecord> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn remember(&self, from: &'static str, to: &'static str, reason: Option<String>) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT_TRANSITIONS {
                r.pop_front();
            }
            r.push_back(TransitionRecord {
                at,
                from,
                to,
                reason,
            });
        }
    }

    fn note(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        match &t {
            Transition::Opened { from, reason, .. } => {
                self.remember(from.as_str(), "open", Some(reason.to_string()))
            }
            Transition::HalfOpened => self.remember("open", "half_open", None),
            Transition::Closed { .. } => self.remember("half_open", "closed", None),
            Transition::ForcedClosed => self.remember("open", "closed", Some("operator".into())),
        }
        let name = self.name();
        match &t {
            Transition::Opened {
                from,
                reason,
                open_for,
            } => {
                self.counts.opened.fetch_add(1, Ordering::Relaxed);
                self.counts.trips[reason.index()].fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "breaker {name}: {} -> open: {reason}; open for {open_for:?}",
                    from.as_str()
                );
            }
            Transition::HalfOpened => {
                self.counts.half_opened.fetch_add(1, Ordering::Relaxed);
                log::info!("breaker {name}: open -> half_open: open time elapsed, probing");
            }
            Transition::Closed { probe_successes } => {
                self.counts.closed.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "breaker {name}: half_open -> closed after {probe_successes} successful probes"
                );
            }
            Transition::ForcedClosed => {
                self.counts.closed.fetch_add(1, Ordering::Relaxed);
                log::warn!("breaker {name}: -> closed by an operator");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            consecutive_failures: 3,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(12),
            half_open_probes: 2,
            ..BreakerPolicy::disabled()
        }
    }

    fn ratio_policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 0,
            failure_ratio: 0.5,
            slow_call_ratio: 0.5,
            slow_call_duration: Duration::from_millis(100),
            min_requests: 10,
            window: Duration::from_secs(10),
            ..policy()
        }
    }

    const S: Duration = Duration::from_secs(1);
    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn consecutive_failures_trip_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let p = policy();
        let c = ClosedCounter::new(&p, t0);
        assert_eq!(c.record(&p, true, false, FAST, t0), None);
        assert_eq!(c.record(&p, true, false, FAST, t0), None);
        assert_eq!(c.record(&p, false, false, FAST, t0), None, "success resets");
        assert_eq!(c.consecutive(), 0);
        assert_eq!(c.record(&p, true, false, FAST, t0), None);
        assert_eq!(c.record(&p, true, false, FAST, t0), None);
        assert_eq!(
            c.record(&p, true, false, FAST, t0),
            Some(TripReason::ConsecutiveFailures { failures: 3 })
        );
    }

    #[test]
    fn failure_ratio_needs_min_requests_in_the_window() {
        let t0 = Instant::now();
        let p = ratio_policy();
        let c = ClosedCounter::new(&p, t0);
        // 5 failures of 5: ratio 1.0 but below min_requests (10).
        for _ in 0..5 {
            assert_eq!(c.record(&p, true, false, FAST, t0), None);
        }
        for _ in 0..4 {
            assert_eq!(c.record(&p, false, false, FAST, t0), None);
        }
        // 10th request, a failure: 6/10 ≥ 0.5.
        assert_eq!(
            c.record(&p, true, false, FAST, t0),
            Some(TripReason::FailureRatio {
                failures: 6,
                total: 10
            })
        );
    }

    #[test]
    fn failure_ratio_below_threshold_or_out_of_window_does_not_trip() {
        let t0 = Instant::now();
        let p = ratio_policy();
        let c = ClosedCounter::new(&p, t0);
        for _ in 0..8 {
            c.record(&p, true, false, FAST, t0);
        }
        // 11 s later those failures have left the window: 1 failure in 10 is 0.1.
        let t1 = t0 + 11 * S;
        for _ in 0..9 {
            assert_eq!(c.record(&p, false, false, FAST, t1), None);
        }
        assert_eq!(c.record(&p, true, false, FAST, t1), None);
        assert_eq!(c.totals(t1).total, 10);
    }

    #[test]
    fn slow_call_ratio_trips_on_latency_alone() {
        let t0 = Instant::now();
        let p = ratio_policy();
        let c = ClosedCounter::new(&p, t0);
        for _ in 0..5 {
            assert_eq!(c.record(&p, false, false, FAST, t0), None);
        }
        for _ in 0..4 {
            assert_eq!(c.record(&p, false, true, FAST, t0), None);
        }
        assert_eq!(
            c.record(&p, false, true, FAST, t0),
            Some(TripReason::SlowCallRatio { slow: 5, total: 10 })
        );
    }

    #[test]
    fn machine_open_then_half_open_admits_at_most_k_probes_then_closes() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        let reason = TripReason::ConsecutiveFailures { failures: 3 };
        assert_eq!(
            m.trip(reason, t0),
            Some(Transition::Opened {
                from: CircuitState::Closed,
                reason,
                open_for: 5 * S
            })
        );
        assert_eq!(m.acquire(t0 + 4 * S).0, Admission::Rejected, "open refuses");
        assert_eq!(m.open_remaining(t0 + 4 * S), Some(S));
        let t1 = t0 + 5 * S;
        let (r, t) = m.acquire(t1);
        assert_eq!((r, t), (Admission::Probe, Some(Transition::HalfOpened)));
        assert_eq!(m.acquire(t1).0, Admission::Probe);
        assert_eq!(
            m.acquire(t1).0,
            Admission::Rejected,
            "third concurrent probe refused"
        );
        assert_eq!(m.on_probe(true, t1), None);
        assert_eq!(
            m.on_probe(true, t1),
            Some(Transition::Closed { probe_successes: 2 })
        );
        assert_eq!(m.state(), CircuitState::Closed);
        assert_eq!(m.trips(), 0);
    }

    #[test]
    fn failed_probe_reopens_for_longer_capped() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        m.trip(TripReason::ConsecutiveFailures { failures: 3 }, t0);
        let t1 = t0 + 5 * S;
        assert_eq!(m.acquire(t1).0, Admission::Probe);
        assert_eq!(
            m.on_probe(false, t1),
            Some(Transition::Opened {
                from: CircuitState::HalfOpen,
                reason: TripReason::ProbeFailed,
                open_for: 10 * S
            })
        );
        let t2 = t1 + 10 * S;
        assert_eq!(m.acquire(t2).0, Admission::Probe);
        assert_eq!(
            m.on_probe(false, t2),
            Some(Transition::Opened {
                from: CircuitState::HalfOpen,
                reason: TripReason::ProbeFailed,
                open_for: 12 * S
            }),
            "capped at max_open_for"
        );
        assert_eq!(m.last_reason(), Some(TripReason::ProbeFailed));
    }

    #[test]
    fn late_signals_change_nothing() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        m.trip(TripReason::Forced, t0);
        assert_eq!(
            m.trip(TripReason::ConsecutiveFailures { failures: 9 }, t0),
            None,
            "already open"
        );
        assert_eq!(m.on_probe(false, t0), None, "not half-open");
    }

    #[test]
    fn cancelled_probe_returns_its_slot() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        m.trip(TripReason::Forced, t0);
        let t1 = t0 + 5 * S;
        assert_eq!(m.acquire(t1).0, Admission::Probe);
        assert_eq!(m.acquire(t1).0, Admission::Probe);
        assert_eq!(m.acquire(t1).0, Admission::Rejected);
        m.release_probe();
        assert_eq!(m.acquire(t1).0, Admission::Probe);
    }

    #[test]
    fn forced_open_close_and_reset() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        let t = m.force(Force::Open, t0);
        assert!(matches!(
            t,
            Some(Transition::Opened {
                reason: TripReason::Forced,
                ..
            })
        ));
        assert_eq!(m.force(Force::Close, t0), Some(Transition::ForcedClosed));
        assert_eq!(m.state(), CircuitState::Closed);
        assert_eq!(m.last_reason(), Some(TripReason::Forced));
        assert_eq!(m.force(Force::Reset, t0), None, "already closed");
        assert_eq!(m.last_reason(), None);
        assert_eq!("reset".parse::<Force>(), Ok(Force::Reset));
        assert!("shut".parse::<Force>().is_err());
    }

    #[test]
    fn concurrent_breaker_trips_blocks_probes_and_closes_with_injected_time() {
        let b = Breaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            let mut p = b.try_acquire_at(t0).unwrap();
            b.record_at(&mut p, true, FAST, t0);
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire_at(t0).is_none());
        assert!(!b.admits_traffic_at(t0));
        assert_eq!(b.counts.opened.load(Ordering::Relaxed), 1);
        assert_eq!(b.counts.trips[0].load(Ordering::Relaxed), 1);
        let t1 = t0 + 5 * S;
        assert!(b.admits_traffic_at(t1));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let mut p1 = b.try_acquire_at(t1).unwrap();
        let mut p2 = b.try_acquire_at(t1).unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        assert!(b.try_acquire_at(t1).is_none(), "K = 2");
        b.record_at(&mut p1, false, FAST, t1);
        b.record_at(&mut p2, false, FAST, t1);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.counts.closed.load(Ordering::Relaxed), 1);
        assert_eq!(b.counts.half_opened.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn concurrent_breaker_slow_probe_reopens() {
        let b = Breaker::new(ratio_policy());
        let t0 = Instant::now();
        for _ in 0..10 {
            let mut p = b.try_acquire_at(t0).unwrap();
            b.record_at(&mut p, false, S, t0);
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(
            b.counts.trips[2].load(Ordering::Relaxed),
            1,
            "slow_call_ratio"
        );
        let t1 = t0 + 5 * S;
        let mut p = b.try_acquire_at(t1).unwrap();
        b.record_at(&mut p, false, S, t1);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.snapshot().last_reason, Some(TripReason::ProbeFailed));
        assert_eq!(b.snapshot().trips_in_a_row, 2);
    }

    #[test]
    fn results_admitted_before_a_trip_are_ignored() {
        let b = Breaker::new(policy());
        let t0 = Instant::now();
        let mut early = b.try_acquire_at(t0).unwrap();
        b.force_at(Force::Open, t0);
        b.record_at(&mut early, true, FAST, t0);
        assert_eq!(b.snapshot().consecutive_failures, 0);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn record_classifies_5xx_as_failure() {
        let b = Breaker::new(policy());
        for _ in 0..3 {
            let mut p = b.try_acquire().unwrap();
            assert!(b.record(&mut p, Outcome::Status(500), FAST));
        }
        assert_eq!(b.state(), CircuitState::Open);
        b.force(Force::Reset);
        let mut p = b.try_acquire().unwrap();
        assert!(!b.record(&mut p, Outcome::Status(404), FAST));
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn disabled_breaker_never_opens_but_still_classifies() {
        let b = Breaker::new(BreakerPolicy::disabled());
        for _ in 0..100 {
            let mut p = b.try_acquire().unwrap();
            assert!(b.record(&mut p, Outcome::ConnectError, FAST));
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
