//! In-process session locks: one lock per session id, held only by requests that may
//! write the session, from just before the record is read until the worker's response
//! head arrives.
//!
//! A slot exists only while a request holds or waits for it (the map never holds more
//! than the writers in flight, and at most `capacity` of them: past that a request runs
//! without the lock and relies on the compare-and-set of its write). Two sessions never
//! share a slot, so one client can never make another wait. Waiting is first come,
//! first served (tokio's semaphore is fair) and bounded by the caller's timeout.

use super::cookie::SessionId;
use super::store::memory::IdHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const SHARDS: usize = 64;

struct Slot {
    sem: Arc<Semaphore>,
    /// Requests holding or waiting for this lock; the slot goes when it reaches 0.
    users: u32,
}

type Shard = HashMap<[u8; 16], Slot, BuildHasherDefault<IdHasher>>;

/// The in-process session locks, in 64 shards by id; shared as an `Arc` by the service and every
/// held lock.
pub struct LockTable {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
}

/// Why a request runs without its session's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockError {
    /// The request before it kept the lock longer than the wait allowed.
    TimedOut,
    /// More sessions than the table's capacity are being written at once.
    Full,
}

/// A held session lock; dropping it lets the next writer of the session in.
pub struct SessionLock {
    // Fields drop in order: the permit is released (the next waiter may run) before
    // the ticket gives up the slot.
    _permit: OwnedSemaphorePermit,
    _ticket: Ticket,
}

/// A place in a slot's queue; leaving (by drop, also when the waiting request is
/// cancelled) frees the slot when nobody else uses it.
struct Ticket {
    table: Arc<LockTable>,
    id: [u8; 16],
}

impl LockTable {
    /// `capacity`: most sessions locked (or waited for) at once.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(LockTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: capacity.div_ceil(SHARDS).max(1),
        })
    }

    fn shard(&self, id: &[u8; 16]) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[id[15] as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Slots in use (holders or waiters), for tests and stats.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no session is locked or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn enter(self: &Arc<Self>, id: &SessionId) -> Result<(Ticket, Arc<Semaphore>), LockError> {
        let mut shard = self.shard(&id.0);
        if !shard.contains_key(&id.0) && shard.len() >= self.shard_cap {
            return Err(LockError::Full);
        }
        let slot = shard.entry(id.0).or_insert_with(|| Slot {
            sem: Arc::new(Semaphore::new(1)),
            users: 0,
        });
        slot.users += 1;
        let sem = slot.sem.clone();
        drop(shard);
        Ok((
            Ticket {
                table: self.clone(),
                id: id.0,
            },
            sem,
        ))
    }

    fn leave(&self, id: &[u8; 16]) {
        let mut shard = self.shard(id);
        if let Some(slot) = shard.get_mut(id) {
            slot.users = slot.users.saturating_sub(1);
            if slot.users == 0 {
                shard.remove(id);
            }
        }
    }

    /// Takes the session's lock, waiting at most `wait` for the request holding it.
    pub async fn lock(
        self: &Arc<Self>,
        id: &SessionId,
        wait: Duration,
    ) -> Result<SessionLock, LockError> {
        let (ticket, sem) = self.enter(id)?;
        // Uncontended (the usual case): no timer is armed.
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(wait, sem.acquire_owned()).await {
                Ok(Ok(p)) => p,
                // Timed out (or closed, which never happens): the ticket's drop leaves.
                _ => return Err(LockError::TimedOut),
            },
        };
        Ok(SessionLock {
            _permit: permit,
            _ticket: ticket,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.leave(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SessionId {
        let mut b = [0u8; 16];
        b[0] = n;
        b[15] = n;
        SessionId(b)
    }

    #[tokio::test]
    async fn one_lock_per_session_and_slots_are_freed() {
        let t = LockTable::new(1024);
        let a = t.lock(&id(1), Duration::from_millis(10)).await.unwrap();
        // Another session is never held up by this one.
        let b = t.lock(&id(2), Duration::from_millis(10)).await.unwrap();
        assert_eq!(t.len(), 2);
        // The same session waits, and times out.
        assert_eq!(
            t.lock(&id(1), Duration::from_millis(20)).await.err(),
            Some(LockError::TimedOut)
        );
        assert_eq!(t.len(), 2, "a timed-out waiter leaves no slot behind");
        drop(a);
        drop(b);
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_lock_when_the_holder_releases_it() {
        let t = LockTable::new(1024);
        let a = t.lock(&id(1), Duration::from_secs(1)).await.unwrap();
        let t2 = t.clone();
        let waiter = tokio::spawn(async move {
            let start = std::time::Instant::now();
            let l = t2.lock(&id(1), Duration::from_secs(5)).await;
            (l.is_ok(), start.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        let (ok, waited) = waiter.await.unwrap();
        assert!(ok);
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_frees_its_place() {
        let t = LockTable::new(1024);
        let a = t.lock(&id(1), Duration::from_secs(1)).await.unwrap();
        let t2 = t.clone();
        let waiter = tokio::spawn(async move {
            let _ = t2.lock(&id(1), Duration::from_secs(60)).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(a);
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn a_full_table_refuses_instead_of_growing() {
        let t = LockTable::new(64); // one slot per shard
        let _a = t.lock(&id(1), Duration::from_millis(10)).await.unwrap();
        let mut other = id(1);
        other.0[0] = 99; // same shard, other session
        assert_eq!(
            t.lock(&other, Duration::from_millis(10)).await.err(),
            Some(LockError::Full)
        );
        assert_eq!(t.len(), 1);
    }
}
