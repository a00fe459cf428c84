//! The runtime model: what a valid config is, as the rest of drover reads it. Only
//! `validate` builds these; a `Config` that exists is valid.

use super::file::FileConfig;
use crate::config::strategy::StrategyKind;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const MAX_WORKERS: usize = 512;
pub const MAX_THREADS: usize = 256;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub threads: usize,
    pub runtime_dir: PathBuf,
    pub admin: AdminConfig,
    pub workers: WorkersConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstreams found through DNS (`discover: dns`, `srv:`).
    pub discovered: Vec<DiscoveredUpstream>,
    pub discovery: DiscoveryConfig,
    pub balancing: BalancingConfig,
    pub health: HealthConfig,
    pub proxy: ProxyConfig,
    pub forwarded: super::edge::ForwardedConfig,
    pub limits: super::edge::LimitsConfig,
    pub shutdown_grace: Duration,
    pub breaker: BreakerConfig,
    pub sessions: super::sessions::SessionsConfig,
    pub logging: LoggingConfig,
    /// Routes, rate limits, retry pacing and budget (`crate::config::resilience`).
    pub resilience: std::sync::Arc<crate::config::resilience::Resilience>,
    pub observability: super::observability::ObservabilityConfig,
    /// HTTPS listeners and their certificates, redirect, HSTS.
    pub tls: super::tls::TlsConfig,
    /// HTTP/2 to clients.
    pub http2: super::tls::Http2Config,
    /// Every backend speaks HTTP/1.1 in cleartext (workers and upstreams), so drover's
    /// own engine can serve requests; otherwise Pingora's carrier serves them all.
    pub plain_backends: bool,
    /// The parsed file, kept to show the running config (`/api/config`).
    pub file: FileConfig,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The operator's token (`admin.token` / `admin.token_file`); None = generated one.
    pub token: Option<String>,
    /// Lower-cased host names accepted in `Host` besides localhost and listener IPs.
    pub allowed_hosts: Vec<String>,
    pub allow_deploy_command: bool,
    pub max_connections: usize,
    pub max_stream_subscribers: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkersConfig {
    pub count: usize,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Names (or `PREFIX*`) of drover's variables workers inherit beyond the allow-list.
    pub inherit_env: Vec<String>,
    /// Variables the config file read through `${VAR}`: never inherited by workers.
    pub withheld_env: std::collections::BTreeSet<String>,
    pub host: IpAddr,
    /// How drover speaks to workers (`http1` or `h2c`).
    pub protocol: super::tls::Protocol,
    pub base_port: u16,
    pub backoff: BackoffPolicy,
    pub stop_timeout: Duration,
    pub drain_timeout: Duration,
    pub health_timeout: Duration,
    pub autoscale: super::autoscale::AutoscaleConfig,
    pub weight: u32,
    pub weights: Vec<u32>,
}

impl WorkersConfig {
    pub fn weight_of(&self, id: usize) -> u32 {
        self.weights.get(id).copied().unwrap_or(self.weight)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
    pub crash_loop_restarts: u32,
}

/// What a discovered upstream entry asks DNS for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoverySource {
    /// A/AAAA records of `host`, each a backend on `port`.
    Dns { host: String, port: u16 },
    /// SRV records of `name`: targets, ports and weights.
    Srv { name: String },
}

impl DiscoverySource {
    /// The entry's name (the `host:port` or SRV name as written), used as the prefix of
    /// its backends' names (`{label}@{ip}:{port}`).
    pub fn label(&self) -> String {
        match self {
            DiscoverySource::Dns { host, port } => format!("{host}:{port}"),
            DiscoverySource::Srv { name } => name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredUpstream {
    pub source: DiscoverySource,
    /// Weight of each backend found (SRV records carry their own).
    pub weight: u32,
    /// Protocol and TLS to each backend found.
    pub link: super::tls::Link,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// Empty: the system's resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub timeout: Duration,
    pub slow_start: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Protocol and TLS to it.
    pub link: super::tls::Link,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BalancingConfig {
    pub strategy: StrategyChoice,
    pub panic_threshold: f64,
    pub hash_key: HashKey,
    pub slow_start: Duration,
    pub max_inflight_per_backend: u32,
    pub queue_size: u32,
    pub queue_timeout: Duration,
    pub latency_decay: Duration,
}

/// A fixed strategy, or `auto`: drover picks one from what it observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyChoice {
    Fixed(StrategyKind),
    Auto,
}

impl StrategyChoice {
    /// The strategy to start with (auto starts with least connections).
    pub fn initial(self) -> StrategyKind {
        match self {
            StrategyChoice::Fixed(k) => k,
            StrategyChoice::Auto => StrategyKind::LeastConnections,
        }
    }
}

impl std::fmt::Display for StrategyChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StrategyChoice::Fixed(k) => write!(f, "{k}"),
            StrategyChoice::Auto => f.write_str("auto"),
        }
    }
}

/// The request property consistent hashing uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

/// Why `balancing.hash_key` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashKeyError {
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    #[error("`{0}` is not a hash key; accepted: client_ip, path, header:NAME, cookie:NAME")]
    Unknown(String),
}

impl std::str::FromStr for HashKey {
    type Err = HashKeyError;
    fn from_str(s: &str) -> Result<Self, HashKeyError> {
        match s {
            "client_ip" => Ok(HashKey::ClientIp),
            "path" => Ok(HashKey::Path),
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .map(HashKey::Header)
                        .map_err(|_| HashKeyError::HeaderName(h.to_string()))
                } else if let Some(c) = s.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
                    Ok(HashKey::Cookie(c.to_string()))
                } else {
                    Err(HashKeyError::Unknown(s.to_string()))
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyConfig {
    pub retries: u32,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub keepalive_pool_size: usize,
    pub keepalive_timeout: Duration,
    pub fast_path: bool,
    pub retry_on: RetryOn,
    pub max_response_header_bytes: usize,
}

/// Which failed attempts are tried again (`proxy.retry_on`). A connect failure always is:
/// nothing reached the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// The connection broke after the whole request was sent (the worker had it).
    pub reset: bool,
    /// The worker did not answer in time (it had the request).
    pub timeout: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
    /// Every rule of `circuit_breaker`, validated (what worker breakers are built from).
    pub policy: crate::resilience::breaker::BreakerPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub level: log::LevelFilter,
    pub access_log: bool,
    /// One JSON object per log line.
    pub json: bool,
    /// Where access lines go instead of the log (`observe::access_log::write`).
    pub access_log_file: Option<std::path::PathBuf>,
}
