//! Config reload (SIGHUP or `POST /api/reload`).
//!
//! The new file is validated completely before anything changes; a bad file leaves the
//! running config untouched, is logged with every error, and counted. A good one is
//! swapped in atomically and its consequences applied: strategy, panic threshold,
//! upstreams, worker count (scale up, or drain then stop), log level.

use crate::config::{self, StrategyChoice};
use crate::lifecycle::upstreams;
use crate::state::Shared;
use crate::supervisor::Supervisor;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Returns the new config version, or why the file was rejected (every problem in it).
pub fn reload(
    shared: &Arc<Shared>,
    supervisor: &Arc<Supervisor>,
) -> Result<u64, config::ConfigError> {
    let mut new = match config::load(&shared.config_path) {
        Ok(c) => c,
        Err(e) => {
            shared
                .metrics
                .config_reloads
                .with_label_values(&["invalid"])
                .inc();
            log::error!("reload: keeping the running config; the new file is invalid:\n{e}");
            return Err(e);
        }
    };
    let old = shared.config();
    for (what, changed) in [
        ("listen", old.listen != new.listen),
        ("threads", old.threads != new.threads),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("runtime_dir", old.runtime_dir != new.runtime_dir),
        ("tls.listen", old.tls.listen != new.tls.listen),
        ("tls.http2", old.tls.http2 != new.tls.http2),
        ("http2", old.http2 != new.http2),
        (
            "proxy.keepalive_pool_size",
            old.proxy.keepalive_pool_size != new.proxy.keepalive_pool_size,
        ),
    ] {
        if changed {
            log::warn!("reload: `{what}` changed; it takes effect only after a restart");
        }
    }
    let strategy_changed = old.balancing.strategy != new.balancing.strategy;
    let panic_changed = old.balancing.panic_threshold != new.balancing.panic_threshold;
    let workers_changed = old.workers.program != new.workers.program
        || old.workers.args != new.workers.args
        || old.workers.env != new.workers.env
        || old.workers.inherit_env != new.workers.inherit_env
        || old.workers.protocol != new.workers.protocol;
    let count = new.workers.count;
    crate::resilience::config::adopt(&mut new, &old);
    shared
        .pool
        .set_max_ejected_share(new.resilience.max_ejected_share);
    let level = new.logging.level;
    let new = Arc::new(new);
    // Certificates were read and checked with the file: new handshakes use them from
    // here on; connections already up keep theirs.
    shared.tls.replace(new.tls.certs.clone());
    if new.tls.enabled() {
        for c in &new.tls.certs.certs {
            log::info!(
                "reload: certificate {} for {} (valid until {})",
                c.cert_file.display(),
                c.names.join(", "),
                c.not_after
            );
        }
    }
    shared.config.store(new.clone());
    let version = shared.version.fetch_add(1, Ordering::AcqRel) + 1;
    shared.metrics.config_version.set(version as i64);
    shared
        .metrics
        .config_reloads
        .with_label_values(&["ok"])
        .inc();

    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level);
    }
    if strategy_changed {
        let auto = new.balancing.strategy == StrategyChoice::Auto;
        shared.auto_strategy.store(auto, Ordering::Relaxed);
        shared.pool.set_strategy(new.balancing.strategy.initial());
        log::info!(
            "reload: strategy {} -> {}",
            old.balancing.strategy,
            new.balancing.strategy
        );
    }
    crate::balancing::backend::set_latency_decay(new.balancing.latency_decay);
    shared
        .observe
        .custom
        .set_policy(new.observability.worker_metrics);
    if panic_changed {
        shared
            .pool
            .set_panic_threshold(new.balancing.panic_threshold);
    }
    upstreams::sync(shared, &new);
    match shared.sessions.get() {
        Some(sessions) if new.sessions.enabled => sessions.apply(&new.sessions),
        Some(_) => log::warn!("reload: turning sessions off takes effect only after a restart"),
        None if new.sessions.enabled => {
            log::warn!("reload: turning sessions on takes effect only after a restart")
        }
        None => {}
    }
    if new.workers.autoscale.enabled {
        // The autoscaler owns the pool size; `count` was only the starting size.
    } else if supervisor.len() != count {
        log::info!("reload: workers {} -> {count}", supervisor.len());
        supervisor.scale_to(count);
    }
    if workers_changed {
        log::info!(
            "reload: worker command or environment changed; replacing workers one at a time"
        );
        let image = crate::supervisor::WorkerImage::from_config(&new.workers);
        let timeout = new.workers.health_timeout;
        let sup = supervisor.clone();
        tokio::spawn(async move {
            let _ = sup.rolling_restart(Some(image), timeout).await;
        });
    }
    log::info!(
        "reload: applied config version {version} from {}",
        shared.config_path.display()
    );
    Ok(version)
}
