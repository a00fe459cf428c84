//! Sticky sessions owned by drover: a signed cookie names a session, the session's
//! record (pinned backend, times, hits, data, version) lives in a store, and the worker
//! sees the data in a request header and changes it with a response header.
//!
//! A request walks: `begin` (verify the cookie; read the record; a request that may
//! write the session first takes the session's lock) → `acquire` (only for such a
//! request with a body, on Pingora's path: the lock is taken once the body has been
//! read, so a slow client never holds it) → `preference` / `on_selected` (route to the
//! pinned backend, re-pin when it left rotation) → `annotate` (data to the worker) →
//! `respond` (the worker's update and control, which each carrier picks out of its
//! response head: write the record with a compare-and-set on its version, release the
//! lock, set the cookie) → `finish` (releases anything `respond` did not, e.g. on a 502).
//!
//! Guarantees (docs/SESSIONS.md): requests of a session never wait for each other
//! unless both may write it (`sessions.serialize`); writers of one session run one at a
//! time from reading the record to the worker's response head, per session id (no
//! stripes, so no cross-user waits), at most `lock_timeout`; every write is a
//! compare-and-set on the version the request read, so an update that overlapped
//! another one is refused and counted (`drover_session_write_conflicts_total`), never
//! silently lost. A client that never returned its cookie and got no data owns no
//! record.

pub mod cookie;
mod handover;
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod record;
mod request;
mod save;
pub mod seal;
mod stats;
pub mod store;

use crate::config::{SerializeMode, SessionsConfig, StoreKind};
use crate::resilience::breaker::{Breaker, BreakerPolicy};
use arc_swap::ArcSwap;
use cookie::{CookieCodec, SessionId};
use pingora_http::RequestHeader;
use record::Record;
use seal::Sealer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use store::memory::{now_ms, MemoryStore};
use store::redis::RedisStore;
use store::{LockToken, SessionStore};

/// Most sessions whose writers hold or wait for the in-process lock at once; past it a
/// writer runs without the lock (its write is still compare-and-set).
const MAX_LOCKED_SESSIONS: usize = 65_536;
/// Most backend names remembered for cookie pins.
const MAX_PINS: usize = 4096;
/// A request body up to this size is read before a serialised request takes the
/// session's lock (Pingora replays it to the worker from its retry buffer, whose size
/// this is). A larger, chunked or `Expect: 100-continue` body is not waited for: that
/// request runs without the lock, and its write is still compare-and-set.
pub const LOCK_BODY_BUFFER: u64 = 64 * 1024;

/// What the worker is told about the session (state header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No data yet: a client's first request, or a returning cookie without a record.
    New,
    /// The record was read: the worker gets its data, if any.
    Existing,
    /// The store could not be read (down, slow): no data this time, and updates from
    /// this response are not saved.
    Unavailable,
}

impl SessionState {
    /// The state header's value as the worker sees it: `new`, `existing` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::New => "new",
            SessionState::Existing => "existing",
            SessionState::Unavailable => "unavailable",
        }
    }
}

/// Where a request's session stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// No valid cookie: an id drover just made up. Nothing is stored unless the worker
    /// sets data.
    Fresh,
    /// A genuine cookie without a record (never stored, expired or evicted): the id is
    /// ours (we signed it), so the record is created under it.
    Returned,
    /// A record at this version.
    Stored(u64),
}

/// A worker's instruction in the control header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// New id, same data (plus this response's update); the old id stops working.
    Regenerate,
    /// Record gone, cookie expired.
    Destroy,
}

impl Control {
    fn parse(v: &[u8]) -> Option<Control> {
        let v = v.trim_ascii();
        if v.eq_ignore_ascii_case(b"regenerate") {
            Some(Control::Regenerate)
        } else if v.eq_ignore_ascii_case(b"destroy") {
            Some(Control::Destroy)
        } else {
            None
        }
    }
}

