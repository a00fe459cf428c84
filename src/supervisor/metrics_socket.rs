//! The push path for worker metrics: a Unix datagram socket in the private runtime
//! folder (`runtime_dir/metrics.sock`) that workers write StatsD lines to whenever they
//! like, without waiting for a request or a response (`observe::custom` parses them).
//!
//! Who may write: the folder is drover's own (0700, verified at start), so only
//! processes of drover's user reach the socket; each datagram carries the sender's
//! credentials (`SO_PASSCRED` / `SCM_CREDENTIALS`, filled in by the kernel, not the
//! sender), and is accepted only from drover's uid and from a worker process or one of
//! its descendants, which also says which worker it is about (a sender cannot report
//! for another worker). Everything else is dropped and counted as rejected. Workers find
//! the path in `DROVER_METRICS_SOCKET`.

use super::Supervisor;
use crate::state::Shared;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// File name of the socket in `runtime_dir`.
pub const SOCKET_FILE: &str = "metrics.sock";
/// Largest datagram read (longer ones are cut by the kernel and count as rejected).
const MAX_DATAGRAM: usize = 8192;
/// Parent hops followed from a sender to find its worker.
const MAX_ANCESTRY: usize = 8;

static PATH: OnceLock<PathBuf> = OnceLock::new();

/// The socket's path once it is bound (workers get it as `DROVER_METRICS_SOCKET`).
pub fn socket_path() -> Option<&'static Path> {
    PATH.get().map(|p| p.as_path())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The worker `pid` is, or descends from.
fn worker_of(pid: u32, workers: &[(u32, String)]) -> Option<String> {
    let mut p = pid;
    for _ in 0..MAX_ANCESTRY {
        if let Some((_, name)) = workers.iter().find(|(w, _)| *w == p) {
            return Some(name.clone());
        }
        p = parent_of(p)?;
        if p <= 1 {
            return None;
        }
    }
    None
}

/// Binds the socket (replacing a stale one: after `drover -u` the new process takes
/// the path over) and serves it until the process ends.
pub fn start(shared: Arc<Shared>, supervisor: Arc<Supervisor>) {
    let cfg = shared.config();
    if !cfg.observability.worker_metrics.socket {
        return;
    }
    let path = cfg.runtime_dir.join(SOCKET_FILE);
    // Only ever a socket we made: the folder is private and verified, but never
    // follow or remove anything that is not a socket.
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if m.file_type().is_socket() {
            let _ = std::fs::remove_file(&path);
        } else {
            log::error!(
                "worker metrics socket: {} exists and is not a socket; push path off",
                path.display()
            );
            return;
        }
    }
    let sock = match tokio::net::UnixDatagram::bind(&path) {
        Ok(s) => s,
        Err(e) => {
            log::error!("worker metrics socket: cannot bind {}: {e}", path.display());
            return;
        }
    };
    if let Err(e) = setsockopt(&sock, sockopt::PassCred, &true) {
        log::error!("worker metrics socket: SO_PASSCRED: {e}; push path off");
        return;
    }
    let _ = PATH.set(path.clone());
    log::info!("worker metrics socket on {}", path.display());
    let uid = crate::private_fs::euid();
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            if sock.readable().await.is_err() {
                return;
            }
            let got = sock.try_io(tokio::io::Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(UnixCredentials);
                let msg = recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(std::io::Error::from)?;
                let creds = msg.cmsgs().ok().and_then(|mut it| {
                    it.find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(c) => Some((c.pid(), c.uid())),
                        _ => None,
                    })
                });
                let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                Ok((msg.bytes, creds, truncated))
            });
            let (n, creds, truncated) = match got {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    log::warn!("worker metrics socket: {e}");
                    continue;
                }
            };
            let custom = &shared.observe.custom;
            let sender = creds.filter(|(pid, u)| *u == uid && *pid > 0);
            let workers: Vec<(u32, String)> = supervisor
                .status()
                .iter()
                .filter_map(|s| s.pid.map(|p| (p, format!("worker-{}", s.id))))
                .collect();
            match sender.and_then(|(pid, _)| worker_of(pid as u32, &workers)) {
                Some(name) if !truncated => custom.ingest_statsd(&name, &buf[..n], Instant::now()),
                _ => custom.ingest_statsd_rejected(),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_attributed_to_the_worker_it_descends_from() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();
        let workers = vec![(parent, "worker-3".to_string())];
        assert_eq!(worker_of(me, &workers).as_deref(), Some("worker-3"));
        assert_eq!(worker_of(me, &[(1, "worker-0".into())]), None);
    }
}
