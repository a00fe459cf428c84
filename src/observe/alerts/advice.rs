//! The scaling recommendation: how many workers drover would want, and why.

use crate::observe::live::Published;
use crate::observe::view::SlotStatus;
use serde_json::{json, Value};
use std::collections::VecDeque;

/// A worker is asked to stay under this much CPU (cores) on average.
const TARGET_CPU_PER_WORKER: f64 = 0.6;
/// Below this average CPU per worker, fewer workers are recommended.
const SCALE_DOWN_CPU: f64 = 0.25;

/// How many workers drover would want, and why: CPU per worker against a target,
/// queueing, and the in-flight limit, averaged over the last minute.
pub(super) fn scaling_advice(
    cfg: &crate::config::Config,
    p: &Published,
    slots: &[SlotStatus],
    seconds: &VecDeque<(u64, u64, usize, f64, usize)>,
) -> Value {
    let current = cfg.workers.count;
    if current == 0 {
        return json!({ "current_workers": 0, "recommended_workers": null, "reason": "no forked workers (upstreams only)" });
    }
    let last: Vec<_> = seconds.iter().rev().take(60).collect();
    let n = last.len().max(1) as f64;
    let cpu_per_worker = last
        .iter()
        .map(|s| if s.4 > 0 { s.3 / s.4 as f64 } else { 0.0 })
        .sum::<f64>()
        / n;
    let queued_share = last.iter().filter(|s| s.2 > 0).count() as f64 / n;
    let mut want = ((current as f64 * cpu_per_worker) / TARGET_CPU_PER_WORKER).ceil() as usize;
    let mut reasons = vec![format!(
        "workers use {:.0}% CPU on average over the last {}s (target {:.0}%)",
        cpu_per_worker * 100.0,
        last.len(),
        TARGET_CPU_PER_WORKER * 100.0
    )];
    if queued_share > 0.2 {
        want = want.max(current + 1);
        reasons.push(format!(
            "requests queued for a free worker in {:.0}% of the last seconds",
            queued_share * 100.0
        ));
    }
    let limit = cfg.balancing.max_inflight_per_backend;
    if limit > 0 {
        let avg_inflight = p.in_flight.max(0) as f64;
        let need = (avg_inflight / (limit as f64 * 0.8)).ceil() as usize;
        if need > want {
            want = need;
            reasons.push(format!(
                "{avg_inflight:.0} requests in flight against {limit} per worker"
            ));
        }
    }
    let crash = slots.iter().filter(|s| s.crash_looping).count();
    if crash > 0 {
        reasons.push(format!(
            "{crash} worker(s) crash-looping: more workers will not help"
        ));
    }
    let recommended = if want < current && cpu_per_worker > SCALE_DOWN_CPU {
        current // not idle enough to shrink: avoid flapping
    } else {
        want.clamp(1, crate::config::MAX_WORKERS)
    };
    let action = match recommended.cmp(&current) {
        std::cmp::Ordering::Greater => "scale_up",
        std::cmp::Ordering::Less => "scale_down",
        std::cmp::Ordering::Equal => "keep",
    };
    json!({
        "current_workers": current,
        "recommended_workers": recommended,
        "action": action,
        "cpu_per_worker": cpu_per_worker,
        "queued_share": queued_share,
        "reason": reasons.join("; "),
    })
}
