//! Balancing: which backend gets the next request.
//!
//! `Pool` holds every backend and publishes, through one `ArcSwap`, a `Selector`: the
//! eligible backends (healthy, not draining, breaker admitting) plus the chosen
//! algorithm's state. Requests read the selector without locks; membership, health,
//! breaker or strategy changes build a new selector and swap it in. Counters that must
//! survive a swap (in-flight, latency) live on each `Backend`.

pub mod auto;
pub mod backend;
pub mod consistent_hash;
pub mod latency;
pub mod least_connections;
pub mod predictive;
pub mod queue;
pub mod random;
pub mod round_robin;
pub mod weighted_round_robin;

pub use backend::{Backend, BackendState, InflightGuard};

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::config::strategy::{StrategyKind, UnknownStrategy};

enum Algorithm {
    RoundRobin,
    Random { total_weight: u64 },
    LeastConnections,
    WeightedRoundRobin(weighted_round_robin::SmoothWeighted),
    Latency,
    ConsistentHash(consistent_hash::Ring),
    Predictive,
}

/// An immutable snapshot: the eligible backends and the algorithm over them.
pub struct Selector {
    /// Strategy this snapshot was built for.
    pub kind: StrategyKind,
    /// The eligible backends (all serving ones in panic mode); the algorithm's indices point into
    /// it.
    pub backends: Vec<Arc<Backend>>,
    /// True when too few backends are healthy and traffic spreads over all of them.
    pub panic: bool,
    /// True when breakers would eject more than `max_ejected_share` of the backends in
    /// rotation: open breakers are ignored and traffic spreads over all of them.
    pub breakers_capped: bool,
    algorithm: Algorithm,
    /// Ring for sticky sessions whatever the strategy; built on first use per snapshot.
    affinity: std::sync::OnceLock<consistent_hash::Ring>,
}

impl Selector {
    fn new(kind: StrategyKind, backends: Vec<Arc<Backend>>, panic: bool) -> Self {
        let algorithm = match kind {
            StrategyKind::RoundRobin => Algorithm::RoundRobin,
            StrategyKind::Random => Algorithm::Random {
                total_weight: backends.iter().map(|b| b.weight as u64).sum(),
            },
            StrategyKind::LeastConnections => Algorithm::LeastConnections,
            StrategyKind::WeightedRoundRobin => {
                Algorithm::WeightedRoundRobin(weighted_round_robin::SmoothWeighted::new(&backends))
            }
            StrategyKind::Latency => Algorithm::Latency,
            StrategyKind::ConsistentHash => {
                Algorithm::ConsistentHash(consistent_hash::Ring::new(&backends))
            }
            StrategyKind::Predictive => Algorithm::Predictive,
        };
        Selector {
            kind,
            backends,
            panic,
            breakers_capped: false,
            algorithm,
            affinity: std::sync::OnceLock::new(),
        }
    }

    fn affinity_ring(&self) -> &consistent_hash::Ring {
        self.affinity
            .get_or_init(|| consistent_hash::Ring::new(&self.backends))
    }

    /// Whether `select` uses the request key (so the proxy only computes it when needed).
    pub fn needs_key(&self) -> bool {
        matches!(self.algorithm, Algorithm::ConsistentHash(_))
    }

    /// Whether `select` wants the request's class key (`predictive::class_key`) as its key.
    pub fn needs_class(&self) -> bool {
        matches!(self.algorithm, Algorithm::Predictive)
    }

    fn preferred(&self, cursor: &AtomicUsize, key: u64) -> usize {
        let bs = &self.backends;
        match &self.algorithm {
            Algorithm::RoundRobin => round_robin::pick(cursor, bs),
            Algorithm::Random { total_weight } => random::pick(bs, *total_weight),
            Algorithm::LeastConnections => least_connections::pick(cursor, bs),
            Algorithm::WeightedRoundRobin(s) => s.pick(bs),
            Algorithm::Latency => latency::pick(bs),
            Algorithm::ConsistentHash(ring) => ring.pick(key),
            Algorithm::Predictive => predictive::pick(cursor, bs, key),
        }
    }

