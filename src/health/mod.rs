//! Active health checks: one probe loop per backend.
//!
//! The probe itself is pingora-load-balancing's `HttpHealthCheck` (a GET that must answer
//! 200); the thresholds and state changes are ours because a probe result must also
//! drive drover's own eligible set, slow start of new workers and metrics. A new backend
//! is probed every 25 ms until it first passes, so a (re)started worker takes traffic as
//! soon as it can, and not before.

use crate::balancing::{Backend, BackendState};
use crate::config::HealthConfig;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use std::sync::Arc;
use std::time::Duration;

/// What health needs from the running process: the current `health_check` settings, a
/// place to count check results, and a way to rebuild the eligible set after a verdict.
/// `state::Shared` implements it, so health depends on the pool's backends and on config,
/// never on the process-wide bundle.
pub trait HealthHost: Send + Sync + 'static {
    /// The `health_check` section of the running config (re-read every probe, so a reload
    /// applies to running loops).
    fn health_settings(&self) -> HealthConfig;
    /// Counts one result (`pass`, `fail`, `refused`) in `drover_health_checks_total`.
    fn count_check(&self, result: &'static str);
    /// A backend entered or left rotation: rebuild the selector.
    fn rotation_changed(&self);
}

const STARTING_PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// The probe for one backend: an HTTP GET of `health_check.path`, spoken the way drover
/// speaks to that backend (HTTP/1.1, h2c, or TLS with its SNI and CA).
fn build_check(cfg: &HealthConfig, backend: &Backend) -> Option<HttpHealthCheck> {
    let mut check = HttpHealthCheck::new("localhost", false);
    if !backend.link.plain() {
        check.peer_template = backend.peer.clone();
    }
    check.req = RequestHeader::build("GET", cfg.path.as_bytes(), None).ok()?;
    check.req.insert_header("Host", "localhost").ok()?;
    check
        .req
        .insert_header("User-Agent", "drover-health-check")
        .ok()?;
    check.peer_template.options.connection_timeout = Some(cfg.timeout);
    check.peer_template.options.read_timeout = Some(cfg.timeout);
    if backend.link.protocol != crate::config::Protocol::Http1 {
        grpc_style(&mut check, cfg)?;
    }
    // A remote host reached over TLS is asked under the name it is verified for.
    if let Some(t) = &backend.link.tls {
        check.req.insert_header("Host", t.sni.as_str()).ok()?;
    }
    Some(check)
}

/// HTTP/2 backends (`h2c`, `h2`) are gRPC servers here, which refuse a plain GET (grpcio
/// resets the stream). They are probed with a gRPC-shaped call instead: `POST
/// health_check.path` with `content-type: application/grpc`. A gRPC server answers any
/// call with HTTP 200 and the call's status in `grpc-status` (UNIMPLEMENTED for a path it
/// does not serve: it is up); UNAVAILABLE fails the probe.
fn grpc_style(check: &mut HttpHealthCheck, cfg: &HealthConfig) -> Option<()> {
    check.req = RequestHeader::build("POST", cfg.path.as_bytes(), None).ok()?;
    check.req.insert_header("Host", "localhost").ok()?;
    check
        .req
        .insert_header("Content-Type", "application/grpc")
        .ok()?;
    check.req.insert_header("TE", "trailers").ok()?;
    check
        .req
        .insert_header("User-Agent", "drover-health-check")
        .ok()?;
    check.validator = Some(Box::new(|resp| {
        let unavailable = resp
            .headers
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() == b"14");
        if resp.status.as_u16() != 200 || unavailable {
            return pingora_core::Error::e_explain(
                pingora_core::ErrorType::Custom("health check failed"),
                "the gRPC backend is not serving",
            );
        }
        Ok(())
    }));
    Some(())
}

/// Decides state changes from consecutive probe results.
#[derive(Debug, Default)]
pub struct Streaks {
    /// Consecutive passing probes; reset to 0 by any failure.
    pub passes: u32,
    /// Consecutive failing probes; reset to 0 by any pass.
    pub fails: u32,
}

