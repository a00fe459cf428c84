//! The YAML file format: what an operator writes.
//!
//! Every struct denies unknown keys so a typo (`healthcheck:`) is an error at load time
//! rather than a silently ignored setting in production. Every field has a default so the
//! smallest valid file is `{}`; `conf/drover.yaml` spells each default out with a comment.
//! These types are converted into the validated runtime model in `validate.rs`.

use super::duration::Dur;
pub use super::sessions::SessionsFile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `listen` when the file sets none: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `admin.listen` when the file sets none: loopback only, so no token is required.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `workers.count` when the file sets none.
pub const DEFAULT_WORKER_COUNT: usize = 2;
/// `workers.command` when the file sets none: the workspace's sample worker, found next to the
/// drover binary.
pub const DEFAULT_WORKER_COMMAND: &str = "upstream-worker";

/// The whole file as written; an empty file or `{}` means every default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Address the data plane listens on.
    pub listen: String,
    /// Data-plane threads (Pingora service threads).
    pub threads: usize,
    /// Where Pingora keeps its pid file and upgrade socket; per instance so two drovers
    /// on one host (or parallel tests) do not collide on Pingora's shared /tmp defaults.
    pub runtime_dir: Option<String>,
    /// `admin:`: the admin plane's address, token and limits.
    pub admin: AdminFile,
    /// `workers:`: the processes drover forks and supervises.
    pub workers: WorkersFile,
    /// `upstreams:`: remote backends balanced together with the workers (default none).
    pub upstreams: Vec<UpstreamFile>,
    /// `discovery:`: how `discover: dns` and `srv:` upstreams are resolved.
    pub discovery: DiscoveryFile,
    /// `balancing:`: strategy, weights, panic threshold, hash key, queue.
    pub balancing: BalancingFile,
    /// `health_check:`: the active probe of every backend.
    pub health_check: HealthCheckFile,
    /// `proxy:`: retries, upstream timeouts, connection pool, fast path.
    pub proxy: ProxyFile,
    /// `forwarded:`: X-Forwarded-* headers and the proxies trusted to set them.
    pub forwarded: super::edge::ForwardedFile,
    /// `limits:`: request size limits, client timeouts, requests in flight.
    pub limits: super::edge::LimitsFile,
    /// `shutdown:`: the SIGTERM grace period.
    pub shutdown: ShutdownFile,
    /// `sessions:`: sticky sessions, their cookie, store and keys (`config/sessions.rs`).
    pub sessions: SessionsFile,
    /// `circuit_breaker:`: the per-worker breaker.
    pub circuit_breaker: CircuitBreakerFile,
    /// `logging:`: level, format, access log.
    pub logging: LoggingFile,
    /// `routes:`: per host and path prefix breakers, fallbacks, timeouts, bulkheads and rate limits
    /// (default none).
    pub routes: Vec<super::RouteFile>,
    /// `rate_limit:`: the per-client token bucket (off by default: 0 requests per second).
    pub rate_limit: super::RateLimitFile,
    /// `chaos:`: whether the admin API's fault injection is enabled (default off).
    pub chaos: super::ChaosFile,
    /// Alert rules, webhook and SLOs (`config/observability.rs`).
    pub observability: super::observability::ObservabilityFile,
    /// HTTPS listeners, certificates, redirect and HSTS (`config/tls.rs`).
    pub tls: super::tls::TlsFile,
    /// HTTP/2 to clients: h2c, stream and header limits (`config/tls.rs`).
    pub http2: super::tls::Http2File,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            listen: DEFAULT_LISTEN.into(),
            threads: 1,
            runtime_dir: None,
            admin: AdminFile::default(),
            workers: WorkersFile::default(),
            upstreams: Vec::new(),
            discovery: DiscoveryFile::default(),
            balancing: BalancingFile::default(),
            health_check: HealthCheckFile::default(),
            proxy: ProxyFile::default(),
            forwarded: Default::default(),
            limits: Default::default(),
            shutdown: ShutdownFile::default(),
            sessions: SessionsFile::default(),
            circuit_breaker: CircuitBreakerFile::default(),
            logging: LoggingFile::default(),
            routes: Vec::new(),
            rate_limit: super::RateLimitFile::default(),
            chaos: super::ChaosFile::default(),
            observability: Default::default(),
            tls: Default::default(),
            http2: Default::default(),
        }
    }
}

