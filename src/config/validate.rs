//! Validation: turns the file types into the runtime model, collecting every problem.
//!
//! Nothing downstream of this module re-checks a value: a `Config` that exists is valid.

use super::error::ConfigIssue;
use super::file::*;
use super::model::*;
use crate::config::strategy::StrategyKind;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Checker {
    issues: Vec<ConfigIssue>,
}

impl Checker {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            field: field.to_string(),
            line: None,
            message: message.into(),
        });
    }

    fn addr(&mut self, field: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    field,
                    format!("`{text}` is not an IP:port address (e.g. `127.0.0.1:8080`)"),
                );
                None
            }
        }
    }

    fn range_u32(&mut self, field: &str, v: u32, lo: u32, hi: u32) {
        if v < lo || v > hi {
            self.fail(
                field,
                format!("{v} is out of range; accepted: {lo} to {hi}"),
            );
        }
    }

    fn positive(&mut self, field: &str, d: Duration) {
        if d.is_zero() {
            self.fail(field, "must be greater than zero");
        }
    }
}

/// Validates `file` (read from `source`) into a runtime [`Config`].
pub fn validate(file: FileConfig, source: &Path) -> Result<Config, Vec<ConfigIssue>> {
    let mut c = Checker { issues: Vec::new() };

    let listen = c.addr("listen", &file.listen);
    let admin_listen = c.addr("admin.listen", &file.admin.listen);
    if let (Some(a), Some(b)) = (listen, admin_listen) {
        if a == b {
            c.fail("admin.listen", "must differ from `listen`");
        }
    }
    if file.threads == 0 || file.threads > MAX_THREADS {
        c.fail(
            "threads",
            format!(
                "{} is out of range; accepted: 1 to {MAX_THREADS}",
                file.threads
            ),
        );
    }

    let admin = admin(&mut c, &file, source, admin_listen);
    let workers = workers(&mut c, &file, source);
    let (upstreams, discovered, discovery) = upstreams(&mut c, &file, source);
    if file.workers.count == 0 && file.upstreams.is_empty() {
        c.fail(
            "workers.count",
            "is 0 and no `upstreams` are listed: drover would have nothing to proxy to",
        );
    }

    let balancing = balancing(&mut c, &file);
    let health = health(&mut c, &file);
    let proxy = proxy(&mut c, &file);
    let breaker = breaker(&mut c, &file);
    let resilience = crate::config::resilience::build(&file, &mut c.issues);

    let logging = logging(&mut c, &file);
    let observability = super::observability::validate(&file.observability, &mut c.issues);

    let runtime_dir = match &file.runtime_dir {
        Some(d) => relative_to(source, d),
        None => default_runtime_dir(listen.map(|a| a.port()).unwrap_or(0)),
    };

    let limits = match super::edge::validate_limits(&file.limits) {
        Ok(l) => Some(l),
        Err(mut issues) => {
            c.issues.append(&mut issues);
            None
        }
    };
    let forwarded = match super::edge::validate_forwarded(&file.forwarded) {
        Ok(f) => Some(f),
        Err(mut issues) => {
            c.issues.append(&mut issues);
            None
        }
    };
    let shared_limits = file.rate_limit.store == "redis"
        || file
            .routes
            .iter()
            .any(|r| r.rate_limit.as_ref().is_some_and(|l| l.store == "redis"));
    let sessions = match super::sessions::validate_sessions(
        &file.sessions,
        |p| relative_to(source, p),
        &runtime_dir,
        shared_limits,
    ) {
        Ok(s) => Some(s),
        Err(mut issues) => {
            c.issues.append(&mut issues);
            None
        }
    };

    let tls = super::tls::validate_tls(&file.tls, |p| relative_to(source, p), &mut c.issues);
    let http2 = super::tls::validate_http2(&file.http2, &mut c.issues);
    if let Some(l) = listen.filter(|l| tls.listen.contains(l)) {
        c.fail(
            "tls.listen",
            format!("`{l}` is also the cleartext `listen`; give HTTPS its own port"),
        );
    }
    let plain_backends = workers
        .as_ref()
        .is_some_and(|w| w.protocol == super::tls::Protocol::Http1)
        && upstreams.iter().all(|u| u.link.plain())
        && discovered.iter().all(|d| d.link.plain());

    if !c.issues.is_empty() {
        return Err(c.issues);
    }
    let (Some(listen), Some(admin), Some(workers), Some(sessions), Some(forwarded), Some(limits)) =
        (listen, admin, workers, sessions, forwarded, limits)
    else {
        return Err(c.issues);
    };
    Ok(Config {
        listen,
        threads: file.threads,
        runtime_dir,
        admin,
        workers,
        upstreams,
        discovered,
        discovery,
        balancing,
        health,
        proxy,
        forwarded,
        limits,
        shutdown_grace: file.shutdown.grace_period.0,
        breaker,
        sessions,
        logging,
        resilience: std::sync::Arc::new(resilience),
        observability,
        tls,
        http2,
        plain_backends,
        file,
    })
}

