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
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod record;
pub mod seal;
pub mod store;

use crate::config::{SerializeMode, SessionsConfig, StoreKind, WithoutCookie};
use crate::resilience::breaker::{Breaker, BreakerPolicy, CircuitState};
use arc_swap::ArcSwap;
use cookie::{CookieCodec, Rejection, SessionId};
use pingora_http::{RequestHeader, ResponseHeader};
use record::Record;
use seal::Sealer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::memory::{now_ms, MemoryStore};
use store::redis::{Commit, RedisStore};
use store::{Expect, LockToken, SessionStore, StoreError, StoreStats};

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
    Existing,
    /// The store could not be read (down, slow): no data this time, and updates from
    /// this response are not saved.
    Unavailable,
}

impl SessionState {
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

pub struct SessionService {
    policy: ArcSwap<Policy>,
    backing: Backing,
    locks: Arc<lock::LockTable>,
    /// Trips when the shared store fails repeatedly, so requests stop waiting on it.
    store_breaker: Breaker,
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
    pub id: SessionId,
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
    pub pinned: Option<Arc<str>>,
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

    /// Removes internal session headers a client sent (when configured with names that
    /// the `x-drover-` rule does not already cover).
    pub fn strip_client_headers(&self, req: &mut RequestHeader) {
        let p = self.policy.load();
        for h in &p.wire.extra_strip {
            if req.headers.contains_key(h) {
                req.remove_header(h);
            }
        }
    }

    fn store_error(&self, e: &StoreError) {
        let kind = match e {
            StoreError::Timeout => "timeout",
            StoreError::CircuitOpen => "circuit_open",
            StoreError::Backend(_) => "backend",
            StoreError::Locked => "locked",
        };
        self.metrics.store_errors.with_label_values(&[kind]).inc();
    }

    /// Runs one shared-store call behind the store's breaker, timing it.
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(mut permit) = self.store_breaker.try_acquire() else {
            self.store_error(&StoreError::CircuitOpen);
            return Err(StoreError::CircuitOpen);
        };
        let start = Instant::now();
        let r = call.await;
        let took = start.elapsed();
        self.metrics.store_duration.observe(took.as_secs_f64());
        let now = Instant::now();
        match &r {
            // A lock held elsewhere is the store working as intended.
            Ok(_) | Err(StoreError::Locked) => {
                self.store_breaker.record_at(&mut permit, false, took, now)
            }
            Err(e) => {
                self.store_breaker.record_at(&mut permit, true, took, now);
                if !matches!(e, StoreError::Timeout) {
                    log::warn!("sessions: {e}");
                }
            }
        }
        self.store_breaker.release(&mut permit);
        if let Err(e) = &r {
            self.store_error(e);
        }
        r
    }

    fn ctx(&self, policy: Arc<Policy>, id: SessionId, origin: Origin, key: u64) -> SessionCtx {
        SessionCtx {
            id,
            state: match origin {
                Origin::Stored(_) => SessionState::Existing,
                _ => SessionState::New,
            },
            origin,
            record: Record::default(),
            data: None,
            cookie: CookieAction::None,
            repinned: false,
            pending: false,
            lock: None,
            token: None,
            key,
            policy,
            done: false,
            https: false,
        }
    }

    /// A client's first request (or one whose cookie was refused): an id is made up and
    /// sent in a cookie; nothing is read or stored.
    fn fresh(&self, policy: Arc<Policy>, client_hash: u64, now: u64) -> SessionCtx {
        let id = SessionId::random();
        let key = match policy.cfg.without_cookie {
            WithoutCookie::ClientIp => client_hash,
            WithoutCookie::Balance => id.hash64(),
        };
        let mut s = self.ctx(policy, id, Origin::Fresh, key);
        s.record = Record::new(now);
        s.cookie = CookieAction::Issue;
        s
    }

    fn reject(&self, r: Rejection) {
        let i = match r {
            Rejection::Malformed => 0,
            Rejection::BadSignature => 1,
            Rejection::Expired => 2,
        };
        self.metrics.rejected[i].inc();
    }

