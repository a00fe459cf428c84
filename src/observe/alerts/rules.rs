//! The alert rule state machine: inactive → pending → firing → resolved.

use crate::config::observability::AlertRule;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
/// Where a rule is in its cycle; exported as the `drover_alert_state` code (0..=3).
pub enum AlertState {
    /// The condition does not hold (or never did).
    Inactive,
    /// The condition holds but not yet for the rule's `for`.
    Pending,
    /// The condition has held for `for`; a firing notification was sent.
    Firing,
    /// Was firing and the condition stopped holding; stays until it holds again.
    Resolved,
}

impl AlertState {
    pub(super) fn code(self) -> i64 {
        match self {
            AlertState::Inactive => 0,
            AlertState::Pending => 1,
            AlertState::Firing => 2,
            AlertState::Resolved => 3,
        }
    }
}

/// What a step changed that must be notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The rule went to `Firing`.
    Fired,
    /// The rule went from `Firing` to `Resolved`.
    Resolved,
}

/// The state of one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleState {
    /// Current state; changed only by [`RuleState::step`].
    pub state: AlertState,
    /// When the condition started holding (pending since).
    pub active_since: Option<Instant>,
    /// Wall-clock time the alert fired, for the webhook's `startsAt`.
    pub fired_at: Option<f64>,
}

impl Default for RuleState {
    fn default() -> Self {
        RuleState {
            state: AlertState::Inactive,
            active_since: None,
            fired_at: None,
        }
    }
}

impl RuleState {
    /// Advances with this second's condition. `holds` is `None` when the metric has no
    /// value (e.g. no traffic for a percentile): the state is kept as it is.
    pub fn step(
        &mut self,
        holds: Option<bool>,
        for_: Duration,
        now: Instant,
        wall: f64,
    ) -> Option<Transition> {
        let holds = holds?;
        match (self.state, holds) {
            (AlertState::Inactive | AlertState::Resolved, true) => {
                self.active_since = Some(now);
                if for_.is_zero() {
                    self.state = AlertState::Firing;
                    self.fired_at = Some(wall);
                    return Some(Transition::Fired);
                }
                self.state = AlertState::Pending;
                None
            }
            (AlertState::Pending, true) => {
                let since = self.active_since.unwrap_or(now);
                if now.duration_since(since) >= for_ {
                    self.state = AlertState::Firing;
                    self.fired_at = Some(wall);
                    return Some(Transition::Fired);
                }
                None
            }
            (AlertState::Pending, false) => {
                self.state = AlertState::Inactive;
                self.active_since = None;
                None
            }
            (AlertState::Firing, false) => {
                self.state = AlertState::Resolved;
                self.active_since = None;
                Some(Transition::Resolved)
            }
            (AlertState::Firing, true) | (AlertState::Inactive | AlertState::Resolved, false) => {
                None
            }
        }
    }
}

/// A configured rule with its state and last value.
pub(super) struct RuleRuntime {
    pub(super) rule: AlertRule,
    pub(super) state: RuleState,
    pub(super) value: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_goes_pending_then_firing_then_resolved() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let for_ = Duration::from_secs(30);
        let mut r = RuleState::default();
        assert_eq!(r.step(Some(true), for_, s(0), 0.0), None);
        assert_eq!(r.state, AlertState::Pending);
        assert_eq!(r.step(Some(true), for_, s(29), 0.0), None);
        assert_eq!(r.state, AlertState::Pending);
        // No data keeps the state.
        assert_eq!(r.step(None, for_, s(29), 0.0), None);
        assert_eq!(
            r.step(Some(true), for_, s(30), 30.0),
            Some(Transition::Fired)
        );
        assert_eq!(r.state, AlertState::Firing);
        assert_eq!(r.fired_at, Some(30.0));
        assert_eq!(r.step(Some(true), for_, s(40), 0.0), None);
        assert_eq!(
            r.step(Some(false), for_, s(41), 0.0),
            Some(Transition::Resolved)
        );
        assert_eq!(r.state, AlertState::Resolved);
        assert_eq!(r.step(Some(false), for_, s(42), 0.0), None);
        assert_eq!(r.state, AlertState::Resolved);
    }

    #[test]
    fn a_blip_shorter_than_for_never_fires() {
        let t0 = Instant::now();
        let for_ = Duration::from_secs(10);
        let mut r = RuleState::default();
        r.step(Some(true), for_, t0, 0.0);
        assert_eq!(
            r.step(Some(false), for_, t0 + Duration::from_secs(5), 0.0),
            None
        );
        assert_eq!(r.state, AlertState::Inactive);
        // The clock restarts with the next breach.
        r.step(Some(true), for_, t0 + Duration::from_secs(6), 0.0);
        assert_eq!(
            r.step(Some(true), for_, t0 + Duration::from_secs(15), 0.0),
            None
        );
        assert_eq!(
            r.step(Some(true), for_, t0 + Duration::from_secs(16), 0.0),
            Some(Transition::Fired)
        );
        // for: 0 fires at once.
        let mut z = RuleState::default();
        assert_eq!(
            z.step(Some(true), Duration::ZERO, t0, 0.0),
            Some(Transition::Fired)
        );
    }
}
