//! The embedded store: sharded hash maps with per-record expiry, a hard cap with sampled
//! least-recently-seen eviction (what Redis' `allkeys-lru` does), an incremental sweeper,
//! and a snapshot file for graceful restarts.
//!
//! Conditional writes compare the record's `version` under the shard's mutex, so a
//! write that overlapped another one is refused and reported, never applied blindly.
//! Serialising writers of a session is the session service's job (`sessions::lock`).

use super::{Expect, SessionStore, StoreError, StoreStats};
use crate::sessions::cookie::SessionId;
use crate::sessions::record::Record;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SHARDS: usize = 64;
/// Entries examined when a full shard must evict one.
const EVICTION_SAMPLE: usize = 8;
const SNAPSHOT_MAGIC: &[u8; 8] = b"DRVSESS1";
/// Largest snapshot file loaded; a larger one is refused (and left in place).
pub const SNAPSHOT_MAX_BYTES: u64 = 1 << 30;

/// Ids are 128 random bits drover generated (and signed), so their first bytes are
/// already a uniform hash; SipHash would only add cost.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
}

type Map = HashMap<[u8; 16], Entry, BuildHasherDefault<IdHasher>>;

struct Entry {
    record: Record,
    expires_ms: u64,
    /// Position of the key in `Shard::keys`.
    slot: u32,
}

/// A map plus a dense key list, so eviction can sample uniformly at random (a hash
/// map's iteration order would keep evicting the same few buckets).
#[derive(Default)]
struct Shard {
    map: Map,
    keys: Vec<[u8; 16]>,
}

impl Shard {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn insert(&mut self, id: [u8; 16], record: Record, expires_ms: u64) {
        if let Some(e) = self.map.get_mut(&id) {
            e.record = record;
            e.expires_ms = expires_ms;
            return;
        }
        let slot = self.keys.len() as u32;
        self.keys.push(id);
        self.map.insert(
            id,
            Entry {
                record,
                expires_ms,
                slot,
            },
        );
    }

    fn remove(&mut self, id: &[u8; 16]) -> Option<Entry> {
        let e = self.map.remove(id)?;
        let slot = e.slot as usize;
        self.keys.swap_remove(slot);
        if let Some(moved) = self.keys.get(slot) {
            if let Some(m) = self.map.get_mut(moved) {
                m.slot = slot as u32;
            }
        }
        Some(e)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let gone: Vec<[u8; 16]> = self
            .map
            .iter()
            .filter(|(_, e)| !keep(e))
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            self.remove(k);
        }
        gone.len()
    }
}

/// The embedded store: records in 64 mutex-guarded shards, capped at `max_sessions`, expired lazily
/// on read and by the control thread's sweep.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    evicted: AtomicU64,
    expired: AtomicU64,
    sweep_cursor: AtomicUsize,
    /// Per-worker counts gathered over the current sweep cycle, published at its end.
    counting: Mutex<BTreeMap<String, u64>>,
    per_worker: Mutex<BTreeMap<String, u64>>,
}

/// Wall-clock time in Unix milliseconds (0 if the clock is before 1970); the clock records are
/// stamped with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn shard_of(id: &SessionId) -> usize {
    id.0[15] as usize % SHARDS
}