impl Streaks {
    /// Returns the state the backend should move to, if any.
    pub fn observe(
        &mut self,
        ok: bool,
        current: BackendState,
        cfg: &HealthConfig,
    ) -> Option<BackendState> {
        if ok {
            self.passes += 1;
            self.fails = 0;
            let needs_pass = matches!(current, BackendState::Starting | BackendState::Unhealthy);
            (needs_pass && self.passes >= cfg.healthy_threshold).then_some(BackendState::Healthy)
        } else {
            self.fails += 1;
            self.passes = 0;
            (current == BackendState::Healthy && self.fails >= cfg.unhealthy_threshold)
                .then_some(BackendState::Unhealthy)
        }
    }
}

/// Passive check, reported by the pipeline: a refused connection means nothing listens
/// there (a worker killed, a host restarting), so a healthy backend leaves rotation at
/// once instead of drawing requests (and the retry budget) until its active check fails
/// twice. The probe loop puts it back when it passes. nginx does the same by default
/// (`max_fails=1`).
pub fn connection_refused(host: &dyn HealthHost, b: &Backend) {
    if b.state() != BackendState::Healthy {
        return;
    }
    if b.set_health(false) == BackendState::Healthy {
        log::warn!(
            "health: {} ({}) refused a connection, out of rotation until its health check passes",
            b.name,
            b.addr
        );
        host.count_check("refused");
        host.rotation_changed();
    }
}

/// Starts the probe loop for `backend` on the current Tokio runtime. The loop runs until the
/// backend is `Stopped` or `Draining`, probing every 25 ms while it is `Starting` and every
/// `health_check.interval` after; it re-reads the health settings on every round.
/// Starts `backend`'s probe loop; it ends when the backend drains or stops.
pub fn spawn_probe(host: Arc<dyn HealthHost>, backend: Arc<Backend>) {
    tokio::spawn(probe_loop(host, backend));
}

async fn probe_loop(host: Arc<dyn HealthHost>, backend: Arc<Backend>) {
    let lb_backend = pingora_load_balancing::Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(backend.addr),
        weight: 1,
        ext: Default::default(),
    };
    let mut cfg = host.health_settings();
    let mut check = build_check(&cfg, &backend);
    let mut streaks = Streaks::default();
    loop {
        let state = backend.state();
        if matches!(state, BackendState::Stopped | BackendState::Draining) {
            break;
        }
        let latest = host.health_settings();
        if latest != cfg {
            check = build_check(&latest, &backend);
            cfg = latest;
        }
        let ok = match &check {
            Some(c) => matches!(
                tokio::time::timeout(cfg.timeout, c.check(&lb_backend)).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        host.count_check(if ok { "pass" } else { "fail" });
        if let Some(next) = streaks.observe(ok, state, &cfg) {
            let prev = backend.set_health(next == BackendState::Healthy);
            if prev == state {
                match next {
                    BackendState::Healthy if state == BackendState::Starting => {
                        log::info!(
                            "health: {} ({}) passed its first check, taking traffic",
                            backend.name,
                            backend.addr
                        )
                    }
                    BackendState::Healthy => {
                        log::info!("health: {} ({}) recovered", backend.name, backend.addr)
                    }
                    _ => log::warn!(
                        "health: {} ({}) failed {} checks in a row, out of rotation",
                        backend.name,
                        backend.addr,
                        streaks.fails
                    ),
                }
                host.rotation_changed();
            }
        }
        let wait = if backend.state() == BackendState::Starting {
            STARTING_PROBE_INTERVAL
        } else {
            cfg.interval
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[test]
    fn thresholds_gate_every_flip() {
        let c = cfg();
        let mut s = Streaks::default();
        assert_eq!(s.observe(true, BackendState::Starting, &c), None);
        assert_eq!(
            s.observe(true, BackendState::Starting, &c),
            Some(BackendState::Healthy)
        );
        assert_eq!(s.observe(false, BackendState::Healthy, &c), None);
        assert_eq!(s.observe(false, BackendState::Healthy, &c), None);
        assert_eq!(
            s.observe(true, BackendState::Healthy, &c),
            None,
            "a pass resets the fail streak"
        );
        for _ in 0..2 {
            assert_eq!(s.observe(false, BackendState::Healthy, &c), None);
        }
        assert_eq!(
            s.observe(false, BackendState::Healthy, &c),
            Some(BackendState::Unhealthy)
        );
        assert_eq!(s.observe(true, BackendState::Unhealthy, &c), None);
        assert_eq!(
            s.observe(true, BackendState::Unhealthy, &c),
            Some(BackendState::Healthy)
        );
    }
}
