//! The runtime model: what a valid config is, as the rest of drover reads it. Only
//! `validate` builds these; a `Config` that exists is valid.

use super::file::FileConfig;
use crate::config::strategy::StrategyKind;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Upper bound of `workers.count` and of autoscale's `max`; the capacity advice never suggests
/// more.
pub const MAX_WORKERS: usize = 512;
/// Upper bound of `threads` (data-plane threads) that validation accepts.
pub const MAX_THREADS: usize = 256;

/// The whole validated configuration, built by `validate` from a [`FileConfig`] at start, by
/// `drover -t` and on every reload.
#[derive(Debug, Clone)]
pub struct Config {
    /// Cleartext data-plane address (`listen`): HTTP/1.x, and h2c when `http2.cleartext` is on.
    /// Restart to change.
    pub listen: SocketAddr,
    /// Pingora data-plane service threads (`threads`, 1 to [`MAX_THREADS`], default 1). Restart to
    /// change.
    pub threads: usize,
    /// Private folder (mode 0700) for the pid file, upgrade socket, generated keys, admin token and
    /// session snapshot: `runtime_dir` resolved against the config file, else a default from
    /// `DROVER_RUNTIME_DIR`, `XDG_RUNTIME_DIR` or `TMPDIR`.
    pub runtime_dir: PathBuf,
    /// Admin plane listener, token, allowed hosts and connection limits (`admin:`).
    pub admin: AdminConfig,
    /// Forked worker processes: program, environment, ports, restart backoff, autoscale
    /// (`workers:`).
    pub workers: WorkersConfig,
    /// Remote backends with a fixed address, resolved once at load (`upstreams:` entries without
    /// `discover` or `srv`).
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstreams found through DNS (`discover: dns`, `srv:`).
    pub discovered: Vec<DiscoveredUpstream>,
    /// How DNS-discovered upstreams are resolved (`discovery:`).
    pub discovery: DiscoveryConfig,
    /// Strategy, panic threshold, hash key, slow start and the wait queue (`balancing:`).
    pub balancing: BalancingConfig,
    /// The active health probe of every backend (`health_check:`).
    pub health: HealthConfig,
    /// Retries, upstream timeouts and connection pool (`proxy:`); the total timeout, retry backoff
    /// and retry budget are in `resilience`.
    pub proxy: ProxyConfig,
    /// X-Forwarded-* headers and the proxies trusted to set them (`forwarded:`).
    pub forwarded: super::edge::ForwardedConfig,
    /// Client-side limits: header and body sizes, client timeouts, requests in flight (`limits:`).
    pub limits: super::edge::LimitsConfig,
    /// Longest wait for in-flight requests after SIGTERM before workers are stopped
    /// (`shutdown.grace_period`, default 10s).
    pub shutdown_grace: Duration,
    /// The per-worker circuit breaker (`circuit_breaker:`).
    pub breaker: BreakerConfig,
    /// Sticky sessions: cookie, store, keys, headers to workers (`sessions:`).
    pub sessions: super::sessions::SessionsConfig,
    /// Log level and format, and the access log (`logging:`).
    pub logging: LoggingConfig,
    /// Routes, rate limits, retry pacing and budget (`crate::config::resilience`).
    pub resilience: std::sync::Arc<crate::config::resilience::Resilience>,
    /// Alert rules and webhook, SLOs, worker metrics, capacity plan, tracing (`observability:`).
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

/// The validated `admin:` section: the admin plane's address, credentials and limits.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin plane address (`admin.listen`): loopback unless a token is set, never the same as
    /// `listen`. Restart to change.
    pub listen: SocketAddr,
    /// The operator's token (`admin.token` / `admin.token_file`); None = generated one.
    pub token: Option<String>,
    /// Lower-cased host names accepted in `Host` besides localhost and listener IPs.
    pub allowed_hosts: Vec<String>,
    /// Whether `POST /api/deploy` may run a program other than `workers.command` or set variables
    /// that load code (default false).
    pub allow_deploy_command: bool,
    /// Admin connections open at once, WebSocket subscribers not counted; more get a 503 (1 to
    /// 100000, default 256).
    pub max_connections: usize,
    /// `/api/stream` WebSocket subscribers at once; more get a 503 (0 to 10000, default 32).
    pub max_stream_subscribers: usize,
    /// Time a client has to send a request head, from connect or the previous response, so also the
    /// keep-alive idle time (default 10s).
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed (default 60s).
    pub idle_timeout: Duration,
    /// Longest time from a request head to the response head, body read included (default 30s).
    pub request_timeout: Duration,
}