    /// Starts a request's session: a genuine cookie resumes its session, anything else
    /// gets a fresh one. A request that may write the session (`sessions.serialize`)
    /// takes the session's lock first, unless it has a body: then the lock waits for
    /// [`SessionService::acquire`].
    pub async fn begin(&self, req: &RequestHeader, client_hash: u64) -> SessionCtx {
        let policy = self.policy.load_full();
        let now = now_ms();
        let Some(value) = crate::wire::headers::cookie(req, &policy.cfg.cookie.name) else {
            return self.fresh(policy, client_hash, now);
        };
        let decoded = match policy.codec.decode(value, now / 1000) {
            Ok(d) => d,
            Err(r) => {
                self.reject(r);
                return self.fresh(policy, client_hash, now);
            }
        };
        let writer = policy.serializes(req);
        let id = decoded.id;
        let mut s = self.ctx(policy, id, Origin::Returned, id.hash64());
        // Until the record says otherwise: the backend of the first request, and the
        // cookie's issue time as the start of the absolute lifetime.
        s.record = Record::new(decoded.issued_at.saturating_mul(1000));
        s.record.worker = decoded.pin.and_then(|p| self.pins.load().get(&p).cloned());
        if writer && has_body(req) {
            s.pending = true;
            return s;
        }
        self.load(&mut s, writer, client_hash).await;
        s
    }

    /// For a request whose [`SessionCtx::lock_pending`] is true, once its body has been
    /// read: takes the session's lock (`body_buffered`: the whole body is buffered; if
    /// not, the request runs without the lock) and reads the record.
    pub async fn acquire(&self, s: &mut SessionCtx, body_buffered: bool, client_hash: u64) {
        if !s.pending {
            return;
        }
        s.pending = false;
        self.load(s, body_buffered, client_hash).await;
    }

    /// Reads the session's record, under its lock when `lock`.
    async fn load(&self, s: &mut SessionCtx, lock: bool, client_hash: u64) {
        let wait = s.policy.cfg.lock_timeout;
        let started = Instant::now();
        if lock {
            match self.locks.lock(&s.id, wait).await {
                Ok(l) => s.lock = Some(l),
                Err(lock::LockError::TimedOut) => {
                    self.metrics.lock_timeouts.inc();
                    log::warn!(
                        "sessions: {:?}: the session's previous writer held its lock for over {:?}; this request runs without it (its write is still checked for overlap)",
                        s.id,
                        wait
                    );
                }
                Err(lock::LockError::Full) => {}
            }
        }
        let now = now_ms();
        let found = match &self.backing {
            Backing::Memory(m) => m.get_now(&s.id, now),
            Backing::Redis(r) => {
                let read = if s.lock.is_some() {
                    let left = wait.saturating_sub(started.elapsed());
                    let lease = s.policy.cfg.redis.lock_ttl;
                    match self.guarded(r.lock_and_get(&s.id, left, lease)).await {
                        Ok((t, rec)) => {
                            s.token = Some(t);
                            Ok(rec)
                        }
                        Err(StoreError::Locked) => {
                            self.metrics.lock_timeouts.inc();
                            self.guarded(r.get(&s.id)).await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.guarded(r.get(&s.id)).await
                };
                match read {
                    Ok(rec) => rec,
                    Err(_) => return Self::unavailable(s),
                }
            }
        };
        match found {
            Some(rec) if rec.revoked => {
                // Rotated away by a regenerate: the id is dead; a fresh session.
                self.metrics.rejected[3].inc();
                self.release(s).await;
                *s = self.fresh(s.policy.clone(), client_hash, now);
            }
            Some(rec) => {
                let data = match (&rec.data, &s.policy.sealer) {
                    (None, _) => None,
                    (Some(d), None) => Some(d.to_vec()),
                    // Undecryptable data (damaged, or a retired key) is no data; the
                    // session's next write replaces it.
                    (Some(d), Some(sealer)) => sealer.open(&s.id.0, d),
                };
                s.origin = Origin::Stored(rec.version);
                s.state = SessionState::Existing;
                s.record = rec;
                s.data = data;
            }
            None if self.handover.load(std::sync::atomic::Ordering::Acquire) => {
                Self::unavailable(s)
            }
            // A genuine cookie without a record: a fresh session under the same id.
            None => {}
        }
    }

    /// The store could not be read: no data, nothing written, nothing held.
    fn unavailable(s: &mut SessionCtx) {
        s.state = SessionState::Unavailable;
        s.lock = None;
        s.token = None;
        s.data = None;
    }

    /// Drops the in-process lock and, on Redis, the shared one (without waiting for
    /// Redis' answer: nothing depends on it, and a lost release expires with its lease).
    async fn release(&self, s: &mut SessionCtx) {
        s.lock = None;
        if let (Backing::Redis(r), Some(t)) = (&self.backing, s.token.take()) {
            r.release_detached(&s.id, t);
        }
    }

    pub fn preference(&self, s: &SessionCtx) -> Preference {
        let sticky =
            !(s.origin == Origin::Fresh && s.policy.cfg.without_cookie == WithoutCookie::Balance);
        Preference {
            pinned: s.record.worker.clone(),
            key: s.key,
            sticky,
        }
    }

    /// Records the backend a request went to. `repinned`: the pinned backend had left
    /// rotation (dead, draining, breaker open), so the session now lives elsewhere.
    pub fn on_selected(&self, s: &mut SessionCtx, backend: &Arc<str>, repinned: bool) {
        if s.state == SessionState::Unavailable {
            return;
        }
        if s.origin == Origin::Fresh {
            // The cookie will carry this backend's pin.
            s.record.worker = Some(backend.clone());
            self.learn_pin(backend);
            return;
        }
        match &s.record.worker {
            None => {
                s.record.worker = Some(backend.clone());
                s.repinned = true;
            }
            Some(old) if repinned && **old != **backend => {
                log::debug!("sessions: {:?} migrated {old} -> {backend}", s.id);
                self.metrics.migrated.inc();
                s.record.worker = Some(backend.clone());
                s.repinned = true;
            }
            Some(_) => {}
        }
    }

    fn learn_pin(&self, backend: &Arc<str>) {
        let pin = cookie::pin_of(backend);
        let known = self.pins.load();
        if known.get(&pin).is_some_and(|n| **n == **backend) || known.len() >= MAX_PINS {
            return;
        }
        self.pins.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(pin, backend.clone());
            m
        });
    }

