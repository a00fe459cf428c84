//! Capacity planning: how many requests a second the pool can take, how much room is
//! left now, and how many workers a target rate and p99 need.
//!
//! The model (docs/MODELS.md, "Capacity planning"), from measurements over the last
//! [`WINDOW_SECONDS`] seconds, per worker `b`:
//!
//! - throughput `X_b` (requests completed per second) and utilisation `U_b` (share of
//!   time with at least one request in flight, measured by the backend itself);
//! - service time `S_b = U_b / X_b` (the utilisation law: busy time per request, so
//!   queueing inside the window does not inflate it and a worker serving requests
//!   concurrently shows a shorter one);
//! - CPU per request `q_b = cpu_b / X_b` (from `/proc`);
//! - saturation rate `μ_b = 1 / S_b`.
//!
//! The pool saturates at `Σ μ_b`, or earlier when the machine's cores run out:
//! `cores / (drover's CPU per request + mean q_b)`; the smaller is reported with the
//! constraint that binds. Each worker is modelled as an M/M/1 queue fed its share of
//! the traffic, whose response time is exponential with rate `μ − λ`, so its p99 is
//! `ln(100) / (μ − λ)`: at a p99 target `T` a worker sustains `λ_T = μ − ln(100)/T`.
//! Sustainable rate = `Σ λ_T` (capped by the CPU limit); headroom = sustainable − now;
//! workers needed for a target rate `R` = `ceil(R / mean λ_T)`.
//!
//! Computed once a second by the sampler, never on the request path.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Seconds of samples the estimate uses.
pub const WINDOW_SECONDS: usize = 10;
/// Fewer requests than this in the window: the worker's service time is not measured
/// (the last measured one is kept).
pub const MIN_REQUESTS: u64 = 20;
/// `ln(100)`: the 99th percentile of an exponential distribution in units of its mean.
pub const LN_100: f64 = 4.605_170_185_988_092;

/// One second of one worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerSecond {
    /// Requests the backend completed in the second.
    pub requests: u64,
    /// Seconds with at least one request in flight, per second of wall time (0..=1).
    pub busy_seconds: f64,
    /// CPU the worker process used in the second, in cores; 0 for a backend drover does
    /// not run (no `/proc` sample).
    pub cpu_cores: f64,
}

/// One second of the pool.
#[derive(Debug, Clone, Default)]
pub struct PoolSecond {
    /// Per backend name, the backends in rotation during the second.
    pub workers: BTreeMap<String, WorkerSecond>,
    /// CPU drover itself used in the second, in cores.
    pub drover_cpu_cores: f64,
    /// Requests drover answered in the second (all status classes).
    pub requests: u64,
}

/// Per worker, as reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerCapacity {
    /// Requests completed per second, averaged over the window.
    pub rps: f64,
    /// Share of the window with at least one request in flight (0..=1).
    pub utilization: f64,
    /// Service time `S = U / X`, in ms; the last measured value when the window has fewer
    /// than [`MIN_REQUESTS`]; `None` if never measured.
    pub service_ms: Option<f64>,
    /// Saturation rate `1 / S`, in requests per second; `None` while `S` is unmeasured.
    pub max_rps: Option<f64>,
    /// CPU time per request, in ms; `None` with fewer than [`MIN_REQUESTS`] in the window.
    pub cpu_ms_per_request: Option<f64>,
    /// Rate this worker sustains at the p99 target (M/M/1).
    pub rps_at_target: Option<f64>,
}

/// The estimate `/api/capacity` serves.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    /// Seconds of samples behind the estimate: [`WINDOW_SECONDS`], fewer just after start.
    pub window_seconds: usize,
    /// Requests per second drover answers now, averaged over the window.
    pub rps_now: f64,
    /// Rate at which the pool saturates (sum of the workers' `max_rps`, or the CPU limit if
    /// lower); `None` until every worker's service time is measured.
    pub saturation_rps: Option<f64>,
    /// Rate the pool takes while keeping p99 at the target; `None` as for `saturation_rps`.
    pub sustainable_rps: Option<f64>,
    /// `sustainable_rps - rps_now`; negative when the pool is already past it.
    pub headroom_rps: Option<f64>,
    /// Share of the sustainable rate in use now.
    pub load_share: Option<f64>,
    /// `workers` or `cpu`: what saturates first.
    pub binding: &'static str,
    /// Rate at which the machine's cores run out (cores / CPU per request, drover's plus
    /// a worker's); `None` until both are measured.
    pub cpu_limit_rps: Option<f64>,
    /// CPUs available to drover (`available_parallelism`).
    pub cores: f64,
    /// Per backend name, the backends in rotation in the latest second.
    pub workers: BTreeMap<String, WorkerCapacity>,
    /// Rate `workers_needed` is computed for: the one asked for, else `rps_now`.
    pub target_rps: f64,
    /// The p99 target, in ms.
    pub target_p99_ms: f64,
    /// Workers needed for `target_rps` at the p99 target; `None` when no worker is
    /// measured yet or the target is unreachable (`note` says which).
    pub workers_needed: Option<usize>,
    /// One human-readable sentence explaining `workers_needed`.
    pub note: String,
    /// Always [`MODEL`], so a reader of the JSON knows how the numbers were made.
    pub model: &'static str,
}

