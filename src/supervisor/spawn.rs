//! Starting one worker process so that it can never outlive drover.
//!
//! Workers get `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills them when the thread that
//! forked them exits, which covers `kill -9` of drover. Because the signal is tied to the
//! forking *thread*, every worker is spawned from the control thread, which lives as long
//! as the process (see `lifecycle::control`), never from a pool thread that may retire.

use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Everything [`spawn_worker`] needs for one worker process, borrowed from the slot's
/// [`WorkerImage`](super::WorkerImage) and the current config.
pub struct WorkerSpec<'a> {
    /// The executable.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// `workers.env` (or a deploy's), applied over the inherited variables.
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// `workers.inherit_env` and the variables the config consumed (`supervisor/env.rs`).
    pub inherit: &'a [String],
    /// Variables the config file read through `${VAR}`: never inherited, even if named.
    pub withheld: &'a std::collections::BTreeSet<String>,
    /// Slot id, exported as `WORKER_ID` and used in the `worker-N` log tag.
    pub worker_id: usize,
    /// Address the worker should bind, exported as `BIND` (`workers.host`).
    pub host: std::net::IpAddr,
    /// Port the worker should listen on, exported as `PORT`.
    pub port: u16,
}

/// Starts a worker with a cleared environment, its own process group and
/// `PR_SET_PDEATHSIG = SIGKILL`; its stdout and stderr are copied into drover's log.
/// Must be called on the control thread (see the module doc).
pub fn spawn_worker(spec: &WorkerSpec<'_>) -> std::io::Result<Child> {
    let parent = std::process::id();
    let mut cmd = Command::new(spec.program);
    // A cleared environment: drover's own variables (tokens, secrets) stay with drover.
    cmd.args(spec.args)
        .env_clear()
        .envs(super::env::inherited(
            std::env::vars_os(),
            spec.inherit,
            spec.withheld,
        ))
        .envs(spec.env)
        .env("WORKER_ID", spec.worker_id.to_string())
        .env("PORT", spec.port.to_string())
        .env("BIND", spec.host.to_string())
        .env("DROVER_PARENT_PID", parent.to_string())
        .envs(
            super::metrics_socket::socket_path().map(|p| ("DROVER_METRICS_SOCKET", p.as_os_str())),
        )
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

/// Longest line copied as one record; longer output is cut into records of this size.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Copies a worker's output into drover's log, one record per line, tagged with the
/// worker, so operators read one log rather than N. Control characters and bytes that
/// are not UTF-8 are escaped ([`escape_line`]), so a worker cannot forge log records,
/// rewrite the operator's terminal or hide text with bidirectional overrides.
async fn forward_lines<R: tokio::io::AsyncRead + Unpin>(r: R, tag: String, level: log::Level) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        log::log!(target: "worker", level, "{tag}: {}", escape_line(line));
    }
}

/// `line` with control characters (C0 but tab, DEL, C1), Unicode bidirectional
/// controls and invalid UTF-8 written as `\xNN` / `\u{NNNN}` escapes.
pub fn escape_line(line: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(line.len());
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c == '\t' || !(c.is_control() || bidi) {
                out.push(c);
            } else if (c as u32) < 0x100 {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Asks the OS for a free port on `host`. The port is released before the worker binds
/// it; a collision in that window makes the worker exit and be restarted on another.
pub fn free_port(host: std::net::IpAddr) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::escape_line;

    #[test]
    fn escapes_control_characters_bidi_and_invalid_utf8() {
        assert_eq!(
            escape_line(b"\x1b[2Jred\rERROR forged\ttab"),
            "\\x1b[2Jred\\x0dERROR forged\ttab"
        );
        assert_eq!(
            escape_line("a\u{202e}b\u{85}c é".as_bytes()),
            "a\\u{202e}b\\x85c é"
        );
        assert_eq!(escape_line(b"ok \xff\xfe end"), "ok \\xff\\xfe end");
    }
}