    /// Outcome feedback for strategies that adapt (smooth WRR's effective weights).
    pub fn feedback(&self, backend_id: u64, success: bool) {
        if let Algorithm::WeightedRoundRobin(s) = &self.algorithm {
            s.feedback(&self.backends, backend_id, success);
        }
    }
}

/// Every backend drover knows, and the selector requests read.
pub struct Pool {
    members: ArcSwap<Vec<Arc<Backend>>>,
    selector: ArcSwap<Selector>,
    cursor: AtomicUsize,
    rebuild: Mutex<()>,
    /// Below this share of healthy backends, spread over all (Envoy's panic threshold).
    panic_threshold: Mutex<f64>,
    in_panic: AtomicBool,
    /// Most share of in-rotation backends breakers may eject (1.0 = no cap).
    max_ejected_share: Mutex<f64>,
    /// Backpressure queue for requests waiting while every backend is at `max_inflight`; attached
    /// to every backend added.
    pub queue: Arc<queue::QueueSignal>,
}

/// Per-request limits on selection, read from the running config.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectLimits {
    /// 0 = unlimited.
    pub max_inflight: u32,
    /// Ramp-up window for a newly healthy backend (a backend's own window wins when longer); zero
    /// disables slow start.
    pub slow_start: std::time::Duration,
}

/// Why [`Pool::select_limited`] found no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// Nothing in rotation (or every eligible backend already tried / breaker-refused).
    NoBackend,
    /// Backends exist but every one is at `max_inflight`.
    AllBusy,
}

impl Pool {
    /// An empty pool; `panic_threshold` is the healthy share (0 to 1) below which traffic spreads
    /// over every serving backend. No cap on breaker ejection until
    /// [`Pool::set_max_ejected_share`].
    pub fn new(kind: StrategyKind, panic_threshold: f64) -> Self {
        Pool {
            members: ArcSwap::from_pointee(Vec::new()),
            selector: ArcSwap::from_pointee(Selector::new(kind, Vec::new(), false)),
            cursor: AtomicUsize::new(0),
            rebuild: Mutex::new(()),
            panic_threshold: Mutex::new(panic_threshold),
            in_panic: AtomicBool::new(false),
            max_ejected_share: Mutex::new(1.0),
            queue: Arc::new(queue::QueueSignal::default()),
        }
    }

    /// Every backend in the pool, in rotation or not (a snapshot).
    pub fn members(&self) -> Arc<Vec<Arc<Backend>>> {
        self.members.load_full()
    }

    /// The current selector snapshot; hold it for one request only.
    pub fn selector(&self) -> arc_swap::Guard<Arc<Selector>> {
        self.selector.load()
    }

    /// The strategy in force.
    pub fn strategy(&self) -> StrategyKind {
        self.selector.load().kind
    }

    /// The member with this id, whatever its state.
    pub fn find(&self, id: u64) -> Option<Arc<Backend>> {
        self.members.load().iter().find(|b| b.id == id).cloned()
    }

    /// Adds a backend (it gets traffic once healthy and not standby) and rebuilds the selector.
    pub fn add(&self, backend: Arc<Backend>) {
        let _g = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        backend.attach_queue(self.queue.clone());
        let mut next = (**self.members.load()).clone();
        next.push(backend);
        self.members.store(Arc::new(next));
        self.rebuild_locked(None);
    }

    /// Removes a backend from the pool at once (e.g. its process exited).
    pub fn remove(&self, id: u64) -> Option<Arc<Backend>> {
        let _g = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.members.load();
        let gone = cur.iter().find(|b| b.id == id).cloned();
        if let Some(b) = &gone {
            b.retire();
            let next: Vec<_> = cur.iter().filter(|b| b.id != id).cloned().collect();
            self.members.store(Arc::new(next));
            self.rebuild_locked(None);
        }
        gone
    }