impl MemoryStore {
    /// `max_sessions` is a hard cap (rounded up to a multiple of the shard count).
    pub fn new(max_sessions: usize) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: max_sessions.div_ceil(SHARDS).max(1),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            sweep_cursor: AtomicUsize::new(0),
            counting: Mutex::new(BTreeMap::new()),
            per_worker: Mutex::new(BTreeMap::new()),
        }
    }

    /// Most records held: `max_sessions` rounded up to a multiple of the shard count.
    pub fn capacity(&self) -> usize {
        self.shard_cap * SHARDS
    }

    fn shard(&self, id: &SessionId) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard_of(id)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records held now, expired ones not yet swept included (locks each shard in turn).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.map.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record if it is still live at `now` (Unix ms); an expired one is removed and counted.
    pub fn get_now(&self, id: &SessionId, now: u64) -> Option<Record> {
        let mut shard = self.shard(id);
        match shard.map.get(&id.0) {
            Some(e) if e.expires_ms > now => Some(e.record.clone()),
            Some(_) => {
                shard.remove(&id.0);
                self.expired.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    /// Stores `record` until `now + ttl` (Unix ms); a new id in a full shard first evicts one
    /// record (expired, else least recently seen of a random sample).
    pub fn set_now(&self, id: &SessionId, record: Record, ttl: Duration, now: u64) {
        let expires_ms = now.saturating_add(ttl.as_millis() as u64);
        let mut shard = self.shard(id);
        if !shard.map.contains_key(&id.0) && shard.len() >= self.shard_cap {
            self.evict_one(&mut shard, now);
        }
        shard.insert(id.0, record, expires_ms);
    }

    /// Frees one slot: an expired entry of the sample if there is one, else the least
    /// recently seen of the sample.
    fn evict_one(&self, shard: &mut Shard, now: u64) {
        let mut victim: Option<([u8; 16], u64, bool)> = None;
        let n = shard.keys.len();
        if n == 0 {
            return;
        }
        for _ in 0..EVICTION_SAMPLE {
            let k = shard.keys[rand::random_range(0..n)];
            let Some(e) = shard.map.get(&k) else { continue };
            let expired = e.expires_ms <= now;
            let better = match victim {
                None => true,
                Some((_, seen, was_expired)) => {
                    (expired && !was_expired)
                        || (expired == was_expired && e.record.last_seen_ms < seen)
                }
            };
            if better {
                victim = Some((k, e.record.last_seen_ms, expired));
            }
        }
        if let Some((k, _, expired)) = victim {
            shard.remove(&k);
            if expired {
                self.expired.fetch_add(1, Ordering::Relaxed);
            } else {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes `record` if the store holds what `expect` says (an expired record counts
    /// as absent). False: another write came first; nothing changed.
    pub fn write_if(
        &self,
        id: &SessionId,
        expect: Expect,
        record: Record,
        ttl: Duration,
        now: u64,
    ) -> bool {
        let mut shard = self.shard(id);
        if !self.holds(&mut shard, id, expect, now) {
            return false;
        }
        let expires_ms = now.saturating_add(ttl.as_millis() as u64);
        if !shard.map.contains_key(&id.0) && shard.len() >= self.shard_cap {
            self.evict_one(&mut shard, now);
        }
        shard.insert(id.0, record, expires_ms);
        true
    }

    /// Whether the shard holds for `id` what `expect` says; removes an expired record.
    fn holds(&self, shard: &mut Shard, id: &SessionId, expect: Expect, now: u64) -> bool {
        let current = match shard.map.get(&id.0) {
            Some(e) if e.expires_ms > now => Some(e.record.version),
            Some(_) => {
                shard.remove(&id.0);
                self.expired.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        };
        match (expect, current) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some(c)) => v == c,
            _ => false,
        }
    }

    /// Marks a request of a live session in place: last seen now, one more hit, expiry
    /// slid (`min(created + ttl, now + idle)`), re-pinned to `pin` when given. Leaves
    /// the data and its version alone, so it never undoes another request's write.
    pub fn touch_record(
        &self,
        id: &SessionId,
        now: u64,
        (ttl_ms, idle_ms): (u64, u64),
        pin: Option<&std::sync::Arc<str>>,
    ) -> bool {
        let mut shard = self.shard(id);
        match shard.map.get_mut(&id.0) {
            Some(e) if e.expires_ms > now && !e.record.revoked => {
                let r = &mut e.record;
                r.last_seen_ms = now;
                r.hits = r.hits.saturating_add(1);
                if let Some(p) = pin {
                    r.worker = Some(p.clone());
                }
                e.expires_ms = r.expires_ms(ttl_ms, idle_ms);
                true
            }
            _ => false,
        }
    }

    /// Regenerate: if `old` holds what `expect` says, it becomes `tombstone` (for
    /// `tombstone_ttl`) and `record` is stored under `new`. False: another write came
    /// first; nothing changed.
    #[allow(clippy::too_many_arguments)]
    pub fn rotate(
        &self,
        old: &SessionId,
        expect: Expect,
        tombstone: Record,
        tombstone_ttl: Duration,
        new: &SessionId,
        record: Record,
        ttl: Duration,
        now: u64,
    ) -> bool {
        if !self.write_if(old, expect, tombstone, tombstone_ttl, now) {
            return false;
        }
        // `new` is fresh from the CSPRNG: nothing else can hold it.
        self.set_now(new, record, ttl, now);
        true
    }

    /// Deletes the record if the store holds what `expect` says.
    pub fn delete_if(&self, id: &SessionId, expect: Expect, now: u64) -> bool {
        let mut shard = self.shard(id);
        if !self.holds(&mut shard, id, expect, now) {
            return false;
        }
        shard.remove(&id.0);
        true
    }

    /// Extends a live record to `now + ttl` and marks it seen at `now`; false when absent or
    /// expired.
    pub fn touch_now(&self, id: &SessionId, ttl: Duration, now: u64) -> bool {
        let mut shard = self.shard(id);
        match shard.map.get_mut(&id.0) {
            Some(e) if e.expires_ms > now => {
                e.expires_ms = now.saturating_add(ttl.as_millis() as u64);
                e.record.last_seen_ms = now;
                true
            }
            _ => false,
        }
    }

    /// Removes the record, if any.
    pub fn delete_now(&self, id: &SessionId) {
        self.shard(id).remove(&id.0);
    }

    /// Sweeps the next shard: removes expired records and counts sessions per worker.
    /// Called from the control thread; holds one shard's lock for one pass over it
    /// (about 15k entries at the default cap of one million).
    pub fn sweep_step(&self, now: u64) -> usize {
        let i = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let mut removed = 0;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        if let Ok(mut shard) = self.shards[i].lock() {
            shard.retain(|e| {
                let keep = e.expires_ms > now;
                if keep {
                    let w = e.record.worker.as_deref().unwrap_or("-");
                    match counts.get_mut(w) {
                        Some(c) => *c += 1,
                        None => {
                            counts.insert(w.to_string(), 1);
                        }
                    }
                } else {
                    removed += 1;
                }
                keep
            });
        }
        self.expired.fetch_add(removed as u64, Ordering::Relaxed);
        if let Ok(mut acc) = self.counting.lock() {
            for (w, c) in counts {
                *acc.entry(w).or_default() += c;
            }
            if i == SHARDS - 1 {
                let done = std::mem::take(&mut *acc);
                if let Ok(mut pw) = self.per_worker.lock() {
                    *pw = done;
                }
            }
        }
        removed
    }

    /// Counts for the admin API; per-worker counts come from the last complete sweep cycle.
    pub fn stats_now(&self) -> StoreStats {
        StoreStats {
            active: self.len() as u64,
            per_worker: self
                .per_worker
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            evicted: self.evicted.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            approximate: false,
        }
    }

    /// Writes every live record to `path` atomically (a private temporary file, mode
    /// 0600, created exclusively without following links, then renamed: `private_fs`).
    pub fn save_snapshot(&self, path: &Path, now: u64) -> std::io::Result<usize> {
        let mut out = crate::private_fs::AtomicFile::create(path).map_err(std::io::Error::other)?;
        let mut w = std::io::BufWriter::new(out.file());
        w.write_all(SNAPSHOT_MAGIC)?;
        let mut n = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, e) in shard.map.iter().filter(|(_, e)| e.expires_ms > now) {
                let rec = e.record.encode();
                w.write_all(k)?;
                w.write_all(&e.expires_ms.to_be_bytes())?;
                w.write_all(&(rec.len() as u32).to_be_bytes())?;
                w.write_all(&rec)?;
                n += 1;
            }
        }
        w.flush()?;
        drop(w);
        out.commit().map_err(std::io::Error::other)?;
        Ok(n)
    }

    /// Loads a snapshot (at most [`SNAPSHOT_MAX_BYTES`]), skipping expired records; a damaged file is an error and the
    /// caller starts empty. The file is removed after loading so an old snapshot is
    /// never loaded twice (e.g. after a crash).
    pub fn load_snapshot(&self, path: &Path, now: u64) -> std::io::Result<usize> {
        self.load_snapshot_into(path, now, false)
    }

    /// Like [`MemoryStore::load_snapshot`], but records this store already holds win
    /// (they are newer: written after the snapshot's process handed over).
    pub fn merge_snapshot(&self, path: &Path, now: u64) -> std::io::Result<usize> {
        self.load_snapshot_into(path, now, true)
    }

    fn load_snapshot_into(&self, path: &Path, now: u64, merge: bool) -> std::io::Result<usize> {
        // Only a regular file of ours, closed to others, of bounded size (a FIFO or a
        // planted file is refused without blocking the start).
        let bytes = crate::private_fs::read_private(
            path,
            SNAPSHOT_MAX_BYTES,
            crate::private_fs::Links::Refuse,
        )
        .map_err(std::io::Error::other)?;
        let bad = || std::io::Error::other(format!("{} is not a session snapshot", path.display()));
        if bytes.len() < 8 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(bad());
        }
        let mut rest = &bytes[8..];
        let mut n = 0;
        while !rest.is_empty() {
            if rest.len() < 28 {
                return Err(bad());
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&rest[..16]);
            let expires_ms = u64::from_be_bytes(rest[16..24].try_into().map_err(|_| bad())?);
            let len = u32::from_be_bytes(rest[24..28].try_into().map_err(|_| bad())?) as usize;
            rest = &rest[28..];
            if rest.len() < len {
                return Err(bad());
            }
            let record = Record::decode(&rest[..len]).ok_or_else(bad)?;
            rest = &rest[len..];
            let id = SessionId(id);
            let keep_ours = merge && self.shard(&id).map.contains_key(&id.0);
            if expires_ms > now && !keep_ours {
                self.set_now(&id, record, Duration::from_millis(expires_ms - now), now);
                n += 1;
            }
        }
        let _ = std::fs::remove_file(path);
        Ok(n)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        Ok(self.get_now(id, now_ms()))
    }
    async fn set(&self, id: &SessionId, record: &Record, ttl: Duration) -> Result<(), StoreError> {
        self.set_now(id, record.clone(), ttl, now_ms());
        Ok(())
    }
    async fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.touch_now(id, ttl, now_ms()))
    }
    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        self.delete_now(id);
        Ok(())
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(self.stats_now())
    }
}

