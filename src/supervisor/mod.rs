//! The worker supervisor: forks `workers.count` processes, restarts them when they exit,
//! drains and stops them, scales the pool.
//!
//! Each worker slot is one task on the control thread running `run_slot`: start the
//! process, register its backend (which gets traffic once a health check passes), wait
//! for it to exit or for a command, and act. A process exit removes the backend from
//! rotation at once, before any health check would notice.

pub mod autoscale;
pub mod backoff;
pub mod deploy;
pub mod env;
pub mod metrics_socket;
pub mod spawn;

use crate::balancing::Backend;
use crate::health;
use crate::state::Shared;
use backoff::RestartBackoff;
use serde::Serialize;
use spawn::{free_port, spawn_worker, WorkerSpec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a slot should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCommand {
    /// Keep a worker running, restarting it when it exits.
    Run,
    /// Replace the worker: drain the current one, then start a fresh one. The number
    /// distinguishes successive requests.
    Recycle(u64),
    /// Drain the worker and end the slot (scale-down).
    Retire,
    /// Stop the worker without draining (shutdown, after drover itself drained).
    Stop,
}

/// What a worker runs: the command and its environment (from `workers:` or a deploy).
/// A slot keeps the image it was created with, so a crashed worker restarts as the same
/// version even while a deploy is moving the pool to another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerImage {
    /// The executable, run directly (no shell).
    pub program: PathBuf,
    /// Its arguments, passed as written.
    pub args: Vec<String>,
    /// Set on top of the inherited variables (see `supervisor/env.rs`); drover's own
    /// `WORKER_ID`, `PORT`, `BIND`, ... are set after and win.
    pub env: BTreeMap<String, String>,
    /// Free-form label shown in `/api/status` (e.g. a release tag).
    pub version: String,
}

impl WorkerImage {
    /// The image of the `workers:` section, labelled with version `config`.
    pub fn from_config(w: &crate::config::WorkersConfig) -> Self {
        WorkerImage {
            program: w.program.clone(),
            args: w.args.clone(),
            env: w.env.clone(),
            version: "config".into(),
        }
    }
}

pub use crate::observe::view::SlotStatus;

struct Slot {
    command: watch::Sender<SlotCommand>,
    status: Arc<Mutex<SlotStatus>>,
    task: JoinHandle<()>,
    standby: Arc<AtomicBool>,
    /// Added to `base_port + id` so a successor does not need its predecessor's port.
    port_offset: u16,
}

/// The worker pool: one slot task per worker, all on the control thread. Created once
/// by the control thread and shared with the admin plane and the metrics socket.
pub struct Supervisor {
    shared: Arc<Shared>,
    slots: Mutex<Vec<Slot>>,
    recycle_seq: std::sync::atomic::AtomicU64,
    /// The image new slots run (scale-up, rolling restart).
    image: Mutex<Arc<WorkerImage>>,
    /// Deploys, rollbacks and rolling restarts run one at a time.
    pub(crate) operation: tokio::sync::Mutex<()>,
    pub(crate) deploy: Mutex<deploy::DeployStatus>,
    pub(crate) previous: Mutex<Option<Arc<WorkerImage>>>,
}