    /// Switches strategy; requests in flight keep the selector they started with, and
    /// in-flight counts and latencies carry over because they live on the backends.
    pub fn set_strategy(&self, kind: StrategyKind) {
        let _g = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        self.rebuild_locked(Some(kind));
    }

    /// Sets `balancing.panic_threshold` (healthy share, 0 to 1) and rebuilds the selector if
    /// needed.
    pub fn set_panic_threshold(&self, t: f64) {
        if let Ok(mut p) = self.panic_threshold.lock() {
            *p = t;
        }
        self.refresh();
    }

    /// Sets the most share (0 to 1) of backends in rotation breakers may eject; above it open
    /// breakers are ignored.
    pub fn set_max_ejected_share(&self, share: f64) {
        if let Ok(mut s) = self.max_ejected_share.lock() {
            *s = share;
        }
        self.refresh();
    }

    /// Whether the current selector is in panic mode (too few healthy backends).
    pub fn in_panic(&self) -> bool {
        self.in_panic.load(Ordering::Relaxed)
    }

    /// Recomputes the eligible set if any backend's health or breaker changed.
    pub fn refresh(&self) {
        let _g = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let (eligible, panic, capped) = self.eligible();
        let cur = self.selector.load();
        let same = cur.panic == panic
            && cur.breakers_capped == capped
            && cur.backends.len() == eligible.len()
            && cur
                .backends
                .iter()
                .zip(&eligible)
                .all(|(a, b)| a.id == b.id);
        if !same {
            self.rebuild_locked(None);
        }
    }

    /// (eligible backends, panic mode, breaker ejection capped).
    fn eligible(&self) -> (Vec<Arc<Backend>>, bool, bool) {
        let members = self.members.load();
        let serving: Vec<_> = members
            .iter()
            .filter(|b| {
                matches!(b.state(), BackendState::Healthy | BackendState::Unhealthy)
                    && !b.is_standby()
            })
            .cloned()
            .collect();
        let rotation: Vec<_> = serving
            .iter()
            .filter(|b| b.in_rotation())
            .cloned()
            .collect();
        let admitting: Vec<_> = rotation
            .iter()
            .filter(|b| b.breaker.admits_traffic())
            .cloned()
            .collect();
        let max_ejected = self.max_ejected_share.lock().map(|s| *s).unwrap_or(1.0);
        let ejected = rotation.len() - admitting.len();
        let capped = ejected > 0 && ejected as f64 > max_ejected * rotation.len() as f64;
        let healthy = if capped { rotation } else { admitting };
        let threshold = self.panic_threshold.lock().map(|t| *t).unwrap_or(0.5);
        let share = if serving.is_empty() {
            1.0
        } else {
            healthy.len() as f64 / serving.len() as f64
        };
        if share < threshold && !serving.is_empty() {
            (serving, true, capped)
        } else {
            (healthy, false, capped)
        }
    }

    fn rebuild_locked(&self, kind: Option<StrategyKind>) {
        let kind = kind.unwrap_or_else(|| self.selector.load().kind);
        let (eligible, panic, capped) = self.eligible();
        if capped && !self.selector.load().breakers_capped {
            log::warn!(
                "breakers: more than the allowed share of backends would be ejected; ignoring open breakers and balancing over all {}",
                eligible.len()
            );
        }
        let was = self.in_panic.swap(panic, Ordering::Relaxed);
        if panic && !was {
            log::warn!(
                "balancing: panic mode: only {} of {} backends healthy, spreading over all",
                eligible.iter().filter(|b| b.in_rotation()).count(),
                eligible.len()
            );
        } else if was && !panic {
            log::info!("balancing: panic mode over");
        }
        let mut sel = Selector::new(kind, eligible, panic);
        sel.breakers_capped = capped;
        self.selector.store(Arc::new(sel));
    }

