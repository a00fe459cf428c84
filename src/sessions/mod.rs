//! Sticky sessions owned by drover: a signed cookie names a session, the session's
//! record (pinned backend, times, hits, data) lives in a store, and the worker sees the
//! data in a request header and changes it with a response header.
//!
//! A request walks: `begin` (verify the cookie, take the session's lock, read the
//! record) → `preference` / `on_selected` (route to the pinned backend, re-pin when it
//! left rotation) → `annotate_request` (data to the worker) → `on_response` (take the
//! worker's update, write the record, release the lock, set the cookie for a new
//! session) → `finish` (releases anything `on_response` did not, e.g. on a 502).
//!
//! Requests of one session are serialised by the lock (in-process stripes, plus a
//! fenced Redis lock across instances), so concurrent read-modify-write requests never
//! lose an update. The record is written before the response headers leave, so the
//! client's next request always sees it.

pub mod cookie;
pub mod keys;
pub mod metrics;
pub mod record;
pub mod seal;
pub mod store;

use crate::config::{SessionsConfig, StoreKind, WithoutCookie};
use crate::resilience::breaker::{Breaker, BreakerPolicy, CircuitState};
use arc_swap::ArcSwap;
use cookie::{CookieCodec, Rejection, SessionId};
use pingora_http::{RequestHeader, ResponseHeader};
use record::Record;
use seal::Sealer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::memory::{now_ms, MemoryStore};
use store::redis::RedisStore;
use store::{LockToken, SessionStore, StoreError, StoreStats};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// In-process lock stripes; two sessions sharing a stripe only wait for each other.
const LOCK_STRIPES: usize = 4096;

/// What the worker is told about the session (state header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    New,
    Existing,
    /// The store could not be read (down, slow, locked too long): no data this time,
    /// and updates from this response are not saved.
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

