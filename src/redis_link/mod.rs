//! drover's connection to Redis, whatever its shape: one node, a Sentinel-managed
//! master, or a Redis Cluster; plain or TLS; with an ACL user and password. The session
//! store (`sessions::store::redis`) and shared rate limits (`resilience::shared_limit`)
//! talk to Redis through a [`Conn`] from here and never see the topology, except where
//! it changes the rules:
//!
//! - **Cluster**: a script's keys must live in one hash slot, so the session store puts
//!   each session's keys under one `{id}` hash tag ([`RedisLink::is_cluster`]), and a
//!   regenerate (two ids, two slots) runs as two steps. The redis crate's cluster
//!   client can wedge for good; [`cluster::ClusterLink`] replaces one that lets every
//!   call time out.
//! - **Sentinel**: the redis crate finds the master through the sentinels
//!   (`SentinelClient`, which also checks the node's role); this module follows it
//!   ([`sentinel::Follower`]): a dropped connection, or a node that answers `READONLY`
//!   (a demoted master), makes it ask the sentinels again, off the request path.
//! - **Single**: the redis crate's `ConnectionManager` reconnects by itself.
//!
//! Connections are made lazily, on first use inside a tokio runtime: drover starts, and
//! serves degraded, while Redis is down. The optional local cache is the redis crate's
//! client-side caching (RESP3 `CLIENT TRACKING`, opt-in per command): Redis itself tells
//! the connection which cached keys changed.

pub mod cluster;
pub mod sentinel;
pub mod settings;

use cluster::{ClusterConn, ClusterLink};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use settings::{RedisConfig, RedisTopology};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why a connection could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// A bad URL, or a TLS or client setting the redis crate refuses; the text is safe
    /// to log (URL credentials are redacted).
    #[error("redis: {0}")]
    Setup(String),
}

/// Installs rustls' ring provider as the process default once (the redis crate builds
/// its TLS config with `ClientConfig::builder()`, which needs one).
fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn certificates(cfg: &RedisConfig) -> Option<redis::TlsCertificates> {
    let tls = cfg.tls.as_ref()?;
    if tls.ca_pem.is_none() && tls.client.is_none() {
        return None;
    }
    Some(redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.ca_pem.clone(),
    })
}

fn cache_config(cfg: &RedisConfig) -> Option<redis::caching::CacheConfig> {
    let size = std::num::NonZeroUsize::new(cfg.cache_entries)?;
    Some(
        redis::caching::CacheConfig::new()
            .set_mode(redis::caching::CacheMode::OptIn)
            .set_size(size)
            .set_default_client_ttl(cfg.cache_ttl),
    )
}

fn protocol(cfg: &RedisConfig) -> redis::ProtocolVersion {
    if cfg.cache_entries > 0 {
        redis::ProtocolVersion::RESP3
    } else {
        redis::ProtocolVersion::RESP2
    }
}

fn setup_err(e: impl std::fmt::Display) -> LinkError {
    LinkError::Setup(e.to_string())
}

/// The connection(s) of one topology, made on first use.
enum Inner {
    Single {
        main: ConnectionManager,
        /// Separate connection for writes followed by `WAIT` (which blocks its
        /// connection until the replicas answer; reads must not queue behind it).
        durable: Option<ConnectionManager>,
    },
    Sentinel(Arc<sentinel::Follower>),
    /// The cluster client's connection, replaced when it wedges.
    Cluster(Arc<ClusterLink>),
}

/// Clients built from the config (no I/O yet).
enum Plan {
    Single {
        client: redis::Client,
    },
    Sentinel(sentinel::Plan),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
    },
}