    /// Adds the session headers to the request going to the worker.
    #[cfg(test)]
    pub fn annotate_request(&self, s: &SessionCtx, req: &mut RequestHeader) {
        let mut edits = crate::wire::headers::HeaderEdits::default();
        self.annotate(s, &mut edits);
        edits.apply(req);
    }

    /// The session's headers for the worker, as edits to apply with the others.
    pub fn annotate(&self, s: &SessionCtx, edits: &mut crate::wire::headers::HeaderEdits) {
        let w = &s.policy.wire;
        if let Ok(id) = http::HeaderValue::from_bytes(&s.id.hex_bytes()) {
            edits.insert(w.id.clone(), id);
        }
        edits.insert(
            w.state.clone(),
            http::HeaderValue::from_static(s.state.as_str()),
        );
        if let Some(d) = &s.data {
            if let Ok(v) = http::HeaderValue::from_bytes(d) {
                edits.insert(w.data.clone(), v);
            }
        }
    }

    /// [`SessionService::respond`] on a `ResponseHeader`: takes the worker's update and
    /// control fields out of it and adds the cookie.
    pub async fn on_response(&self, s: &mut SessionCtx, resp: &mut ResponseHeader) {
        let (update_name, control_name) = self.response_fields(s);
        let (update_name, control_name) = (update_name.clone(), control_name.clone());
        let update = resp
            .headers
            .get(&update_name)
            .map(|v| v.as_bytes().to_vec());
        resp.remove_header(&update_name);
        let control = resp
            .headers
            .get(&control_name)
            .map(|v| v.as_bytes().to_vec());
        resp.remove_header(&control_name);
        if let Some(c) = self.respond(s, update, control.as_deref()).await {
            let _ = resp.append_header(http::header::SET_COOKIE, c);
        }
    }