/// Settings that a reload may change, swapped as one value.
pub struct Policy {
    pub cfg: SessionsConfig,
    codec: CookieCodec,
    sealer: Option<Sealer>,
    wire: WireNames,
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
        WireNames {
            id: cfg.id_header.clone(),
            state: cfg.state_header.clone(),
            data: cfg.data_header.clone(),
            extra_strip: [
                &cfg.data_header,
                &cfg.id_header,
                &cfg.state_header,
                &cfg.update_header,
            ]
            .into_iter()
            .filter(|h| !crate::proxy::headers::is_internal(h))
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
    locks: Box<[Arc<Mutex<()>>]>,
    /// Trips when the shared store fails repeatedly, so requests stop waiting on it.
    store_breaker: Breaker,
    pub metrics: metrics::SessionMetrics,
    kind: StoreKind,
    redis_url: String,
    generated_secret: Option<Vec<u8>>,
    generated_data_key: Option<[u8; 32]>,
    last_stats: std::sync::Mutex<(u64, u64)>,
    /// During a graceful upgrade (memory store), sessions of the old process are not
    /// here until its snapshot is merged: a genuine cookie without a record then means
    /// "not yet", not "gone", and must not be replaced by a fresh session.
    handover: std::sync::atomic::AtomicBool,
    /// Sessions per backend as last counted (sweeper cycle or shared-store scan).
    per_worker_cache: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Per-request session state, kept in the proxy's request context.
pub struct SessionCtx {
    policy: Arc<Policy>,
    pub id: SessionId,
    pub state: SessionState,
    record: Record,
    /// Plaintext data for the worker.
    data: Option<Vec<u8>>,
    /// Set-Cookie value for a new session.
    new_cookie: Option<String>,
    local_lock: Option<OwnedMutexGuard<()>>,
    token: Option<LockToken>,
    /// Hash used to pick a backend when the session is not pinned (or its pin is gone).
    key: u64,
    done: bool,
}

/// Routing wish of a session for the balancer.
pub struct Preference {
    pub pinned: Option<Arc<str>>,
    pub key: u64,
    /// False: no affinity (new session with `without_cookie: balance`); use the strategy.
    pub sticky: bool,
}

impl SessionService {
    /// Builds the service for `cfg` (generating keys into `runtime_dir` if none are
    /// configured) and loads the memory snapshot if there is one.
    pub fn new(
        cfg: &SessionsConfig,
        runtime_dir: &std::path::Path,
        registry: &prometheus::Registry,
    ) -> Result<Self, String> {
        let generated_secret = if cfg.secrets.is_empty() {
            let p = runtime_dir.join("session-secret");
            let k = keys::load_or_create(&p).map_err(|e| e.to_string())?;
            Some(k.to_vec())
        } else {
            None
        };
        let generated_data_key = if cfg.encrypt && cfg.data_keys.is_empty() {
            let p = runtime_dir.join("session-data-key");
            Some(keys::load_or_create(&p).map_err(|e| e.to_string())?)
        } else {
            None
        };
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
            StoreKind::Redis => Backing::Redis(Arc::new(RedisStore::new(
                &cfg.redis_url,
                &cfg.redis_prefix,
                cfg.redis_timeout,
            )?)),
        };
        let store_breaker = Breaker::new(BreakerPolicy {
            enabled: true,
            consecutive_failures: 3,
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(5),
            half_open_probes: 1,
            ..BreakerPolicy::disabled()
        });
        store_breaker.set_name("session-store");
        let metrics = metrics::SessionMetrics::new(registry);
        metrics.store_up.set(1);
        let svc = SessionService {
            policy: ArcSwap::from_pointee(Policy {
                cfg: cfg.clone(),
                codec: CookieCodec::new(&[], cfg.ttl),
                sealer: None,
                wire: WireNames::new(cfg),
            }),
            backing,
            locks: (0..LOCK_STRIPES)
                .map(|_| Arc::new(Mutex::new(())))
                .collect(),
            store_breaker,
            metrics,
            kind: cfg.store,
            redis_url: cfg.redis_url.clone(),
            generated_secret,
            generated_data_key,
            last_stats: std::sync::Mutex::new((0, 0)),
            handover: std::sync::atomic::AtomicBool::new(false),
            per_worker_cache: std::sync::Mutex::new(Default::default()),
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
            sealer,
            wire: WireNames::new(cfg),
        }
    }

    /// Applies a reloaded `sessions:` section. The store itself is fixed for the life of
    /// the process (its contents would be lost); changing it needs a restart.
    pub fn apply(&self, cfg: &SessionsConfig) {
        if cfg.store != self.kind
            || (cfg.store == StoreKind::Redis && cfg.redis_url != self.redis_url)
        {
            log::warn!("reload: `sessions.store` / `sessions.redis.url` changed; it takes effect only after a restart");
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

    /// The store behind the trait (admin, tests).
    pub fn store(&self) -> Arc<dyn SessionStore> {
        match &self.backing {
            Backing::Memory(m) => m.clone(),
            Backing::Redis(r) => r.clone(),
        }
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

    fn stripe(&self, id: &SessionId) -> Arc<Mutex<()>> {
        self.locks[(id.hash64() as usize) % LOCK_STRIPES].clone()
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

    fn new_session(&self, policy: Arc<Policy>, client_hash: u64, now: u64) -> SessionCtx {
        let id = SessionId::random();
        let value = policy.codec.encode(&id, now / 1000);
        SessionCtx {
            id,
            state: SessionState::New,
            record: Record::new(now),
            data: None,
            new_cookie: Some(cookie::set_cookie(&policy.cfg.cookie, &value)),
            local_lock: None,
            token: None,
            key: match policy.cfg.without_cookie {
                WithoutCookie::ClientIp => client_hash,
                WithoutCookie::Balance => id.hash64(),
            },
            policy,
            done: false,
        }
    }

    fn reject(&self, r: Rejection) {
        let i = match r {
            Rejection::Malformed => 0,
            Rejection::BadSignature => 1,
            Rejection::Expired => 2,
        };
        self.metrics.rejected[i].inc();
    }

    /// Starts a request's session: a valid cookie resumes its session (waiting for the
    /// session's previous request to finish), anything else starts a new one.
    pub async fn begin(&self, req: &RequestHeader, client_hash: u64) -> SessionCtx {
        let policy = self.policy.load_full();
        let now = now_ms();
        let value = crate::proxy::headers::cookie(req, &policy.cfg.cookie.name);
        let Some(value) = value else {
            return self.new_session(policy, client_hash, now);
        };
        let id = match policy.codec.decode(value, now / 1000) {
            Ok((id, _)) => id,
            Err(r) => {
                self.reject(r);
                return self.new_session(policy, client_hash, now);
            }
        };
        let wait = policy.cfg.lock_timeout;
        let started = Instant::now();
        let stripe = self.stripe(&id);
        // Uncontended (the usual case): no timer is armed.
        let local = match stripe.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => match tokio::time::timeout(wait, stripe.lock_owned()).await {
                Ok(g) => g,
                Err(_) => {
                    self.metrics.lock_timeouts.inc();
                    return self.unavailable(policy, id);
                }
            },
        };
        let (token, found) = match &self.backing {
            Backing::Memory(m) => (None, m.get_now(&id, now)),
            Backing::Redis(r) => {
                let left = wait.saturating_sub(started.elapsed());
                let lease = policy.cfg.redis_lock_ttl;
                match self.guarded(r.lock_and_get(&id, left, lease)).await {
                    Ok((t, rec)) => (Some(t), rec),
                    Err(StoreError::Locked) => {
                        self.metrics.lock_timeouts.inc();
                        return self.unavailable(policy, id);
                    }
                    Err(_) => return self.unavailable(policy, id),
                }
            }
        };
        let opened = found.and_then(|rec| {
            let data = match (&rec.data, &policy.sealer) {
                (None, _) => None,
                (Some(d), None) => Some(d.to_vec()),
                // A record that does not decrypt (damaged, or a retired key) is absent.
                (Some(d), Some(s)) => Some(s.open(&id.0, d)?),
            };
            Some((rec, data))
        });
        match opened {
            Some((record, data)) => SessionCtx {
                id,
                state: SessionState::Existing,
                record,
                data,
                new_cookie: None,
                local_lock: Some(local),
                token,
                key: id.hash64(),
                policy,
                done: false,
            },
            None if self.handover.load(std::sync::atomic::Ordering::Acquire) => {
                drop(local);
                self.unavailable(policy, id)
            }
            None => {
                // Expired, evicted or undecryptable: a genuine cookie for a session that is
                // gone gets a fresh session (its lock is released by dropping it).
                self.metrics.rejected[3].inc();
                if let (Backing::Redis(r), Some(t)) = (&self.backing, token) {
                    let _ = self
                        .guarded(r.set_and_unlock(&id, t, None, Duration::ZERO))
                        .await;
                }
                drop(local);
                self.new_session(policy, client_hash, now)
            }
        }
    }

    fn unavailable(&self, policy: Arc<Policy>, id: SessionId) -> SessionCtx {
        SessionCtx {
            id,
            state: SessionState::Unavailable,
            record: Record::default(),
            data: None,
            new_cookie: None,
            local_lock: None,
            token: None,
            key: id.hash64(),
            policy,
            done: false,
        }
    }

    pub fn preference(&self, s: &SessionCtx) -> Preference {
        let sticky = !(s.state == SessionState::New
            && s.policy.cfg.without_cookie == WithoutCookie::Balance);
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
        match &s.record.worker {
            None => s.record.worker = Some(backend.clone()),
            Some(old) if repinned && **old != **backend => {
                log::debug!("sessions: {:?} migrated {old} -> {backend}", s.id);
                self.metrics.migrated.inc();
                s.record.worker = Some(backend.clone());
            }
            Some(_) => {}
        }
    }

    /// Adds the session headers to the request going to the worker.
    #[cfg(test)]
    pub fn annotate_request(&self, s: &SessionCtx, req: &mut RequestHeader) {
        let mut edits = crate::proxy::headers::HeaderEdits::default();
        self.annotate(s, &mut edits);
        edits.apply(req);
    }

    /// The session's headers for the worker, as edits to apply with the others.
    pub fn annotate(&self, s: &SessionCtx, edits: &mut crate::proxy::headers::HeaderEdits) {
        let w = &s.policy.wire;
        if let Ok(id) = http::HeaderValue::from_str(&s.id.hex()) {
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

    /// Takes the worker's update from the response, saves the record, releases the
    /// lock and sets the cookie of a new session.
    pub async fn on_response(&self, s: &mut SessionCtx, resp: &mut ResponseHeader) {
        let cfg = &s.policy.cfg;
        let update = resp
            .headers
            .get(&cfg.update_header)
            .map(|v| v.as_bytes().to_vec());
        if update.is_some() {
            resp.remove_header(&cfg.update_header);
        }
        if let Some(c) = self.take_set_cookie(s) {
            let _ = resp.append_header(http::header::SET_COOKIE, c);
        }
        self.save_update(s, update).await;
    }

    /// The name of the header a worker updates session data with, when drover strips it
    /// from responses anyway (an internal `x-drover-` name), so a response can be
    /// forwarded as bytes while the update is picked out of it.
    pub fn internal_update_header<'a>(&self, s: &'a SessionCtx) -> Option<&'a http::HeaderName> {
        let h = &s.policy.cfg.update_header;
        crate::proxy::headers::is_internal(h).then_some(h)
    }

    /// The field a worker updates this session's data with (`sessions.update_header`).
    pub fn update_header<'a>(&self, s: &'a SessionCtx) -> &'a http::HeaderName {
        &s.policy.cfg.update_header
    }

    /// The `Set-Cookie` value for a session started by this request, once.
    pub fn take_set_cookie(&self, s: &mut SessionCtx) -> Option<String> {
        s.new_cookie.take()
    }

    /// Saves the record with the worker's update (the update header's value), refusing
    /// updates over `max_data_bytes`, and releases the session's lock.
    pub async fn save_update(&self, s: &mut SessionCtx, update: Option<Vec<u8>>) {
        let cfg = &s.policy.cfg;
        let update = match update {
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
        };
        self.save(s, update).await;
    }

    /// Releases what `on_response` did not (the request failed before a response).
    pub async fn finish(&self, s: &mut SessionCtx) {
        self.save(s, None).await;
    }

    async fn save(&self, s: &mut SessionCtx, update: Option<Vec<u8>>) {
        if s.done {
            return;
        }
        s.done = true;
        if s.state == SessionState::Unavailable {
            if update.is_some() {
                self.metrics.write_conflicts.inc();
                log::warn!(
                    "sessions: {:?}: update not saved because the session store was unavailable for this request",
                    s.id
                );
            }
            return;
        }
        let now = now_ms();
        let policy = s.policy.clone();
        let cfg = &policy.cfg;
        let rec = &mut s.record;
        rec.hits = rec.hits.saturating_add(1);
        rec.last_seen_ms = now;
        if let Some(u) = update {
            rec.data = if u.is_empty() {
                None
            } else {
                Some(match &policy.sealer {
                    Some(sealer) => sealer.seal(&s.id.0, &u).into(),
                    None => u.into(),
                })
            };
        }
        let ttl_ms = cfg.ttl.as_millis() as u64;
        let idle_ms = cfg.idle_timeout.as_millis() as u64;
        let ttl = Duration::from_millis(rec.expires_ms(ttl_ms, idle_ms).saturating_sub(now).max(1));
        let new = s.state == SessionState::New;
        match &self.backing {
            Backing::Memory(m) => {
                m.set_now(&s.id, std::mem::take(rec), ttl, now);
                if new {
                    self.metrics.created.inc();
                }
            }
            Backing::Redis(r) => {
                let written = match s.token.take() {
                    Some(t) => {
                        self.guarded(r.set_and_unlock(&s.id, t, Some(rec), ttl))
                            .await
                    }
                    None => self.guarded(r.set(&s.id, rec, ttl)).await.map(|_| true),
                };
                match written {
                    Ok(true) if new => self.metrics.created.inc(),
                    Ok(true) => {}
                    Ok(false) => {
                        self.metrics.write_conflicts.inc();
                        log::warn!(
                            "sessions: {:?}: lock lease expired before the update was written; update refused (raise `sessions.redis.lock_ttl`)",
                            s.id
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        s.local_lock = None;
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
