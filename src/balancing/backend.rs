//! A backend: one worker process instance or one remote upstream, with the live counters
//! every strategy reads.
//!
//! In-flight counts and latency EWMAs live here rather than inside a strategy so that
//! switching strategy (or rebuilding the eligible set) loses nothing; Pingora's own
//! selectors are rebuilt on every update and drop such state (pingora issue #269).

use crate::resilience::breaker::Breaker;
pub use crate::resilience::breaker::Permit;
use crate::resilience::classify::Outcome;
use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lifecycle of a backend as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Process started; not yet passed a health check. Gets no traffic.
    Starting = 0,
    /// Passed its health check; gets traffic unless standby or its breaker refuses.
    Healthy = 1,
    /// Failed its health check; out of rotation, but still counted (and used) in panic mode.
    Unhealthy = 2,
    /// Finishing in-flight requests before it is stopped. Gets no new traffic.
    Draining = 3,
    /// Process gone. Gets no traffic.
    Stopped = 4,
}

impl BackendState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => BackendState::Starting,
            1 => BackendState::Healthy,
            2 => BackendState::Unhealthy,
            3 => BackendState::Draining,
            _ => BackendState::Stopped,
        }
    }

    /// Lowercase name used in the admin API, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Starting => "starting",
            BackendState::Healthy => "healthy",
            BackendState::Unhealthy => "unhealthy",
            BackendState::Draining => "draining",
            BackendState::Stopped => "stopped",
        }
    }
}

/// Monotonic nanoseconds, cheap enough for the hot path. Starts one hour above zero so
/// "long ago" timestamps (a backend healthy since before slow start existed) need no
/// special case.
pub fn now_nanos() -> u64 {
    static START: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);
    START.elapsed().as_nanos() as u64 + 3_600_000_000_000
}

/// Latency assumed for a backend that has not answered yet, so new backends are neither
/// flooded (cost 0) nor starved.
const DEFAULT_RTT_NANOS: f64 = 5_000_000.0;
/// Decay time of the peak-EWMA (10 s by default, as in Linkerd/Finagle); set from
/// `balancing.latency_decay` at start and on reload.
static EWMA_DECAY_NANOS: AtomicU64 = AtomicU64::new(10_000_000_000);

/// Sets the peak-EWMA decay time every backend's latency estimate uses (global; floored at 1 ns);
/// called at start and on reload from `balancing.latency_decay`.
pub fn set_latency_decay(d: Duration) {
    EWMA_DECAY_NANOS.store(d.as_nanos().max(1) as u64, Ordering::Relaxed);
}

pub(crate) fn decay_nanos() -> f64 {
    EWMA_DECAY_NANOS.load(Ordering::Relaxed) as f64
}
/// Latency charged for a failed request so errors look slow to the latency strategy.
pub const ERROR_PENALTY: Duration = Duration::from_secs(1);

/// Where the data plane reports one backend's traffic. `observe` implements it with
/// Prometheus series; balancing and the pipeline only call it, so neither depends on
/// the metrics registry.
pub trait BackendStats: Send + Sync {
    /// A strategy (by its index in `StrategyKind::ALL`) picked this backend.
    fn selected(&self, strategy_index: usize);
    /// A request to it got a response after `elapsed`; `success` as the breaker judged it.
    fn finished(&self, elapsed: Duration, success: bool);
    /// An attempt failed without a usable response (connect error, timeout, reset).
    fn attempt_failed(&self);
}