/// `admin:`: the admin plane (/metrics, /api/*, /healthz, /readyz, the dashboard).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    /// Admin plane address (default [`DEFAULT_ADMIN_LISTEN`]); must be loopback unless a token is
    /// set. Restart to change.
    pub listen: String,
    /// Bearer token required by every state-changing endpoint, and by every read but
    /// /healthz, /readyz, /metrics and /dashboard. None: drover generates one into
    /// `runtime_dir/admin-token` and requires it for state-changing endpoints only.
    pub token: Option<String>,
    /// File holding the token (first line), so the secret need not sit in the YAML.
    pub token_file: Option<String>,
    /// Host names (besides `localhost` and IP addresses of the listener) the admin plane
    /// answers to; any other `Host` is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Whether `POST /api/deploy` may run a command other than `workers.command`.
    pub allow_deploy_command: bool,
    /// Admin connections open at once (WebSocket subscribers not included); more are
    /// closed at once with a 503.
    pub max_connections: usize,
    /// `/api/stream` WebSocket subscribers at once; more get a 503.
    pub max_stream_subscribers: usize,
    /// Time a client has to send a request head, counted from the connection's start or
    /// the end of the previous response (so also how long an idle connection is kept).
    pub header_timeout: Dur,
    /// A connection on which no byte moves either way for this long is closed (stalled
    /// bodies, clients that stop reading, stuck WebSocket subscribers).
    pub idle_timeout: Dur,
    /// Longest time from a request head to the response head (body read included).
    pub request_timeout: Dur,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            listen: DEFAULT_ADMIN_LISTEN.into(),
            token: None,
            token_file: None,
            allowed_hosts: Vec::new(),
            allow_deploy_command: false,
            max_connections: 256,
            max_stream_subscribers: 32,
            header_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            request_timeout: Dur::secs(30),
        }
    }
}

/// `workers:`: the worker processes drover forks, supervises and balances over.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersFile {
    /// Number of worker processes to fork; 0 runs drover in front of `upstreams` only.
    pub count: usize,
    /// Program and arguments. A bare program name is looked up next to the drover binary
    /// first, then on PATH.
    pub command: Vec<String>,
    /// Extra environment for every worker (WORKER_ID and PORT are always set).
    pub env: BTreeMap<String, String>,
    /// Variables of drover's own environment workers inherit besides the allow-list
    /// (PATH, HOME, USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ, TMPDIR); `NAME` or `PREFIX*`.
    /// Variables the file reads through `${VAR}` are never inherited.
    pub inherit_env: Vec<String>,
    /// Per-worker weights by worker id (missing entries use `balancing.worker_weight`).
    pub weights: Vec<u32>,
    /// Address workers bind; drover connects to it.
    pub host: String,
    /// How drover speaks to workers: `http1`, or `h2c` (HTTP/2 in cleartext with prior
    /// knowledge, e.g. gRPC servers; served through Pingora's carrier).
    pub protocol: String,
    /// First port; worker slot N gets `base_port + N`. 0 lets the OS pick free ports.
    pub base_port: u16,
    /// Delays between restarts of a crashing worker.
    pub restart_backoff: BackoffFile,
    /// Time between SIGTERM and SIGKILL when stopping a worker.
    pub stop_timeout: Dur,
    /// Time a draining worker (scale-down, reload) may take to finish in-flight requests.
    pub drain_timeout: Dur,
    /// How long a deploy or rolling restart waits for new workers to pass health checks
    /// before it aborts (no traffic moved).
    pub health_timeout: Dur,
    /// Sizing the pool from load (off by default; `count` is then fixed).
    pub autoscale: super::autoscale::AutoscaleFile,
}

impl Default for WorkersFile {
    fn default() -> Self {
        WorkersFile {
            count: DEFAULT_WORKER_COUNT,
            command: vec![DEFAULT_WORKER_COMMAND.into()],
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
            weights: Vec::new(),
            host: "127.0.0.1".into(),
            protocol: "http1".into(),
            base_port: 0,
            restart_backoff: BackoffFile::default(),
            stop_timeout: Dur::secs(5),
            drain_timeout: Dur::secs(30),
            health_timeout: Dur::secs(60),
            autoscale: Default::default(),
        }
    }
}