/// The cookie a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CookieAction {
    None,
    /// The session's (new or regenerated) id.
    Issue,
    /// `Max-Age=0`: the session was destroyed.
    Expire,
}

/// Settings that a reload may change, swapped as one value.
pub struct Policy {
    /// The `sessions` section in force; a reload swaps the whole policy.
    pub cfg: SessionsConfig,
    codec: CookieCodec,
    set_cookie: cookie::CookieHeader,
    sealer: Option<Sealer>,
    wire: WireNames,
}

impl Policy {
    /// Whether a request may write its session and so takes the session's lock.
    fn serializes(&self, req: &RequestHeader) -> bool {
        let by_method = match self.cfg.serialize {
            SerializeMode::None => false,
            SerializeMode::All => true,
            SerializeMode::UnsafeMethods => !matches!(
                req.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::TRACE
            ),
        };
        by_method || {
            let path = req.uri.path();
            self.cfg
                .serialize_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()))
        }
    }
}

/// Header names prepared once per policy for the per-request path.
struct WireNames {
    /// Names to insert into the upstream request (cloning one is a reference count).
    id: http::HeaderName,
    state: http::HeaderName,
    data: http::HeaderName,
    /// Configured names that the `x-drover-` rule does not already strip from client
    /// requests; empty with the default names, so stripping costs nothing then.
    extra_strip: Vec<http::HeaderName>,
}

impl WireNames {
    fn new(cfg: &SessionsConfig) -> Self {
        let internal = crate::wire::headers::is_internal;
        WireNames {
            id: cfg.id_header.clone(),
            state: cfg.state_header.clone(),
            data: cfg.data_header.clone(),
            extra_strip: [
                &cfg.data_header,
                &cfg.id_header,
                &cfg.state_header,
                &cfg.update_header,
                &cfg.control_header,
            ]
            .into_iter()
            .filter(|h| !internal(h))
            .cloned()
            .collect(),
        }
    }
}

enum Backing {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// drover's sticky sessions: cookies, the store, locks and metrics. One per process, shared by
/// every request.
pub struct SessionService {
    policy: ArcSwap<Policy>,
    backing: Backing,
    locks: Arc<lock::LockTable>,
    /// Trips when the shared store fails repeatedly, so requests stop waiting on it.
    store_breaker: Breaker,
    /// Session series in drover's registry.
    pub metrics: metrics::SessionMetrics,
    kind: StoreKind,
    /// The Redis connection settings the store was built with (a change needs a restart).
    redis_cfg: crate::config::RedisConfig,
    generated_secret: Option<Vec<u8>>,
    generated_data_key: Option<[u8; 32]>,
    last_stats: std::sync::Mutex<(u64, u64)>,
    /// During a graceful upgrade (memory store), sessions of the old process are not
    /// here until its snapshot is merged: a genuine cookie without a record then means
    /// "not yet", not "gone", and must not be replaced by a fresh session.
    handover: std::sync::atomic::AtomicBool,
    /// Sessions per backend as last counted (sweeper cycle or shared-store scan).
    per_worker_cache: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Backend names by the pin their cookies carry, learned as first requests are
    /// placed (copy on write: a name is added once, read on every returning cookie
    /// without a record).
    pins: ArcSwap<HashMap<u32, Arc<str>>>,
}

/// Per-request session state, kept in the proxy's request context.
pub struct SessionCtx {
    policy: Arc<Policy>,
    /// The session's id: the cookie's, or a fresh one when the request had no valid cookie (and
    /// after a regenerate).
    pub id: SessionId,
    /// What the worker is told about the session (the state header).
    pub state: SessionState,
    origin: Origin,
    record: Record,
    /// Plaintext data for the worker.
    data: Option<Vec<u8>>,
    cookie: CookieAction,
    /// The session's pin changed (first placement of a stored session, or migration).
    repinned: bool,
    /// A serialised request whose lock (and record read) waits for its body.
    pending: bool,
    lock: Option<lock::SessionLock>,
    token: Option<LockToken>,
    /// Hash used to pick a backend when the session is not pinned (or its pin is gone).
    key: u64,
    done: bool,
    /// The request came over HTTPS: its cookie is `Secure` even without
    /// `sessions.cookie.secure`.
    https: bool,
}

impl SessionCtx {
    /// True when the request may write its session and has a body: the caller reads
    /// the body (up to [`LOCK_BODY_BUFFER`]) and then calls [`SessionService::acquire`].
    pub fn lock_pending(&self) -> bool {
        self.pending
    }