/// drover's one client of `sessions.redis`: the config, the clients built from it,
/// and the connection(s), made on the first [`RedisLink::conn`]. Shared (`Arc`) by the
/// session store and the shared rate limits; a config change needs a restart.
pub struct RedisLink {
    cfg: RedisConfig,
    plan: Plan,
    inner: OnceLock<Result<Inner, LinkError>>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// One handle to Redis; cheap to clone, usable concurrently.
#[derive(Clone)]
pub enum Conn {
    /// One node; the manager reconnects by itself.
    Single(ConnectionManager),
    /// Whatever node the sentinels name master now; re-asked when it is lost.
    Sentinel(sentinel::FollowConn),
    /// Redis Cluster: each command goes to the node of its key's hash slot.
    Cluster(ClusterConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisLink {
    /// Builds the clients for `cfg`; connects nothing yet.
    pub fn new(cfg: &RedisConfig) -> Result<Arc<Self>, LinkError> {
        if cfg.tls.is_some() {
            tls_provider();
        }
        let certs = certificates(cfg);
        let plan = match &cfg.topology {
            RedisTopology::Single { url } => {
                let info = url.as_str().into_connection_info().map_err(|e| {
                    LinkError::Setup(format!("url `{}`: {e}", crate::redact::url_userinfo(url)))
                })?;
                let mut redis_info = info.redis_settings().clone();
                if let Some(u) = &cfg.username {
                    redis_info = redis_info.set_username(u);
                }
                if let Some(p) = &cfg.password {
                    redis_info = redis_info.set_password(p);
                }
                redis_info = redis_info.set_protocol(protocol(cfg));
                let info = info.set_redis_settings(redis_info);
                let client = match certs {
                    Some(c) => redis::Client::build_with_tls(info, c),
                    None => redis::Client::open(info),
                }
                .map_err(setup_err)?;
                Plan::Single { client }
            }
            RedisTopology::Sentinel { .. } => {
                Plan::Sentinel(sentinel::Plan::new(cfg, certs).map_err(setup_err)?)
            }
            RedisTopology::Cluster { nodes } => {
                let tls = cfg.tls.is_some();
                let urls: Vec<String> = nodes
                    .iter()
                    .map(|(h, p)| {
                        let host = if h.contains(':') {
                            format!("[{h}]")
                        } else {
                            h.clone()
                        };
                        format!("{}://{host}:{p}", if tls { "rediss" } else { "redis" })
                    })
                    .collect();
                let mut b = redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(cfg.timeout)
                    .response_timeout(cfg.timeout)
                    .retries(2)
                    .min_retry_wait(5)
                    .max_retry_wait(100)
                    .use_protocol(protocol(cfg));
                if let Some(u) = &cfg.username {
                    b = b.username(u);
                }
                if let Some(p) = &cfg.password {
                    b = b.password(p);
                }
                if tls {
                    b = b.tls(redis::TlsMode::Secure);
                }
                if let Some(c) = certs {
                    b = b.certs(c);
                }
                if let Some(cache) = cache_config(cfg) {
                    b = b.cache_config(cache);
                }
                Plan::Cluster {
                    client: Box::new(b.build().map_err(setup_err)?),
                }
            }
        };
        Ok(Arc::new(RedisLink {
            cfg: cfg.clone(),
            plan,
            inner: OnceLock::new(),
        }))
    }

    /// The settings this link was built from (as validated at start; later reloads
    /// do not change it).
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        self.cfg.topology.kind()
    }

    /// True on Redis Cluster: a script's keys must share one hash slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.cfg.topology, RedisTopology::Cluster { .. })
    }

    /// True when reads may be answered from the local cache.
    pub fn caches(&self) -> bool {
        self.cfg.cache_entries > 0
    }