/// `admin`: the token (inline or from a file), the hosts, the limits. `None` when
/// `admin.listen` is not an address (already reported).
fn admin(
    c: &mut Checker,
    file: &FileConfig,
    source: &Path,
    admin_listen: Option<SocketAddr>,
) -> Option<AdminConfig> {
    let token = match (&file.admin.token, &file.admin.token_file) {
        (Some(_), Some(_)) => {
            c.fail(
                "admin.token_file",
                "set either `admin.token` or `admin.token_file`, not both",
            );
            None
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(path)) => match read_secret_file(&relative_to(source, path)) {
            Ok(text) => Some(text.lines().next().unwrap_or("").trim().to_string()),
            Err(e) => {
                c.fail("admin.token_file", e.to_string());
                None
            }
        },
        (None, None) => None,
    };
    if let Some(t) = &token {
        if t.len() < 16 {
            c.fail("admin.token", "must be at least 16 characters long");
        }
    }
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() && token.is_none() {
            c.fail(
                "admin.listen",
                format!("`{a}` is not a loopback address; a non-loopback admin plane requires `admin.token` or `admin.token_file`"),
            );
        }
    }

    let a = &file.admin;
    for (i, h) in a.allowed_hosts.iter().enumerate() {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            c.fail(
                &format!("admin.allowed_hosts[{i}]"),
                format!("`{h}` is not a host name (letters, digits, `-` and `.`, no port)"),
            );
        }
    }
    if a.max_connections == 0 || a.max_connections > 100_000 {
        c.fail(
            "admin.max_connections",
            "out of range; accepted: 1 to 100000",
        );
    }
    if a.max_stream_subscribers > 10_000 {
        c.fail(
            "admin.max_stream_subscribers",
            "out of range; accepted: 0 to 10000",
        );
    }
    c.positive("admin.header_timeout", a.header_timeout.0);
    c.positive("admin.idle_timeout", a.idle_timeout.0);
    c.positive("admin.request_timeout", a.request_timeout.0);

    let admin_listen = admin_listen?;
    Some(AdminConfig {
        listen: admin_listen,
        token,
        allowed_hosts: file
            .admin
            .allowed_hosts
            .iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        allow_deploy_command: file.admin.allow_deploy_command,
        max_connections: file.admin.max_connections,
        max_stream_subscribers: file.admin.max_stream_subscribers,
        header_timeout: file.admin.header_timeout.0,
        idle_timeout: file.admin.idle_timeout.0,
        request_timeout: file.admin.request_timeout.0,
    })
}