    /// The breaker's permit; when open breakers are ignored (ejection cap, panic mode),
    /// an untracked permit instead of a refusal.
    fn permit(sel: &Selector, b: &Backend) -> Option<backend::Permit> {
        let p = b.breaker.try_acquire();
        if p.is_none() && (sel.breakers_capped || sel.panic) {
            return Some(backend::Permit::none());
        }
        p
    }

    /// Picks a backend for a request and takes an in-flight slot on it. `key` feeds
    /// consistent hashing; `tried` lists backends this request already failed on.
    pub fn select(&self, key: u64, tried: &[u64]) -> Option<InflightGuard> {
        self.select_limited(key, tried, SelectLimits::default())
            .ok()
    }

    /// [`Pool::select`] honouring `max_inflight` and slow start. The strategy's choice is
    /// tried first; if it is excluded (tried, full, breaker, slow-start throttled) the
    /// next backends in order are tried, so a request never fails while any eligible
    /// backend has room.
    pub fn select_limited(
        &self,
        key: u64,
        tried: &[u64],
        limits: SelectLimits,
    ) -> Result<InflightGuard, SelectError> {
        let sel = self.selector.load();
        if sel.backends.is_empty() {
            return Err(SelectError::NoBackend);
        }
        let first = sel.preferred(&self.cursor, key);
        let charge = sel.needs_class().then(|| {
            let class = predictive::Class::of_key(key);
            predictive::Charge {
                class,
                work: class.cost() as u64,
                queued_before: 0,
            }
        });
        Self::select_from(&sel, first, tried, limits, charge)
    }

    /// Selection for a sticky session: its pinned backend (by name) while that one is
    /// in rotation, else the owner of `key` on a consistent-hash ring over the eligible
    /// backends, so the sessions of a backend that left move and nobody else's do.
    /// The flag is true when the pin was given but its backend is gone from rotation
    /// (the caller re-pins); a pinned backend that is merely full or already failed
    /// this request is a detour, not a move.
    pub fn select_sticky(
        &self,
        pinned: Option<&str>,
        key: u64,
        tried: &[u64],
        limits: SelectLimits,
    ) -> Result<(InflightGuard, bool), SelectError> {
        let sel = self.selector.load();
        if sel.backends.is_empty() {
            return Err(SelectError::NoBackend);
        }
        let mut repin = false;
        if let Some(name) = pinned {
            match sel.backends.iter().position(|b| &*b.name == name) {
                Some(i) => {
                    let b = &sel.backends[i];
                    let in_rotation = sel.panic || b.in_rotation();
                    if !in_rotation || tried.contains(&b.id) {
                        repin = true;
                    } else if let Ok(g) = Self::select_from(&sel, i, tried, limits, None) {
                        let detour = g.backend().id != b.id;
                        return Ok((g, detour && !b.breaker.admits_traffic()));
                    }
                }
                None => repin = true,
            }
        }
        let first = sel.affinity_ring().pick(key);
        Self::select_from(&sel, first, tried, limits, None).map(|g| (g, repin || pinned.is_none()))
    }

    fn select_from(
        sel: &Selector,
        first: usize,
        tried: &[u64],
        limits: SelectLimits,
        charge: Option<predictive::Charge>,
    ) -> Result<InflightGuard, SelectError> {
        let n = sel.backends.len();
        let mut now = 0;
        let mut busy = false;
        let mut throttled: Option<&Arc<Backend>> = None;
        for step in 0..n {
            let b = &sel.backends[(first + step) % n];
            if tried.contains(&b.id) {
                continue;
            }
            if !sel.panic && !b.in_rotation() {
                continue;
            }
            if limits.max_inflight > 0 && b.inflight() >= limits.max_inflight {
                busy = true;
                continue;
            }
            let window = b.slow_start_window(limits.slow_start);
            if !window.is_zero() {
                if now == 0 {
                    now = backend::now_nanos();
                }
                let share = b.slow_start_share(window, now);
                if share < 1.0 && rand::random::<f64>() >= share {
                    throttled.get_or_insert(b);
                    continue;
                }
            }
            if let Some(permit) = Self::permit(sel, b) {
                b.count_selection(sel.kind.index());
                return Ok(b.begin_charged(permit, charge));
            }
        }
        // Slow start only shapes the share; it never turns a request away.
        if let Some(b) = throttled {
            if let Some(permit) = Self::permit(sel, b) {
                b.count_selection(sel.kind.index());
                return Ok(b.begin_charged(permit, charge));
            }
        }
        Err(if busy {
            SelectError::AllBusy
        } else {
            SelectError::NoBackend
        })
    }
}