    fn manager_config(&self, cache: bool) -> ConnectionManagerConfig {
        let mut c = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.cfg.timeout))
            .set_response_timeout(Some(self.cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        if cache {
            if let Some(cache) = cache_config(&self.cfg) {
                c = c.set_cache_config(cache);
            }
        }
        c
    }

    fn inner(&self) -> Result<&Inner, LinkError> {
        self.inner
            .get_or_init(|| match &self.plan {
                Plan::Single { client } => {
                    let main = ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        self.manager_config(true),
                    )
                    .map_err(setup_err)?;
                    let durable = if self.cfg.wait_replicas > 0 {
                        let mut cfg = self.manager_config(false);
                        // WAIT itself may take up to its timeout.
                        cfg = cfg
                            .set_response_timeout(Some(self.cfg.timeout + self.cfg.wait_timeout));
                        Some(
                            ConnectionManager::new_lazy_with_config(client.clone(), cfg)
                                .map_err(setup_err)?,
                        )
                    } else {
                        None
                    };
                    Ok(Inner::Single { main, durable })
                }
                Plan::Sentinel(plan) => Ok(Inner::Sentinel(sentinel::Follower::new(
                    plan.clone(),
                    &self.cfg,
                    cache_config(&self.cfg),
                ))),
                Plan::Cluster { client } => Ok(Inner::Cluster(ClusterLink::new(
                    (**client).clone(),
                    self.cfg.timeout,
                    self.wedge_window(),
                ))),
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The shared connection. Must be called from within a tokio runtime.
    pub fn conn(&self) -> Result<Conn, LinkError> {
        Ok(match self.inner()? {
            Inner::Single { main, .. } => Conn::Single(main.clone()),
            Inner::Sentinel(f) => Conn::Sentinel(sentinel::FollowConn::new(f.clone(), false)),
            Inner::Cluster(c) => Conn::Cluster(c.handle()),
        })
    }

    /// How long every call to Redis Cluster may time out before the connection counts
    /// as wedged and is replaced ([`cluster`]): long enough for a slot refresh after a
    /// failover or a reshard (a few timeouts), short enough to be back within seconds.
    fn wedge_window(&self) -> Duration {
        (self.cfg.timeout * 4).max(Duration::from_secs(2))
    }

    /// Redis Cluster: connections replaced because they answered nothing.
    pub fn cluster_connections_replaced(&self) -> u64 {
        match self.inner.get() {
            Some(Ok(Inner::Cluster(c))) => c.replaced(),
            _ => 0,
        }
    }

    /// The connection for writes that are followed by `WAIT` (its own connection where
    /// the topology allows, so reads never queue behind a `WAIT`).
    pub fn durable_conn(&self) -> Result<Conn, LinkError> {
        Ok(match self.inner()? {
            Inner::Single { main, durable } => {
                Conn::Single(durable.clone().unwrap_or_else(|| main.clone()))
            }
            Inner::Sentinel(f) => Conn::Sentinel(sentinel::FollowConn::new(f.clone(), true)),
            Inner::Cluster(c) => Conn::Cluster(c.handle()),
        })
    }

    /// Where the master is now, for the admin API (Sentinel only).
    pub fn current_master(&self) -> Option<String> {
        match self.inner.get() {
            Some(Ok(Inner::Sentinel(f))) => f.master_addr(),
            _ => None,
        }
    }

    /// Sentinel: master changes seen since start.
    pub fn master_switches(&self) -> u64 {
        match self.inner.get() {
            Some(Ok(Inner::Sentinel(f))) => f.switches(),
            _ => 0,
        }
    }

    /// `WAIT replicas timeout` for the writes made so far on `con` (which must be the
    /// connection that made them). Returns how many replicas acknowledged.
    pub async fn wait_replicas(&self, con: &mut Conn, slot_key: &[u8]) -> redis::RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.cfg.wait_replicas)
            .arg(self.cfg.wait_timeout.as_millis().max(1) as u64);
        let v: i64 = match con {
            Conn::Cluster(c) => {
                use redis::cluster_routing::{
                    Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr,
                };
                let route = Route::with_slot(Slot::for_key(slot_key), SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(v)?
            }
            other => cmd.query_async(other).await?,
        };
        Ok(v.max(0) as u32)
    }
}

/// A Lua script run with `EVALSHA`, falling back to `EVAL` (which also caches it on the
/// server) when the node does not know it yet: a restarted node or a new master after a
/// failover starts with an empty script cache.
#[derive(Clone)]
pub struct LuaScript {
    code: &'static str,
    sha: String,
}

impl LuaScript {
    /// Hashes `code` once (SHA-1, for `EVALSHA`); sends nothing. Make one per
    /// script at setup and keep it.
    pub fn new(code: &'static str) -> Self {
        LuaScript {
            code,
            sha: redis::Script::new(code).get_hash().to_string(),
        }
    }

    /// `EVALSHA` of this script with `keys` and `args`, as one command (to be sent alone
    /// or in a pipeline).
    pub fn cmd(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(keys.len());
        for k in keys {
            c.arg(*k);
        }
        for a in args {
            c.arg(*a);
        }
        c
    }

    fn eval_cmd(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(self.code).arg(keys.len());
        for k in keys {
            c.arg(*k);
        }
        for a in args {
            c.arg(*a);
        }
        c
    }

    /// Runs the script once.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        con: &mut Conn,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> redis::RedisResult<T> {
        match self.cmd(keys, args).query_async(con).await {
            Err(e) if no_script(&e) => self.eval_cmd(keys, args).query_async(con).await,
            r => r,
        }
    }
}

/// True for a `NOSCRIPT` reply.
pub fn no_script(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// True for an error that means this node can no longer take writes or is gone: the
/// connection dropped or was refused, or the node is a replica now (`READONLY`), or a
/// master that lost its replicas (`MASTERDOWN`, `NOREPLICAS`).
pub fn lost_master(e: &redis::RedisError) -> bool {
    // A slow answer is not a lost master: the caller's timeout and the store's breaker
    // deal with it; dropping the connection would fail every call in flight.
    !e.is_timeout()
        && (e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
            || e.to_string().contains("READONLY"))
}
