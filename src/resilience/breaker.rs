//! Per-backend circuit breaker: CLOSED → OPEN → HALF_OPEN → CLOSED.
//!
//! The state machine (`Machine`) is pure and takes the time as an argument, so every
//! transition is unit-tested without sleeping. `Breaker` wraps it for concurrent use:
//! the CLOSED fast path (the common case) is two atomics and no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
}

impl BreakerPolicy {
    pub fn disabled() -> Self {
        BreakerPolicy {
            enabled: false,
            consecutive_failures: u32::MAX,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(1),
            half_open_probes: 1,
        }
    }
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
}

/// Why a transition happened; logged and exposed so operators see the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Opened {
        consecutive_failures: u32,
        open_for: Duration,
    },
    HalfOpened,
    Closed {
        probe_successes: u32,
    },
    Reopened {
        open_for: Duration,
    },
}

#[derive(Debug)]
pub struct Machine {
    policy: BreakerPolicy,
    state: CircuitState,
    consecutive: u32,
    trips: u32,
    open_until: Option<Instant>,
    probes_inflight: u32,
    probe_successes: u32,
}

impl Machine {
    pub fn new(policy: BreakerPolicy) -> Self {
        Machine {
            policy,
            state: CircuitState::Closed,
            consecutive: 0,
            trips: 0,
            open_until: None,
            probes_inflight: 0,
            probe_successes: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Open time grows with repeated trips (base × trips, capped), like Envoy's ejection.
    fn open_duration(&self) -> Duration {
        let d = self.policy.open_for.saturating_mul(self.trips.max(1));
        d.min(self.policy.max_open_for)
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

    /// Asks to send a request. `Ok(true)` means it is a half-open probe.
    pub fn acquire(&mut self, now: Instant) -> (Result<bool, ()>, Option<Transition>) {
        let t = self.tick(now);
        let r = match self.state {
            CircuitState::Closed => Ok(false),
            CircuitState::Open => Err(()),
            CircuitState::HalfOpen => {
                if self.probes_inflight < self.policy.half_open_probes {
                    self.probes_inflight += 1;
                    Ok(true)
                } else {
                    Err(())
                }
            }
        };
        (r, t)
    }

    /// A probe that ended without an outcome (cancelled) gives its slot back.
    pub fn release_probe(&mut self) {
        self.probes_inflight = self.probes_inflight.saturating_sub(1);
    }

    pub fn on_result(&mut self, probe: bool, success: bool, now: Instant) -> Option<Transition> {
        if probe {
            self.release_probe();
        }
        match (self.state, success) {
            (CircuitState::Closed, true) => {
                self.consecutive = 0;
                None
            }
            (CircuitState::Closed, false) => {
                self.consecutive += 1;
                if self.consecutive >= self.policy.consecutive_failures {
                    self.trips += 1;
                    let open_for = self.open_duration();
                    let failures = self.consecutive;
                    self.open(now, open_for);
                    Some(Transition::Opened {
                        consecutive_failures: failures,
                        open_for,
                    })
                } else {
                    None
                }
            }
            (CircuitState::HalfOpen, true) if probe => {
                self.probe_successes += 1;
                if self.probe_successes >= self.policy.half_open_probes {
                    let n = self.probe_successes;
                    self.state = CircuitState::Closed;
                    self.consecutive = 0;
                    self.trips = 0;
                    self.open_until = None;
                    Some(Transition::Closed { probe_successes: n })
                } else {
                    None
                }
            }
            (CircuitState::HalfOpen, false) if probe => {
                self.trips += 1;
                let open_for = self.open_duration();
                self.open(now, open_for);
                Some(Transition::Reopened { open_for })
            }
            // Late results of requests admitted before the trip change nothing.
            _ => None,
        }
    }

    fn open(&mut self, now: Instant, open_for: Duration) {
        self.state = CircuitState::Open;
        self.open_until = Some(now + open_for);
        self.consecutive = 0;
        self.probes_inflight = 0;
        self.probe_successes = 0;
    }

    /// Operator override from the admin API.
    pub fn force(&mut self, state: CircuitState, now: Instant) {
        match state {
            CircuitState::Open => {
                self.trips += 1;
                let d = self.open_duration();
                self.open(now, d)
            }
            CircuitState::HalfOpen => {
                self.state = CircuitState::HalfOpen;
                self.probes_inflight = 0;
                self.probe_successes = 0;
            }
            CircuitState::Closed => {
                self.state = CircuitState::Closed;
                self.consecutive = 0;
                self.trips = 0;
                self.open_until = None;
            }
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
    pub fn none() -> Self {
        Permit {
            probe: false,
            settled: true,
        }
    }
}

/// Counts of transitions, for metrics.
#[derive(Debug, Default)]
pub struct TransitionCounts {
    pub opened: AtomicU64,
    pub half_opened: AtomicU64,
    pub closed: AtomicU64,
}

pub struct Breaker {
    policy: BreakerPolicy,
    /// Mirrors `state == Closed` so the hot path needs no lock.
    closed: AtomicBool,
    consecutive: AtomicU32,
    machine: Mutex<Machine>,
    pub counts: TransitionCounts,
    name: Mutex<String>,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            closed: AtomicBool::new(true),
            consecutive: AtomicU32::new(0),
            machine: Mutex::new(Machine::new(policy)),
            counts: TransitionCounts::default(),
            name: Mutex::new(String::new()),
        }
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

    /// Whether the backend could take a request now (used when building the eligible set).
    pub fn admits_traffic(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let mut m = self.lock();
        let t = m.tick(Instant::now());
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
        let mut m = self.lock();
        let (r, t) = m.acquire(Instant::now());
        self.note(t);
        r.ok().map(|probe| Permit {
            probe,
            settled: false,
        })
    }

    pub fn record(&self, permit: &mut Permit, success: bool) {
        if permit.settled || !self.policy.enabled {
            permit.settled = true;
            return;
        }
        permit.settled = true;
        if !permit.probe && self.closed.load(Ordering::Acquire) {
            if success {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                return;
            }
            let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
            if n < self.policy.consecutive_failures {
                return;
            }
        }
        let mut m = self.lock();
        if m.state() == CircuitState::Closed && !success {
            // Sync the lock-free count into the machine, then let it decide.
            m.consecutive = self.consecutive.load(Ordering::Relaxed).saturating_sub(1);
        }
        let t = m.on_result(permit.probe, success, Instant::now());
        self.closed
            .store(m.state() == CircuitState::Closed, Ordering::Release);
        if m.state() != CircuitState::Closed {
            self.consecutive.store(0, Ordering::Relaxed);
        }
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

    pub fn force(&self, state: CircuitState) {
        let mut m = self.lock();
        m.force(state, Instant::now());
        self.consecutive.store(0, Ordering::Relaxed);
        self.closed
            .store(m.state() == CircuitState::Closed, Ordering::Release);
        log::warn!(
            "breaker {}: forced {} by operator",
            self.name.lock().map(|n| n.clone()).unwrap_or_default(),
            state.as_str()
        );
    }

    fn note(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let name = self.name.lock().map(|n| n.clone()).unwrap_or_default();
        match &t {
            Transition::Opened {
                consecutive_failures,
                open_for,
            } => {
                self.counts.opened.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "breaker {name}: closed -> open after {consecutive_failures} consecutive failures; open for {open_for:?}"
                );
            }
            Transition::Reopened { open_for } => {
                self.counts.opened.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "breaker {name}: half_open -> open: a probe failed; open for {open_for:?}"
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
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_success_resets_the_count() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        assert_eq!(m.on_result(false, false, t0), None);
        assert_eq!(m.on_result(false, false, t0), None);
        assert_eq!(m.on_result(false, true, t0), None, "success resets");
        assert_eq!(m.on_result(false, false, t0), None);
        assert_eq!(m.on_result(false, false, t0), None);
        assert_eq!(
            m.on_result(false, false, t0),
            Some(Transition::Opened {
                consecutive_failures: 3,
                open_for: Duration::from_secs(5)
            })
        );
        assert_eq!(m.state(), CircuitState::Open);
        assert_eq!(m.acquire(t0 + Duration::from_secs(4)).0, Err(()));
    }

    #[test]
    fn half_open_admits_at_most_k_probes_then_closes() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        for _ in 0..3 {
            m.on_result(false, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        let (r, t) = m.acquire(t1);
        assert_eq!(r, Ok(true));
        assert_eq!(t, Some(Transition::HalfOpened));
        assert_eq!(m.acquire(t1).0, Ok(true));
        assert_eq!(m.acquire(t1).0, Err(()), "third concurrent probe refused");
        assert_eq!(m.on_result(true, true, t1), None);
        assert_eq!(
            m.on_result(true, true, t1),
            Some(Transition::Closed { probe_successes: 2 })
        );
        assert_eq!(m.state(), CircuitState::Closed);
    }

    #[test]
    fn failed_probe_reopens_for_longer_capped() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        for _ in 0..3 {
            m.on_result(false, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(m.acquire(t1).0, Ok(true));
        assert_eq!(
            m.on_result(true, false, t1),
            Some(Transition::Reopened {
                open_for: Duration::from_secs(10)
            })
        );
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(m.acquire(t2).0, Ok(true));
        assert_eq!(
            m.on_result(true, false, t2),
            Some(Transition::Reopened {
                open_for: Duration::from_secs(12)
            }),
            "capped at max_open_for"
        );
    }

    #[test]
    fn cancelled_probe_returns_its_slot() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        m.force(CircuitState::HalfOpen, t0);
        assert_eq!(m.acquire(t0).0, Ok(true));
        assert_eq!(m.acquire(t0).0, Ok(true));
        assert_eq!(m.acquire(t0).0, Err(()));
        m.release_probe();
        assert_eq!(m.acquire(t0).0, Ok(true));
    }

    #[test]
    fn forced_states_apply() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy());
        m.force(CircuitState::Open, t0);
        assert_eq!(m.state(), CircuitState::Open);
        m.force(CircuitState::Closed, t0);
        assert_eq!(m.state(), CircuitState::Closed);
    }

    #[test]
    fn concurrent_wrapper_trips_and_blocks() {
        let b = Breaker::new(policy());
        for _ in 0..3 {
            let mut p = b.try_acquire().unwrap();
            b.record(&mut p, false);
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_none());
        assert!(!b.admits_traffic());
        assert_eq!(b.counts.opened.load(Ordering::Relaxed), 1);
        b.force(CircuitState::Closed);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let b = Breaker::new(BreakerPolicy::disabled());
        for _ in 0..100 {
            let mut p = b.try_acquire().unwrap();
            b.record(&mut p, false);
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