/// `workers`: the program, its environment and protocol, restart backoff, autoscale.
fn workers(c: &mut Checker, file: &FileConfig, source: &Path) -> Option<WorkersConfig> {
    let w = &file.workers;
    if w.count > MAX_WORKERS {
        c.fail(
            "workers.count",
            format!("{} is out of range; accepted: 0 to {MAX_WORKERS}", w.count),
        );
    }
    let (program, args) = match w.command.split_first() {
        Some((p, rest)) if !p.trim().is_empty() => (resolve_program(source, p), rest.to_vec()),
        _ => {
            c.fail(
                "workers.command",
                "must name a program, e.g. `[upstream-worker]`",
            );
            (PathBuf::new(), Vec::new())
        }
    };
    if w.count > 0 && !program.as_os_str().is_empty() && !program.exists() {
        c.fail(
            "workers.command",
            format!(
                "program `{}` not found (looked next to drover and on PATH)",
                program.display()
            ),
        );
    }
    for key in w.env.keys() {
        if key == "PORT" || key == "WORKER_ID" {
            c.fail(
                &format!("workers.env.{key}"),
                "is set by drover for each worker and cannot be overridden",
            );
        }
    }
    for (i, name) in w.inherit_env.iter().enumerate() {
        let bare = name.strip_suffix('*').unwrap_or(name);
        if bare.is_empty() || name.contains(['=', '\0']) || bare.contains('*') {
            c.fail(
                &format!("workers.inherit_env[{i}]"),
                format!("`{name}` is not a variable name or `PREFIX*` pattern"),
            );
        }
    }
    let worker_protocol = match w.protocol.parse::<super::tls::Protocol>() {
        Ok(super::tls::Protocol::H2) => {
            c.fail(
                "workers.protocol",
                "`h2` needs TLS, which drover does not speak to its own workers; use `h2c`",
            );
            super::tls::Protocol::Http1
        }
        Ok(p) => p,
        Err(e) => {
            c.fail("workers.protocol", e.to_string());
            super::tls::Protocol::Http1
        }
    };
    let host = match w.host.parse::<IpAddr>() {
        Ok(h) => h,
        Err(_) => {
            c.fail("workers.host", format!("`{}` is not an IP address", w.host));
            IpAddr::from([127, 0, 0, 1])
        }
    };
    if w.base_port != 0 && (w.base_port as usize + w.count * 2) > u16::MAX as usize {
        c.fail(
            "workers.base_port",
            "leaves no room for every worker's port (base_port + 2 × count must fit in 65535)",
        );
    }
    let b = &w.restart_backoff;
    c.positive("workers.restart_backoff.initial", b.initial.0);
    if b.max.0 < b.initial.0 {
        c.fail("workers.restart_backoff.max", "must be at least `initial`");
    }
    c.range_u32(
        "workers.restart_backoff.crash_loop_restarts",
        b.crash_loop_restarts,
        1,
        1000,
    );
    c.range_u32(
        "balancing.worker_weight",
        file.balancing.worker_weight,
        1,
        10_000,
    );

    for (i, w) in w.weights.iter().enumerate() {
        c.range_u32(&format!("workers.weights[{i}]"), *w, 1, 10_000);
    }
    let autoscale = match super::autoscale::validate_autoscale(&file.workers.autoscale, MAX_WORKERS)
    {
        Ok(a) => Some(a),
        Err(mut issues) => {
            c.issues.append(&mut issues);
            None
        }
    };
    Some(WorkersConfig {
        count: w.count,
        program,
        args,
        env: w.env.clone(),
        inherit_env: w.inherit_env.clone(),
        withheld_env: Default::default(),
        host,
        protocol: worker_protocol,
        base_port: w.base_port,
        backoff: BackoffPolicy {
            initial: b.initial.0,
            max: b.max.0,
            reset_after: b.reset_after.0,
            crash_loop_restarts: b.crash_loop_restarts,
        },
        stop_timeout: w.stop_timeout.0,
        drain_timeout: w.drain_timeout.0,
        health_timeout: w.health_timeout.0,
        autoscale: autoscale?,
        weight: file.balancing.worker_weight,
        weights: w.weights.clone(),
    })
}

