//! What a Redis connection is made from: topology, TLS material and credentials, as
//! `config` validates them from `sessions.redis`. They live with the link so the link
//! does not depend on the config file's model; `config` builds them.

use std::time::Duration;

/// Where the nodes are.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One node (a URL).
    Single { url: String },
    /// A master followed through sentinels.
    Sentinel {
        master_name: String,
        nodes: Vec<(String, u16)>,
        username: Option<String>,
        password: Option<String>,
    },
    /// Redis Cluster seed nodes.
    Cluster { nodes: Vec<(String, u16)> },
}

impl RedisTopology {
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
    pub topology: RedisTopology,
    /// `Some` when connections use TLS.
    pub tls: Option<RedisTls>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub prefix: String,
    pub timeout: Duration,
    pub lock_ttl: Duration,
    /// `WAIT` for this many replicas after a session write (0: no wait).
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    /// Local cache entries (0: no cache).
    pub cache_entries: usize,
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