/// `workers.restart_backoff`: delays between restarts of a crashing worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffFile {
    /// First restart delay after a crash, doubled on each quick crash (> 0, default 100ms).
    pub initial: Dur,
    /// Cap on the doubled delay (at least `initial`, default 15s).
    pub max: Dur,
    /// Uptime after which a worker counts as stable and its backoff resets.
    pub reset_after: Dur,
    /// Restarts within `reset_after` windows after which the worker is reported crash-looping.
    pub crash_loop_restarts: u32,
}

impl Default for BackoffFile {
    fn default() -> Self {
        BackoffFile {
            initial: Dur::ms(100),
            max: Dur::secs(15),
            reset_after: Dur::secs(30),
            crash_loop_restarts: 5,
        }
    }
}

/// One `upstreams:` entry: a remote backend at `address`, or backends found in DNS (`discover:
/// dns`, `srv:`). Exactly one of `address` and `srv` is given.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port` of a remote backend (resolved once at load, unless `discover: dns`).
    #[serde(default)]
    pub address: Option<String>,
    /// `dns`: every A/AAAA record of `address`'s host is a backend on its port,
    /// re-resolved as the records' TTLs run out (`discovery:`).
    #[serde(default)]
    pub discover: Option<String>,
    /// A DNS SRV name (`_http._tcp.app.service.consul`): every target of its lowest
    /// priority is a backend, with the record's port and weight.
    #[serde(default)]
    pub srv: Option<String>,
    /// Balancing weight of the backend, or of each one `discover: dns` finds (1 to 10000, default
    /// 1); `srv` backends take their records' weights.
    #[serde(default = "one")]
    pub weight: u32,
    /// `http1` (default), `h2c` (HTTP/2 in cleartext, e.g. gRPC) or `h2` (HTTP/2 over
    /// TLS; needs `tls: true`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Reach it over TLS, verifying its certificate against `sni`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// Name sent as SNI and verified in its certificate; default: the host of `address`
    /// (an `srv` entry must give it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file of the CA(s) that sign its certificate; default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Verify its certificate and name (default true). false accepts any certificate:
    /// for tests only.
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub verify: bool,
}

/// How discovered upstreams (`discover: dns`, `srv:`) are resolved.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryFile {
    /// DNS servers, `ip[:port]`; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<String>,
    /// Re-resolve no sooner than this after an answer, whatever its TTL...
    pub min_interval: Dur,
    /// ...and no later than this, even with a longer TTL.
    pub max_interval: Dur,
    /// Per query.
    pub timeout: Dur,
    /// A newly discovered backend's share of traffic ramps up over this long (0: at
    /// once); `balancing.slow_start` applies when it is longer.
    pub slow_start: Dur,
}

impl Default for DiscoveryFile {
    fn default() -> Self {
        DiscoveryFile {
            nameservers: Vec::new(),
            min_interval: Dur::secs(1),
            max_interval: Dur::secs(30),
            timeout: Dur::secs(2),
            slow_start: Dur::secs(10),
        }
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// `balancing:`: how requests are spread over workers and upstreams.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancingFile {
    /// round_robin (default), random, least_connections, weighted_round_robin, latency,
    /// consistent_hash, predictive, or `auto`.
    pub strategy: String,
    /// Weight of each forked worker (remote upstreams carry their own).
    pub worker_weight: u32,
    /// Below this share of healthy backends, spread traffic over all of them instead of
    /// overloading the few (Envoy's panic threshold). 0 disables panic mode.
    pub panic_threshold: f64,
    /// What `consistent_hash` hashes: `client_ip`, `path`, `header:NAME` or `cookie:NAME`.
    pub hash_key: String,
    /// A backend that just became healthy ramps from 10% to its full share over this
    /// window instead of taking a full share cold. 0s disables it.
    pub slow_start: Dur,
    /// Most requests in flight per backend; 0 = no limit. With a limit, requests that
    /// find every backend full wait in the queue below.
    pub max_inflight_per_backend: u32,
    /// Where requests wait when every backend is at `max_inflight_per_backend`.
    pub queue: QueueFile,
    /// Decay time of the latency strategy's peak-EWMA: how fast old latencies are forgotten
    /// (an idle slow backend looks fast again after a few decay times and gets probed).
    pub latency_decay: Dur,
}

/// `balancing.queue`: the wait for a free backend; used only with `max_inflight_per_backend`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueFile {
    /// Requests that may wait for a free backend; beyond it drover answers 503.
    pub size: u32,
    /// Longest wait in the queue before a 503 with Retry-After.
    pub timeout: Dur,
}

