//! The pure state machine (open time per trip, HALF_OPEN probes) and the operator's
//! forced actions.

use super::policy::*;
use std::time::{Duration, Instant};

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
    /// Closed, with no trips behind it.
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

    /// As last moved; an open machine past its open time stays open until [`Machine::tick`].
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Trips in a row since the last close (sets the open time).
    pub fn trips(&self) -> u32 {
        self.trips
    }

    /// Why it last opened; kept after a close, cleared by [`Force::Reset`].
    pub fn last_reason(&self) -> Option<TripReason> {
        self.last_reason
    }

    /// Half-open probes admitted and not yet settled or released.
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

    pub(super) fn open(&mut self, reason: TripReason, now: Instant) -> Transition {
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

    pub(super) fn close(&mut self) {
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
