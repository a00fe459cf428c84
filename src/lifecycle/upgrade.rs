//! Binary upgrade (`drover -u`), the new process's side: wait until its own workers
//! can serve, ask the old process for its listening sockets, and take over sessions and
//! history once the old process has exited.

use crate::state::Shared;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long the new process waits for its own upgrade socket to appear before asking
/// anyway (the old process retries a missing socket for 5 s).
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// Waits (bounded by `workers.health_timeout`) until this process's workers are
/// healthy, so it never takes connections it cannot serve; then, once Pingora's
/// `bootstrap` is listening on `upgrade_sock`, has the old process send its listening
/// sockets (SIGQUIT); and merges the old process's session snapshot and history once it
/// has exited.
// The waits below are the audited exception to clippy.toml's ban on thread sleeps: this
// runs on the main thread (and two helper threads) before any runtime exists, and
// Pingora's upgrade has no readiness hook. Each wait polls a condition with a bound.
#[allow(clippy::disallowed_methods)]
pub fn take_over_from(shared: &Arc<Shared>, old: i32, upgrade_sock: &str) {
    let cfg = shared.config();
    let want = cfg
        .workers
        .count
        .max(usize::from(!cfg.upstreams.is_empty()));
    let deadline = Instant::now() + cfg.workers.health_timeout;
    while Instant::now() < deadline {
        let healthy = shared
            .pool
            .members()
            .iter()
            .filter(|b| b.in_rotation())
            .count();
        if healthy >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log::info!("upgrade: workers ready; asking drover pid {old} to hand over its listener");
    let old_pid = nix::unistd::Pid::from_raw(old);
    let sock = PathBuf::from(upgrade_sock);
    let asked_at = SystemTime::now();
    std::thread::spawn(move || {
        // Signal once bootstrap() has bound the socket it receives the listeners on (it
        // unlinks any old one first, so a file newer than this moment is ours).
        let deadline = Instant::now() + SOCKET_WAIT;
        while Instant::now() < deadline && !bound_since(&sock, asked_at) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = nix::sys::signal::kill(old_pid, nix::sys::signal::Signal::SIGQUIT) {
            log::error!("upgrade: cannot signal pid {old}: {e}");
        }
    });
    let shared = shared.clone();
    std::thread::spawn(move || {
        let grace = shared.config().shutdown_grace + Duration::from_secs(30);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && nix::sys::signal::kill(old_pid, None).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
        log::info!("upgrade: previous drover (pid {old}) has exited");
        if let Some(s) = shared.sessions.get() {
            s.finish_handover();
        }
        // Its history file, written at its exit, fills what this process lacks.
        shared.observe.load_history(&shared.config().runtime_dir);
    });
}

/// Whether a socket file at `path` was made at or after `since`.
fn bound_since(path: &Path, since: SystemTime) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since)
}

#[cfg(test)]
mod tests {
    use super::bound_since;
    use std::time::{Duration, SystemTime};

    #[test]
    fn only_a_socket_bound_after_the_request_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let before = SystemTime::now() - Duration::from_secs(1);
        assert!(!bound_since(&path, before), "no file yet");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(bound_since(&path, before));
        assert!(!bound_since(
            &path,
            SystemTime::now() + Duration::from_secs(60)
        ));
    }
}
