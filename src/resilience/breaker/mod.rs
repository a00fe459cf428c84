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

mod counter;
mod machine;
mod policy;

pub use counter::ClosedCounter;
pub use machine::{Force, Machine, UnknownAction};
pub use policy::{Admission, BreakerPolicy, CircuitState, Transition, TripReason};

use crate::resilience::adaptive::Baseline;
use crate::resilience::classify::Outcome;
use crate::resilience::window::Totals;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// True when the request is a half-open probe, whose outcome closes or reopens.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Counts of transitions, for metrics.
#[derive(Debug, Default)]
pub struct TransitionCounts {
    /// Times it opened, for any reason (forced opens included).
    pub opened: AtomicU64,
    /// Times the open time ran out and probing began.
    pub half_opened: AtomicU64,
    /// Times it closed: after successful probes or by an operator.
    pub closed: AtomicU64,
    /// Opens by reason, indexed like [`TripReason::LABELS`].
    pub trips: [AtomicU64; 7],
}

/// A point-in-time view for `/api/breakers`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The machine's state (an open breaker past its open time still shows open).
    pub state: CircuitState,
    /// Trips since the last close; the open time grows with it.
    pub trips_in_a_row: u32,
    /// Time until an open breaker lets probes through; `None` unless open.
    pub open_remaining: Option<Duration>,
    /// Current run of failures while closed (0 after any success).
    pub consecutive_failures: u32,
    /// The rolling window's counts (`a` failures, `b` slow calls); all zero when no
    /// ratio rule is on.
    pub window: Totals,
    /// Half-open probes sent and not yet settled.
    pub probes_inflight: u32,
    /// Why it last opened; kept after closing, cleared by a `reset`.
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
    /// State left: `closed`, `open` or `half_open`.
    pub from: &'static str,
    /// State entered, same words.
    pub to: &'static str,
    /// Why it opened (opens only).
    pub reason: Option<String>,
}

/// A circuit breaker for one worker, one route or one dependency (the session
/// store, shared rate limits); shared by every request through `Arc`, lock-free while closed.
pub struct Breaker {
    /// Unique per breaker instance (metrics keep per-instance delta state by it).
    pub id: u64,
    policy: BreakerPolicy,
    /// Mirrors `state == Closed` so the hot path needs no lock.
    closed: AtomicBool,
    counter: ClosedCounter,
    machine: Mutex<Machine>,
    /// Transitions so far, read by the metrics at scrape time.
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
    /// A closed breaker with a fresh id and no name (see [`Breaker::set_name`]).
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

    /// As built; reloads compare it to decide whether to keep this breaker.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Names the breaker in its log lines.
    pub fn set_name(&self, name: &str) {
        if let Ok(mut n) = self.name.lock() {
            *n = name.to_string();
        }
    }

    /// The current state; no lock while closed. Does not move open → half-open
    /// by itself (see [`Breaker::admits_traffic`]).
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

    /// [`Breaker::admits_traffic`] at `now`: true when closed or half-open (moving
    /// an open breaker whose time has passed to half-open).
    pub fn admits_traffic_at(&self, now: Instant) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let mut m = self.lock();
        let t = m.tick(now);
        self.note(t);
        m.state() == CircuitState::HalfOpen
    }

    /// Asks to send one request: `None` when open (or half-open with every probe
    /// slot taken). Always a permit when disabled or closed, without a lock.
    pub fn try_acquire(&self) -> Option<Permit> {
        if !self.policy.enabled || self.closed.load(Ordering::Acquire) {
            return Some(Permit {
                probe: false,
                settled: false,
            });
        }
        self.try_acquire_at(Instant::now())
    }

    /// [`Breaker::try_acquire`] with the clock given (tests).
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

    /// Applies an operator's action from the admin API; logged as a warning.
    pub fn force(&self, action: Force) {
        self.force_at(action, Instant::now())
    }

    /// [`Breaker::force`] with the clock given (tests).
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

    /// A consistent view for `/api/breakers` and the live dashboard; takes the lock.
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

    /// The name set by [`Breaker::set_name`]; empty until then.
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