#[cfg(test)]
mod tests {
    use super::backend::test_util::backend;
    use super::*;

    fn pool_of(n: u64, kind: StrategyKind) -> (Pool, Vec<Arc<Backend>>) {
        let pool = Pool::new(kind, 0.5);
        let bs: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
        for b in &bs {
            pool.add(b.clone());
        }
        (pool, bs)
    }

    #[test]
    fn parses_every_strategy_name_and_lists_them_on_error() {
        for k in StrategyKind::ALL {
            assert_eq!(k.as_str().parse::<StrategyKind>().unwrap(), k);
        }
        let e = "fastest".parse::<StrategyKind>().unwrap_err().to_string();
        assert!(
            e.contains("least_connections") && e.contains("consistent_hash"),
            "{e}"
        );
    }

    #[test]
    fn sticky_selection_keeps_the_pin_and_moves_only_the_lost_backends_sessions() {
        let (pool, bs) = pool_of(4, StrategyKind::RoundRobin);
        let limits = SelectLimits::default();
        let (g, repin) = pool
            .select_sticky(Some(&bs[2].name), 7, &[], limits)
            .unwrap();
        assert_eq!((g.backend().id, repin), (2, false));
        drop(g);
        // Unpinned keys land on their ring owner, the same every time.
        let owners: Vec<u64> = (0..200u64)
            .map(|k| {
                pool.select_sticky(None, fnv(k), &[], limits)
                    .unwrap()
                    .0
                    .backend()
                    .id
            })
            .collect();
        bs[1].set_state(BackendState::Draining);
        pool.refresh();
        let (g, repin) = pool
            .select_sticky(Some(&bs[1].name), 7, &[], limits)
            .unwrap();
        assert!(repin && g.backend().id != 1, "a draining pin moves");
        drop(g);
        for (k, before) in owners.iter().enumerate() {
            let now = pool
                .select_sticky(None, fnv(k as u64), &[], limits)
                .unwrap()
                .0
                .backend()
                .id;
            if *before != 1 {
                assert_eq!(now, *before, "key {k} moved though its backend stayed");
            } else {
                assert_ne!(now, 1);
            }
        }
        // A pinned backend that already failed this request (a dead worker) moves it.
        let (g, repin) = pool
            .select_sticky(Some(&bs[3].name), 7, &[3], limits)
            .unwrap();
        assert!(repin && g.backend().id != 3);
    }

    fn fnv(k: u64) -> u64 {
        crate::stable_hash::fnv1a(&k.to_le_bytes())
    }

    #[test]
    fn unhealthy_and_draining_backends_are_never_chosen() {
        let (pool, bs) = pool_of(4, StrategyKind::RoundRobin);
        bs[1].set_state(BackendState::Unhealthy);
        bs[2].set_state(BackendState::Draining);
        pool.refresh();
        for _ in 0..100 {
            let g = pool.select(0, &[]).unwrap();
            assert!(g.backend().id == 0 || g.backend().id == 3);
        }
    }