/// `upstreams` and `discovery`: static hosts resolved now, DNS-discovered ones.
fn upstreams(
    c: &mut Checker,
    file: &FileConfig,
    source: &Path,
) -> (
    Vec<UpstreamConfig>,
    Vec<DiscoveredUpstream>,
    DiscoveryConfig,
) {
    let mut upstreams = Vec::new();
    let mut discovered = Vec::new();
    for (i, u) in file.upstreams.iter().enumerate() {
        let field = format!("upstreams[{i}]");
        c.range_u32(&format!("{field}.weight"), u.weight, 1, 10_000);
        let link = upstream_link(u, &field, source, &mut c.issues);
        match (&u.address, &u.srv, u.discover.as_deref()) {
            (Some(_), Some(_), _) | (None, None, _) => c.fail(
                &field,
                "give `address` (host:port) or `srv` (a DNS SRV name), not both",
            ),
            (None, Some(name), d) => {
                if d.is_some() {
                    c.fail(&format!("{field}.discover"), "an `srv` entry is always discovered; remove `discover`");
                }
                let ok = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if ok {
                    discovered.push(DiscoveredUpstream {
                        source: DiscoverySource::Srv { name: name.clone() },
                        weight: u.weight,
                        link,
                    });
                } else {
                    c.fail(&format!("{field}.srv"), format!("`{name}` is not a DNS name"));
                }
            }
            (Some(address), None, Some("dns")) => {
                match crate::config::redis::host_port(address, 0) {
                    Ok((host, port)) if port > 0 => discovered.push(DiscoveredUpstream {
                        source: DiscoverySource::Dns { host, port },
                        weight: u.weight,
                        link,
                    }),
                    _ => c.fail(
                        &format!("{field}.address"),
                        format!("`{address}` is not `host:port`"),
                    ),
                }
            }
            (Some(_), None, Some(other)) => c.fail(
                &format!("{field}.discover"),
                format!("`{other}` is not accepted; accepted: dns"),
            ),
            (Some(address), None, None) => match address.to_socket_addrs().map(|mut it| it.next()) {
                Ok(Some(addr)) => upstreams.push(UpstreamConfig {
                    name: address.clone(),
                    addr,
                    weight: u.weight,
                    link,
                }),
                _ => c.fail(
                    &format!("{field}.address"),
                    format!("`{address}` does not resolve; write `host:port` (or add `discover: dns` to resolve it again and again)"),
                ),
            },
        }
    }
    let d = &file.discovery;
    let mut nameservers = Vec::new();
    for (i, n) in d.nameservers.iter().enumerate() {
        let parsed = n.parse::<SocketAddr>().or_else(|_| {
            n.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => nameservers.push(a),
            Err(_) => c.fail(
                &format!("discovery.nameservers[{i}]"),
                format!("`{n}` is not an IP address (with an optional :port)"),
            ),
        }
    }
    if d.min_interval.0 < Duration::from_millis(100) || d.max_interval.0 < d.min_interval.0 {
        c.fail(
            "discovery.min_interval",
            "must be at least 100ms and at most `discovery.max_interval`",
        );
    }
    if d.timeout.0.is_zero() {
        c.fail("discovery.timeout", "must be greater than zero");
    }
    let discovery = DiscoveryConfig {
        nameservers,
        min_interval: d.min_interval.0,
        max_interval: d.max_interval.0,
        timeout: d.timeout.0,
        slow_start: d.slow_start.0,
    };
    (upstreams, discovered, discovery)
}

/// `balancing`: the strategy (or `auto`), panic threshold, hash key, queue.
fn balancing(c: &mut Checker, file: &FileConfig) -> BalancingConfig {
    let strategy = if file.balancing.strategy == "auto" {
        StrategyChoice::Auto
    } else {
        match file.balancing.strategy.parse::<StrategyKind>() {
            Ok(s) => StrategyChoice::Fixed(s),
            Err(e) => {
                c.fail("balancing.strategy", format!("{e}, auto"));
                StrategyChoice::Fixed(StrategyKind::RoundRobin)
            }
        }
    };
    if file.balancing.max_inflight_per_backend > 0 {
        c.range_u32(
            "balancing.queue.size",
            file.balancing.queue.size,
            0,
            1_000_000,
        );
    }

    let panic_threshold = file.balancing.panic_threshold;
    if !(0.0..=1.0).contains(&panic_threshold) {
        c.fail(
            "balancing.panic_threshold",
            format!("{panic_threshold} is out of range; accepted: 0.0 to 1.0"),
        );
    }
    let hash_key = match file.balancing.hash_key.parse::<HashKey>() {
        Ok(k) => k,
        Err(e) => {
            c.fail("balancing.hash_key", e.to_string());
            HashKey::ClientIp
        }
    };

    c.positive("balancing.latency_decay", file.balancing.latency_decay.0);
    BalancingConfig {
        strategy,
        panic_threshold,
        hash_key,
        slow_start: file.balancing.slow_start.0,
        max_inflight_per_backend: file.balancing.max_inflight_per_backend,
        queue_size: file.balancing.queue.size,
        queue_timeout: file.balancing.queue.timeout.0,
        latency_decay: file.balancing.latency_decay.0,
    }
}

/// `health_check`: the active probe.
fn health(c: &mut Checker, file: &FileConfig) -> HealthConfig {
    let h = &file.health_check;
    if !h.path.starts_with('/') {
        c.fail(
            "health_check.path",
            format!("`{}` must start with `/`", h.path),
        );
    }
    c.positive("health_check.interval", h.interval.0);
    c.positive("health_check.timeout", h.timeout.0);
    c.range_u32(
        "health_check.healthy_threshold",
        h.healthy_threshold,
        1,
        100,
    );
    c.range_u32(
        "health_check.unhealthy_threshold",
        h.unhealthy_threshold,
        1,
        100,
    );

    HealthConfig {
        path: h.path.clone(),
        interval: h.interval.0,
        timeout: h.timeout.0,
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
    }
}

/// `proxy`: retries and what may be retried, timeouts, the upstream connection pool.
fn proxy(c: &mut Checker, file: &FileConfig) -> ProxyConfig {
    let p = &file.proxy;
    c.range_u32("proxy.retries", p.retries, 0, 10);
    let mut retry_on = RetryOn::default();
    for r in &p.retry_on {
        match r.as_str() {
            "connect_failure" => {}
            "reset" => retry_on.reset = true,
            "timeout" => retry_on.timeout = true,
            other => c.fail(
                "proxy.retry_on",
                format!(
                    "`{other}` is not a retry condition; accepted: connect_failure, reset, timeout"
                ),
            ),
        }
    }
    if !(1024..=1_048_576).contains(&p.max_response_header_bytes) {
        c.fail(
            "proxy.max_response_header_bytes",
            "out of range; accepted: 1024 to 1048576",
        );
    }
    c.positive("proxy.connect_timeout", p.connect_timeout.0);
    c.positive("proxy.read_timeout", p.read_timeout.0);
    if p.keepalive_pool_size == 0 || p.keepalive_pool_size > 1_000_000 {
        c.fail(
            "proxy.keepalive_pool_size",
            "out of range; accepted: 1 to 1000000",
        );
    }

    ProxyConfig {
        retries: p.retries,
        connect_timeout: p.connect_timeout.0,
        read_timeout: p.read_timeout.0,
        keepalive_pool_size: p.keepalive_pool_size,
        keepalive_timeout: p.keepalive_timeout.0,
        fast_path: p.fast_path,
        retry_on,
        max_response_header_bytes: p.max_response_header_bytes,
    }
}

/// `circuit_breaker`: the per-worker breaker policy.
fn breaker(c: &mut Checker, file: &FileConfig) -> BreakerConfig {
    let cb = &file.circuit_breaker;
    let breaker_policy =
        crate::config::resilience::breaker_policy(cb, "circuit_breaker", &mut c.issues);
    BreakerConfig {
        enabled: cb.enabled,
        consecutive_failures: cb.consecutive_failures,
        open_for: cb.open_for.0,
        max_open_for: cb.max_open_for.0,
        half_open_probes: cb.half_open_probes,
        policy: breaker_policy,
    }
}

/// `logging`: level, format, the access log and its file.
fn logging(c: &mut Checker, file: &FileConfig) -> LoggingConfig {
    let level = match file.logging.level.to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => {
            c.fail(
                "logging.level",
                format!("`{other}` is not a level; accepted: off, error, warn, info, debug, trace"),
            );
            log::LevelFilter::Info
        }
    };

    let json_logs = match file.logging.format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            c.fail(
                "logging.format",
                format!("`{other}` is not a format; accepted: text, json"),
            );
            false
        }
    };
    if file
        .logging
        .access_log_file
        .as_ref()
        .is_some_and(|p| !p.is_absolute())
    {
        c.fail(
            "logging.access_log_file",
            "must be an absolute path (e.g. /var/log/drover/access.log)",
        );
    }

    LoggingConfig {
        level,
        access_log: file.logging.access_log,
        json: json_logs,
        access_log_file: file.logging.access_log_file.clone(),
    }
}

