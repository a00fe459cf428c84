//! State shared by the data plane (Pingora threads) and the control plane (the control
//! thread: supervisor, health checks, admin, signals).
//!
//! The running config sits behind one `ArcSwap`: a reload builds a new `Config` and swaps
//! it in; requests read whichever version was current when they looked, never a config
//! patched in place.

use crate::balancing::{Backend, Pool};
use crate::config::{Config, StrategyChoice};
use crate::in_flight::InFlight;
use crate::observe::metrics::Metrics;
use crate::resilience::breaker::{Breaker, BreakerPolicy};
use arc_swap::ArcSwap;
use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything both planes share, made once at start by [`Shared::new`] and passed around
/// as `Arc<Shared>`.
pub struct Shared {
    /// The running config; swapped whole by a reload, read through [`Shared::config`].
    pub config: ArcSwap<Config>,
    /// The config file given at start: re-read on reload (SIGHUP or admin), and the base
    /// for relative program paths in deploys.
    pub config_path: PathBuf,
    /// Config version: 1 at start, incremented by each successful reload; mirrored in the
    /// `config_version` gauge.
    pub version: AtomicU64,
    /// The backends in rotation and the balancing strategy that picks among them.
    pub pool: Pool,
    /// The Prometheus registry and drover's own metrics.
    pub metrics: Metrics,
    /// Requests being proxied now (counted by the pipeline; `drover_requests_in_flight`
    /// is set from it at scrape time).
    pub in_flight: InFlight,
    /// Percentile windows, history, events, alerts (`observe::live`), sampled each second.
    pub observe: crate::observe::live::Observer,
    /// Set when shutdown starts: `/readyz` answers 503 and workers are not restarted.
    pub shutting_down: AtomicBool,
    /// When this process built its shared state; the base for `uptime_seconds`.
    pub started: Instant,
    /// True while `strategy: auto` is in charge (an explicit switch turns it off until the
    /// file's choice changes).
    pub auto_strategy: AtomicBool,
    /// Why auto picked the current strategy, for `/api/status`.
    pub auto_reason: std::sync::Mutex<String>,
    /// Sticky sessions, when `sessions.enabled` at start.
    pub sessions: std::sync::OnceLock<Arc<crate::sessions::SessionService>>,
    /// Faults installed through the chaos admin endpoints.
    pub chaos: crate::resilience::chaos::Chaos,
    /// The HTTPS listeners' certificates, swapped by reload (`crate::tls`).
    pub tls: Arc<crate::tls::CertResolver>,
    /// Rate limits shared through Redis, made on first use (`rate_limit.store: redis`).
    shared_limits: std::sync::OnceLock<Option<Arc<crate::resilience::shared_limit::SharedLimits>>>,
    next_backend_id: AtomicU64,
}

impl Shared {
    /// Builds the shared state from the config loaded at start: empty pool with the
    /// configured strategy, fresh metrics (config version 1) and observer.
    pub fn new(config: Config, config_path: PathBuf) -> Arc<Self> {
        let auto = config.balancing.strategy == StrategyChoice::Auto;
        let pool = Pool::new(
            config.balancing.strategy.initial(),
            config.balancing.panic_threshold,
        );
        pool.set_max_ejected_share(config.resilience.max_ejected_share);
        let metrics = Metrics::new();
        metrics.config_version.set(1);
        let observe = crate::observe::live::Observer::new(&metrics);
        observe
            .custom
            .set_policy(config.observability.worker_metrics);
        let tls = Arc::new(crate::tls::CertResolver::new(config.tls.certs.clone()));
        tls.register(&metrics.registry);
        Arc::new(Shared {
            tls,
            config: ArcSwap::from_pointee(config),
            config_path,
            version: AtomicU64::new(1),
            pool,
            metrics,
            in_flight: InFlight::new(),
            observe,
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
            auto_strategy: AtomicBool::new(auto),
            auto_reason: std::sync::Mutex::new(String::new()),
            sessions: std::sync::OnceLock::new(),
            chaos: Default::default(),
            shared_limits: std::sync::OnceLock::new(),
            next_backend_id: AtomicU64::new(1),
        })
    }

    /// A snapshot of the running config; it stays the same for the holder even if a
    /// reload swaps in a new one meanwhile.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The shared rate limits' Redis client: the session store's connection when
    /// sessions are on Redis, else one of its own to `sessions.redis`. Made once; a
    /// change of `sessions.redis` needs a restart. `None` if the settings are unusable
    /// (logged once; limits then stay local).
    pub fn shared_limits(&self) -> Option<&Arc<crate::resilience::shared_limit::SharedLimits>> {
        self.shared_limits
            .get_or_init(|| {
                let link = match self.sessions.get().and_then(|s| s.redis_link()) {
                    Some(l) => l,
                    None => {
                        match crate::redis_link::RedisLink::new(&self.config.load().sessions.redis)
                        {
                            Ok(l) => l,
                            Err(e) => {
                                log::error!("rate limit: shared limits stay local: {e}");
                                return None;
                            }
                        }
                    }
                };
                Some(Arc::new(
                    crate::resilience::shared_limit::SharedLimits::new(
                        link,
                        &self.metrics.registry,
                    ),
                ))
            })
            .as_ref()
    }

    /// What the observer samples this second (`observe::view`).
    pub fn view<'a>(
        &'a self,
        slots: &'a [crate::observe::view::SlotStatus],
    ) -> crate::observe::view::View<'a> {
        crate::observe::view::View {
            config: self.config(),
            metrics: &self.metrics,
            pool: &self.pool,
            in_flight: self.in_flight.get(),
            config_version: self.version.load(Ordering::Relaxed),
            auto_strategy: self.auto_strategy.load(Ordering::Relaxed),
            sessions: self.sessions.get().map(|s| &**s),
            slots,
        }
    }

    /// True once shutdown has started (see `shutting_down`).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Builds a backend with the current proxy settings baked into its peer.
    pub fn make_backend(
        &self,
        name: &str,
        worker_id: Option<usize>,
        addr: SocketAddr,
        weight: u32,
        link: &crate::config::Link,
    ) -> Arc<Backend> {
        let cfg = self.config.load();
        let mut peer = HttpPeer::new(addr, false, String::new());
        link.apply(&mut peer);
        peer.options.connection_timeout = Some(cfg.proxy.connect_timeout);
        peer.options.read_timeout = Some(cfg.proxy.read_timeout);
        peer.options.idle_timeout = Some(cfg.proxy.keepalive_timeout);
        peer.options.tcp_keepalive = None;
        let policy = breaker_policy(&cfg);
        let breaker = Breaker::new(policy);
        breaker.set_name(name);
        let id = self.next_backend_id.fetch_add(1, Ordering::Relaxed);
        let mut backend = Backend::new(id, name, worker_id, addr, weight, peer, breaker);
        backend.link = link.clone();
        let _ = backend
            .metrics
            .set(Box::new(self.metrics.backend_handles(name)));
        Arc::new(backend)
    }
}

/// The circuit-breaker policy new backends get under `cfg` (its `circuit_breaker`
/// section).
pub fn breaker_policy(cfg: &Config) -> BreakerPolicy {
    cfg.breaker.policy
}

impl crate::health::HealthHost for Shared {
    fn health_settings(&self) -> crate::config::HealthConfig {
        self.config.load().health.clone()
    }

    fn count_check(&self, result: &'static str) {
        self.metrics
            .health_checks
            .with_label_values(&[result])
            .inc();
    }

    fn rotation_changed(&self) {
        self.pool.refresh();
    }
}
