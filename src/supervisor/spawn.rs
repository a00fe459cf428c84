//! Starting one worker process so that it can never outlive drover.
//!
//! Workers get `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills them when the thread that
//! forked them exits, which covers `kill -9` of drover. Because the signal is tied to the
//! forking *thread*, every worker is spawned from the control thread, which lives as long
//! as the process (see `lifecycle::control`), never from a pool thread that may retire.

use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct WorkerSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub worker_id: usize,
    pub host: std::net::IpAddr,
    pub port: u16,
}

pub fn spawn_worker(spec: &WorkerSpec<'_>) -> std::io::Result<Child> {
    let parent = std::process::id();
    let mut cmd = Command::new(spec.program);
    cmd.args(spec.args)
        .envs(spec.env)
        .env("WORKER_ID", spec.worker_id.to_string())
        .env("PORT", spec.port.to_string())
        .env("BIND", spec.host.to_string())
        .env("DROVER_PARENT_PID", parent.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group: a Ctrl-C in drover's terminal must not hit the workers
        // directly; drover stops them itself after draining.
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid, _exit via libc through nix); it does
    // not allocate or take locks.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            // Drover may have died between fork and prctl; then nobody would signal us.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("parent exited before worker start"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let tag = format!("worker-{}", spec.worker_id);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, tag.clone(), log::Level::Info));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, tag, log::Level::Info));
    }
    Ok(child)
}

/// Copies a worker's output into drover's log, one record per line, tagged with the
/// worker, so operators read one log rather than N.
async fn forward_lines<R: tokio::io::AsyncRead + Unpin>(r: R, tag: String, level: log::Level) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log::log!(target: "worker", level, "{tag}: {line}");
    }
}

/// Asks the OS for a free port on `host`. The port is released before the worker binds
/// it; a collision in that window makes the worker exit and be restarted on another.
pub fn free_port(host: std::net::IpAddr) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))?;
    Ok(l.local_addr()?.port())
}
