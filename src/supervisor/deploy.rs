//! Replacing workers without dropping a request: rolling restart, blue-green deploy,
//! rollback. All three use one primitive, [`Supervisor::replace`]: start successors in
//! standby (health-checked, no traffic), wait until every one is healthy, activate them,
//! then drain and stop their predecessors. If a successor fails its health checks within
//! the timeout (or crash-loops), the operation is aborted: successors are stopped and no
//! traffic ever moved.
//!
//! Successors keep their slot's name (`worker-N`), so sticky sessions and consistent
//! hashing keep their keys across a deploy. During the switch both colours are in the
//! selector for one rebuild (microseconds); no request sees an empty pool.

use super::{Slot, SlotCommand, Supervisor, WorkerImage};
use crate::balancing::BackendState;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Progress of the last deploy / rollback / rolling restart, for `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeployStatus {
    /// `idle`, `starting`, `switching`, `draining`, `done` or `aborted`.
    pub state: &'static str,
    /// `deploy`, `rollback` or `rolling_restart`.
    pub kind: &'static str,
    /// Version label of the image being (or last) rolled out.
    pub version: String,
    /// Version that ran before the operation; `None` until one has started.
    pub previous_version: Option<String>,
    /// Why the operation aborted; empty otherwise.
    pub message: String,
    /// Start time, seconds since the Unix epoch (0 while idle).
    pub started_unix: u64,
    /// Duration in seconds, set when it is `done` or `aborted` (0 while running).
    pub seconds: f64,
}

/// Why a deploy, rollback or rolling restart did not happen or was aborted (traffic then
/// stays on the running workers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// Another operation holds the lock; operations never queue.
    #[error("another deploy, rollback or rolling restart is running")]
    Busy,
    /// Rollback requested before any operation changed the image.
    #[error("nothing to roll back to: no deploy has completed")]
    NothingToRollBack,
    /// A standby successor crash-looped before becoming healthy.
    #[error("worker-{id} ({version}) is crash-looping: {last_exit}")]
    CrashLooping {
        /// Slot id of the successor.
        id: usize,
        /// Version label of the image it runs.
        version: String,
        /// How its last run ended (exit status or spawn error).
        last_exit: String,
    },
    /// Not every successor of a batch was healthy before the timeout.
    #[error("{ready} of {total} new workers ({version}) passed health checks within {timeout:?}")]
    Unhealthy {
        /// Successors that were healthy at the deadline.
        ready: usize,
        /// Successors in the batch (the whole pool for a deploy, 1 for a rolling restart).
        total: usize,
        /// Version label of the image they run.
        version: String,
        /// The operation's health timeout.
        timeout: Duration,
    },
    /// Shutdown began while successors were starting.
    #[error("drover is shutting down")]
    ShuttingDown,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Supervisor {
    fn set_deploy(&self, f: impl FnOnce(&mut DeployStatus)) {
        let mut d = self.deploy.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut d);
    }

    /// A snapshot of the last operation's progress, with state `idle` before the first.
    pub fn deploy_status(&self) -> DeployStatus {
        let d = self.deploy.lock().unwrap_or_else(|p| p.into_inner());
        let mut d = d.clone();
        if d.state.is_empty() {
            d.state = "idle";
        }
        d
    }

    /// The image [`Supervisor::rollback`] returns to: what ran before the last successful
    /// operation that changed the image; `None` until one has.
    pub fn previous_image(&self) -> Option<Arc<WorkerImage>> {
        self.previous.lock().ok().and_then(|p| p.clone())
    }

    /// True while a deploy, rollback or rolling restart runs.
    pub fn busy(&self) -> bool {
        self.operation.try_lock().is_err()
    }

    /// Replaces the workers of slots `ids` with `image` workers (see module doc).
    async fn replace(
        self: &Arc<Self>,
        ids: &[usize],
        image: Arc<WorkerImage>,
        timeout: Duration,
    ) -> Result<(), DeployError> {
        // With fixed ports, successors alternate between two port ranges.
        let (count, offsets): (usize, Vec<u16>) = {
            let slots = self.slots();
            let offs = ids
                .iter()
                .map(|&id| slots.get(id).map(|s| s.port_offset).unwrap_or(0))
                .collect();
            (slots.len(), offs)
        };
        let fresh: Vec<(usize, Slot)> = ids
            .iter()
            .zip(offsets)
            .map(|(&id, off)| {
                let next = if off == 0 { count as u16 } else { 0 };
                (id, self.new_slot(id, image.clone(), true, next))
            })
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let mut ready = 0;
            let mut failing: Option<DeployError> = None;
            for (id, slot) in &fresh {
                let st = slot
                    .status
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_else(|p| p.into_inner().clone());
                if st.crash_looping {
                    failing = Some(DeployError::CrashLooping {
                        id: *id,
                        version: image.version.clone(),
                        last_exit: st.last_exit.unwrap_or_default(),
                    });
                }
                let healthy = st
                    .backend_id
                    .and_then(|b| self.shared.pool.find(b))
                    .is_some_and(|b| b.state() == BackendState::Healthy);
                ready += healthy as usize;
            }
            if ready == fresh.len() {
                break;
            }
            let why = if let Some(f) = failing {
                Some(f)
            } else if Instant::now() >= deadline {
                Some(DeployError::Unhealthy {
                    ready,
                    total: fresh.len(),
                    version: image.version.clone(),
                    timeout,
                })
            } else if self.shared.is_shutting_down() {
                Some(DeployError::ShuttingDown)
            } else {
                None
            };
            if let Some(why) = why {
                for (_, slot) in &fresh {
                    let _ = slot.command.send(SlotCommand::Stop);
                }
                for (_, slot) in fresh {
                    let _ = slot.task.await;
                }
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }

        self.set_deploy(|d| d.state = "switching");
        let members = self.shared.pool.members();
        for (_, slot) in &fresh {
            slot.standby.store(false, Ordering::Release);
            let backend_id = slot.status.lock().ok().and_then(|mut s| {
                s.standby = false;
                s.backend_id
            });
            if let Some(b) = backend_id.and_then(|id| members.iter().find(|b| b.id == id)) {
                b.set_standby(false);
            }
        }
        // Successors join the selector here (both colours for one rebuild)...
        self.shared.pool.refresh();
        let mut old = Vec::new();
        {
            let mut slots = self.slots();
            for (id, slot) in fresh {
                match slots.get_mut(id) {
                    Some(cur) => old.push(std::mem::replace(cur, slot)),
                    // The pool shrank meanwhile: the successor has no place.
                    None => old.push(slot),
                }
            }
        }
        // ...and predecessors leave it as they start draining.
        self.set_deploy(|d| d.state = "draining");
        for o in &old {
            let _ = o.command.send(SlotCommand::Retire);
        }
        for o in old {
            let _ = o.task.await;
        }
        Ok(())
    }

    async fn run_operation(
        self: &Arc<Self>,
        kind: &'static str,
        ids_of: impl Fn(usize) -> Vec<Vec<usize>>,
        image: Arc<WorkerImage>,
        timeout: Duration,
    ) -> Result<(), DeployError> {
        let Ok(_op) = self.operation.try_lock() else {
            return Err(DeployError::Busy);
        };
        let start = Instant::now();
        let previous = self.image();
        self.set_deploy(|d| {
            *d = DeployStatus {
                state: "starting",
                kind,
                version: image.version.clone(),
                previous_version: Some(previous.version.clone()),
                message: String::new(),
                started_unix: unix_now(),
                seconds: 0.0,
            }
        });
        log::info!(
            "supervisor: {kind} to {} started ({} -> {})",
            image.version,
            previous.version,
            image.version
        );
        // New slots (scale-up, crash restarts of replaced slots) run the new image.
        self.set_image(image.clone());
        let mut result = Ok(());
        for batch in ids_of(self.len()) {
            if let Err(e) = self.replace(&batch, image.clone(), timeout).await {
                result = Err(e);
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        match &result {
            Ok(()) => {
                if *previous != *image {
                    if let Ok(mut p) = self.previous.lock() {
                        *p = Some(previous.clone());
                    }
                }
                log::info!("supervisor: {kind} to {} done in {secs:.1}s", image.version);
                self.set_deploy(|d| {
                    d.state = "done";
                    d.seconds = secs;
                });
            }
            Err(e) => {
                self.set_image(previous.clone());
                log::error!(
                    "supervisor: {kind} to {} aborted, traffic stays on {}: {e}",
                    image.version,
                    previous.version
                );
                self.set_deploy(|d| {
                    d.state = "aborted";
                    d.message = e.to_string();
                    d.seconds = secs;
                });
            }
        }
        result
    }

    /// Blue-green: every worker of `image` starts in standby; traffic moves only once all
    /// are healthy; the old colour is then drained and stopped, its image kept for
    /// [`Supervisor::rollback`].
    pub async fn deploy(
        self: &Arc<Self>,
        image: WorkerImage,
        timeout: Duration,
    ) -> Result<(), DeployError> {
        self.run_operation(
            "deploy",
            |n| vec![(0..n).collect()],
            Arc::new(image),
            timeout,
        )
        .await
    }

    /// Blue-green back to the image that ran before the last successful deploy.
    pub async fn rollback(self: &Arc<Self>, timeout: Duration) -> Result<(), DeployError> {
        let Some(previous) = self.previous_image() else {
            return Err(DeployError::NothingToRollBack);
        };
        self.run_operation("rollback", |n| vec![(0..n).collect()], previous, timeout)
            .await
    }

    /// One worker at a time: start its successor (running `image`, or the current image),
    /// wait until it is healthy, move traffic, drain the old one. Capacity never drops
    /// below the pool size.
    pub async fn rolling_restart(
        self: &Arc<Self>,
        image: Option<WorkerImage>,
        timeout: Duration,
    ) -> Result<(), DeployError> {
        let image = image.map(Arc::new).unwrap_or_else(|| self.image());
        self.run_operation(
            "rolling_restart",
            |n| (0..n).map(|id| vec![id]).collect(),
            image,
            timeout,
        )
        .await
    }
}
