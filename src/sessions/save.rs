//! Writing a request's result back: compare-and-set on the version read, regenerate
//! and destroy, the lock's release, the cookie to set.

use super::cookie::SessionId;
use super::record::Record;
use super::store::memory::now_ms;
use super::store::redis::Commit;
use super::store::{Expect, LockToken};
use super::*;
use std::time::Duration;

impl SessionService {
    pub(super) async fn save(
        &self,
        s: &mut SessionCtx,
        update: Option<Vec<u8>>,
        control: Option<Control>,
    ) {
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
                            self.guarded(Box::pin(r.commit(
                                &s.id,
                                token.as_ref(),
                                Commit::Delete { expect },
                            )))
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
                            self.guarded(Box::pin(r.commit(
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
                            )))
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
    pub(super) async fn write(
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
                    .guarded(Box::pin(r.commit(
                        id,
                        token,
                        Commit::Write {
                            expect,
                            record: rec,
                            ttl,
                        },
                    )))
                    .await
                    .ok();
                if r.is_none() {
                    self.metrics.writes_failed.inc();
                }
                r
            }
        }
    }
}