    /// The fields a worker talks to drover through on its response: the data update
    /// (`sessions.update_header`) and the control (`sessions.control_header`). Carriers
    /// pick them out of the response head and hand their values to
    /// [`SessionService::respond`].
    pub fn response_fields<'a>(
        &self,
        s: &'a SessionCtx,
    ) -> (&'a http::HeaderName, &'a http::HeaderName) {
        let cfg = &s.policy.cfg;
        (&cfg.update_header, &cfg.control_header)
    }

    /// The worker's final response head arrived with these update and control values:
    /// saves the record, releases the lock, and returns the `Set-Cookie` value to add
    /// (a new or regenerated session's cookie, or an expired one for a destroyed
    /// session).
    pub async fn respond(
        &self,
        s: &mut SessionCtx,
        update: Option<Vec<u8>>,
        control: Option<&[u8]>,
    ) -> Option<String> {
        let control = match control.map(Control::parse) {
            Some(None) => {
                log::warn!(
                    "sessions: a worker sent an unknown `{}` value (accepted: regenerate, destroy); ignored",
                    s.policy.cfg.control_header
                );
                None
            }
            Some(c) => c,
            None => None,
        };
        self.save(s, update, control).await;
        self.take_set_cookie(s)
    }

    /// The `Set-Cookie` value this response carries, once: the cookie of a session
    /// started (or regenerated) by this request, with its backend's pin, or an expired
    /// cookie for a destroyed one.
    pub fn take_set_cookie(&self, s: &mut SessionCtx) -> Option<String> {
        let action = std::mem::replace(&mut s.cookie, CookieAction::None);
        let headers = &s.policy.set_cookie;
        match action {
            CookieAction::None => None,
            CookieAction::Expire => Some(headers.expire(s.https)),
            CookieAction::Issue => {
                // Issued now: a fresh or regenerated session's record was created now.
                let pin = s.record.worker.as_deref().map(cookie::pin_of);
                let value = s
                    .policy
                    .codec
                    .encode(&s.id, s.record.created_ms / 1000, pin);
                Some(headers.set(&value, s.https))
            }
        }
    }

    /// Saves the worker's update (the update header's value), refusing updates over
    /// `max_data_bytes`, and releases the session's lock.
    pub async fn save_update(&self, s: &mut SessionCtx, update: Option<Vec<u8>>) {
        self.save(s, update, None).await;
    }

    /// Releases what `on_response` did not (the request failed before a response).
    pub async fn finish(&self, s: &mut SessionCtx) {
        if s.done {
            return;
        }
        s.done = true;
        self.release(s).await;
    }

    fn checked_update(&self, cfg: &SessionsConfig, update: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match update {
            Some(u) if u.len() > cfg.max_data_bytes => {
                self.metrics.data_refused.inc();
                log::error!(
                    "sessions: a worker set {} bytes of session data; `sessions.max_data_bytes` is {}; the update was refused and the session keeps its previous data",
                    u.len(),
                    cfg.max_data_bytes
                );
                None
            }
            other => other,
        }
    }

    fn conflict(&self, s: &SessionCtx, what: &str) {
        self.metrics.write_conflicts.inc();
        log::warn!(
            "sessions: {:?}: {what} not saved: another request wrote the session after this one read it (a lost update detected; serialise the route with `sessions.serialize_paths` if it must not happen)",
            s.id
        );
    }

    async fn save(&self, s: &mut SessionCtx, update: Option<Vec<u8>>, control: Option<Control>) {
        if s.done {
            return;
        }
        s.done = true;
        if s.pending {
            // Never loaded (the request failed while its body was read).
            return;
        }
        if s.state == SessionState::Unavailable {
            if update.is_some() || control.is_some() {
                self.metrics.write_conflicts.inc();
                log::warn!(
                    "sessions: {:?}: update not saved because the session store was unavailable for this request",
                    s.id
                );
            }
            return;
        }
        if control.is_none() && update.is_none() && s.origin == Origin::Fresh {
            // A client's first request without data: nothing to keep (the cookie pins
            // it). The common case of a cookieless flood, so it returns before any work.
            return;
        }
        let policy = s.policy.clone();
        let cfg = &policy.cfg;
        let update = self.checked_update(cfg, update);
        let now = now_ms();
        let limits = (
            cfg.ttl.as_millis() as u64,
            cfg.idle_timeout.as_millis() as u64,
        );
        let expect = match s.origin {
            Origin::Stored(v) => Expect::Version(v),
            _ => Expect::Absent,
        };
        let version = match s.origin {
            Origin::Stored(v) => v,
            _ => 0,
        };
        let token = s.token.take();
        // The record as it will be written when data changes.
        let next = || {
            let mut rec = s.record.clone();
            rec.hits = rec.hits.saturating_add(1);
            rec.last_seen_ms = now;
            if let Some(u) = &update {
                rec.data = if u.is_empty() {
                    None
                } else {
                    Some(match &policy.sealer {
                        Some(sealer) => sealer.seal(&s.id.0, u).into(),
                        None => u.clone().into(),
                    })
                };
            }
            rec
        };
        let ttl_of = |rec: &Record| {
            Duration::from_millis(
                rec.expires_ms(limits.0, limits.1)
                    .saturating_sub(now)
                    .max(1),
            )
        };
        let mut committed = token.is_none();
        match control {
            Some(Control::Destroy) => {
                s.cookie = CookieAction::Expire;
                if let Origin::Stored(_) = s.origin {
                    let ok = match &self.backing {
                        Backing::Memory(m) => Some(m.delete_if(&s.id, expect, now)),
                        Backing::Redis(r) => {
                            committed = true;
                            self.guarded(r.commit(&s.id, token.as_ref(), Commit::Delete { expect }))
                                .await
                                .ok()
                        }
                    };
                    if ok == Some(false) {
                        self.conflict(s, "destroy");
                    } else if ok.is_none() {
                        self.metrics.writes_failed.inc();
                    }
                }
            }
            Some(Control::Regenerate) => {
                let mut rec = next();
                rec.version = 1;
                rec.created_ms = now;
                let new = SessionId::random();
                if let Some(sealed) = &rec.data {
                    // Data is sealed to its id: re-seal it for the new one.
                    if let Some(sealer) = &policy.sealer {
                        rec.data = sealer
                            .open(&s.id.0, sealed)
                            .map(|plain| sealer.seal(&new.0, &plain).into());
                    }
                }
                let ttl = ttl_of(&rec);
                let ok = if s.origin == Origin::Fresh {
                    // Nobody knows the made-up id yet: just use another one.
                    if rec.data.is_some() {
                        self.write(&new, Expect::Absent, &rec, ttl, None).await
                    } else {
                        Some(true)
                    }
                } else {
                    let mut tomb = Record::tombstone(now);
                    tomb.version = version.saturating_add(1);
                    let tomb_ttl = cfg.idle_timeout;
                    match &self.backing {
                        Backing::Memory(m) => Some(m.rotate(
                            &s.id,
                            expect,
                            tomb,
                            tomb_ttl,
                            &new,
                            rec.clone(),
                            ttl,
                            now,
                        )),
                        Backing::Redis(r) => {
                            committed = true;
                            self.guarded(r.commit(
                                &s.id,
                                token.as_ref(),
                                Commit::Rotate {
                                    expect,
                                    tombstone: &tomb,
                                    tombstone_ttl: tomb_ttl,
                                    new: &new,
                                    record: &rec,
                                    ttl,
                                },
                            ))
                            .await
                            .ok()
                        }
                    }
                };
                if ok == Some(true) {
                    if rec.data.is_some() {
                        self.metrics.created.inc();
                    }
                    s.id = new;
                    s.origin = Origin::Stored(rec.version);
                    s.record = rec;
                    s.cookie = CookieAction::Issue;
                } else if ok == Some(false) {
                    self.conflict(s, "regenerate");
                } else {
                    self.metrics.writes_failed.inc();
                }
            }
            None => match (&update, s.origin) {
                // A made-up id without data: nothing to keep (the cookie pins it).
                (None, Origin::Fresh) => {}
                (Some(u), Origin::Fresh) if u.is_empty() => {}
                (Some(_), _) => {
                    let mut rec = next();
                    rec.version = version.saturating_add(1);
                    let ttl = ttl_of(&rec);
                    committed = true;
                    match self.write(&s.id, expect, &rec, ttl, token.as_ref()).await {
                        Some(true) if expect == Expect::Absent => self.metrics.created.inc(),
                        Some(true) | None => {}
                        Some(false) => self.conflict(s, "update"),
                    }
                }
                // The cookie came back: the record appears now.
                (None, Origin::Returned) => {
                    let rec = next();
                    let ttl = ttl_of(&rec);
                    committed = true;
                    if self
                        .write(&s.id, Expect::Absent, &rec, ttl, token.as_ref())
                        .await
                        == Some(true)
                    {
                        self.metrics.created.inc();
                    }
                }
                (None, Origin::Stored(_)) => {
                    let pin = s.repinned.then(|| s.record.worker.clone()).flatten();
                    match &self.backing {
                        Backing::Memory(m) => {
                            m.touch_record(&s.id, now, limits, pin.as_ref());
                        }
                        Backing::Redis(_) => {
                            // Slide the expiry (a metadata write at the same version,
                            // which never undoes a data write) when it moved enough.
                            let step = (limits.1 / 32).max(1000);
                            if s.repinned || now.saturating_sub(s.record.last_seen_ms) >= step {
                                let rec = next();
                                let ttl = ttl_of(&rec);
                                committed = true;
                                self.write(&s.id, expect, &rec, ttl, token.as_ref()).await;
                            }
                        }
                    }
                }
            },
        }
        s.lock = None;
        if !committed {
            if let (Backing::Redis(r), Some(t)) = (&self.backing, token) {
                // The worker changed nothing: one round trip for the request (lock and
                // read); the release goes out without the response waiting for it.
                r.release_detached(&s.id, t);
            }
        }
    }

    /// One conditional write (and, on Redis, the release of `token`'s lock). `None`:
    /// the store failed (counted and logged by `guarded`).
    async fn write(
        &self,
        id: &SessionId,
        expect: Expect,
        rec: &Record,
        ttl: Duration,
        token: Option<&LockToken>,
    ) -> Option<bool> {
        match &self.backing {
            Backing::Memory(m) => Some(m.write_if(id, expect, rec.clone(), ttl, now_ms())),
            Backing::Redis(r) => {
                let r = self
                    .guarded(r.commit(
                        id,
                        token,
                        Commit::Write {
                            expect,
                            record: rec,
                            ttl,
                        },
                    ))
                    .await
                    .ok();
                if r.is_none() {
                    self.metrics.writes_failed.inc();
                }
                r
            }
        }
    }

    /// Control-thread tick: sweeps the memory store and publishes gauges.
    pub fn tick(&self, sweep: bool) {
        let up = self.store_breaker.state() == CircuitState::Closed;
        self.metrics.store_up.set(up as i64);
        if let Backing::Memory(m) = &self.backing {
            if sweep {
                m.sweep_step(now_ms());
            }
            let st = m.stats_now();
            self.publish(&st);
        }
    }

    /// Publishes store statistics into the metrics (counters advance by the delta).
    pub fn publish(&self, st: &StoreStats) {
        self.metrics.active.set(st.active as i64);
        if let Ok(mut last) = self.last_stats.lock() {
            let (e, v) = *last;
            self.metrics.expired.inc_by(st.expired.saturating_sub(e));
            self.metrics.evicted.inc_by(st.evicted.saturating_sub(v));
            *last = (st.expired.max(e), st.evicted.max(v));
        }
        for (w, n) in &st.per_worker {
            self.metrics
                .per_backend
                .with_label_values(&[w])
                .set(*n as i64);
        }
        self.cache_per_worker(st);
    }

    fn cache_per_worker(&self, st: &StoreStats) {
        if let Ok(mut pw) = self.per_worker_cache.lock() {
            pw.clone_from(&st.per_worker);
        }
    }

    /// Sessions per backend name, as last counted (for the dashboard).
    pub fn per_worker(&self) -> std::collections::BTreeMap<String, u64> {
        self.per_worker_cache
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Whole-store statistics for `/api/sessions` (bounded work on Redis).
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        match &self.backing {
            Backing::Memory(m) => Ok(m.stats_now()),
            Backing::Redis(r) => {
                let st = self.guarded(r.stats()).await?;
                self.cache_per_worker(&st);
                self.metrics.active.set(st.active as i64);
                for (w, n) in &st.per_worker {
                    self.metrics
                        .per_backend
                        .with_label_values(&[w])
                        .set(*n as i64);
                }
                Ok(st)
            }
        }
    }

    pub fn store_up(&self) -> bool {
        self.store_breaker.state() == CircuitState::Closed
    }

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

#[cfg(test)]
mod tests;