/// The validated `workers:` section: what the supervisor forks, and how it restarts, drains and
/// scales it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersConfig {
    /// Workers to run (`workers.count`, 0 to [`MAX_WORKERS`], default 2); 0 = proxy to `upstreams`
    /// only. With autoscale on, the starting size.
    pub count: usize,
    /// Program to run: the first word of `workers.command`; a bare name is looked up next to the
    /// drover binary, then on PATH.
    pub program: PathBuf,
    /// Arguments after the program in `workers.command`.
    pub args: Vec<String>,
    /// Extra environment for every worker (`workers.env`); cannot set `PORT` or `WORKER_ID`, which
    /// drover sets per worker.
    pub env: BTreeMap<String, String>,
    /// Names (or `PREFIX*`) of drover's variables workers inherit beyond the allow-list.
    pub inherit_env: Vec<String>,
    /// Variables the config file read through `${VAR}`: never inherited by workers.
    pub withheld_env: std::collections::BTreeSet<String>,
    /// IP address workers bind and drover connects to (`workers.host`, default 127.0.0.1).
    pub host: IpAddr,
    /// How drover speaks to workers (`http1` or `h2c`).
    pub protocol: super::tls::Protocol,
    /// First worker port: slot N listens on `base_port + N` (plus an offset for a successor during
    /// deploys); 0 = the OS picks a free port per worker (default).
    pub base_port: u16,
    /// Restart delays after crashes (`workers.restart_backoff`).
    pub backoff: BackoffPolicy,
    /// Time between SIGTERM and SIGKILL when stopping a worker (default 5s).
    pub stop_timeout: Duration,
    /// How long a draining worker (scale-down, drain, reload) may finish its in-flight requests
    /// (default 30s).
    pub drain_timeout: Duration,
    /// How long a deploy or rolling restart waits for new workers to pass health checks before it
    /// aborts (default 60s); a deploy request may give its own.
    pub health_timeout: Duration,
    /// Pool sizing from load (`workers.autoscale`; off by default).
    pub autoscale: super::autoscale::AutoscaleConfig,
    /// Weight of a worker that has no entry in `weights` (`balancing.worker_weight`, 1 to 10000,
    /// default 1).
    pub weight: u32,
    /// Per-worker weights by worker id (`workers.weights`, each 1 to 10000); see
    /// [`WorkersConfig::weight_of`].
    pub weights: Vec<u32>,
}

impl WorkersConfig {
    /// Balancing weight of worker `id`: its entry in `weights`, else `weight`.
    pub fn weight_of(&self, id: usize) -> u32 {
        self.weights.get(id).copied().unwrap_or(self.weight)
    }
}

/// Restart backoff of a crashing worker (`workers.restart_backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first restart after a crash; doubled on each quick crash (> 0, default
    /// 100ms).
    pub initial: Duration,
    /// Cap on the doubled delay (at least `initial`, default 15s).
    pub max: Duration,
    /// Uptime after which a worker counts as stable and its backoff starts over (default 30s).
    pub reset_after: Duration,
    /// Quick crashes in a row after which the worker is reported crash-looping (1 to 1000, default
    /// 5).
    pub crash_loop_restarts: u32,
}

/// What a discovered upstream entry asks DNS for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoverySource {
    /// A/AAAA records of `host`, each a backend on `port`.
    Dns {
        /// Name whose A/AAAA records are looked up.
        host: String,
        /// Port every address found is reached on.
        port: u16,
    },
    /// SRV records of `name`: targets, ports and weights.
    Srv {
        /// SRV name queried, e.g. `_http._tcp.app.service.consul`.
        name: String,
    },
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

/// An `upstreams` entry whose backends come from DNS (`discover: dns` or `srv:`), re-resolved as
/// the records' TTLs run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredUpstream {
    /// What DNS is asked; its [`DiscoverySource::label`] prefixes the names of the backends found.
    pub source: DiscoverySource,
    /// Weight of each backend found (SRV records carry their own).
    pub weight: u32,
    /// Protocol and TLS to each backend found.
    pub link: super::tls::Link,
}

/// The validated `discovery:` section: how DNS-discovered upstreams are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// Empty: the system's resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Re-resolve no sooner than this after an answer, whatever its TTL (at least 100ms, default
    /// 1s).
    pub min_interval: Duration,
    /// Re-resolve no later than this, even with a longer TTL (at least `min_interval`, default
    /// 30s).
    pub max_interval: Duration,
    /// Timeout of each DNS query (> 0, default 2s).
    pub timeout: Duration,
    /// A newly found backend's share of traffic ramps up over this long; 0 = full share at once
    /// (default 10s).
    pub slow_start: Duration,
}

/// A remote backend with a fixed address (`upstreams[i].address`), resolved when the config is
/// loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The `address` as written (`host:port`): the backend's name in status, metrics and logs.
    pub name: String,
    /// The first socket address `address` resolved to when the config was loaded.
    pub addr: SocketAddr,
    /// Balancing weight (`upstreams[i].weight`, 1 to 10000, default 1).
    pub weight: u32,
    /// Protocol and TLS to it.
    pub link: super::tls::Link,
}