/// `upstreams[i]`'s protocol and TLS settings.
fn upstream_link(
    u: &UpstreamFile,
    field: &str,
    source: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> super::tls::Link {
    use super::tls::Protocol;
    let fail = |issues: &mut Vec<ConfigIssue>, f: &str, m: String| {
        issues.push(ConfigIssue {
            field: format!("{field}.{f}"),
            line: None,
            message: m,
        })
    };
    let protocol = match u.protocol.parse::<Protocol>() {
        Ok(p) => p,
        Err(e) => {
            fail(issues, "protocol", e.to_string());
            Protocol::Http1
        }
    };
    match (protocol, u.tls) {
        (Protocol::H2, false) => fail(
            issues,
            "protocol",
            "`h2` is HTTP/2 over TLS: set `tls: true`, or use `h2c` for cleartext".into(),
        ),
        (Protocol::H2c, true) => fail(
            issues,
            "protocol",
            "`h2c` is cleartext HTTP/2; with `tls: true` use `h2`".into(),
        ),
        _ => {}
    }
    if !u.tls {
        for (set, key) in [
            (u.sni.is_some(), "sni"),
            (u.ca_file.is_some(), "ca_file"),
            (!u.verify, "verify"),
        ] {
            if set {
                fail(issues, key, "applies only with `tls: true`".into());
            }
        }
        return super::tls::Link {
            protocol,
            tls: None,
        };
    }
    // The default name is the host of `address`; an `srv` entry's targets are many
    // names, so the one their certificates carry must be given.
    let host = u.address.as_deref().map(|a| {
        a.rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(a)
            .to_string()
    });
    let sni = match (u.sni.clone(), host) {
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => {
            fail(
                issues,
                "sni",
                "an `srv` entry with `tls: true` needs `sni`: the name its backends' certificates carry".into(),
            );
            String::new()
        }
    };
    let ca_file = u.ca_file.as_deref().map(|p| relative_to(source, p));
    let ca = ca_file
        .as_deref()
        .and_then(|p| super::tls::load_upstream_ca(p, &format!("{field}.ca_file"), issues));
    super::tls::Link {
        protocol,
        tls: Some(super::tls::UpstreamTls {
            sni,
            verify: u.verify,
            ca_file,
            ca,
        }),
    }
}

/// Largest secret file read (`token_file`, `secret_file`, `key_file`).
pub const SECRET_FILE_CAP: u64 = 64 * 1024;

/// Reads a secret file the config names. Like OpenSSH with its keys, drover refuses one
/// that group or other users can read or that another user owns, saying how to fix it;
/// links are followed (secret mounts are often links) and the target is checked.
pub fn read_secret_file(path: &Path) -> Result<String, crate::private_fs::PrivateFsError> {
    crate::private_fs::read_private_text(path, SECRET_FILE_CAP, crate::private_fs::Links::Follow)
}

/// `runtime_dir` when the file sets none: `$DROVER_RUNTIME_DIR` (the systemd unit points
/// it at its state directory), else `$XDG_RUNTIME_DIR/drover-<port>` (the per-user 0700
/// folder of the login session), else `$TMPDIR/drover-<uid>-<port>`. drover creates the
/// folder with mode 0700 and refuses one that another user owns or can open
/// (`private_fs::prepare_dir`).
pub fn default_runtime_dir(port: u16) -> PathBuf {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(dir) = absolute("DROVER_RUNTIME_DIR") {
        return dir;
    }
    if let Some(dir) = absolute("XDG_RUNTIME_DIR") {
        return dir.join(format!("drover-{port}"));
    }
    std::env::temp_dir().join(format!("drover-{}-{port}", crate::private_fs::euid()))
}

/// Paths in the file are relative to the file's own directory, like nginx's includes.
fn relative_to(source: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    source.parent().unwrap_or(Path::new(".")).join(p)
}

/// A bare program name is looked up next to the drover executable first (so a release
/// build finds its sibling `upstream-worker`), then on PATH. Anything with a slash is
/// taken relative to the config file.
pub fn resolve_program(source: &Path, program: &str) -> PathBuf {
    if program.contains('/') {
        return relative_to(source, program);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let sibling = dir.join(program);
            if sibling.exists() {
                return sibling;
            }
            // Integration tests run from target/<profile>/deps.
            if let Some(up) = dir.parent() {
                let sibling = up.join(program);
                if dir.ends_with("deps") && sibling.exists() {
                    return sibling;
                }
            }
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(program);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from(program)
}