impl Supervisor {
    /// An empty pool running the configured image; [`Supervisor::scale_to`] starts workers.
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        let image = Arc::new(WorkerImage::from_config(&shared.config().workers));
        Arc::new(Supervisor {
            shared,
            slots: Mutex::new(Vec::new()),
            recycle_seq: std::sync::atomic::AtomicU64::new(0),
            image: Mutex::new(image),
            operation: tokio::sync::Mutex::new(()),
            deploy: Mutex::new(deploy::DeployStatus::default()),
            previous: Mutex::new(None),
        })
    }

    /// The image new slots run: the configured one, or the last deploy's (the new one
    /// while an operation is in progress, the old one again if it aborted).
    pub fn image(&self) -> Arc<WorkerImage> {
        self.image
            .lock()
            .map(|i| i.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(crate) fn set_image(&self, image: Arc<WorkerImage>) {
        if let Ok(mut i) = self.image.lock() {
            *i = image;
        }
    }

    /// Starts a slot for worker `id` running `image`; a standby slot's worker is health
    /// checked but gets no traffic until [`Supervisor::activate`].
    fn new_slot(
        &self,
        id: usize,
        image: Arc<WorkerImage>,
        standby: bool,
        port_offset: u16,
    ) -> Slot {
        let (tx, rx) = watch::channel(SlotCommand::Run);
        let status = Arc::new(Mutex::new(SlotStatus {
            id,
            version: image.version.clone(),
            standby,
            pid: None,
            port: None,
            backend_id: None,
            phase: "starting",
            restarts: 0,
            crash_looping: false,
            last_exit: None,
            since: None,
        }));
        let standby = Arc::new(AtomicBool::new(standby));
        let task = tokio::spawn(run_slot(
            self.shared.clone(),
            id,
            image,
            standby.clone(),
            port_offset,
            rx,
            status.clone(),
        ));
        Slot {
            command: tx,
            status,
            task,
            standby,
            port_offset,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grows or shrinks the pool to `count` workers. Must be called on the control thread.
    pub fn scale_to(&self, count: usize) {
        let image = self.image();
        let mut slots = self.slots();
        while slots.len() < count {
            let id = slots.len();
            let slot = self.new_slot(id, image.clone(), false, 0);
            slots.push(slot);
        }
        while slots.len() > count {
            if let Some(slot) = slots.pop() {
                log::info!("supervisor: scaling down, draining worker-{}", slots.len());
                let _ = slot.command.send(SlotCommand::Retire);
            }
        }
    }

    /// Drains worker `id` and starts a fresh one in its place.
    pub fn recycle(&self, id: usize) -> bool {
        let slots = self.slots();
        match slots.get(id) {
            Some(slot) => {
                let n = self
                    .recycle_seq
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = slot.command.send(SlotCommand::Recycle(n));
                true
            }
            None => false,
        }
    }

    /// A snapshot of every slot, in slot-id order; standby successors of a running
    /// deploy are not included until they take their slot over.
    pub fn status(&self) -> Vec<SlotStatus> {
        self.slots()
            .iter()
            .map(|s| {
                s.status
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_else(|p| p.into_inner().clone())
            })
            .collect()
    }

    /// The pool size: slots, not counting standby successors of a running deploy.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// True when no slot exists (before the first `scale_to`, after `stop_all`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every worker: SIGTERM, then SIGKILL after the stop timeout. Returns when all
    /// have exited.
    pub async fn stop_all(&self) {
        let slots: Vec<Slot> = std::mem::take(&mut *self.slots());
        for s in &slots {
            let _ = s.command.send(SlotCommand::Stop);
        }
        for s in slots {
            let _ = s.task.await;
        }
    }
}

fn set_status(status: &Mutex<SlotStatus>, f: impl FnOnce(&mut SlotStatus)) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut s);
}

async fn run_slot(
    shared: Arc<Shared>,
    id: usize,
    image: Arc<WorkerImage>,
    standby: Arc<AtomicBool>,
    port_offset: u16,
    mut commands: watch::Receiver<SlotCommand>,
    status: Arc<Mutex<SlotStatus>>,
) {
    let mut backoff = RestartBackoff::new(shared.config().workers.backoff);
    let mut last_recycle = None;
    let name = format!("worker-{id}");
    loop {
        match *commands.borrow_and_update() {
            SlotCommand::Retire | SlotCommand::Stop => break,
            SlotCommand::Recycle(n) => last_recycle = Some(n),
            SlotCommand::Run => {}
        }
        if shared.is_shutting_down() {
            break;
        }
        let cfg = shared.config();
        backoff.set_policy(cfg.workers.backoff);
        let port = if cfg.workers.base_port == 0 {
            free_port(cfg.workers.host)
        } else {
            Ok(cfg
                .workers
                .base_port
                .saturating_add(id as u16)
                .saturating_add(port_offset))
        };
        let spec_result = port.and_then(|port| {
            spawn_worker(&WorkerSpec {
                program: &image.program,
                args: &image.args,
                env: &image.env,
                inherit: &cfg.workers.inherit_env,
                withheld: &cfg.workers.withheld_env,
                worker_id: id,
                host: cfg.workers.host,
                port,
            })
            .map(|child| (child, port))
        });
        let (mut child, port) = match spec_result {
            Ok(ok) => ok,
            Err(e) => {
                let delay = backoff.on_exit(Duration::ZERO);
                log::error!(
                    "supervisor: cannot start {name} (`{}`): {e}; retrying in {delay:?}",
                    image.program.display()
                );
                set_status(&status, |s| {
                    s.phase = "backoff";
                    s.last_exit = Some(format!("spawn failed: {e}"));
                    s.crash_looping = backoff.crash_looping();
                });
                if wait_or_command(&mut commands, delay).await {
                    continue;
                }
                continue;
            }
        };
        let pid = child.id();
        let addr = SocketAddr::new(cfg.workers.host, port);
        let link = crate::config::Link {
            protocol: cfg.workers.protocol,
            tls: None,
        };
        let backend = shared.make_backend(&name, Some(id), addr, cfg.workers.weight_of(id), &link);
        backend.set_standby(standby.load(Ordering::Acquire));
        shared.pool.add(backend.clone());
        health::spawn_probe(shared.clone(), backend.clone());
        shared.metrics.workers_running.inc();
        log::info!(
            "supervisor: started {name} ({}) pid {} on {addr}{}",
            image.version,
            pid.unwrap_or(0),
            if backend.is_standby() {
                " (standby)"
            } else {
                ""
            }
        );
        set_status(&status, |s| {
            s.pid = pid;
            s.port = Some(port);
            s.backend_id = Some(backend.id);
            s.phase = "running";
            s.since = Some(Instant::now());
        });
        let started = Instant::now();

        let outcome = loop {
            tokio::select! {
                exit = child.wait() => break Outcome::Exited(exit),
                changed = commands.changed() => {
                    if changed.is_err() {
                        break Outcome::Command(SlotCommand::Stop);
                    }
                    let cmd = *commands.borrow();
                    match cmd {
                        SlotCommand::Run => continue,
                        SlotCommand::Recycle(n) if Some(n) == last_recycle => continue,
                        SlotCommand::Recycle(n) => {
                            last_recycle = Some(n);
                            break Outcome::Command(cmd);
                        }
                        _ => break Outcome::Command(cmd),
                    }
                }
            }
        };
        match outcome {
            Outcome::Exited(exit) => {
                // Out of rotation first, then bookkeeping.
                backend.mark_stopped();
                shared.pool.remove(backend.id);
                shared.metrics.workers_running.dec();
                let how = match exit {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                if shared.is_shutting_down() {
                    break;
                }
                let delay = backoff.on_exit(started.elapsed());
                shared
                    .metrics
                    .worker_restarts
                    .with_label_values(&[&name])
                    .inc();
                let looping = backoff.crash_looping();
                if looping {
                    log::error!(
                        "supervisor: {name} is crash-looping ({} quick exits in a row, last: {how}); restarting in {delay:?}",
                        backoff.quick_exits()
                    );
                } else {
                    log::warn!(
                        "supervisor: {name} pid {} exited ({how}); restarting in {delay:?}",
                        pid.unwrap_or(0)
                    );
                }
                set_status(&status, |s| {
                    s.phase = "backoff";
                    s.pid = None;
                    s.restarts += 1;
                    s.last_exit = Some(how);
                    s.crash_looping = looping;
                });
                wait_or_command(&mut commands, delay).await;
            }
            Outcome::Command(cmd) => {
                let drain = !matches!(cmd, SlotCommand::Stop);
                set_status(&status, |s| {
                    s.phase = if drain { "draining" } else { "stopping" }
                });
                stop_worker(&shared, &backend, &mut child, drain).await;
                shared.metrics.workers_running.dec();
                set_status(&status, |s| {
                    s.pid = None;
                    s.phase = "stopped";
                });
                if matches!(cmd, SlotCommand::Recycle(_)) {
                    continue;
                }
                break;
            }
        }
    }
    set_status(&status, |s| s.phase = "stopped");
}

enum Outcome {
    Exited(std::io::Result<std::process::ExitStatus>),
    Command(SlotCommand),
}

/// Sleeps for `delay` unless a command arrives first. Returns true if woken by a command.
async fn wait_or_command(commands: &mut watch::Receiver<SlotCommand>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = commands.changed() => true,
    }
}

/// Takes the worker out of rotation, optionally waits for its in-flight requests (up to
/// the drain timeout), then SIGTERM and, after the stop timeout, SIGKILL.
pub async fn stop_worker(
    shared: &Shared,
    backend: &Arc<Backend>,
    child: &mut tokio::process::Child,
    drain: bool,
) {
    let cfg = shared.config();
    backend.begin_drain();
    shared.pool.refresh();
    if drain {
        let deadline = Instant::now() + cfg.workers.drain_timeout;
        while backend.inflight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if backend.inflight() > 0 {
            log::warn!(
                "supervisor: {} still has {} requests in flight after the drain timeout; stopping it anyway",
                backend.name,
                backend.inflight()
            );
        }
    }
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(cfg.workers.stop_timeout, child.wait()).await {
        Ok(_) => log::info!("supervisor: {} stopped", backend.name),
        Err(_) => {
            log::warn!(
                "supervisor: {} did not exit {:?} after SIGTERM; sending SIGKILL",
                backend.name,
                cfg.workers.stop_timeout
            );
            let _ = child.kill().await;
        }
    }
    backend.mark_stopped();
    shared.pool.remove(backend.id);
}
