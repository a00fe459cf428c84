//! Config reload (SIGHUP or `POST /api/reload`).
//!
//! The new file is validated completely before anything changes; a bad file leaves the
//! running config untouched, is logged with every error, and counted. A good one is
//! swapped in atomically and its consequences applied: strategy, panic threshold,
//! upstreams, worker count (scale up, or drain then stop), log level.
//!
//! Reading and validating the file blocks (certificate and key files, DNS names of
//! upstreams), so it runs on the control runtime's blocking pool: health probes, the
//! sampler and the admin plane keep running on the control thread meanwhile. Reloads
//! are taken one at a time, so a slow one cannot be overtaken and then undone.

use crate::config::{self, Config, StrategyChoice};
use crate::state::Shared;
use crate::supervisor::Supervisor;
use crate::upstreams::{self, discovery::Discovery};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Held from reading the file until its config is applied.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads and validates the file off the calling thread (see the module comment).
async fn load_off_thread(path: &Path) -> Result<Config, config::ConfigError> {
    load_with(path.to_path_buf(), config::load).await
}

/// Runs `load` on the runtime's blocking pool. A panic in it is resumed here, as if it
/// had run inline.
async fn load_with<F>(path: PathBuf, load: F) -> Result<Config, config::ConfigError>
where
    F: FnOnce(&Path) -> Result<Config, config::ConfigError> + Send + 'static,
{
    let file = path.display().to_string();
    joined(
        tokio::task::spawn_blocking(move || load(&path)).await,
        &file,
    )
}

/// The result of a task that ran part of a reload. A panic is resumed here, as if the
/// work had run inline; a task cancelled because the runtime is shutting down (which
/// ends the process anyway) fails the reload.
fn joined<T>(
    r: Result<Result<T, config::ConfigError>, tokio::task::JoinError>,
    file: &str,
) -> Result<T, config::ConfigError> {
    match r {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(config::ConfigError {
                file: file.to_string(),
                issues: vec![config::ConfigIssue {
                    field: "(file)".into(),
                    line: None,
                    message: format!("reload cancelled: {e}"),
                }],
            }),
        },
    }
}

/// Returns the new config version, or why the file was rejected (every problem in it).
///
/// The reload runs as a task of its own, so it finishes (applied or refused, logged and
/// counted) even if the caller stops waiting, as an admin client that hangs up does.
pub async fn reload(
    shared: &Arc<Shared>,
    supervisor: &Arc<Supervisor>,
    discovery: &Arc<Discovery>,
) -> Result<u64, config::ConfigError> {
    let file = shared.config_path.display().to_string();
    let (shared, supervisor, discovery) = (shared.clone(), supervisor.clone(), discovery.clone());
    let task = tokio::spawn(async move { reload_now(&shared, &supervisor, &discovery).await });
    joined(task.await, &file)
}

async fn reload_now(
    shared: &Arc<Shared>,
    supervisor: &Arc<Supervisor>,
    discovery: &Arc<Discovery>,
) -> Result<u64, config::ConfigError> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut new = match load_off_thread(&shared.config_path).await {
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
    crate::config::resilience::adopt(&mut new, &old);
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
    upstreams::sync(shared, discovery, &new);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        // Like the control thread's.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn issue(message: &str) -> config::ConfigError {
        config::ConfigError {
            file: "test".into(),
            issues: vec![config::ConfigIssue {
                field: "(file)".into(),
                line: None,
                message: message.into(),
            }],
        }
    }

    #[test]
    fn the_control_thread_runs_on_while_a_load_blocks() {
        runtime().block_on(async {
            let (release, released) = std::sync::mpsc::channel::<()>();
            // Blocks until the test releases it: were it run on the runtime's only thread,
            // nothing could release it and it would give up after 10 s.
            let load = tokio::spawn(load_with(PathBuf::from("d.yaml"), move |_| match released
                .recv_timeout(Duration::from_secs(10))
            {
                Ok(()) => Err(issue("released")),
                Err(_) => Err(issue("blocked the runtime")),
            }));
            tokio::task::yield_now().await;
            // Another task on the same thread (a probe, the sampler, admin) runs meanwhile.
            let other = tokio::spawn(async { 7 });
            assert_eq!(other.await.unwrap(), 7);
            let _ = release.send(());
            let err = load.await.unwrap().unwrap_err();
            assert_eq!(err.issues[0].message, "released");
        });
    }

    #[test]
    fn a_missing_file_is_reported_as_when_loaded_inline() {
        let path = PathBuf::from("/nonexistent/drover-reload-test.yaml");
        let inline = config::load(&path).unwrap_err();
        let off = runtime().block_on(load_off_thread(&path)).unwrap_err();
        assert_eq!(off.to_string(), inline.to_string());
        assert_eq!(off.file, inline.file);
    }

    /// A drover state with no workers and one remote upstream, read from a file in `dir`.
    fn state(dir: &Path) -> (Arc<Shared>, Arc<Supervisor>) {
        let path = dir.join("drover.yaml");
        write_config(&path, "round_robin");
        let cfg = config::load(&path).unwrap();
        let shared = Shared::new(cfg, path);
        let supervisor = Supervisor::new(shared.clone());
        (shared, supervisor)
    }

    fn write_config(path: &Path, strategy: &str) {
        let dir = path.parent().unwrap().display().to_string();
        std::fs::write(
            path,
            format!(
                "runtime_dir: {dir}/run\nworkers:\n  count: 0\nupstreams:\n  - address: 127.0.0.1:1\nbalancing:\n  strategy: {strategy}\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn a_reload_finishes_even_when_its_caller_stops_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, supervisor) = state(dir.path());
        write_config(&shared.config_path, "least_connections");
        runtime().block_on(async {
            // Polled once (the file is being read off the thread), then dropped, as when
            // an admin client hangs up.
            let discovery = Default::default();
            let mut call = Box::pin(reload(&shared, &supervisor, &discovery));
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
            assert!(
                first.is_pending(),
                "the reload cannot be done without yielding"
            );
            drop(call);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while shared.version.load(Ordering::Acquire) < 2 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the reload was lost"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert_eq!(shared.pool.strategy().as_str(), "least_connections");
    }

    #[test]
    fn a_bad_file_keeps_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, supervisor) = state(dir.path());
        std::fs::write(&shared.config_path, "workers:\n  count: -3\n").unwrap();
        let r = runtime().block_on(reload(&shared, &supervisor, &Default::default()));
        let e = r.unwrap_err();
        assert!(e.to_string().contains("workers.count"), "{e}");
        assert_eq!(shared.version.load(Ordering::Acquire), 1);
        assert_eq!(shared.pool.strategy().as_str(), "round_robin");
        write_config(&shared.config_path, "random");
        let v = runtime()
            .block_on(reload(&shared, &supervisor, &Default::default()))
            .unwrap();
        assert_eq!(v, 2);
    }

    #[test]
    #[should_panic(expected = "validation bug")]
    fn a_panic_while_loading_is_not_swallowed() {
        runtime().block_on(async {
            let _ = load_with(PathBuf::from("d.yaml"), |_| panic!("validation bug")).await;
        });
    }
}
