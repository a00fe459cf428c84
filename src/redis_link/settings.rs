//! What a Redis connection is made from: topology, TLS material and credentials, as
//! `config` validates them from `sessions.redis`. They live with the link so the link
//! does not depend on the config file's model; `config` builds them.

use std::time::Duration;

/// Where the nodes are.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One node (a URL).
    Single {
        /// `redis://[user:pass@]host:port[/db]`, or `rediss://` for TLS; may hold
        /// credentials, so print it only through `redact::url_userinfo`.
        url: String,
    },
    /// A master followed through sentinels.
    Sentinel {
        /// The name the sentinels monitor the master under (`sentinel monitor NAME ...`).
        master_name: String,
        /// Sentinel `(host, port)` pairs (26379 by default); empty when the section is
        /// not in use (not validated then).
        nodes: Vec<(String, u16)>,
        /// ACL user of the sentinels themselves (not of the master); `None`: none.
        username: Option<String>,
        /// Password of the sentinels themselves (`requirepass` in sentinel.conf), read
        /// from `password_file` if set; the master's is [`RedisConfig::password`].
        password: Option<String>,
    },
    /// Redis Cluster seed nodes.
    Cluster {
        /// Seed `(host, port)` pairs (6379 by default); any reachable one yields the
        /// slot map. Empty when the section is not in use (not validated then).
        nodes: Vec<(String, u16)>,
    },
}

impl RedisTopology {
    /// `single`, `sentinel` or `cluster`, as shown by the admin API and startup log.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisTopology::Single { .. } => "single",
            RedisTopology::Sentinel { .. } => "sentinel",
            RedisTopology::Cluster { .. } => "cluster",
        }
    }
}

impl std::fmt::Debug for RedisTopology {
    /// Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTopology::Single { url } => f
                .debug_struct("Single")
                .field("url", &crate::redact::url_userinfo(url))
                .finish(),
            RedisTopology::Sentinel {
                master_name, nodes, ..
            } => f
                .debug_struct("Sentinel")
                .field("master_name", master_name)
                .field("nodes", nodes)
                .finish_non_exhaustive(),
            RedisTopology::Cluster { nodes } => {
                f.debug_struct("Cluster").field("nodes", nodes).finish()
            }
        }
    }
}

/// TLS material, read at load.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    /// PEM of the CA(s) to trust; `None`: the system's trust store.
    pub ca_pem: Option<Vec<u8>>,
    /// (certificate chain, private key), PEM.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

/// The validated `sessions.redis` section.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// Which nodes to talk to, and how to find the master.
    pub topology: RedisTopology,
    /// `Some` when connections use TLS.
    pub tls: Option<RedisTls>,
    /// ACL user (Redis 6+) on the data nodes; `None` (or empty in the file): `default`.
    pub username: Option<String>,
    /// Password of `username` (or `requirepass`), already read from `password_file`
    /// when one is set; never printed (see `Debug`).
    pub password: Option<String>,
    /// Put before every key drover writes, sessions and shared rate limits alike
    /// (`key_prefix`, default `drover:`); no `{`/`}` on Cluster, where drover adds hash tags.
    pub prefix: String,
    /// Per-call timeout (default 250 ms), also the connect timeout; a slower Redis
    /// counts as down for that request.
    pub timeout: Duration,
    /// Lease of a session lock (default 10 s): a lock left by a crashed instance
    /// expires after this long. Validated to be at least `sessions.lock_timeout`.
    pub lock_ttl: Duration,
    /// `WAIT` for this many replicas after a session write (0: no wait).
    pub wait_replicas: u32,
    /// Longest `WAIT` for `wait_replicas` (default 50 ms); a write not acknowledged
    /// in time is kept and counted as unreplicated.
    pub wait_timeout: Duration,
    /// Local cache entries (0: no cache).
    pub cache_entries: usize,
    /// Longest time a locally cached entry is used without asking Redis again;
    /// bounds staleness if an invalidation is lost with a broken connection.
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for RedisConfig {
    /// Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// What identifies the connection: a change needs a restart.
    pub fn same_connection(&self, other: &RedisConfig) -> bool {
        self.topology == other.topology
            && self.tls == other.tls
            && self.username == other.username
            && self.password == other.password
            && self.prefix == other.prefix
            && self.cache_entries == other.cache_entries
            && self.cache_ttl == other.cache_ttl
            && self.wait_replicas == other.wait_replicas
            && self.wait_timeout == other.wait_timeout
            && self.timeout == other.timeout
    }
}
