//! The request path: verify the cookie, read (and for writers lock) the record, route
//! to the pinned backend, hand the data to the worker, take its update from the response.

use super::cookie::{Rejection, SessionId};
use super::record::Record;
use super::store::memory::now_ms;
use super::store::{SessionStore, StoreError};
use super::*;
use crate::config::{SessionsConfig, WithoutCookie};
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

impl SessionService {
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

    pub(super) fn store_error(&self, e: &StoreError) {
        let kind = match e {
            StoreError::Timeout => "timeout",
            StoreError::CircuitOpen => "circuit_open",
            StoreError::Backend(_) => "backend",
            StoreError::Locked => "locked",
        };
        self.metrics.store_errors.with_label_values(&[kind]).inc();
    }

    /// Runs one shared-store call behind the store's breaker, timing it. The call comes
    /// boxed: a Redis call's future is up to ~2.5 KB, and held inline it doubled every
    /// request's future (10.3 KB instead of 5.3, whatever the store; the engine keeps
    /// one per request in flight); one allocation next to a network round trip costs
    /// nothing.
    pub(super) async fn guarded<T, F>(&self, call: std::pin::Pin<Box<F>>) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
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

    pub(super) fn ctx(
        &self,
        policy: Arc<Policy>,
        id: SessionId,
        origin: Origin,
        key: u64,
    ) -> SessionCtx {
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
    pub(super) fn fresh(&self, policy: Arc<Policy>, client_hash: u64, now: u64) -> SessionCtx {
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

    pub(super) fn reject(&self, r: Rejection) {
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
    pub(super) async fn load(&self, s: &mut SessionCtx, lock: bool, client_hash: u64) {
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
                    match self
                        .guarded(Box::pin(r.lock_and_get(&s.id, left, lease)))
                        .await
                    {
                        Ok((t, rec)) => {
                            s.token = Some(t);
                            Ok(rec)
                        }
                        Err(StoreError::Locked) => {
                            self.metrics.lock_timeouts.inc();
                            self.guarded(Box::pin(r.get(&s.id))).await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.guarded(Box::pin(r.get(&s.id))).await
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
    pub(super) fn unavailable(s: &mut SessionCtx) {
        s.state = SessionState::Unavailable;
        s.lock = None;
        s.token = None;
        s.data = None;
    }

    /// Drops the in-process lock and, on Redis, the shared one (without waiting for
    /// Redis' answer: nothing depends on it, and a lost release expires with its lease).
    pub(super) async fn release(&self, s: &mut SessionCtx) {
        s.lock = None;
        if let (Backing::Redis(r), Some(t)) = (&self.backing, s.token.take()) {
            r.release_detached(&s.id, t);
        }
    }

    /// The session's routing wish for the balancer: its pinned backend, its affinity key, and
    /// whether to stick at all.
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

    pub(super) fn learn_pin(&self, backend: &Arc<str>) {
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

    pub(super) fn checked_update(
        &self,
        cfg: &SessionsConfig,
        update: Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
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

    pub(super) fn conflict(&self, s: &SessionCtx, what: &str) {
        self.metrics.write_conflicts.inc();
        log::warn!(
            "sessions: {:?}: {what} not saved: another request wrote the session after this one read it (a lost update detected; serialise the route with `sessions.serialize_paths` if it must not happen)",
            s.id
        );
    }
}
