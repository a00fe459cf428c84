//! SLOs: one (total, bad) pair per minute for the window, error budget and burn rates.

use crate::config::observability::{SloConfig, SloKind};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// (total, bad) request counts.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub(super) total: u64,
    pub(super) bad: u64,
}

pub(super) struct SloRuntime {
    pub(super) cfg: SloConfig,
    /// Completed minutes, newest last, at most `window` minutes.
    minutes: VecDeque<Counts>,
    current: Counts,
    seconds_in_minute: u32,
}

impl SloRuntime {
    pub(super) fn new(cfg: SloConfig) -> Self {
        SloRuntime {
            cfg,
            minutes: VecDeque::new(),
            current: Counts::default(),
            seconds_in_minute: 0,
        }
    }

    fn max_minutes(&self) -> usize {
        (self.cfg.window.as_secs() / 60).max(1) as usize
    }

    pub(super) fn push_second(&mut self, c: Counts) {
        self.current.total += c.total;
        self.current.bad += c.bad;
        self.seconds_in_minute += 1;
        if self.seconds_in_minute == 60 {
            if self.minutes.len() == self.max_minutes() {
                self.minutes.pop_front();
            }
            self.minutes.push_back(self.current);
            self.current = Counts::default();
            self.seconds_in_minute = 0;
        }
    }

    /// Counts of the last `minutes` minutes (plus the current partial one).
    fn over(&self, minutes: usize) -> Counts {
        let mut c = self.current;
        for m in self.minutes.iter().rev().take(minutes) {
            c.total += m.total;
            c.bad += m.bad;
        }
        c
    }

    fn budget(&self) -> f64 {
        1.0 - self.cfg.objective
    }

    /// Bad share over the window divided by the allowed share (1.0 = on budget pace).
    pub(super) fn burn_rate(&self, minutes: usize) -> f64 {
        let c = self.over(minutes);
        if c.total == 0 {
            return 0.0;
        }
        (c.bad as f64 / c.total as f64) / self.budget()
    }

    pub(super) fn budget_remaining(&self) -> f64 {
        let c = self.over(self.max_minutes());
        if c.total == 0 {
            return 1.0;
        }
        1.0 - (c.bad as f64 / c.total as f64) / self.budget()
    }

    pub(super) fn status(&self) -> Value {
        let all = self.over(self.max_minutes());
        json!({
            "name": self.cfg.name,
            "kind": match self.cfg.kind { SloKind::Availability => "availability", SloKind::Latency(_) => "latency" },
            "threshold_seconds": match self.cfg.kind { SloKind::Latency(t) => Some(t.as_secs_f64()), _ => None },
            "objective": self.cfg.objective,
            "window_seconds": self.cfg.window.as_secs(),
            "requests": all.total,
            "bad": all.bad,
            "budget_remaining": self.budget_remaining(),
            "burn_rate_5m": self.burn_rate(5),
            "burn_rate_30m": self.burn_rate(30),
            "burn_rate_1h": self.burn_rate(60),
            "burn_rate_6h": self.burn_rate(360),
            "burn_rate_short": self.burn_rate(5),
            "burn_rate_long": self.burn_rate(60),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slo_burn_rate_and_budget() {
        let mut slo = SloRuntime::new(SloConfig {
            name: "a".into(),
            kind: SloKind::Availability,
            objective: 0.99,
            window: Duration::from_secs(3600),
        });
        // 10 minutes at 1% errors: burning exactly at budget pace.
        for _ in 0..600 {
            slo.push_second(Counts { total: 100, bad: 1 });
        }
        assert!(
            (slo.burn_rate(5) - 1.0).abs() < 1e-9,
            "{}",
            slo.burn_rate(5)
        );
        assert!((slo.budget_remaining() - 0.0).abs() < 1e-9);
        // 5 minutes at 10% errors: the short window burns 10x, the hour ~4x.
        for _ in 0..300 {
            slo.push_second(Counts {
                total: 100,
                bad: 10,
            });
        }
        assert!(
            (slo.burn_rate(5) - 10.0).abs() < 1e-9,
            "{}",
            slo.burn_rate(5)
        );
        let hour = (600.0 * 1.0 + 300.0 * 10.0) / 900.0;
        assert!((slo.burn_rate(60) - hour).abs() < 1e-9);
        assert!(slo.budget_remaining() < 0.0);
        // The window is bounded: 2 hours of pushes keep 60 minutes.
        for _ in 0..7200 {
            slo.push_second(Counts { total: 1, bad: 0 });
        }
        assert_eq!(slo.minutes.len(), 60);
        assert_eq!(slo.budget_remaining(), 1.0);
    }
}
