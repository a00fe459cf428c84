//! Following a Sentinel-managed master.
//!
//! The redis crate's `SentinelClient` asks the sentinels for the master of a name and
//! checks that the node it names really is a master (`ROLE`). [`Follower`] keeps one
//! multiplexed connection to that master (two when writes wait for replicas) and asks
//! again whenever the master is lost: the connection dropped or was refused, or the node
//! answers `READONLY` (it was demoted after a failover and came back as a replica).
//!
//! Asking runs in a spawned task, one at a time and at most every
//! [`RESOLVE_PAUSE`]; requests never wait for it. Until a master is known, every call
//! fails at once (the session store's breaker then serves requests as "session
//! unavailable"), so a failover costs the sentinels' detection and election time
//! (`down-after-milliseconds` plus the election) and nothing more.

use super::lost_master;
use super::settings::{RedisConfig, RedisTopology};
use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Least time between two rounds of asking the sentinels.
pub const RESOLVE_PAUSE: Duration = Duration::from_millis(100);

/// What is needed to build a `SentinelClient` (it is not `Clone`).
#[derive(Clone)]
pub struct Plan {
    nodes: Vec<(String, u16)>,
    master_name: String,
    tls: bool,
    certs: Option<redis::TlsCertificates>,
    username: Option<String>,
    password: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    protocol: redis::ProtocolVersion,
}

impl Plan {
    /// Takes what it needs from a `Sentinel` topology (an error for any other) and
    /// builds a client once, so a config the redis crate refuses fails at start.
    pub fn new(
        cfg: &RedisConfig,
        certs: Option<redis::TlsCertificates>,
    ) -> redis::RedisResult<Plan> {
        let RedisTopology::Sentinel {
            master_name,
            nodes,
            username,
            password,
        } = &cfg.topology
        else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a sentinel topology",
            )));
        };
        let plan = Plan {
            nodes: nodes.clone(),
            master_name: master_name.clone(),
            tls: cfg.tls.is_some(),
            certs,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            sentinel_username: username.clone(),
            sentinel_password: password.clone(),
            protocol: super::protocol(cfg),
        };
        // Fail at start, not at first use, on a config the crate refuses.
        plan.client()?;
        Ok(plan)
    }

    fn client(&self) -> redis::RedisResult<SentinelClient> {
        let addrs = self.nodes.iter().map(|(h, p)| {
            if self.tls {
                ConnectionAddr::TcpTls {
                    host: h.clone(),
                    port: *p,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(h.clone(), *p)
            }
        });
        let mut b =
            SentinelClientBuilder::new(addrs, &self.master_name, SentinelServerType::Master)?
                .set_client_to_redis_protocol(self.protocol);
        if self.tls {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(c) = &self.certs {
                b = b
                    .set_client_to_redis_certificates(c.clone())
                    .set_client_to_sentinel_certificates(c.clone());
            }
        }
        if let Some(u) = &self.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &self.sentinel_username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &self.sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        b.build()
    }
}

/// The master as last found.
struct Master {
    generation: u64,
    addr: String,
    main: MultiplexedConnection,
    durable: Option<MultiplexedConnection>,
}

/// Follows the master the sentinels name: holds its connection(s), and on a
/// lost master asks again in the background (at most every [`RESOLVE_PAUSE`]).
pub struct Follower {
    plan: Plan,
    client: tokio::sync::Mutex<Option<SentinelClient>>,
    current: ArcSwapOption<Master>,
    generation: AtomicU64,
    resolving: AtomicBool,
    last_round: std::sync::Mutex<Option<Instant>>,
    main_cfg: AsyncConnectionConfig,
    durable_cfg: Option<AsyncConnectionConfig>,
    timeout: Duration,
    switches: AtomicU64,
}

