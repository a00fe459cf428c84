//! Remote upstreams from `upstreams:`: static ones registered at start and re-synced on
//! reload; discovered ones (`discover: dns`, `srv:`) handed to `discovery`.

pub mod discovery;

use crate::balancing::Backend;
use crate::config::Config;
use crate::health;
use crate::state::Shared;
use discovery::Discovery;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Makes the pool's static remote backends match `cfg.upstreams`: new ones are added
/// (and get traffic once healthy); removed or changed ones drain and leave. Then starts
/// or stops the discovery of DNS-discovered entries.
pub fn sync(shared: &Arc<Shared>, discovery: &Arc<Discovery>, cfg: &Config) {
    let members = shared.pool.members();
    let remote: Vec<_> = members
        .iter()
        .filter(|b| b.worker_id.is_none() && !discovery::is_discovered(b))
        .cloned()
        .collect();
    for b in &remote {
        let keep = cfg.upstreams.iter().any(|u| {
            u.addr == b.addr && u.weight == b.weight && *u.name == *b.name && u.link == b.link
        });
        if !keep {
            log::info!("upstreams: {} removed from config, draining", b.name);
            drain_and_remove(shared, b, cfg.workers.drain_timeout);
        }
    }
    for u in &cfg.upstreams {
        let exists = remote.iter().any(|b| {
            b.addr == u.addr && b.weight == u.weight && *b.name == *u.name && b.link == u.link
        });
        if !exists {
            let b = shared.make_backend(&u.name, None, u.addr, u.weight, &u.link);
            log::info!(
                "upstreams: added {} ({}) weight {}",
                u.name,
                u.addr,
                u.weight
            );
            shared.pool.add(b.clone());
            health::spawn_probe(shared.clone(), b);
        }
    }
    discovery::sync(shared, discovery, cfg);
}

/// Takes `b` out of rotation at once, waits for its in-flight requests (at most
/// `timeout`), then removes it from the pool.
pub fn drain_and_remove(shared: &Arc<Shared>, b: &Arc<Backend>, timeout: Duration) {
    b.begin_drain();
    shared.pool.refresh();
    let shared = shared.clone();
    let b = b.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        while b.inflight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        b.mark_stopped();
        shared.pool.remove(b.id);
    });
}
