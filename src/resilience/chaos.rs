//! Fault injection for drills and tests: latency, errors or connection resets into a
//! share of the requests of a route or a worker, for a limited time.
//!
//! Faults are installed through the admin API (token required, and only with
//! `chaos.enabled: true`). The data plane pays one relaxed atomic load per request
//! until a fault is first installed (and again after `clear`); with faults, an
//! `ArcSwap` load and a short scan.
//! Every injected fault is counted (`drover_chaos_injected_total{kind,target}`) and
//! logged on the `chaos` log target, so a drill never looks like a real incident.

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most faults installed at once; a drill needs a handful, and the scan is per request.
pub const MAX_FAULTS: usize = 32;

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    /// Delay the request by `ms` before it goes upstream.
    Latency {
        /// Delay in milliseconds, 1 to 60000.
        ms: u64,
    },
    /// Answer `status` instead of the worker (counted as the worker's failure).
    Error {
        /// HTTP status answered, 400 to 599.
        status: u16,
    },
    /// Act as if the worker reset the connection before answering.
    Reset,
}

impl FaultKind {
    /// `latency`, `error` or `reset`: the `kind` label of metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Latency { .. } => "latency",
            FaultKind::Error { .. } => "error",
            FaultKind::Reset => "reset",
        }
    }
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Requests matched to this route.
    Route(String),
    /// Requests sent to this worker id.
    Worker(usize),
    /// Every proxied request.
    All,
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Route(r) => format!("route:{r}"),
            Target::Worker(w) => format!("worker-{w}"),
            Target::All => "all".into(),
        }
    }
}

/// A fault as requested through the admin API.
/// (Unknown keys cannot be refused here: serde does not support `deny_unknown_fields`
/// together with the flattened `kind`.)
#[derive(Debug, Clone, Deserialize)]
pub struct FaultSpec {
    /// Which requests it hits.
    pub target: Target,
    /// What it does (flattened: `kind` plus its own fields).
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Share of matching requests hit, 0 < share ≤ 1.
    pub share: f64,
    /// Seconds the fault stays installed (default 60, at most 3600).
    pub duration_s: Option<f64>,
}

/// An installed fault, as `/api/chaos` lists it; expires by itself (`until`, not
/// serialised; see [`Fault::remaining`]).
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Assigned by [`Chaos::add`]: 1, 2, ... per process, never reused.
    pub id: u64,
    /// Which requests it hits.
    pub target: Target,
    /// What it does (flattened: `kind` plus its own fields).
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Share of matching requests hit, 0 < share ≤ 1.
    pub share: f64,
    #[serde(skip)]
    until: Instant,
    #[serde(skip)]
    label: Arc<str>,
}

impl Fault {
    /// Time until it expires; zero once expired.
    pub fn remaining(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// `route:NAME`, `worker-N` or `all`: the `target` label of metrics and logs.
    pub fn target_label(&self) -> &str {
        &self.label
    }
}

/// The installed faults (at most [`MAX_FAULTS`]); one per process in `Shared`,
/// written by the admin API, read by the proxy on every request.
#[derive(Default)]
pub struct Chaos {
    active: AtomicBool,
    faults: ArcSwap<Vec<Fault>>,
    next_id: AtomicU64,
}

/// Why a fault was not installed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    /// `share` not in (0, 1]; holds the value given.
    #[error("share {0} is out of range; accepted: >0 to 1")]
    Share(f64),
    /// `ms` of a latency fault not in 1 to 60000.
    #[error("latency ms must be 1 to 60000")]
    LatencyMs,
    /// `status` of an error fault not in 400 to 599.
    #[error("error status must be 400 to 599")]
    ErrorStatus,
    /// `duration_s` not in (0, 3600].
    #[error("duration_s must be >0 to 3600")]
    Duration,
    /// [`MAX_FAULTS`] unexpired faults are installed already.
    #[error("{MAX_FAULTS} faults installed already; delete some")]
    TooMany,
}