/// One place requests can be sent, shared as `Arc<Backend>` by the pool, every selector snapshot
/// and in-flight guards.
pub struct Backend {
    /// Unique for the life of the process; a restarted worker is a new backend.
    pub id: u64,
    /// Stable name: `worker-N` for forked workers, `host:port` for remote upstreams.
    /// Consistent hashing uses it, so a restarted worker keeps its keys.
    pub name: Arc<str>,
    /// The supervisor's worker slot for forked workers; `None` for remote upstreams.
    pub worker_id: Option<usize>,
    /// Address requests are sent to.
    pub addr: SocketAddr,
    /// Relative share of traffic for weighted strategies; at least 1 (`new` raises 0 to 1).
    pub weight: u32,
    /// Built once; cloning it is cheaper than building a peer per request.
    pub peer: HttpPeer,
    /// Protocol and TLS drover speaks to it (plain HTTP/1.1 unless configured).
    pub link: crate::config::Link,
    state: AtomicU8,
    inflight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    ewma_bits: AtomicU64,
    ewma_stamp: AtomicU64,
    /// `now_nanos()` when the backend last became healthy; drives slow start.
    healthy_since: AtomicU64,
    /// Health-checked but held out of rotation until activated (the idle colour of a
    /// blue-green deploy, the successor in a rolling restart).
    standby: std::sync::atomic::AtomicBool,
    /// Selections made by each strategy (index = position in `StrategyKind::ALL`).
    selections: [AtomicU64; super::StrategyKind::COUNT],
    /// Work queued here by the predictive strategy: the sum of the expected costs of
    /// its requests in flight (`balancing::predictive`), in work units.
    queued_work: AtomicU64,
    /// Predictive strategy: learned time per unit of work (f64 bits) and when it was
    /// last updated (`now_nanos`).
    speed_bits: AtomicU64,
    speed_stamp: AtomicU64,
    /// Time with at least one request in flight, summed (ns), and since when the
    /// current busy period runs (0 = idle): the utilisation capacity planning reads.
    busy_nanos: AtomicU64,
    busy_since: AtomicU64,
    /// Wakes requests queued for a free backend when this one releases a slot.
    queue: std::sync::OnceLock<Arc<super::queue::QueueSignal>>,
    /// Circuit breaker deciding whether this backend may get traffic and judging each outcome.
    pub breaker: Breaker,
    /// When this `Backend` value was created (a restarted worker is a new backend).
    pub started: Instant,
    /// Where this backend's traffic is reported, attached by whoever registers metrics
    /// (absent in unit tests).
    pub metrics: std::sync::OnceLock<Box<dyn BackendStats>>,
    /// Set once the backend has left the pool for good (its process exited, its upstream
    /// was removed): connection pools drop what they hold for it.
    retired: std::sync::atomic::AtomicBool,
    /// This backend's own slow-start window (discovered upstreams), used when longer
    /// than `balancing.slow_start`.
    slow_start: std::sync::OnceLock<Duration>,
}

/// Backends retired so far in this process; a connection pool that saw a different count
/// last time looks for idle connections to retired backends.
static RETIREMENTS: AtomicU64 = AtomicU64::new(0);

/// Backends retired so far in this process; pools compare it with what they saw last time to know
/// when to sweep.
pub fn retirements() -> u64 {
    RETIREMENTS.load(Ordering::Acquire)
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("state", &self.state())
            .finish()
    }
}

