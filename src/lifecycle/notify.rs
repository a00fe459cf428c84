//! systemd readiness (`Type=notify`): `READY=1` once the data plane accepts connections,
//! `STOPPING=1` when shutdown begins. A no-op when
//! `NOTIFY_SOCKET` is not set (not started by systemd).

use std::os::unix::net::UnixDatagram;

fn send(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        send_to(&path, state);
    }
}

fn send_to(path: &std::ffi::OsStr, state: &str) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(path))
    };
    if let Err(e) = result {
        log::warn!("systemd notify `{state}` failed: {e}");
    }
}

/// Tells systemd the data plane accepts connections (`READY=1`); sent by the control
/// thread once a test connection to `listen` succeeds.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// Tells systemd shutdown has begun (`STOPPING=1`), before in-flight requests drain.
pub fn stopping() {
    send("STOPPING=1");
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_ready_to_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send_to(path.as_os_str(), "READY=1\nSTATUS=serving");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"READY=1"));
    }
}