impl Default for QueueFile {
    fn default() -> Self {
        QueueFile {
            size: 1024,
            timeout: Dur::secs(5),
        }
    }
}

impl Default for BalancingFile {
    fn default() -> Self {
        BalancingFile {
            strategy: "round_robin".into(),
            worker_weight: 1,
            panic_threshold: 0.5,
            hash_key: "client_ip".into(),
            slow_start: Dur::secs(0),
            max_inflight_per_backend: 0,
            queue: QueueFile::default(),
            latency_decay: Dur::secs(10),
        }
    }
}

/// `health_check:`: the active probe every backend gets.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckFile {
    /// Path probed (starts with `/`, default `/health`): a GET that passes on 200; h2c workers get
    /// a gRPC-style POST.
    pub path: String,
    /// Time between two probes of a backend (> 0, default 1s).
    pub interval: Dur,
    /// A probe not answered within this fails (> 0, default 500ms).
    pub timeout: Dur,
    /// Consecutive passes that make an unhealthy (or new) backend healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        HealthCheckFile {
            path: "/health".into(),
            interval: Dur::secs(1),
            timeout: Dur::ms(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// `proxy:`: how drover talks to backends and when it retries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyFile {
    /// Extra attempts on other backends for requests that are safe to retry.
    pub retries: u32,
    /// Per-attempt connect timeout to a backend (> 0, default 1s); capped by `total_timeout`.
    pub connect_timeout: Dur,
    /// Longest wait for any single read from the upstream.
    pub read_timeout: Dur,
    /// Idle upstream connections kept for reuse; keep it above peak concurrency.
    pub keepalive_pool_size: usize,
    /// Idle upstream connections are closed after this long.
    pub keepalive_timeout: Dur,
    /// Upper bound on a request's time to its response headers, retries and backoff
    /// included; 0s = none.
    pub total_timeout: Dur,
    /// Random wait before each retry (full jitter up to an exponential cap).
    pub retry_backoff: super::RetryBackoffFile,
    /// Cap on retries as a share of recent requests, so retries cannot multiply an overload.
    pub retry_budget: super::RetryBudgetFile,
    /// Serve bodyless HTTP/1.1 requests with drover's own engine instead of Pingora's
    /// generic proxy path (same steps, a fraction of the CPU; docs/PERFORMANCE.md).
    pub fast_path: bool,
    /// When a failed attempt is tried again on another backend: `connect_failure` (the
    /// request never reached a worker; always on), `reset` (the connection broke after
    /// the whole request was sent, idempotent methods only), `timeout` (no response in
    /// time, idempotent methods only).
    pub retry_on: Vec<String>,
    /// Largest response head a worker may send; more answers 502.
    pub max_response_header_bytes: usize,
}

impl Default for ProxyFile {
    fn default() -> Self {
        ProxyFile {
            retries: 2,
            connect_timeout: Dur::secs(1),
            read_timeout: Dur::secs(60),
            keepalive_pool_size: 1024,
            keepalive_timeout: Dur::secs(60),
            total_timeout: Dur::secs(0),
            retry_backoff: super::RetryBackoffFile::default(),
            retry_budget: super::RetryBudgetFile::default(),
            fast_path: true,
            retry_on: vec!["connect_failure".to_string()],
            max_response_header_bytes: 64 * 1024,
        }
    }
}

/// `shutdown:`: graceful stop on SIGTERM.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownFile {
    /// Upper bound on how long SIGTERM waits for in-flight requests.
    pub grace_period: Dur,
}