impl Backend {
    /// Marks the backend as gone for good (see [`retirements`]).
    pub fn retire(&self) {
        if !self.retired.swap(true, Ordering::AcqRel) {
            RETIREMENTS.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Whether [`Backend::retire`] was called: the backend has left the pool for good.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// A backend in state `Starting` with no traffic history; `weight` 0 becomes 1. Health checks
    /// move it to `Healthy`.
    pub fn new(
        id: u64,
        name: &str,
        worker_id: Option<usize>,
        addr: SocketAddr,
        weight: u32,
        peer: HttpPeer,
        breaker: Breaker,
    ) -> Self {
        Backend {
            id,
            name: Arc::from(name),
            worker_id,
            addr,
            weight: weight.max(1),
            peer,
            link: Default::default(),
            state: AtomicU8::new(BackendState::Starting as u8),
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(0f64.to_bits()),
            ewma_stamp: AtomicU64::new(0),
            healthy_since: AtomicU64::new(0),
            standby: std::sync::atomic::AtomicBool::new(false),
            selections: Default::default(),
            queued_work: AtomicU64::new(0),
            speed_bits: AtomicU64::new(1f64.to_bits()),
            speed_stamp: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            queue: std::sync::OnceLock::new(),
            breaker,
            started: Instant::now(),
            metrics: std::sync::OnceLock::new(),
            retired: std::sync::atomic::AtomicBool::new(false),
            slow_start: std::sync::OnceLock::new(),
        }
    }

    /// The lifecycle state now (may change at any moment on other threads).
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Out of rotation for good: new requests go elsewhere while in-flight ones finish.
    /// Called by whoever owns the backend's lifetime (the supervisor for forked workers,
    /// `upstreams` for remote hosts).
    pub fn begin_drain(&self) {
        self.set_state(BackendState::Draining);
    }

    /// Gone for good: the process exited or the host left the config.
    pub fn mark_stopped(&self) {
        self.set_state(BackendState::Stopped);
    }

    /// A health verdict; returns the state before it. Only `crate::health` calls this
    /// (its probe loop, and the passive check the pipeline reports to it), so health
    /// has one owner. A verdict never revives a draining or stopped backend.
    pub fn set_health(&self, healthy: bool) -> BackendState {
        self.set_state(if healthy {
            BackendState::Healthy
        } else {
            BackendState::Unhealthy
        })
    }

    /// Sets the state; returns the previous one. Draining and Stopped are sticky: a
    /// health check passing later must not put a draining worker back into rotation.
    pub(in crate::balancing) fn set_state(&self, next: BackendState) -> BackendState {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let prev = BackendState::from_u8(cur);
            let allowed = match prev {
                BackendState::Stopped => false,
                BackendState::Draining => next == BackendState::Stopped,
                _ => true,
            };
            if !allowed || prev == next {
                return prev;
            }
            match self
                .state
                .compare_exchange(cur, next as u8, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if next == BackendState::Healthy {
                        self.healthy_since.store(now_nanos(), Ordering::Relaxed);
                    }
                    return prev;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether selection may consider this backend at all (breaker aside).
    pub fn in_rotation(&self) -> bool {
        self.state() == BackendState::Healthy && !self.is_standby()
    }

    /// Whether the backend is held out of rotation though health-checked (blue-green idle colour,
    /// rolling-restart successor).
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Acquire)
    }

    /// Puts the backend in or out of standby; leaving standby restarts its slow-start window.
    pub fn set_standby(&self, standby: bool) {
        let was = self.standby.swap(standby, Ordering::AcqRel);
        if was && !standby {
            // Slow start counts from the moment traffic can arrive.
            self.healthy_since.store(now_nanos(), Ordering::Relaxed);
        }
    }

    /// Share of its weight a backend may take during slow start: 0.1 right after it
    /// became healthy, rising linearly to 1.0 at the end of `window`.
    pub fn slow_start_share(&self, window: Duration, now: u64) -> f64 {
        if window.is_zero() {
            return 1.0;
        }
        let age = now.saturating_sub(self.healthy_since.load(Ordering::Relaxed)) as f64;
        (age / window.as_nanos() as f64).clamp(0.1, 1.0)
    }

    /// Gives this backend its own slow-start window (set once, before it is added).
    pub fn set_slow_start(&self, window: Duration) {
        let _ = self.slow_start.set(window);
    }

    /// The slow-start window for this backend: its own, or `global` when longer.
    pub fn slow_start_window(&self, global: Duration) -> Duration {
        self.slow_start.get().map_or(global, |w| (*w).max(global))
    }

    /// Test hook: pretend the backend became healthy `ago` before now.
    #[cfg(test)]
    pub(crate) fn backdate_healthy(&self, ago: Duration) {
        self.healthy_since
            .store(now_nanos() - ago.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts one pick of this backend by the strategy at `strategy_index` in `StrategyKind::ALL`,
    /// and reports it to the attached metrics.
    pub fn count_selection(&self, strategy_index: usize) {
        if let Some(c) = self.selections.get(strategy_index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = self.metrics.get() {
            m.selected(strategy_index);
        }
    }

    /// Picks of this backend by the strategy at `strategy_index` in `StrategyKind::ALL` (0 for an
    /// out-of-range index).
    pub fn selections(&self, strategy_index: usize) -> u64 {
        self.selections
            .get(strategy_index)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub(super) fn attach_queue(&self, q: Arc<super::queue::QueueSignal>) {
        let _ = self.queue.set(q);
    }

    /// Requests in flight on this backend now (held [`InflightGuard`]s).
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since it was created (retries count once per attempt).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that failed by the breaker's judgement since the backend was created.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Marks a request as sent to this backend. The guard decrements exactly once when
    /// dropped, however the request ends (success, error, client abort, retry elsewhere).
    pub fn begin(self: &Arc<Self>, permit: Permit) -> InflightGuard {
        self.begin_charged(permit, None)
    }

    /// [`Backend::begin`] for a request the predictive strategy placed: `charge`'s work
    /// is added to this backend's queued work until the guard is dropped.
    pub fn begin_charged(
        self: &Arc<Self>,
        permit: Permit,
        charge: Option<super::predictive::Charge>,
    ) -> InflightGuard {
        if self.inflight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.busy_since.store(now_nanos(), Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let charge = charge.map(|mut c| {
            c.queued_before = self.queued_work.fetch_add(c.work, Ordering::Relaxed);
            c
        });
        InflightGuard {
            backend: Arc::clone(self),
            permit,
            charge,
        }
    }

    /// Work queued by the predictive strategy (work units).
    pub fn queued_work(&self) -> u64 {
        self.queued_work.load(Ordering::Relaxed)
    }

    /// Learned time per unit of work (predictive strategy; 1.0 until learned).
    pub fn speed(&self) -> f64 {
        f64::from_bits(self.speed_bits.load(Ordering::Relaxed))
    }

    pub(super) fn speed_stamp(&self) -> u64 {
        self.speed_stamp.load(Ordering::Relaxed)
    }

    /// Feeds one speed observation into its EWMA (racing updates may lose one sample).
    pub(super) fn observe_speed(&self, sample: f64, alpha: f64) {
        let prev = self.speed();
        self.speed_bits.store(
            (prev + alpha * (sample - prev)).to_bits(),
            Ordering::Relaxed,
        );
        self.speed_stamp.store(now_nanos(), Ordering::Relaxed);
    }

    /// Total time this backend had at least one request in flight, up to `now`.
    pub fn busy_nanos(&self, now: u64) -> u64 {
        let done = self.busy_nanos.load(Ordering::Relaxed);
        let since = self.busy_since.load(Ordering::Relaxed);
        if self.inflight() > 0 && since > 0 {
            done + now.saturating_sub(since)
        } else {
            done
        }
    }

    /// Current peak-EWMA latency in nanoseconds, decayed toward zero by the time since
    /// the last sample: a backend that got no traffic because it was slow looks cheaper
    /// as time passes, gets probed, and regains its share if it recovered.
    pub fn latency_nanos(&self) -> f64 {
        let v = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        if v == 0.0 {
            return DEFAULT_RTT_NANOS;
        }
        let idle = now_nanos().saturating_sub(self.ewma_stamp.load(Ordering::Relaxed)) as f64;
        v * (-idle / decay_nanos()).exp()
    }

    /// Feeds one observed latency into the peak-EWMA: a slower sample replaces the
    /// average at once (peak), faster ones pull it down with a 10 s decay. Concurrent
    /// updates may race; losing one sample of many is harmless.
    pub fn observe_latency(&self, rtt: Duration) {
        let now = now_nanos();
        let sample = rtt.as_nanos() as f64;
        let stored = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let stamp = self.ewma_stamp.swap(now, Ordering::Relaxed);
        let elapsed = now.saturating_sub(stamp) as f64;
        let prev = stored;
        let next = if stored == 0.0 || sample > prev {
            sample
        } else {
            let w = (-elapsed / decay_nanos()).exp();
            prev * w + sample * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Counts one failure (see [`Backend::failures`]); `InflightGuard::finish` calls it.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holds one in-flight slot on a backend (and a breaker permit); released on drop.
pub struct InflightGuard {
    backend: Arc<Backend>,
    permit: Permit,
    /// Set when the predictive strategy placed the request.
    charge: Option<super::predictive::Charge>,
}

impl InflightGuard {
    /// The backend this slot is held on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Reports the request's outcome to the backend's breaker and latency estimate.
    /// Returns whether it succeeded by the breaker's `failure_on` rule.
    pub fn finish(&mut self, outcome: Outcome, latency: Duration) -> bool {
        let b = &self.backend;
        let failure = b.breaker.record(&mut self.permit, outcome, latency);
        if failure {
            b.record_failure();
            b.observe_latency(latency.max(ERROR_PENALTY));
        } else {
            b.observe_latency(latency);
        }
        if let Some(c) = self.charge {
            super::predictive::learn(b, c, latency.as_nanos() as f64, failure);
        }
        !failure
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(c) = self.charge {
            self.backend
                .queued_work
                .fetch_sub(c.work, Ordering::Relaxed);
        }
        if self.backend.inflight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let since = self.backend.busy_since.swap(0, Ordering::Relaxed);
            if since > 0 {
                self.backend
                    .busy_nanos
                    .fetch_add(now_nanos().saturating_sub(since), Ordering::Relaxed);
            }
        }
        self.backend.breaker.release(&mut self.permit);
        if let Some(q) = self.backend.queue.get() {
            q.slot_released();
        }
    }
}

#[cfg(test)]
pub(crate) fn backend_permit() -> Permit {
    Permit::none()
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use crate::resilience::breaker::BreakerPolicy;

    pub fn backend(id: u64, weight: u32) -> Arc<Backend> {
        let addr: SocketAddr = format!("127.0.0.1:{}", 10000 + id).parse().unwrap();
        let b = Backend::new(
            id,
            &format!("worker-{id}"),
            Some(id as usize),
            addr,
            weight,
            HttpPeer::new(addr, false, String::new()),
            Breaker::new(BreakerPolicy::disabled()),
        );
        b.set_state(BackendState::Healthy);
        Arc::new(b)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::backend;
    use super::*;
    use crate::resilience::breaker::Permit;

    #[test]
    fn inflight_is_released_exactly_once_per_guard() {
        let b = backend(1, 1);
        let g1 = b.begin(Permit::none());
        let g2 = b.begin(Permit::none());
        assert_eq!(b.inflight(), 2);
        drop(g1);
        assert_eq!(b.inflight(), 1);
        drop(g2);
        assert_eq!(b.inflight(), 0);
        assert_eq!(b.requests(), 2);
    }

    #[test]
    fn draining_is_sticky_against_health_checks() {
        let b = backend(1, 1);
        b.set_state(BackendState::Draining);
        b.set_state(BackendState::Healthy);
        assert_eq!(b.state(), BackendState::Draining);
        b.set_state(BackendState::Stopped);
        b.set_state(BackendState::Healthy);
        assert_eq!(b.state(), BackendState::Stopped);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.01;
        let b = backend(1, 1);
        assert_eq!(b.latency_nanos(), DEFAULT_RTT_NANOS);
        b.observe_latency(Duration::from_millis(2));
        assert!(close(b.latency_nanos(), 2_000_000.0));
        b.observe_latency(Duration::from_millis(200));
        assert!(
            close(b.latency_nanos(), 200_000_000.0),
            "a slow sample is taken at once"
        );
        b.observe_latency(Duration::from_millis(1));
        assert!(
            b.latency_nanos() > 100_000_000.0,
            "a fast sample only decays it slowly"
        );
        // Idle for three decay times (10 s default): the estimate falls to ~5%, so the
        // backend gets probed again.
        b.ewma_stamp.fetch_sub(30_000_000_000, Ordering::Relaxed);
        assert!(b.latency_nanos() < 12_000_000.0, "{}", b.latency_nanos());
        b.observe_latency(Duration::from_millis(1));
        assert!(b.latency_nanos() < 12_000_000.0);
    }
}
