//! Upstreams discovered through DNS: `upstreams` entries with `discover: dns` (every
//! A/AAAA record of the host is a backend on the entry's port) or `srv:` (every target of
//! the SRV name's lowest priority, with the record's port and weight). This is how drover
//! fronts worker pools on other hosts: Kubernetes headless services, Consul DNS.
//!
//! One task per entry on the control thread's runtime resolves the name with
//! hickory-resolver (asynchronous: the control thread never blocks on DNS), applies the
//! answer to the pool and sleeps until the records' TTL runs out, bounded by
//! `discovery.min_interval` and `max_interval`. Applying an answer:
//!
//! - a new address becomes a backend named `{entry}@{ip}:{port}` that takes traffic only
//!   once its health check passes, and then ramps up over `discovery.slow_start`;
//! - a vanished address drains (no new requests, in-flight ones finish, up to
//!   `workers.drain_timeout`) and leaves the pool;
//! - a failed lookup (timeout, SERVFAIL, unreachable server) changes nothing: the last
//!   answer stays in force and the lookup is retried after `min_interval`. Only an answer
//!   that says the name has no records (NXDOMAIN/NODATA) empties the entry.
//!
//! A reload that adds or removes an entry starts or stops its task (removal drains its
//! backends); nothing else needs a reload.

use crate::balancing::{Backend, BackendState};
use crate::config::{Config, DiscoveryConfig, DiscoverySource, Link};
use crate::health;
use crate::state::Shared;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Highest weight a backend may have (as for `upstreams[].weight`).
const MAX_WEIGHT: u32 = 10_000;

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The resolver could not be built (system resolv.conf or the `nameservers` given);
    /// holds the resolver's message.
    #[error("resolver setup: {0}")]
    Setup(String),
    /// A lookup failed other than by "no records" (timeout, SERVFAIL, unreachable server);
    /// the last answer stays in force.
    #[error("lookup of `{name}`: {message}")]
    Lookup {
        /// The host (`discover: dns`) or SRV name that was looked up.
        name: String,
        /// The resolver's error text.
        message: String,
    },
}

/// The running tasks, one per entry.
#[derive(Default)]
pub struct Discovery {
    tasks: Mutex<HashMap<DiscoverySource, Task>>,
    metrics: std::sync::OnceLock<Metrics>,
}

struct Task {
    weight: u32,
    link: Link,
    handle: tokio::task::JoinHandle<()>,
}

struct Metrics {
    backends: prometheus::IntGaugeVec,
    errors: prometheus::IntCounterVec,
}

impl Discovery {
    fn metrics(&self, registry: &prometheus::Registry) -> &Metrics {
        self.metrics.get_or_init(|| {
            let backends = prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    crate::metric_names::UPSTREAM_DISCOVERY_BACKENDS,
                    "Backends found by DNS discovery, per upstreams entry",
                ),
                &["upstream"],
            )
            .expect("valid metric");
            let errors = prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    crate::metric_names::UPSTREAM_DISCOVERY_ERRORS_TOTAL,
                    "Failed DNS lookups of discovered upstreams (the last answer stays in force)",
                ),
                &["upstream"],
            )
            .expect("valid metric");
            let _ = registry.register(Box::new(backends.clone()));
            let _ = registry.register(Box::new(errors.clone()));
            Metrics { backends, errors }
        })
    }
}

/// Starts a task for each discovered entry of `cfg` that has none, and stops (and
/// drains the backends of) each task whose entry is gone. Must run inside a runtime.
pub fn sync(shared: &Arc<Shared>, discovery: &Arc<Discovery>, cfg: &Config) {
    let Ok(mut tasks) = discovery.tasks.lock() else {
        return;
    };
    let wanted: HashMap<&DiscoverySource, (u32, &Link)> = cfg
        .discovered
        .iter()
        .map(|d| (&d.source, (d.weight, &d.link)))
        .collect();
    let gone: Vec<DiscoverySource> = tasks
        .iter()
        .filter(|(src, t)| wanted.get(src) != Some(&(t.weight, &t.link)))
        .map(|(src, _)| src.clone())
        .collect();
    for src in gone {
        if let Some(t) = tasks.remove(&src) {
            t.handle.abort();
            log::info!(
                "upstreams: {} no longer discovered, draining its backends",
                src.label()
            );
            apply(shared, &src.label(), &[], &Link::default(), cfg);
        }
    }
    for (src, (weight, link)) in wanted {
        if tasks.contains_key(src) {
            continue;
        }
        let handle = tokio::spawn(run(
            shared.clone(),
            discovery.clone(),
            src.clone(),
            weight,
            link.clone(),
        ));
        tasks.insert(
            src.clone(),
            Task {
                weight,
                link: link.clone(),
                handle,
            },
        );
    }
}

fn resolver(cfg: &DiscoveryConfig) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DiscoveryError::Setup(e.to_string()))?
    } else {
        let servers = cfg
            .nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let o = builder.options_mut();
    o.timeout = cfg.timeout;
    o.attempts = 2;
    // Never serve an answer older than the longest interval.
    o.positive_max_ttl = Some(cfg.max_interval);
    o.negative_max_ttl = Some(cfg.min_interval);
    builder
        .build()
        .map_err(|e| DiscoveryError::Setup(e.to_string()))
}

