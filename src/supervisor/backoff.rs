//! Restart backoff for crashed workers: exponential (initial, doubling, capped), reset
//! after a stretch of stable uptime, with crash-loop detection.

use crate::config::BackoffPolicy;
use std::time::Duration;

/// The restart delay state of one worker slot.
#[derive(Debug, Clone)]
pub struct RestartBackoff {
    policy: BackoffPolicy,
    /// Consecutive quick exits (uptime below `reset_after`).
    quick_exits: u32,
}

impl RestartBackoff {
    /// A backoff with no exits counted yet (first restart waits `policy.initial`).
    pub fn new(policy: BackoffPolicy) -> Self {
        RestartBackoff {
            policy,
            quick_exits: 0,
        }
    }

    /// Applies a reloaded `workers.backoff` without resetting the exit count.
    pub fn set_policy(&mut self, policy: BackoffPolicy) {
        self.policy = policy;
    }

    /// Called when a worker exits after running for `uptime`; returns how long to wait
    /// before starting it again.
    pub fn on_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.policy.reset_after {
            self.quick_exits = 0;
        }
        let step = self.quick_exits;
        self.quick_exits = self.quick_exits.saturating_add(1);
        crate::resilience::retry::exponential(self.policy.initial, step, self.policy.max)
    }

    /// A worker that keeps dying soon after start is reported rather than silently
    /// restarted forever at the maximum delay.
    pub fn crash_looping(&self) -> bool {
        self.quick_exits >= self.policy.crash_loop_restarts
    }

    /// Consecutive exits with uptime below `reset_after`, for the crash-loop log line.
    pub fn quick_exits(&self) -> u32 {
        self.quick_exits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
            reset_after: Duration::from_secs(30),
            crash_loop_restarts: 5,
        }
    }

    #[test]
    fn doubles_from_initial_up_to_max() {
        let mut b = RestartBackoff::new(policy());
        let quick = Duration::from_millis(10);
        let delays: Vec<u128> = (0..10).map(|_| b.on_exit(quick).as_millis()).collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
    }

    #[test]
    fn stable_uptime_resets_the_backoff() {
        let mut b = RestartBackoff::new(policy());
        for _ in 0..4 {
            b.on_exit(Duration::from_millis(10));
        }
        assert_eq!(
            b.on_exit(Duration::from_secs(31)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn reports_crash_loops() {
        let mut b = RestartBackoff::new(policy());
        for _ in 0..4 {
            b.on_exit(Duration::from_millis(10));
        }
        assert!(!b.crash_looping());
        b.on_exit(Duration::from_millis(10));
        assert!(b.crash_looping());
        b.on_exit(Duration::from_secs(60));
        assert!(!b.crash_looping());
    }
}