/// Shared handle type used by the service.
pub type SharedMemoryStore = Arc<MemoryStore>;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SessionId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_le_bytes());
        b[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        SessionId(b)
    }

    #[test]
    fn get_set_touch_delete_and_expiry() {
        let s = MemoryStore::new(1000);
        let ttl = Duration::from_millis(100);
        s.set_now(&id(1), Record::new(0), ttl, 1000);
        assert!(s.get_now(&id(1), 1099).is_some());
        assert!(s.touch_now(&id(1), ttl, 1099));
        assert!(s.get_now(&id(1), 1150).is_some(), "touch slid the expiry");
        assert!(s.get_now(&id(1), 1198).is_some());
        assert!(s.get_now(&id(1), 1199).is_none());
        assert!(!s.touch_now(&id(1), ttl, 1199));
        s.set_now(&id(2), Record::new(0), ttl, 1000);
        s.delete_now(&id(2));
        assert!(s.get_now(&id(2), 1001).is_none());
    }

    #[test]
    fn flood_never_exceeds_the_cap_and_evicts_the_least_recently_seen_of_a_sample() {
        let cap = 6400;
        let s = MemoryStore::new(cap);
        for n in 0..200_000u64 {
            let mut r = Record::new(n);
            r.last_seen_ms = n;
            s.set_now(&id(n), r, Duration::from_secs(3600), n);
        }
        assert!(s.len() <= s.capacity(), "{} > {}", s.len(), s.capacity());
        assert_eq!(s.capacity(), cap);
        assert!(s.len() >= cap * 9 / 10, "cap used: {}", s.len());
        let st = s.stats_now();
        assert_eq!(st.evicted as usize + s.len(), 200_000);
        // The newest sessions survive a flood of older ones.
        let recent_alive = (199_000..200_000u64)
            .filter(|n| s.get_now(&id(*n), 200_000).is_some())
            .count();
        assert!(
            recent_alive > 900,
            "only {recent_alive} of the last 1000 survive"
        );
    }

    #[test]
    fn sweeper_removes_expired_and_counts_per_worker() {
        let s = MemoryStore::new(10_000);
        for n in 0..1000u64 {
            let mut r = Record::new(0);
            r.worker = Some(if n % 2 == 0 { "worker-0" } else { "worker-1" }.into());
            let ttl = if n < 300 { 10 } else { 10_000 };
            s.set_now(&id(n), r, Duration::from_millis(ttl), 0);
        }
        let removed: usize = (0..SHARDS).map(|_| s.sweep_step(100)).sum();
        assert_eq!(removed, 300);
        assert_eq!(s.len(), 700);
        let st = s.stats_now();
        assert_eq!(st.per_worker.values().sum::<u64>(), 700);
        assert_eq!(st.per_worker["worker-0"], 350);
        assert_eq!(st.expired, 300);
    }

    #[test]
    fn conditional_writes_compare_the_version() {
        let s = MemoryStore::new(1000);
        let ttl = Duration::from_secs(10);
        let mut r = Record::new(0);
        r.version = 1;
        assert!(s.write_if(&id(1), Expect::Absent, r.clone(), ttl, 0));
        assert!(
            !s.write_if(&id(1), Expect::Absent, r.clone(), ttl, 0),
            "created twice"
        );
        let mut r2 = r.clone();
        r2.version = 2;
        assert!(s.write_if(&id(1), Expect::Version(1), r2.clone(), ttl, 1));
        // A writer that read version 1 overlapped the one that wrote version 2.
        assert!(!s.write_if(&id(1), Expect::Version(1), r.clone(), ttl, 2));
        assert_eq!(s.get_now(&id(1), 3).unwrap().version, 2);
        // A touch keeps data and version, and re-pins.
        assert!(s.touch_record(&id(1), 5, (100_000, 50_000), Some(&"w-1".into())));
        let t = s.get_now(&id(1), 6).unwrap();
        assert_eq!((t.version, t.last_seen_ms, t.hits), (2, 5, 1));
        assert_eq!(t.worker.as_deref(), Some("w-1"));
        assert!(!s.delete_if(&id(1), Expect::Version(1), 7));
        assert!(s.delete_if(&id(1), Expect::Version(2), 7));
        assert!(s.get_now(&id(1), 8).is_none());
        assert!(!s.touch_record(&id(1), 9, (100_000, 50_000), None));
    }

    #[test]
    fn rotate_leaves_a_tombstone_and_moves_the_record() {
        let s = MemoryStore::new(1000);
        let ttl = Duration::from_secs(10);
        let mut r = Record::new(0);
        r.version = 3;
        r.data = Some(b"d".to_vec().into());
        s.set_now(&id(1), r.clone(), ttl, 0);
        assert!(!s.rotate(
            &id(1),
            Expect::Version(2),
            Record::tombstone(1),
            ttl,
            &id(2),
            r.clone(),
            ttl,
            1
        ));
        assert!(s.get_now(&id(2), 1).is_none());
        assert!(s.rotate(
            &id(1),
            Expect::Version(3),
            Record::tombstone(1),
            ttl,
            &id(2),
            r.clone(),
            ttl,
            1
        ));
        assert!(s.get_now(&id(1), 2).unwrap().revoked);
        assert_eq!(
            s.get_now(&id(2), 2).unwrap().data.as_deref(),
            Some(&b"d"[..])
        );
        assert!(
            !s.touch_record(&id(1), 3, (100_000, 50_000), None),
            "a tombstone is not a live session"
        );
    }

    #[test]
    fn snapshot_round_trip_skips_expired_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snap");
        let s = MemoryStore::new(1000);
        for n in 0..50u64 {
            let mut r = Record::new(0);
            r.data = Some(format!("d{n}").into_bytes().into());
            let ttl = if n < 10 { 5 } else { 10_000 };
            s.set_now(&id(n), r, Duration::from_millis(ttl), 0);
        }
        assert_eq!(s.save_snapshot(&p, 1).unwrap(), 50);
        let t = MemoryStore::new(1000);
        assert_eq!(t.load_snapshot(&p, 100).unwrap(), 40);
        assert_eq!(
            t.get_now(&id(20), 100).unwrap().data.as_deref(),
            Some(&b"d20"[..])
        );
        assert!(!p.exists(), "a loaded snapshot is consumed");
        std::fs::write(&p, b"DRVSESS1\x00\x01").unwrap();
        assert!(t.load_snapshot(&p, 100).is_err());
        std::fs::write(&p, b"not a snapshot").unwrap();
        assert!(t.load_snapshot(&p, 100).is_err());
    }
}
