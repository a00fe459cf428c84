//! `drover -c FILE` runs; `drover -t -c FILE` checks the file. See `--help`.

use clap::Parser;
use drover::config::{self, Config};
use drover::lifecycle::signals::{DroverSignals, ShutdownKind};
use drover::lifecycle::{control, pidfile};
use drover::proxy::pingora_carrier::PingoraCarrier;
use drover::proxy::Pipeline;
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
    /// Graceful binary upgrade: start workers, wait until they are healthy, then take the
    /// listening socket over from the drover running with the same `runtime_dir` (its pid
    /// file says which) and tell it to drain and exit. No connection is refused.
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
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
    match run(cfg, cli.config, cli.upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("drover: {e}");
            e.exit_code()
        }
    }
}

/// Why drover did not start (or stopped early). `main` logs it, prints it as
/// `drover: <message>` and exits with [`StartError::exit_code`]; a config file that
/// does not load is reported before this (every problem in it, exit status 1).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("runtime_dir: {0}")]
    RuntimeDir(#[source] drover::private_fs::PrivateFsError),
    #[error("--upgrade: {0}")]
    Upgrade(#[source] pidfile::PidFileError),
    #[error("cannot listen on admin.listen {addr}: {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on tls.listen {addr}: {source}")]
    TlsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("sessions: {0}")]
    Sessions(#[source] drover::sessions::StartError),
    #[error("cannot start control thread: {0}")]
    Control(#[source] control::StartError),
    #[error("tls.listen {addr}: {source}")]
    TlsSettings {
        addr: std::net::SocketAddr,
        source: Box<pingora_core::Error>,
    },
}

impl StartError {
    /// Every start failure exits with status 1, like an invalid config file.
    fn exit_code(&self) -> ExitCode {
        ExitCode::FAILURE
    }
}

/// Admin and data-plane connections, workers' pipes and health probes all take file
/// descriptors: raise the soft limit to the hard one so a burst of connections cannot
/// starve the rest (the admin plane also caps its own connections).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => log::info!("open file limit raised from {soft} to {hard}"),
                Err(e) => log::warn!("cannot raise the open file limit from {soft}: {e}"),
            }
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
    if cfg.logging.json {
        b.format(|buf, record| {
            use std::io::Write;
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let line = drover::observe::logfmt::json_line(
                record.level(),
                record.target(),
                &record.args().to_string(),
                unix,
            );
            writeln!(buf, "{line}")
        });
    }
    let _ = b.try_init();
}

fn run(cfg: Config, path: PathBuf, upgrade: bool) -> Result<(), StartError> {
    raise_fd_limit();
    drover::private_fs::prepare_dir(&cfg.runtime_dir).map_err(StartError::RuntimeDir)?;
    let pid_file = cfg.runtime_dir.join("drover.pid");
    let (admin, old_pid) = if upgrade {
        let old = pidfile::running_drover(&pid_file).map_err(StartError::Upgrade)?;
        (control::AdminBind::Later(cfg.admin.listen), Some(old))
    } else {
        // Bind-check both addresses first so a taken port is a clear error, not a panic
        // deep inside Pingora after workers were already forked.
        let admin = std::net::TcpListener::bind(cfg.admin.listen).map_err(|source| {
            StartError::AdminListen {
                addr: cfg.admin.listen,
                source,
            }
        })?;
        drop(
            std::net::TcpListener::bind(cfg.listen).map_err(|source| StartError::Listen {
                addr: cfg.listen,
                source,
            })?,
        );
        for &addr in &cfg.tls.listen {
            drop(
                std::net::TcpListener::bind(addr)
                    .map_err(|source| StartError::TlsListen { addr, source })?,
            );
        }
        (control::AdminBind::Bound(admin), None)
    };

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

    if cfg.proxy.fast_path && !cfg.plain_backends {
        log::info!(
            "backends speak h2c or TLS: Pingora's carrier serves every request (drover's own HTTP/1 engine speaks HTTP/1.1 to workers only)"
        );
    }
    let listen = cfg.listen;
    let tls_listen = cfg.tls.listen.clone();
    let shared = Shared::new(cfg, path);
    let cfg = shared.config();
    if cfg.sessions.enabled {
        let svc = drover::sessions::SessionService::new(
            &cfg.sessions,
            &cfg.runtime_dir,
            &shared.metrics.registry,
        )
        .map_err(StartError::Sessions)?;
        let _ = shared.sessions.set(Arc::new(svc));
    }
    if old_pid.is_some() {
        if let Some(s) = shared.sessions.get() {
            s.begin_handover();
        }
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(ShutdownKind::None);
    let control =
        control::start(shared.clone(), admin, shutdown_rx).map_err(StartError::Control)?;

    let opt = old_pid.map(|old| {
        drover::lifecycle::upgrade::take_over_from(&shared, old, &conf.upgrade_sock);
        pingora_core::server::configuration::Opt {
            upgrade: true,
            ..Default::default()
        }
    });
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // On upgrade this receives the listening socket from the old process.
    server.bootstrap();
    if let Err(e) = pidfile::write(&pid_file) {
        log::warn!("cannot write the pid file: {e}");
    }
    let pipeline = Pipeline::new(shared.clone());
    let mut pingora =
        pingora_proxy::http_proxy(&server.configuration, PingoraCarrier::new(pipeline.clone()));
    drover::proxy::h2::configure(&mut pingora, &shared.config().http2);
    let mut https = Vec::with_capacity(tls_listen.len());
    for &addr in &tls_listen {
        // HTTPS listeners keep Pingora's default L4 buffers: rustls reads TLS records
        // through them.
        let settings = drover::proxy::h2::tls_settings(&shared)
            .map_err(|source| StartError::TlsSettings { addr, source })?;
        https.push((addr, settings));
        log::info!("listening for HTTPS on {addr}");
    }
    // Cleartext HTTP is accepted by drover's own loop (its module says why), HTTPS and an
    // inherited socket by Pingora's.
    server.add_service(drover::proxy::listen::DataPlane::new(
        drover::proxy::h1::H1App::new(pipeline, pingora),
        listen,
        https,
    ));
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