/// One answer: the backends (address, weight) and when it expires. `Ok` with no
/// backends when the name has no records.
async fn lookup(
    r: &TokioResolver,
    src: &DiscoverySource,
    weight: u32,
) -> Result<(Vec<(SocketAddr, u32)>, Instant), DiscoveryError> {
    let fail = |name: &str, e: hickory_resolver::net::NetError| DiscoveryError::Lookup {
        name: name.to_string(),
        message: e.to_string(),
    };
    let now = Instant::now();
    match src {
        DiscoverySource::Dns { host, port } => match r.lookup_ip(host.as_str()).await {
            Ok(ips) => {
                let mut out: Vec<_> = ips
                    .iter()
                    .map(|ip| (SocketAddr::new(ip, *port), weight))
                    .collect();
                out.sort();
                out.dedup();
                Ok((out, ips.valid_until()))
            }
            Err(e) if e.is_no_records_found() => Ok((Vec::new(), now)),
            Err(e) => Err(fail(host, e)),
        },
        DiscoverySource::Srv { name } => {
            let srv = match r.srv_lookup(name.as_str()).await {
                Ok(l) => l,
                Err(e) if e.is_no_records_found() => return Ok((Vec::new(), now)),
                Err(e) => return Err(fail(name, e)),
            };
            let mut until = srv.valid_until();
            let records: Vec<_> = srv
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::SRV(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            // RFC 2782: the lowest priority that has targets; the others are backups.
            let Some(best) = records.iter().map(|s| s.priority).min() else {
                return Ok((Vec::new(), until));
            };
            let mut out = Vec::new();
            for s in records.iter().filter(|s| s.priority == best) {
                let target = s.target.to_string();
                if target == "." {
                    continue; // "service decidedly not available"
                }
                let ips = r
                    .lookup_ip(target.as_str())
                    .await
                    .map_err(|e| fail(&target, e))?;
                until = until.min(ips.valid_until());
                let w = u32::from(s.weight).clamp(1, MAX_WEIGHT);
                out.extend(ips.iter().map(|ip| (SocketAddr::new(ip, s.port), w)));
            }
            out.sort();
            out.dedup();
            Ok((out, until))
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    discovery: Arc<Discovery>,
    src: DiscoverySource,
    weight: u32,
    link: Link,
) {
    let label = src.label();
    let mut settings: Option<DiscoveryConfig> = None;
    let mut r: Option<TokioResolver> = None;
    let mut failures = 0u32;
    loop {
        let cfg = shared.config();
        let d = &cfg.discovery;
        if settings.as_ref() != Some(d) {
            settings = Some(d.clone());
            r = match resolver(d) {
                Ok(r) => Some(r),
                Err(e) => {
                    log::error!("upstreams: {label}: {e}");
                    None
                }
            };
        }
        let m = discovery.metrics(&shared.metrics.registry);
        let pause = match &r {
            None => d.max_interval,
            Some(res) => match lookup(res, &src, weight).await {
                Ok((backends, until)) => {
                    failures = 0;
                    apply(&shared, &label, &backends, &link, &cfg);
                    m.backends
                        .with_label_values(&[&label])
                        .set(backends.len() as i64);
                    until
                        .saturating_duration_since(Instant::now())
                        .clamp(d.min_interval, d.max_interval)
                }
                Err(e) => {
                    failures += 1;
                    m.errors.with_label_values(&[&label]).inc();
                    // Said once per run of failures, then quietly.
                    if failures == 1 {
                        log::warn!("upstreams: {e}; keeping the last answer");
                    }
                    d.min_interval
                }
            },
        };
        tokio::time::sleep(pause).await;
    }
}

/// Makes the pool's backends of entry `label` match `want`, each reached over `link`.
fn apply(shared: &Arc<Shared>, label: &str, want: &[(SocketAddr, u32)], link: &Link, cfg: &Config) {
    let prefix = format!("{label}@");
    let members = shared.pool.members();
    let mine: Vec<&Arc<Backend>> = members
        .iter()
        .filter(|b| b.worker_id.is_none() && b.name.starts_with(&prefix))
        .filter(|b| !matches!(b.state(), BackendState::Draining | BackendState::Stopped))
        .collect();
    for b in &mine {
        if !want.contains(&(b.addr, b.weight)) || b.link != *link {
            log::info!("upstreams: {} gone from DNS, draining", b.name);
            super::drain_and_remove(shared, b, cfg.workers.drain_timeout);
        }
    }
    for (addr, weight) in want {
        if mine
            .iter()
            .any(|b| b.addr == *addr && b.weight == *weight && b.link == *link)
        {
            continue;
        }
        let name = format!("{prefix}{addr}");
        let b = shared.make_backend(&name, None, *addr, *weight, link);
        b.set_slow_start(cfg.discovery.slow_start);
        log::info!("upstreams: discovered {name} weight {weight}");
        shared.pool.add(b.clone());
        health::spawn_probe(shared.clone(), b);
    }
}

/// Whether a backend was found by discovery (its name is `{entry}@{address}`); static
/// upstream names never contain `@`.
pub fn is_discovered(b: &Backend) -> bool {
    b.worker_id.is_none() && b.name.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_prefix_backend_names() {
        let s = DiscoverySource::Dns {
            host: "app.internal".into(),
            port: 8080,
        };
        assert_eq!(s.label(), "app.internal:8080");
        let srv = DiscoverySource::Srv {
            name: "_http._tcp.app".into(),
        };
        assert_eq!(srv.label(), "_http._tcp.app");
    }
}
