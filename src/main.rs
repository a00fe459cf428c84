//! `drover -c FILE` runs; `drover -t -c FILE` checks the file. See `--help`.

use clap::Parser;
use drover::config::{self, Config};
use drover::lifecycle::control;
use drover::lifecycle::signals::{DroverSignals, ShutdownKind};
use drover::proxy::DroverProxy;
use drover::state::Shared;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

// Pingora allocates a 64 KiB body buffer per upstream response; glibc's malloc spends
// measurable time consolidating those (see docs/PERFORMANCE.md). mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "drover",
    version,
    about = "Edge reverse proxy that forks, supervises and balances a pool of HTTP workers",
    after_help = "Signals: SIGHUP reloads the config (a bad file keeps the running one), SIGTERM \
                  drains in-flight requests then stops workers, SIGINT stops at once.\n\
                  Examples:\n  drover -c conf/drover.yaml        run\n  drover -t -c conf/drover.yaml     \
                  check the file, print `ok` or every error"
)]
struct Cli {
    /// Config file (YAML). Every key is optional; see conf/drover.yaml for all of them.
    #[arg(short = 'c', long = "config", default_value = "conf/drover.yaml")]
    config: PathBuf,
    /// Check the config file and exit: prints `ok` and exits 0, or prints every error and
    /// exits 1 (like `nginx -t`).
    #[arg(short = 't', long = "test")]
    test: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            if !cli.test {
                eprintln!("drover: not started: fix the config file above");
            }
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!("ok");
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg);
    match run(cfg, cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("drover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    let mut b = env_logger::Builder::new();
    b.filter_level(cfg.logging.level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.format_timestamp_millis();
    let _ = b.try_init();
}

fn run(cfg: Config, path: PathBuf) -> Result<(), String> {
    // Bind-check both addresses first so a taken port is a clear error, not a panic deep
    // inside Pingora after workers were already forked.
    let admin = std::net::TcpListener::bind(cfg.admin.listen)
        .map_err(|e| format!("cannot listen on admin.listen {}: {e}", cfg.admin.listen))?;
    drop(
        std::net::TcpListener::bind(cfg.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?,
    );
    std::fs::create_dir_all(&cfg.runtime_dir).map_err(|e| {
        format!(
            "cannot create runtime_dir {}: {e}",
            cfg.runtime_dir.display()
        )
    })?;

    let conf = ServerConf {
        threads: cfg.threads,
        // Work stealing across 1-2 threads costs more CPU than it saves (measured).
        work_stealing: false,
        upstream_keepalive_pool_size: cfg.proxy.keepalive_pool_size,
        max_retries: cfg.proxy.retries as usize + 1,
        grace_period_seconds: Some(cfg.shutdown_grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: cfg.runtime_dir.join("drover.pid").display().to_string(),
        upgrade_sock: cfg.runtime_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };

    let listen = cfg.listen;
    let shared = Shared::new(cfg, path);
    let cfg = shared.config();
    if cfg.sessions.enabled {
        let svc = drover::sessions::SessionService::new(
            &cfg.sessions,
            &cfg.runtime_dir,
            &shared.metrics.registry,
        )
        .map_err(|e| format!("sessions: {e}"))?;
        let _ = shared.sessions.set(Arc::new(svc));
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(ShutdownKind::None);
    let control = control::start(shared.clone(), admin, shutdown_rx)
        .map_err(|e| format!("cannot start control thread: {e}"))?;

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora_proxy::http_proxy_service(&server.configuration, DroverProxy::new(shared));
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run(RunArgs {
        shutdown_signal: Box::new(DroverSignals {
            notify: shutdown_tx.clone(),
        }),
    });
    // Pingora's runtimes are down (after its grace period, if the control thread did not
    // finish first). Make sure the control thread stops the workers, then exit.
    let _ = shutdown_tx.send(ShutdownKind::Fast);
    let _ = control.thread.join();
    Ok(())
}