impl Follower {
    /// Starts asking the sentinels at once (if inside a tokio runtime) and returns;
    /// connection timeouts are `cfg.timeout`, plus `cfg.wait_timeout` on the `WAIT` one.
    pub fn new(
        plan: Plan,
        cfg: &RedisConfig,
        cache: Option<redis::caching::CacheConfig>,
    ) -> Arc<Follower> {
        let base = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout));
        let main_cfg = match cache {
            Some(c) => base.clone().set_cache_config(c),
            None => base.clone(),
        };
        let durable_cfg = (cfg.wait_replicas > 0)
            .then(|| base.set_response_timeout(Some(cfg.timeout + cfg.wait_timeout)));
        let f = Arc::new(Follower {
            plan,
            client: tokio::sync::Mutex::new(None),
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            resolving: AtomicBool::new(false),
            last_round: std::sync::Mutex::new(None),
            main_cfg,
            durable_cfg,
            timeout: cfg.timeout,
            switches: AtomicU64::new(0),
        });
        f.clone().kick();
        f
    }

    /// `host:port` of the master in use; `None` while none is known (at start, after a loss).
    pub fn master_addr(&self) -> Option<String> {
        self.current.load().as_ref().map(|m| m.addr.clone())
    }

    /// Times the sentinels named a different master than the last one, since start
    /// (the first one found does not count).
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Starts a round of asking the sentinels unless one runs or ran very recently.
    fn kick(self: Arc<Self>) {
        if let Ok(mut last) = self.last_round.lock() {
            if last.is_some_and(|t| t.elapsed() < RESOLVE_PAUSE) {
                return;
            }
            if self.resolving.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        } else {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.resolving.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async move {
            // Lookups and connects each have their own timeouts; this bounds a round.
            let budget = self.timeout * 4 + Duration::from_secs(1);
            match tokio::time::timeout(budget, self.resolve()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!(
                    "redis: no master `{}` from the sentinels yet: {e}",
                    self.plan.master_name
                ),
                Err(_) => log::warn!(
                    "redis: asking the sentinels for `{}` took over {budget:?}",
                    self.plan.master_name
                ),
            }
            self.resolving.store(false, Ordering::Release);
        });
    }

    async fn resolve(&self) -> redis::RedisResult<()> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            *guard = Some(self.plan.client()?);
        }
        let Some(sc) = guard.as_mut() else {
            return Ok(());
        };
        let client = sc.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let main = client
            .get_multiplexed_async_connection_with_config(&self.main_cfg)
            .await?;
        let durable = match &self.durable_cfg {
            Some(c) => Some(
                client
                    .get_multiplexed_async_connection_with_config(c)
                    .await?,
            ),
            None => None,
        };
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let previous = self.current.load().as_ref().map(|m| m.addr.clone());
        if previous.as_deref() != Some(addr.as_str()) {
            if previous.is_some() {
                self.switches.fetch_add(1, Ordering::Relaxed);
            }
            log::info!(
                "redis: master `{}` is {addr} (from the sentinels)",
                self.plan.master_name
            );
        }
        self.current.store(Some(Arc::new(Master {
            generation,
            addr,
            main,
            durable,
        })));
        Ok(())
    }

    /// A call on `generation`'s connection found the master gone.
    fn lost(self: &Arc<Self>, generation: u64, why: &redis::RedisError) {
        let cur = self.current.load();
        if cur.as_ref().is_some_and(|m| m.generation == generation) {
            self.current.store(None);
            log::warn!(
                "redis: lost master `{}` ({why}); asking the sentinels",
                self.plan.master_name
            );
        }
        self.clone().kick();
    }
}

/// A handle on the followed master ([`super::Conn::Sentinel`]).
#[derive(Clone)]
pub struct FollowConn {
    f: Arc<Follower>,
    durable: bool,
}

impl FollowConn {
    /// `durable`: use the master's separate connection for writes followed by `WAIT`
    /// (the main one when there is none).
    pub fn new(f: Arc<Follower>, durable: bool) -> Self {
        FollowConn { f, durable }
    }

    fn pick(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let cur = self.f.current.load_full();
        match cur {
            Some(m) => {
                let c = if self.durable {
                    m.durable.clone().unwrap_or_else(|| m.main.clone())
                } else {
                    m.main.clone()
                };
                Ok((m.generation, c))
            }
            None => {
                self.f.clone().kick();
                Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "no Redis master known (asking the sentinels)",
                )))
            }
        }
    }

    fn check<T>(&self, generation: u64, r: &redis::RedisResult<T>) {
        if let Err(e) = r {
            if lost_master(e) {
                self.f.lost(generation, e);
            }
        }
    }
}

impl ConnectionLike for FollowConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut c) = self.pick()?;
            let r = c.req_packed_command(cmd).await;
            self.check(generation, &r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut c) = self.pick()?;
            let r = c.req_packed_commands(pipeline, offset, count).await;
            self.check(generation, &r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
