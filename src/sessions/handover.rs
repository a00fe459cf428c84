//! Keeping sessions across a binary upgrade (`drover -u`) and a restart: the hand-over
//! between old and new process, and the memory store's snapshot.

use super::store::memory::now_ms;
use super::*;

impl SessionService {
    /// Upgrade: until [`SessionService::finish_handover`], unknown sessions are
    /// "unavailable" rather than replaced.
    pub fn begin_handover(&self) {
        if matches!(self.backing, Backing::Memory(_)) {
            self.handover
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Upgrade: the old process has exited; merge the snapshot it wrote.
    pub fn finish_handover(&self) {
        if let Backing::Memory(m) = &self.backing {
            if let Some(path) = &self.policy.load().cfg.snapshot_path {
                match m.merge_snapshot(path, now_ms()) {
                    Ok(n) => log::info!(
                        "sessions: merged {n} sessions from the previous process ({})",
                        path.display()
                    ),
                    Err(e) => log::warn!("sessions: no snapshot from the previous process: {e}"),
                }
            }
        }
        self.handover
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Writes the memory store's snapshot (graceful shutdown).
    pub fn save_snapshot(&self) {
        let Backing::Memory(m) = &self.backing else {
            return;
        };
        let policy = self.policy.load();
        let Some(path) = &policy.cfg.snapshot_path else {
            return;
        };
        match m.save_snapshot(path, now_ms()) {
            Ok(n) => log::info!("sessions: saved {n} sessions to {}", path.display()),
            Err(e) => log::error!("sessions: snapshot {} not written: {e}", path.display()),
        }
    }
}