impl FaultSpec {
    /// Checks the request; returns why it is refused.
    pub fn validate(&self) -> Result<Duration, FaultError> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(FaultError::Share(self.share));
        }
        match self.kind {
            FaultKind::Latency { ms } if ms == 0 || ms > 60_000 => {
                return Err(FaultError::LatencyMs)
            }
            FaultKind::Error { status } if !(400..=599).contains(&status) => {
                return Err(FaultError::ErrorStatus)
            }
            _ => {}
        }
        let secs = self.duration_s.unwrap_or(60.0);
        if !(secs > 0.0 && secs <= 3600.0) {
            return Err(FaultError::Duration);
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

impl Chaos {
    /// Installs a fault; returns its id.
    pub fn add(&self, spec: FaultSpec) -> Result<u64, FaultError> {
        let duration = spec.validate()?;
        let now = Instant::now();
        let mut next: Vec<Fault> = self
            .faults
            .load()
            .iter()
            .filter(|f| f.until > now)
            .cloned()
            .collect();
        if next.len() >= MAX_FAULTS {
            return Err(FaultError::TooMany);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let label: Arc<str> = Arc::from(spec.target.label());
        log::warn!(
            target: "chaos",
            "chaos: fault {id} installed: {} on {label} for {:.0}% of requests, {duration:?}",
            spec.kind.label(),
            spec.share * 100.0
        );
        next.push(Fault {
            id,
            target: spec.target,
            kind: spec.kind,
            share: spec.share,
            until: now + duration,
            label,
        });
        self.faults.store(Arc::new(next));
        self.active.store(true, Ordering::Release);
        Ok(id)
    }

    /// Removes every fault; returns how many were installed (expired ones included).
    pub fn clear(&self) -> usize {
        let n = self.faults.load().len();
        self.faults.store(Arc::new(Vec::new()));
        self.active.store(false, Ordering::Release);
        log::warn!(target: "chaos", "chaos: {n} faults cleared");
        n
    }

    /// The faults not yet expired, in the order installed.
    pub fn list(&self) -> Vec<Fault> {
        let now = Instant::now();
        self.faults
            .load()
            .iter()
            .filter(|f| f.until > now)
            .cloned()
            .collect()
    }

    /// Whether any fault is installed (one relaxed load: checked on every request).
    pub fn armed(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The first unexpired fault matching `route`/`worker` whose share covers `unit`
    /// (uniform in [0, 1), drawn by the caller), with its target label; `None`: none.
    pub fn pick(
        &self,
        route: Option<&str>,
        worker: Option<usize>,
        unit: f64,
    ) -> Option<(FaultKind, Arc<str>)> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        // Expired faults stay in the list (skipped) until the next `add` or `clear`;
        // clearing `active` here could race with a concurrent `add` and hide its fault.
        let faults = self.faults.load();
        let now = Instant::now();
        for f in faults.iter() {
            if f.until <= now {
                continue;
            }
            let hit = match &f.target {
                Target::All => true,
                Target::Route(r) => route == Some(r.as_str()),
                Target::Worker(w) => worker == Some(*w),
            };
            if hit && unit < f.share {
                return Some((f.kind, f.label.clone()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> FaultSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn faults_hit_their_target_and_share_only() {
        let c = Chaos::default();
        assert!(c.pick(None, Some(0), 0.0).is_none(), "nothing installed");
        c.add(spec(
            r#"{"target": {"worker": 1}, "kind": "error", "status": 500, "share": 0.5}"#,
        ))
        .unwrap();
        assert!(c.pick(None, Some(0), 0.1).is_none(), "other worker");
        assert!(c.pick(None, Some(1), 0.7).is_none(), "outside the share");
        let (k, label) = c.pick(None, Some(1), 0.1).unwrap();
        assert_eq!(k, FaultKind::Error { status: 500 });
        assert_eq!(&*label, "worker-1");
        c.add(spec(
            r#"{"target": {"route": "api"}, "kind": "latency", "ms": 50, "share": 1}"#,
        ))
        .unwrap();
        assert_eq!(
            c.pick(Some("api"), Some(0), 0.9).unwrap().0,
            FaultKind::Latency { ms: 50 }
        );
        assert_eq!(c.list().len(), 2);
        assert_eq!(c.clear(), 2);
        assert!(c.pick(Some("api"), Some(1), 0.0).is_none());
    }

    #[test]
    fn bad_specs_are_refused_and_the_count_is_capped() {
        let c = Chaos::default();
        for bad in [
            r#"{"target": "all", "kind": "reset", "share": 0}"#,
            r#"{"target": "all", "kind": "latency", "ms": 0, "share": 1}"#,
            r#"{"target": "all", "kind": "error", "status": 200, "share": 1}"#,
            r#"{"target": "all", "kind": "reset", "share": 1, "duration_s": 7200}"#,
        ] {
            assert!(c.add(spec(bad)).is_err(), "{bad}");
        }
        for _ in 0..MAX_FAULTS {
            c.add(spec(r#"{"target": "all", "kind": "reset", "share": 0.1}"#))
                .unwrap();
        }
        let e = c
            .add(spec(r#"{"target": "all", "kind": "reset", "share": 0.1}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("installed already"), "{e}");
    }
}
