//! Autoscaling the worker pool from concurrency: Little's law says the workers needed
//! are the requests in flight (plus those queued) divided by what one worker should
//! carry (`target_in_flight`). The decision is a pure function of a window of samples,
//! with hysteresis (scale down only when the need sits below `scale_down_below` of the
//! current capacity) and a cooldown between changes, so a noisy signal cannot flap the
//! pool. Every decision is logged with its reason and counted.

use crate::config::AutoscaleConfig;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A bounded window of (time, in-flight + queued) samples.
pub struct Autoscaler {
    samples: VecDeque<(Instant, f64)>,
    last_change: Option<Instant>,
}

/// Samples kept at most (10 per second for a 60 s window); older ones are dropped.
const MAX_SAMPLES: usize = 600;

/// A change of pool size decided by [`Autoscaler::decide`]; never equal to the current
/// size.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new worker count, within `min..=max`.
    pub target: usize,
    /// Human-readable why (mean load, window, threshold), logged by the control thread.
    pub reason: String,
}

impl Default for Autoscaler {
    fn default() -> Self {
        Autoscaler {
            samples: VecDeque::with_capacity(64),
            last_change: None,
        }
    }
}

impl Autoscaler {
    /// Records one `load` (requests in flight plus queued) at `now`, dropping samples
    /// older than `window` or beyond 600. Called every 100 ms tick by the control thread.
    pub fn sample(&mut self, now: Instant, load: f64, window: Duration) {
        self.samples.push_back((now, load));
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
    }

    /// What the pool of `current` workers should become, if anything.
    pub fn decide(
        &mut self,
        cfg: &AutoscaleConfig,
        current: usize,
        now: Instant,
    ) -> Option<Decision> {
        if let Some(t) = self.last_change {
            if now.duration_since(t) < cfg.cooldown {
                return None;
            }
        }
        // A full window must be observed before acting (no decision from one spike).
        let first = self.samples.front()?.0;
        if now.duration_since(first) + Duration::from_millis(200) < cfg.window {
            return None;
        }
        let n = self.samples.len() as f64;
        let mean = self.samples.iter().map(|(_, l)| l).sum::<f64>() / n;
        let needed = (mean / cfg.target_in_flight).ceil().max(1.0) as usize;
        let clamp = |v: usize| v.clamp(cfg.min, cfg.max);
        let decision = if current < cfg.min || current > cfg.max {
            Some(Decision {
                target: clamp(current),
                reason: format!(
                    "{current} workers is outside min {} / max {}",
                    cfg.min, cfg.max
                ),
            })
        } else if needed > current && current < cfg.max {
            Some(Decision {
                target: clamp(needed),
                reason: format!(
                    "mean in-flight {mean:.1} over {:?} needs {needed} workers at {} per worker",
                    cfg.window, cfg.target_in_flight
                ),
            })
        } else if current > cfg.min
            && mean < cfg.target_in_flight * current as f64 * cfg.scale_down_below
        {
            let target = clamp(current - 1);
            Some(Decision {
                target,
                reason: format!(
                    "mean in-flight {mean:.1} over {:?} is below {:.0}% of the capacity of {current} workers",
                    cfg.window,
                    cfg.scale_down_below * 100.0
                ),
            })
        } else {
            None
        };
        let decision = decision.filter(|d| d.target != current)?;
        self.last_change = Some(now);
        // The new pool size changes the signal: judge it on fresh samples.
        self.samples.clear();
        Some(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AutoscaleConfig {
        AutoscaleConfig {
            enabled: true,
            min: 1,
            max: 4,
            target_in_flight: 4.0,
            scale_down_below: 0.5,
            window: Duration::from_secs(2),
            cooldown: Duration::from_secs(5),
        }
    }

    fn feed(a: &mut Autoscaler, start: Instant, secs: u64, load: f64) -> Instant {
        let mut t = start;
        for i in 0..secs * 10 {
            t = start + Duration::from_millis(i * 100);
            a.sample(t, load, cfg().window);
        }
        t
    }

    #[test]
    fn scales_up_to_the_need_but_not_past_max() {
        let mut a = Autoscaler::default();
        let t = feed(&mut a, Instant::now(), 3, 10.0);
        let d = a.decide(&cfg(), 1, t).unwrap();
        assert_eq!(d.target, 3, "{d:?}");
        let t = feed(&mut a, t + Duration::from_secs(6), 3, 100.0);
        assert_eq!(a.decide(&cfg(), 3, t).unwrap().target, 4);
    }

    #[test]
    fn waits_for_a_full_window_and_the_cooldown() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        let t = feed(&mut a, t0, 1, 50.0);
        assert_eq!(a.decide(&cfg(), 1, t), None, "half a window is not enough");
        let t = feed(&mut a, t0, 3, 50.0);
        assert!(a.decide(&cfg(), 1, t).is_some());
        let t = feed(&mut a, t + Duration::from_millis(100), 3, 0.0);
        assert_eq!(a.decide(&cfg(), 4, t), None, "cooldown");
    }

    #[test]
    fn scales_down_one_step_at_a_time_with_hysteresis() {
        let mut a = Autoscaler::default();
        // 4 workers carrying 7 in flight: 44% of capacity (16), below 50%: down one.
        let t = feed(&mut a, Instant::now(), 3, 7.0);
        assert_eq!(a.decide(&cfg(), 4, t).unwrap().target, 3);
        // 3 workers carrying 7: 58%, inside the band: stay.
        let t = feed(&mut a, t + Duration::from_secs(6), 3, 7.0);
        assert_eq!(a.decide(&cfg(), 3, t), None);
        // Idle: down to min and never below.
        let mut t = t;
        let mut n = 3;
        for _ in 0..5 {
            t = feed(&mut a, t + Duration::from_secs(6), 3, 0.0);
            if let Some(d) = a.decide(&cfg(), n, t) {
                n = d.target;
            }
        }
        assert_eq!(n, 1);
    }
}