/// One-line summary of the model, served with every estimate (docs/MODELS.md has it in
/// full).
pub const MODEL: &str = "per worker: S = utilisation / throughput, saturation 1/S; M/M/1 per worker: p99 = ln(100)/(mu - lambda); pool = sum over workers, capped by cores / CPU per request";

/// The last seconds of samples and the last measured service time per worker.
#[derive(Default)]
pub struct Estimator {
    seconds: VecDeque<PoolSecond>,
    last_service: BTreeMap<String, f64>,
}

impl Estimator {
    /// Adds the sampler's latest second, dropping the oldest beyond [`WINDOW_SECONDS`].
    pub fn push(&mut self, s: PoolSecond) {
        if self.seconds.len() == WINDOW_SECONDS {
            self.seconds.pop_front();
        }
        self.seconds.push_back(s);
    }

    /// The estimate for a target rate (default: the current one) and p99 target.
    pub fn estimate(&mut self, target_rps: Option<f64>, target_p99: f64, cores: f64) -> Estimate {
        let n = self.seconds.len().max(1) as f64;
        let mut per: BTreeMap<String, WorkerSecond> = BTreeMap::new();
        let mut drover_cpu = 0.0;
        let mut requests = 0u64;
        for s in &self.seconds {
            drover_cpu += s.drover_cpu_cores;
            requests += s.requests;
            for (name, w) in &s.workers {
                let e = per.entry(name.clone()).or_default();
                e.requests += w.requests;
                e.busy_seconds += w.busy_seconds;
                e.cpu_cores += w.cpu_cores;
            }
        }
        // Workers gone from the latest second are gone from the pool.
        if let Some(last) = self.seconds.back() {
            per.retain(|name, _| last.workers.contains_key(name));
            self.last_service
                .retain(|name, _| last.workers.contains_key(name));
        }
        let rps_now = requests as f64 / n;
        let mut workers = BTreeMap::new();
        let (mut saturation, mut sustainable, mut measured) = (0.0, 0.0, 0usize);
        let mut cpu_per_req = Vec::new();
        for (name, w) in &per {
            let rps = w.requests as f64 / n;
            let utilization = (w.busy_seconds / n).clamp(0.0, 1.0);
            // CPU cores averaged over the window, per request.
            let cpu_per_request = (w.cpu_cores / n) / rps.max(1e-9);
            if w.requests >= MIN_REQUESTS && w.busy_seconds > 0.0 {
                self.last_service
                    .insert(name.clone(), w.busy_seconds / w.requests as f64);
                cpu_per_req.push(cpu_per_request);
            }
            let service = self.last_service.get(name).copied();
            let max_rps = service.map(|s| 1.0 / s);
            let at_target = max_rps.map(|mu| (mu - LN_100 / target_p99).max(0.0));
            if let (Some(mu), Some(l)) = (max_rps, at_target) {
                saturation += mu;
                sustainable += l;
                measured += 1;
            }
            workers.insert(
                name.clone(),
                WorkerCapacity {
                    rps,
                    utilization,
                    service_ms: service.map(|s| s * 1000.0),
                    max_rps,
                    cpu_ms_per_request: (w.requests >= MIN_REQUESTS)
                        .then_some(cpu_per_request * 1000.0),
                    rps_at_target: at_target,
                },
            );
        }
        let drover_per_req = if rps_now > 0.0 && requests >= MIN_REQUESTS {
            Some(drover_cpu / n / rps_now)
        } else {
            None
        };
        let cpu_limit = match (drover_per_req, cpu_per_req.is_empty()) {
            (Some(d), false) => {
                let q = cpu_per_req.iter().sum::<f64>() / cpu_per_req.len() as f64;
                (d + q > 0.0).then(|| cores / (d + q))
            }
            _ => None,
        };
        let all_measured = measured > 0 && measured == workers.len();
        let mut binding = "workers";
        let (mut sat, mut sus) = (
            all_measured.then_some(saturation),
            all_measured.then_some(sustainable),
        );
        if let (Some(c), Some(s)) = (cpu_limit, sat) {
            if c < s {
                binding = "cpu";
                sat = Some(c);
                // The CPU limit bounds throughput, not latency: scale the sustainable
                // rate down in proportion.
                sus = sus.map(|v| v * c / s);
            }
        }
        let target = target_rps.unwrap_or(rps_now);
        let per_worker = (measured > 0).then(|| sustainable / measured as f64);
        let (workers_needed, note) = match per_worker {
            None => (
                None,
                format!("not enough traffic yet: each worker needs {MIN_REQUESTS} requests in {WINDOW_SECONDS} s to measure its service time"),
            ),
            Some(l) if l <= 0.0 => (
                None,
                format!(
                    "a p99 of {:.0} ms is below what one request takes here: no worker count reaches it",
                    target_p99 * 1000.0
                ),
            ),
            Some(l) => {
                let need = (target / l).ceil().max(1.0) as usize;
                (
                    Some(need),
                    format!(
                        "{need} worker(s) for {target:.0} req/s at p99 {:.0} ms ({l:.0} req/s each)",
                        target_p99 * 1000.0
                    ),
                )
            }
        };
        Estimate {
            window_seconds: self.seconds.len(),
            rps_now,
            saturation_rps: sat,
            sustainable_rps: sus,
            headroom_rps: sus.map(|s| s - rps_now),
            load_share: sus.filter(|s| *s > 0.0).map(|s| rps_now / s),
            binding,
            cpu_limit_rps: cpu_limit,
            cores,
            workers,
            target_rps: target,
            target_p99_ms: target_p99 * 1000.0,
            workers_needed,
            note,
            model: MODEL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(per_worker: &[(u64, f64, f64)], drover_cpu: f64) -> PoolSecond {
        let mut s = PoolSecond {
            drover_cpu_cores: drover_cpu,
            ..Default::default()
        };
        for (i, (r, busy, cpu)) in per_worker.iter().enumerate() {
            s.workers.insert(
                format!("worker-{i}"),
                WorkerSecond {
                    requests: *r,
                    busy_seconds: *busy,
                    cpu_cores: *cpu,
                },
            );
            s.requests += r;
        }
        s
    }

    #[test]
    fn service_time_comes_from_the_utilisation_law() {
        let mut e = Estimator::default();
        // Two workers at 50 req/s, busy half the time: S = 10 ms, μ = 100 each.
        for _ in 0..10 {
            e.push(second(&[(50, 0.5, 0.01), (50, 0.5, 0.01)], 0.05));
        }
        let est = e.estimate(Some(300.0), 0.25, 2.0);
        assert!(
            (est.saturation_rps.unwrap() - 200.0).abs() < 1e-6,
            "{est:?}"
        );
        // λ at p99 250 ms: 100 − 4.605 / 0.25 = 81.58 per worker.
        let l = 100.0 - LN_100 / 0.25;
        assert!((est.sustainable_rps.unwrap() - 2.0 * l).abs() < 1e-6);
        assert!((est.headroom_rps.unwrap() - (2.0 * l - 100.0)).abs() < 1e-6);
        assert_eq!(est.workers_needed, Some((300.0 / l).ceil() as usize));
        assert_eq!(est.binding, "workers");
        assert!((est.workers["worker-0"].service_ms.unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_binds_when_the_machine_runs_out_of_cores() {
        let mut e = Estimator::default();
        // 100 req/s per worker at 20% busy (μ = 500) but 9 ms of CPU per request each,
        // plus 1 ms in drover: 2 cores give 200 req/s.
        for _ in 0..10 {
            e.push(second(&[(100, 0.2, 0.9), (100, 0.2, 0.9)], 0.2));
        }
        let est = e.estimate(None, 0.25, 2.0);
        assert_eq!(est.binding, "cpu");
        assert!(
            (est.saturation_rps.unwrap() - 200.0).abs() < 1e-6,
            "{est:?}"
        );
        assert!((est.cpu_limit_rps.unwrap() - 200.0).abs() < 1e-6);
    }

    #[test]
    fn idle_workers_keep_their_last_measurement_and_a_tight_p99_is_unreachable() {
        let mut e = Estimator::default();
        e.push(second(&[(0, 0.0, 0.0)], 0.0));
        let est = e.estimate(None, 0.25, 2.0);
        assert_eq!(est.saturation_rps, None);
        assert!(est.note.contains("not enough traffic"), "{}", est.note);
        for _ in 0..10 {
            e.push(second(&[(40, 0.8, 0.0)], 0.0)); // S = 20 ms
        }
        // The sampler asks for the estimate every second (the live snapshot).
        e.estimate(None, 0.25, 2.0);
        for _ in 0..10 {
            e.push(second(&[(1, 0.02, 0.0)], 0.0));
        }
        let est = e.estimate(None, 0.05, 2.0);
        assert!((est.workers["worker-0"].service_ms.unwrap() - 20.0).abs() < 1e-9);
        // μ = 50; 50 − 4.6/0.05 < 0.
        assert_eq!(est.workers_needed, None);
        assert!(est.note.contains("no worker count"), "{}", est.note);
    }
}