    /// The request came over HTTPS (the cookie it gets is `Secure`).
    pub fn set_https(&mut self, https: bool) {
        self.https = https;
    }
}

/// Routing wish of a session for the balancer.
pub struct Preference {
    /// Name of the backend the session is pinned to; `None` when it has not been placed yet.
    pub pinned: Option<Arc<str>>,
    /// Stable per-session hash for the affinity ring, used when there is no usable pin.
    pub key: u64,
    /// False: no affinity (a client's first request with `without_cookie: balance`);
    /// use the strategy.
    pub sticky: bool,
}

/// The declared body length of a request (`Content-Length`), `None` when it has none
/// or a chunked one.
pub fn declared_body_len(req: &RequestHeader) -> Option<u64> {
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the body of a serialised request is read before it takes the session's
/// lock: declared by `Content-Length`, at most [`LOCK_BODY_BUFFER`] bytes, and no
/// `Expect: 100-continue` (that client waits for the worker's go-ahead before sending
/// it). Otherwise the request runs without the lock (its write is still
/// compare-and-set).
pub fn buffer_body_before_lock(req: &RequestHeader) -> bool {
    !req.headers.contains_key(http::header::EXPECT)
        && declared_body_len(req).is_some_and(|n| n <= LOCK_BODY_BUFFER)
}

fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || declared_body_len(req).is_some_and(|n| n > 0)
}

/// Why the session service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A generated key file (`session-secret`, `session-data-key`) could not be read or
    /// created.
    #[error(transparent)]
    Key(#[from] keys::KeyFileError),
    /// The Redis store's link could not be set up.
    #[error(transparent)]
    Redis(#[from] crate::redis_link::LinkError),
}

impl SessionService {
    /// Builds the service for `cfg` (generating keys into `runtime_dir` if none are
    /// configured) and loads the memory snapshot if there is one.
    pub fn new(
        cfg: &SessionsConfig,
        runtime_dir: &std::path::Path,
        registry: &prometheus::Registry,
    ) -> Result<Self, StartError> {
        let generated_secret = if cfg.secrets.is_empty() {
            let p = runtime_dir.join("session-secret");
            let k = keys::load_or_create(&p)?;
            Some(k.to_vec())
        } else {
            None
        };
        let generated_data_key = if cfg.encrypt && cfg.data_keys.is_empty() {
            let p = runtime_dir.join("session-data-key");
            Some(keys::load_or_create(&p)?)
        } else {
            None
        };
        let metrics = metrics::SessionMetrics::new(registry);
        metrics.store_up.set(1);
        let backing = match cfg.store {
            StoreKind::Memory => {
                let m = MemoryStore::new(cfg.max_sessions);
                if let Some(p) = &cfg.snapshot_path {
                    if p.exists() {
                        match m.load_snapshot(p, now_ms()) {
                            Ok(n) => {
                                log::info!("sessions: restored {n} sessions from {}", p.display())
                            }
                            Err(e) => log::warn!("sessions: snapshot not loaded: {e}"),
                        }
                    }
                }
                Backing::Memory(Arc::new(m))
            }
            StoreKind::Redis => {
                let link = crate::redis_link::RedisLink::new(&cfg.redis)?;
                log::info!(
                    "sessions: Redis store ({}{})",
                    link.topology(),
                    if link.caches() { ", local cache" } else { "" }
                );
                Backing::Redis(Arc::new(
                    RedisStore::new(link)
                        .with_unreplicated_counter(metrics.writes_unreplicated.clone()),
                ))
            }
        };
        let store_breaker = Breaker::new(BreakerPolicy {
            enabled: true,
            consecutive_failures: 3,
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(1),
            half_open_probes: 1,
            ..BreakerPolicy::disabled()
        });
        store_breaker.set_name("session-store");
        let svc = SessionService {
            policy: ArcSwap::from_pointee(Policy {
                cfg: cfg.clone(),
                codec: CookieCodec::new(&[], cfg.ttl),
                set_cookie: cookie::CookieHeader::new(&cfg.cookie),
                sealer: None,
                wire: WireNames::new(cfg),
            }),
            backing,
            locks: lock::LockTable::new(MAX_LOCKED_SESSIONS),
            store_breaker,
            metrics,
            kind: cfg.store,
            redis_cfg: cfg.redis.clone(),
            generated_secret,
            generated_data_key,
            last_stats: std::sync::Mutex::new((0, 0)),
            handover: std::sync::atomic::AtomicBool::new(false),
            per_worker_cache: std::sync::Mutex::new(Default::default()),
            pins: ArcSwap::from_pointee(HashMap::new()),
        };
        svc.policy.store(Arc::new(svc.build_policy(cfg)));
        Ok(svc)
    }

    fn build_policy(&self, cfg: &SessionsConfig) -> Policy {
        let mut secrets = cfg.secrets.clone();
        if secrets.is_empty() {
            secrets.extend(self.generated_secret.clone());
        }
        let sealer = cfg.encrypt.then(|| {
            let mut keys = cfg.data_keys.clone();
            if keys.is_empty() {
                keys.extend(self.generated_data_key);
            }
            Sealer::new(&keys)
        });
        Policy {
            cfg: cfg.clone(),
            codec: CookieCodec::new(&secrets, cfg.ttl),
            set_cookie: cookie::CookieHeader::new(&cfg.cookie),
            sealer,
            wire: WireNames::new(cfg),
        }
    }

    /// Applies a reloaded `sessions:` section. The store itself is fixed for the life of
    /// the process (its contents would be lost); changing it needs a restart.
    pub fn apply(&self, cfg: &SessionsConfig) {
        if cfg.store != self.kind
            || (cfg.store == StoreKind::Redis && !cfg.redis.same_connection(&self.redis_cfg))
        {
            log::warn!("reload: `sessions.store` / `sessions.redis` changed; it takes effect only after a restart");
        }
        if cfg.encrypt && self.generated_data_key.is_none() && cfg.data_keys.is_empty() {
            log::warn!("reload: `sessions.encryption` turned on without keys; it takes effect only after a restart");
            return;
        }
        self.policy.store(Arc::new(self.build_policy(cfg)));
    }

    /// `memory` or `redis`: the store chosen at start (a reload cannot change it).
    pub fn store_kind(&self) -> &'static str {
        match self.backing {
            Backing::Memory(_) => "memory",
            Backing::Redis(_) => "redis",
        }
    }

    /// The Redis connection of the session store, if it is on Redis (shared limits use
    /// the same one).
    pub fn redis_link(&self) -> Option<Arc<crate::redis_link::RedisLink>> {
        match &self.backing {
            Backing::Redis(r) => Some(r.link().clone()),
            Backing::Memory(_) => None,
        }
    }

    /// The store behind the trait (admin, tests).
    pub fn store(&self) -> Arc<dyn SessionStore> {
        match &self.backing {
            Backing::Memory(m) => m.clone(),
            Backing::Redis(r) => r.clone(),
        }
    }

    /// Sessions whose writers hold or wait for the in-process lock right now.
    pub fn locked_sessions(&self) -> usize {
        self.locks.len()
    }
}

#[cfg(test)]
mod tests;