    #[test]
    fn panic_mode_spreads_over_all_when_too_few_are_healthy() {
        let (pool, bs) = pool_of(4, StrategyKind::RoundRobin);
        for b in &bs[..3] {
            b.set_state(BackendState::Unhealthy);
        }
        pool.refresh();
        assert!(pool.in_panic());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            seen.insert(pool.select(0, &[]).unwrap().backend().id);
        }
        assert_eq!(seen.len(), 4);
        for b in &bs[..3] {
            b.set_state(BackendState::Healthy);
        }
        pool.refresh();
        assert!(!pool.in_panic());
    }

    #[test]
    fn retries_skip_backends_already_tried() {
        let (pool, _bs) = pool_of(3, StrategyKind::RoundRobin);
        for _ in 0..30 {
            let g = pool.select(0, &[0, 1]).unwrap();
            assert_eq!(g.backend().id, 2);
        }
        assert!(pool.select(0, &[0, 1, 2]).is_none());
    }

    #[test]
    fn strategy_switch_keeps_inflight_counts() {
        let (pool, bs) = pool_of(2, StrategyKind::RoundRobin);
        let held: Vec<_> = (0..3)
            .map(|_| bs[0].begin(backend::backend_permit()))
            .collect();
        pool.set_strategy(StrategyKind::LeastConnections);
        assert_eq!(pool.strategy(), StrategyKind::LeastConnections);
        assert_eq!(bs[0].inflight(), 3);
        for _ in 0..5 {
            assert_eq!(pool.select(0, &[]).unwrap().backend().id, 1);
        }
        drop(held);
        assert_eq!(bs[0].inflight(), 0);
    }

    #[test]
    fn removed_backend_leaves_rotation_at_once() {
        let (pool, _bs) = pool_of(2, StrategyKind::RoundRobin);
        pool.remove(0);
        for _ in 0..10 {
            assert_eq!(pool.select(0, &[]).unwrap().backend().id, 1);
        }
        assert_eq!(pool.members().len(), 1);
    }

    #[test]
    fn max_inflight_reports_all_busy_and_frees_on_release() {
        let (pool, _bs) = pool_of(2, StrategyKind::LeastConnections);
        let limits = SelectLimits {
            max_inflight: 2,
            ..Default::default()
        };
        let held: Vec<_> = (0..4)
            .map(|_| pool.select_limited(0, &[], limits).unwrap())
            .collect();
        assert_eq!(
            pool.select_limited(0, &[], limits).err(),
            Some(SelectError::AllBusy)
        );
        drop(held);
        assert!(pool.select_limited(0, &[], limits).is_ok());
    }

    #[test]
    fn slow_start_ramps_a_new_backend_up() {
        let (pool, bs) = pool_of(2, StrategyKind::RoundRobin);
        let window = std::time::Duration::from_secs(10);
        let limits = SelectLimits {
            slow_start: window,
            ..Default::default()
        };
        bs[0].backdate_healthy(std::time::Duration::from_secs(20));
        // Backend 1 just became healthy: it takes about 10% of its round-robin turns,
        // so about 5% of all requests; backend 0 takes the rest.
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            counts[pool.select_limited(0, &[], limits).unwrap().backend().id as usize] += 1;
        }
        assert!((80..=400).contains(&counts[1]), "{counts:?}");
        // Half-way through the window it gets half its share.
        bs[1].backdate_healthy(std::time::Duration::from_secs(5));
        let share = bs[1].slow_start_share(window, backend::now_nanos());
        assert!((share - 0.5).abs() < 0.01, "{share}");
        assert_eq!(bs[1].slow_start_share(std::time::Duration::ZERO, 0), 1.0);
    }

    #[test]
    fn selections_are_counted_per_strategy() {
        let (pool, bs) = pool_of(2, StrategyKind::Random);
        for _ in 0..10 {
            pool.select(0, &[]);
        }
        let total: u64 = bs
            .iter()
            .map(|b| b.selections(StrategyKind::Random.index()))
            .sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn consistent_hash_is_sticky_per_key() {
        let (pool, _bs) = pool_of(4, StrategyKind::ConsistentHash);
        assert!(pool.selector().needs_key());
        for key in [1u64, 99, 12345] {
            let first = pool.select(key, &[]).unwrap().backend().id;
            for _ in 0..10 {
                assert_eq!(pool.select(key, &[]).unwrap().backend().id, first);
            }
        }
    }
}