/// The validated `balancing:` section: how requests are spread over workers and upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancingConfig {
    /// The configured strategy, or `auto` (`balancing.strategy`, default round_robin).
    pub strategy: StrategyChoice,
    /// Share of healthy backends (0.0 to 1.0) below which traffic spreads over all backends (panic
    /// mode); 0 disables it (default 0.5).
    pub panic_threshold: f64,
    /// What `consistent_hash` hashes (`balancing.hash_key`, default the client IP).
    pub hash_key: HashKey,
    /// A backend that just became healthy ramps from 10% to its full share over this window; 0 =
    /// off (default).
    pub slow_start: Duration,
    /// Most requests in flight per backend; 0 = no limit (default). With a limit, requests that
    /// find every backend full wait in the queue.
    pub max_inflight_per_backend: u32,
    /// Requests that may wait for a free backend (`balancing.queue.size`, default 1024); more get a
    /// 503. Only used with `max_inflight_per_backend`.
    pub queue_size: u32,
    /// Longest wait in that queue before a 503 with Retry-After (`balancing.queue.timeout`, default
    /// 5s).
    pub queue_timeout: Duration,
    /// Decay time of the latency strategy's peak-EWMA: how fast old latencies are forgotten (> 0,
    /// default 10s).
    pub latency_decay: Duration,
}

/// A fixed strategy, or `auto`: drover picks one from what it observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyChoice {
    /// One named strategy (`round_robin`, `least_connections`, ...).
    Fixed(StrategyKind),
    /// `auto`: drover picks and switches strategies from what it observes.
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
    /// The client's IP address (`client_ip`, the default).
    ClientIp,
    /// The request path, without the query (`path`).
    Path,
    /// The value of this request header (`header:NAME`); requests without it all hash alike.
    Header(http::HeaderName),
    /// The value of this cookie (`cookie:NAME`); requests without it all hash alike.
    Cookie(String),
}

/// Why `balancing.hash_key` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashKeyError {
    /// `header:NAME` whose NAME is not a valid header name (holds the NAME).
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    /// Not one of the accepted forms (holds the whole value).
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

/// The validated `health_check:` section: the active probe of every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Path probed on each backend (starts with `/`, default `/health`): a GET that passes on 200;
    /// h2c workers get a gRPC-style POST.
    pub path: String,
    /// Time between two probes of a backend (> 0, default 1s).
    pub interval: Duration,
    /// A probe not answered within this fails (> 0, default 500ms).
    pub timeout: Duration,
    /// Consecutive passes that put a new or unhealthy backend into rotation (1 to 100, default 1).
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy backend out of rotation (1 to 100, default 2).
    pub unhealthy_threshold: u32,
}

/// The validated `proxy:` section. Its `total_timeout`, `retry_backoff` and `retry_budget` are in
/// `Config::resilience`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Extra attempts on other backends for failures that may be retried (0 to 10, default 2).
    pub retries: u32,
    /// Per-attempt connect timeout to a backend (> 0, default 1s).
    pub connect_timeout: Duration,
    /// Longest wait for any single read from a backend (> 0, default 60s).
    pub read_timeout: Duration,
    /// Idle upstream connections kept for reuse (1 to 1000000, default 1024). Restart to change.
    pub keepalive_pool_size: usize,
    /// Idle upstream connections are closed after this long (default 60s).
    pub keepalive_timeout: Duration,
    /// Serve bodyless HTTP/1.1 requests with drover's own engine instead of Pingora's proxy path
    /// (default true); has effect only with `Config::plain_backends`.
    pub fast_path: bool,
    /// Which failed attempts besides connect failures are retried (`proxy.retry_on`).
    pub retry_on: RetryOn,
    /// Largest response head a backend may send, in bytes; more answers 502 (1024 to 1048576,
    /// default 65536).
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

/// The validated `circuit_breaker:` section: the breaker each worker gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Whether backends get breakers at all (default true).
    pub enabled: bool,
    /// Failures in a row that open a breaker; 0 turns this rule off (default 5).
    pub consecutive_failures: u32,
    /// How long a breaker first stays open before probes are let through (default 5s).
    pub open_for: Duration,
    /// Cap on the open time, which grows with each repeated trip (default 60s).
    pub max_open_for: Duration,
    /// Probe requests let through at once while half-open (default 1).
    pub half_open_probes: u32,
    /// Every rule of `circuit_breaker`, validated (what worker breakers are built from).
    pub policy: crate::resilience::breaker::BreakerPolicy,
}

/// The validated `logging:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// Log level (`logging.level`, default info); `RUST_LOG` overrides it.
    pub level: log::LevelFilter,
    /// Log one line per request on the `access` target (default true).
    pub access_log: bool,
    /// One JSON object per log line.
    pub json: bool,
    /// Where access lines go instead of the log (`observe::access_log::write`).
    pub access_log_file: Option<std::path::PathBuf>,
}