impl Default for ShutdownFile {
    fn default() -> Self {
        ShutdownFile {
            grace_period: Dur::secs(10),
        }
    }
}

/// `circuit_breaker:`: the breaker each worker gets; a route's `circuit_breaker` takes the same
/// keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerFile {
    /// Whether backends get breakers at all (default true).
    pub enabled: bool,
    /// Consecutive failures (connect errors, timeouts, 5xx) that open a worker's breaker.
    pub consecutive_failures: u32,
    /// How long an open breaker stays open before a probe is let through.
    pub open_for: Dur,
    /// Cap on the open time, which grows with each repeated trip.
    pub max_open_for: Dur,
    /// Probe requests allowed at once while half-open.
    pub half_open_probes: u32,
    /// Open when failures / requests over `window` reach this (0 = rule off)...
    pub failure_ratio: f64,
    /// ...or when calls slower than `slow_call_duration` reach this share (0 = off)...
    pub slow_call_ratio: f64,
    /// A call slower than this counts as slow for `slow_call_ratio` (default 1s).
    pub slow_call_duration: Dur,
    /// ...once the window holds at least this many requests.
    pub min_requests: u32,
    /// Window over which the ratio rules count requests; also the adaptive rule's learning period
    /// (default 10s).
    pub window: Dur,
    /// Outcomes that count as failures: connect_error, timeout, reset, 4xx, 5xx, or a
    /// status such as 429.
    pub failure_on: Vec<String>,
    /// Never eject more than this share of the workers by breaker; beyond it, balance
    /// over all of them rather than concentrate the load on the rest.
    pub max_ejected_share: f64,
    /// Trip on a failure ratio or latency well above the backend's own learned
    /// baseline (`resilience/adaptive.rs`).
    pub adaptive: AdaptiveBreakerFile,
}

/// `circuit_breaker.adaptive`: trip on a departure from the backend's own learned baseline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveBreakerFile {
    /// Turns the adaptive rule on (default off); the other rules apply either way.
    pub enabled: bool,
    /// Standard deviations above the baseline that trip.
    pub sigmas: f64,
    /// The failure ratio must also be this much (absolute) above the baseline.
    pub min_increase: f64,
    /// Mean latency must also be this many times the baseline; 0 = latency rule off.
    pub latency_factor: f64,
    /// Windows learned before the rule may trip.
    pub warmup_windows: u32,
}

impl Default for AdaptiveBreakerFile {
    fn default() -> Self {
        let d = crate::resilience::adaptive::AdaptivePolicy::default();
        AdaptiveBreakerFile {
            enabled: d.enabled,
            sigmas: d.sigmas,
            min_increase: d.min_increase,
            latency_factor: d.latency_factor,
            warmup_windows: d.warmup_windows,
        }
    }
}

impl Default for CircuitBreakerFile {
    fn default() -> Self {
        CircuitBreakerFile {
            enabled: true,
            consecutive_failures: 5,
            open_for: Dur::secs(5),
            max_open_for: Dur::secs(60),
            half_open_probes: 1,
            failure_ratio: 0.5,
            slow_call_ratio: 0.0,
            slow_call_duration: Dur::secs(1),
            min_requests: 20,
            window: Dur::secs(10),
            failure_on: crate::resilience::classify::DEFAULT_FAILURE_ON
                .map(String::from)
                .to_vec(),
            max_ejected_share: 0.5,
            adaptive: AdaptiveBreakerFile::default(),
        }
    }
}

/// `logging:`: log level and format, and the access log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingFile {
    /// error, warn, info, debug or trace; `RUST_LOG` overrides it.
    pub level: String,
    /// One JSON line per request on the `access` log target.
    pub access_log: bool,
    /// `text` (human-readable lines) or `json` (one JSON object per line, every log
    /// target: drover's, Pingora's, the workers' forwarded output, alerts, events).
    pub format: String,
    /// Access lines go to this file instead of the log (appended; reopened on SIGUSR1
    /// for logrotate). null = the log.
    pub access_log_file: Option<std::path::PathBuf>,
}

impl Default for LoggingFile {
    fn default() -> Self {
        LoggingFile {
            level: "info".into(),
            access_log: true,
            format: "text".into(),
            access_log_file: None,
        }
    }
}
