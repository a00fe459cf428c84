//! The shared store: Redis through [`crate::redis_link`] (one node, a Sentinel-managed
//! master or a Redis Cluster), for several drover instances sharing sessions.
//!
//! Keys: `{prefix}s:{id}` holds the encoded record with a `PX` expiry (Redis expires
//! sessions itself); `{prefix}l:{id}` is a session's lock while a request that may write
//! the session runs (`SET NX PX lease`, holding a random token). On Redis Cluster the id
//! is a hash tag (`{prefix}s:{<id>}`, `{prefix}l:{<id>}`), so a session's record and lock
//! share a slot and one script can touch both. Every write is a
//! compare-and-set in one Lua script: it is applied only if the record still has the
//! `version` the request read (bytes 1..9 of the encoding), so a write that overlapped
//! another one, or whose lock lease ran out while another instance wrote, is refused and
//! reported, never applied blindly. The same script releases the lock if the token
//! still holds it. Every call has a timeout; a slow Redis is a failed call, never a
//! stuck request. A lock request that Redis executes after its caller gave up (a Redis
//! paused and resumed) takes nothing: the script carries a deadline checked against
//! Redis' clock (so the hosts' clocks must agree to within the store timeout, as NTP
//! gives), and a timed-out attempt also sends a delete matched on its token.

use super::{Expect, LockToken, SessionStore, StoreError, StoreStats};
use crate::redis_link::{Conn, LuaScript, RedisLink};
use crate::sessions::cookie::SessionId;
use crate::sessions::record::Record;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACQUIRE: &str = r"
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[3]) then
  return {-1, false}
end
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[1]) then
  return {1, redis.call('GET', KEYS[2])}
end
return {0, false}
";

/// Deletes a lock taken by an acquire whose reply never arrived (timed out): matched
/// by the attempt's token, so a lock that is now someone else's is left alone.
const ABANDON: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// Releases the lock (if the token still holds it), then applies the operation if the
/// record is what the caller expects: `ARGV[3]` is '' for "absent" or the 8 version
/// bytes. Operations: u = release only, w = write, d = delete, r = rotate (tombstone
/// under KEYS[1], the record under KEYS[3]). Returns 1 when applied.
const COMMIT: &str = r"
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
local op = ARGV[2]
if op == 'u' then return 1 end
local cur = redis.call('GET', KEYS[1])
local want = ARGV[3]
if cur then
  if want == '' then return 0 end
  local v = '\0\0\0\0\0\0\0\0'
  if string.byte(cur, 1) == 2 then v = string.sub(cur, 2, 9) end
  if v ~= want then return 0 end
elseif want ~= '' then
  return 0
end
if op == 'w' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
elseif op == 'd' then
  redis.call('DEL', KEYS[1])
elseif op == 'r' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
end
return 1
";

/// What [`RedisStore::commit`] does after releasing the lock.
pub enum Commit<'a> {
    /// Nothing more.
    Release,
    /// Write `record` under the session's id if the store holds what `expect` says.
    Write {
        /// What the store must hold for the write to apply.
        expect: Expect,
        /// The record to store.
        record: &'a Record,
        /// Its time to live (Redis `PX`, at least 1 ms).
        ttl: Duration,
    },
    /// Delete the session's record (destroy) if the store holds what `expect` says.
    Delete {
        /// What the store must hold for the delete to apply.
        expect: Expect,
    },
    /// Regenerate: a tombstone under the old id, the record under `new`.
    Rotate {
        /// What the store must hold under the old id.
        expect: Expect,
        /// Written under the old id so it is refused from now on.
        tombstone: &'a Record,
        /// How long the tombstone is kept.
        tombstone_ttl: Duration,
        /// The regenerated id.
        new: &'a SessionId,
        /// The record stored under `new`.
        record: &'a Record,
        /// Time to live of the record under `new`.
        ttl: Duration,
    },
}

/// `stats` counts at most this many keys (SCAN is O(keys); the admin API must stay fast).
const STATS_SCAN_CAP: usize = 200_000;
/// Per-worker counts read records only up to this many sessions.
const STATS_PER_WORKER_CAP: usize = 20_000;

/// The shared store on Redis (standalone or Cluster): records, locks and compare-and-set writes
/// through Lua scripts, reads through a client-side cache.
pub struct RedisStore {
    link: Arc<RedisLink>,
    prefix: String,
    /// Keys carry a `{id}` hash tag (Redis Cluster).
    tagged: bool,
    timeout: Duration,
    acquire: LuaScript,
    commit: LuaScript,
    abandon: LuaScript,
    /// Writes `WAIT` did not see replicated in time.
    unreplicated: Option<prometheus::IntCounter>,
    /// Sessions this instance wrote in the last [`FRESH_WRITE`]: their reads skip the
    /// local cache, so a client's next request through this instance reads its own
    /// write even if Redis' invalidation is still on its way.
    recent: std::sync::Mutex<std::collections::HashMap<SessionId, Instant>>,
    /// Until this time (ms), writes do not `WAIT` (the last `WAIT` went unanswered).
    wait_skip_until: std::sync::atomic::AtomicU64,
}

/// After a `WAIT` that the replicas did not answer in time, writes skip `WAIT` (and are
/// counted as unreplicated) for this long, so they never queue behind one another's
/// `WAIT` on the shared write connection while no replica is there.
const WAIT_PAUSE: Duration = Duration::from_secs(1);

/// How long after its own write an instance reads a session from Redis, not the cache.
const FRESH_WRITE: Duration = Duration::from_millis(250);
/// Recent writes remembered at most (older ones are dropped first).
const RECENT_CAP: usize = 16_384;

fn px(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

fn backend_err(e: redis::RedisError) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn link_err(e: crate::redis_link::LinkError) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedisStore {
    /// Connects lazily: drover starts (and serves, degraded) while Redis is down.
    pub fn new(link: Arc<RedisLink>) -> Self {
        let cfg = link.config();
        RedisStore {
            prefix: cfg.prefix.clone(),
            tagged: link.is_cluster(),
            timeout: cfg.timeout,
            acquire: LuaScript::new(ACQUIRE),
            commit: LuaScript::new(COMMIT),
            abandon: LuaScript::new(ABANDON),
            unreplicated: None,
            recent: std::sync::Mutex::new(std::collections::HashMap::new()),
            wait_skip_until: std::sync::atomic::AtomicU64::new(0),
            link,
        }
    }

    /// Counts writes that `WAIT` did not see replicated in time into `c`.
    pub fn with_unreplicated_counter(mut self, c: prometheus::IntCounter) -> Self {
        self.unreplicated = Some(c);
        self
    }

    /// The Redis connection it uses (shared limits reuse it).
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// The shared connection (a cheap clone). Must be called from within a runtime.
    fn con(&self) -> Result<Conn, StoreError> {
        self.link.conn().map_err(link_err)
    }

    fn key(&self, kind: &str, id: &SessionId) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 4 + 32);
        k.push_str(&self.prefix);
        k.push_str(kind);
        if self.tagged {
            k.push('{');
            k.push_str(&id.hex());
            k.push('}');
        } else {
            k.push_str(&id.hex());
        }
        k
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(backend_err),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    fn abandon_later(&self, lock: String, token: String, lease: Duration) {
        // A fresh handle: the same connection as the acquire while that is current (so
        // the delete queues behind whatever Redis got of the acquire), but not a cluster
        // connection replaced since as wedged, which would keep it alive for the lease.
        // (An acquire Redis runs after its deadline takes nothing anyway.)
        let Ok(mut con) = self.con() else {
            return;
        };
        let script = self.abandon.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                lease,
                script.run::<i64>(&mut con, &[lock.as_bytes()], &[token.as_bytes()]),
            )
            .await;
        });
    }

    fn wrote(&self, id: &SessionId) {
        if !self.link.caches() {
            return;
        }
        if let Ok(mut m) = self.recent.lock() {
            let now = Instant::now();
            if m.len() >= RECENT_CAP {
                m.retain(|_, t| now.duration_since(*t) < FRESH_WRITE);
                if m.len() >= RECENT_CAP {
                    m.clear();
                }
            }
            m.insert(*id, now);
        }
    }

    fn written_lately(&self, id: &SessionId) -> bool {
        self.recent
            .lock()
            .map(|m| m.get(id).is_some_and(|t| t.elapsed() < FRESH_WRITE))
            .unwrap_or(true)
    }

    fn decode(bytes: Option<Vec<u8>>) -> Option<Record> {
        bytes.and_then(|b| Record::decode(&b))
    }
}

impl RedisStore {
    /// Locks a session for a read-modify-write and reads it, waiting at most `wait` for
    /// a request on another instance that holds it (this instance's own writers queue
    /// on its in-process lock first). The lock expires by itself after `lease`.
    /// `Err(Locked)`: still held after `wait`.
    pub async fn lock_and_get(
        &self,
        id: &SessionId,
        wait: Duration,
        lease: Duration,
    ) -> Result<(LockToken, Option<Record>), StoreError> {
        let lock = self.key("l:", id);
        let rec = self.key("s:", id);
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut con = self.con()?;
            let token = format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            );
            let lease_arg = px(lease).to_string();
            let redis_deadline =
                (super::memory::now_ms() + 2 * self.timeout.as_millis() as u64).to_string();
            let reply: Result<(i64, Option<Vec<u8>>), StoreError> = self
                .timed(self.acquire.run(
                    &mut con,
                    &[lock.as_bytes(), rec.as_bytes()],
                    &[
                        lease_arg.as_bytes(),
                        token.as_bytes(),
                        redis_deadline.as_bytes(),
                    ],
                ))
                .await;
            let (taken, bytes) = match reply {
                Ok(r) => r,
                Err(e) => {
                    // The script may still run (a hung Redis resumes): free what it takes.
                    self.abandon_later(lock, token, lease);
                    return Err(e);
                }
            };
            if taken > 0 {
                return Ok((LockToken { value: token }, Self::decode(bytes)));
            }
            if taken < 0 {
                // Redis ran the script after our deadline: it took nothing.
                return Err(StoreError::Timeout);
            }
            if Instant::now() + pause > deadline {
                return Err(StoreError::Locked);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Releases `token`'s lock (if it still holds it) and applies `op` if the record is
    /// what it expects, in one round trip. `Ok(false)`: another write came first and
    /// nothing was applied.
    pub async fn commit(
        &self,
        id: &SessionId,
        token: Option<&LockToken>,
        op: Commit<'_>,
    ) -> Result<bool, StoreError> {
        if self.tagged {
            if let Commit::Rotate {
                expect,
                tombstone,
                tombstone_ttl,
                new,
                record,
                ttl,
            } = op
            {
                return self
                    .rotate_across_slots(
                        id,
                        token,
                        expect,
                        tombstone,
                        tombstone_ttl,
                        new,
                        record,
                        ttl,
                    )
                    .await;
            }
        }
        let rec = self.key("s:", id);
        let lock = self.key("l:", id);
        let expect_arg = |e: Expect| -> Vec<u8> {
            match e {
                Expect::Absent => Vec::new(),
                Expect::Version(v) => Record::version_bytes(v).to_vec(),
            }
        };
        let token = token.map(|t| t.value.as_bytes()).unwrap_or(b"");
        let new_key;
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(7);
        let third = match op {
            Commit::Release => {
                args.push(b"u".to_vec());
                rec.clone()
            }
            Commit::Write {
                expect,
                record,
                ttl,
            } => {
                args.push(b"w".to_vec());
                args.push(expect_arg(expect));
                args.push(record.encode());
                args.push(px(ttl).to_string().into_bytes());
                rec.clone()
            }
            Commit::Delete { expect } => {
                args.push(b"d".to_vec());
                args.push(expect_arg(expect));
                rec.clone()
            }
            Commit::Rotate {
                expect,
                tombstone,
                tombstone_ttl,
                new,
                record,
                ttl,
            } => {
                new_key = self.key("s:", new);
                args.push(b"r".to_vec());
                args.push(expect_arg(expect));
                args.push(tombstone.encode());
                args.push(px(tombstone_ttl).to_string().into_bytes());
                args.push(record.encode());
                args.push(px(ttl).to_string().into_bytes());
                new_key.clone()
            }
        };
        let writes = args.first().is_some_and(|a| a != b"u");
        let mut all_args: Vec<&[u8]> = Vec::with_capacity(args.len() + 1);
        all_args.push(token);
        all_args.extend(args.iter().map(Vec::as_slice));
        let keys: [&[u8]; 3] = [rec.as_bytes(), lock.as_bytes(), third.as_bytes()];
        let durable = writes && self.link.config().wait_replicas > 0;
        let mut con = if durable {
            self.link.durable_conn().map_err(link_err)?
        } else {
            self.con()?
        };
        if writes {
            // Noted before the call: a write whose answer is lost may still apply.
            self.wrote(id);
        }
        // On the write connection a commit may queue behind another write's WAIT.
        let limit = if durable {
            self.timeout + self.link.config().wait_timeout
        } else {
            self.timeout
        };
        let applied: i64 =
            match tokio::time::timeout(limit, self.commit.run(&mut con, &keys, &all_args)).await {
                Ok(r) => r.map_err(backend_err)?,
                Err(_) => return Err(StoreError::Timeout),
            };
        if durable && applied == 1 {
            self.await_replicas(&mut con, &[rec.as_bytes()]).await;
        }
        Ok(applied == 1)
    }

    /// `WAIT` for `durability.replicas` replicas after a write on `con`; a write not
    /// acknowledged in time (or a failed `WAIT`) is counted, not undone.
    async fn await_replicas(&self, con: &mut Conn, slot_keys: &[&[u8]]) {
        let cfg = self.link.config();
        let now = super::memory::now_ms();
        if now
            < self
                .wait_skip_until
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            // The replicas did not answer a moment ago (none attached, e.g. right after a
            // failover): counted without waiting, so writes do not queue behind WAITs.
            if let Some(c) = &self.unreplicated {
                c.inc();
            }
            return;
        }
        for key in slot_keys {
            let budget = self.timeout + cfg.wait_timeout;
            let r = tokio::time::timeout(budget, self.link.wait_replicas(con, key)).await;
            let acked = matches!(r, Ok(Ok(n)) if n >= cfg.wait_replicas);
            if !acked {
                if let Some(c) = &self.unreplicated {
                    c.inc();
                }
                self.wait_skip_until.store(
                    super::memory::now_ms() + WAIT_PAUSE.as_millis() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                log::warn!(
                    "sessions: a write was not acknowledged by {} replica(s) within {:?} ({}); it may be lost if the master fails now; writes in the next {:?} do not wait",
                    cfg.wait_replicas,
                    cfg.wait_timeout,
                    match r {
                        Ok(Ok(n)) => format!("{n} acknowledged"),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timed out".into(),
                    },
                    WAIT_PAUSE
                );
                return;
            }
        }
    }

    /// Regenerate on Redis Cluster, where the old and the new id live in different
    /// slots (one script cannot touch both): the new record is created first (`SET NX`
    /// under an id nobody knows yet), then the old one becomes a tombstone by the usual
    /// compare-and-set (releasing the lock); if that is refused, the new record is
    /// deleted again. A crash between the steps leaves an unreachable record that
    /// expires by itself.
    #[allow(clippy::too_many_arguments)]
    async fn rotate_across_slots(
        &self,
        id: &SessionId,
        token: Option<&LockToken>,
        expect: Expect,
        tombstone: &Record,
        tombstone_ttl: Duration,
        new: &SessionId,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let new_key = self.key("s:", new);
        self.wrote(new);
        let durable = self.link.config().wait_replicas > 0;
        let mut con = if durable {
            self.link.durable_conn().map_err(link_err)?
        } else {
            self.con()?
        };
        let created: Option<String> = self
            .timed(
                redis::cmd("SET")
                    .arg(&new_key)
                    .arg(record.encode())
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl))
                    .query_async(&mut con),
            )
            .await?;
        if created.is_none() {
            return Ok(false);
        }
        if durable {
            self.await_replicas(&mut con, &[new_key.as_bytes()]).await;
        }
        let applied = Box::pin(self.commit(
            id,
            token,
            Commit::Write {
                expect,
                record: tombstone,
                ttl: tombstone_ttl,
            },
        ))
        .await;
        if !matches!(applied, Ok(true)) {
            let mut con = self.con()?;
            let _ = self
                .timed(redis::cmd("DEL").arg(&new_key).query_async::<i64>(&mut con))
                .await;
        }
        applied
    }

    /// Releases `token`'s lock without waiting for the answer (a writer whose worker
    /// changed nothing): the response does not wait for a second round trip. If the
    /// release is lost, the lock expires after its lease.
    pub fn release_detached(self: &Arc<Self>, id: &SessionId, token: LockToken) {
        let store = self.clone();
        let id = *id;
        tokio::spawn(async move {
            let _ = store.commit(&id, Some(&token), Commit::Release).await;
        });
    }

    /// Masters of the cluster (from `CLUSTER SLOTS`), for scans.
    async fn cluster_masters(&self, con: &mut Conn) -> Result<Vec<(String, u16)>, StoreError> {
        let slots: Vec<redis::Value> = self
            .timed(redis::cmd("CLUSTER").arg("SLOTS").query_async(con))
            .await?;
        let mut masters = Vec::new();
        for range in slots {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let Some(redis::Value::Array(node)) = parts.get(2) else {
                continue;
            };
            let host: Option<String> = node
                .first()
                .and_then(|v| redis::from_redis_value_ref(v).ok());
            let port: Option<u16> = node
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok());
            if let (Some(h), Some(p)) = (host, port) {
                if !masters.contains(&(h.clone(), p)) {
                    masters.push((h, p));
                }
            }
        }
        Ok(masters)
    }

    /// One `SCAN` step on `node` (a cluster master) or on the only node.
    async fn scan_step(
        &self,
        con: &mut Conn,
        node: Option<&(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        match (node, con) {
            (Some((host, port)), Conn::Cluster(c)) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let v = self
                    .timed(c.route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    ))
                    .await?;
                redis::from_redis_value(v).map_err(|e| StoreError::Backend(e.to_string()))
            }
            (_, con) => self.timed(cmd.query_async(con)).await,
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let mut con = self.con()?;
        let key = self.key("s:", id);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        if self.link.caches() && !self.written_lately(id) {
            // Answered from the local cache when Redis has not said the key changed.
            cmd.set_cache_config(redis::CommandCacheConfig::new().set_enable_cache(true));
        }
        let v: Option<Vec<u8>> = self.timed(cmd.query_async(&mut con)).await?;
        Ok(Self::decode(v))
    }

    async fn set(&self, id: &SessionId, record: &Record, ttl: Duration) -> Result<(), StoreError> {
        let mut con = self.con()?;
        let key = self.key("s:", id);
        self.timed(
            redis::cmd("SET")
                .arg(&key)
                .arg(record.encode())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut con),
        )
        .await
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool, StoreError> {
        let mut con = self.con()?;
        let key = self.key("s:", id);
        let n: i64 = self
            .timed(
                redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async(&mut con),
            )
            .await?;
        Ok(n == 1)
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        let mut con = self.con()?;
        let key = self.key("s:", id);
        self.timed(redis::cmd("DEL").arg(&key).query_async::<()>(&mut con))
            .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut con = self.con()?;
        let pattern = format!("{}s:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut approximate = false;
        let nodes: Vec<Option<(String, u16)>> = if self.tagged {
            self.cluster_masters(&mut con)
                .await?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        'nodes: for node in &nodes {
            let mut cursor: u64 = 0;
            loop {
                let (next, batch) = self
                    .scan_step(&mut con, node.as_ref(), cursor, &pattern)
                    .await?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
                if keys.len() >= STATS_SCAN_CAP {
                    approximate = true;
                    break 'nodes;
                }
            }
        }
        let mut per_worker = BTreeMap::new();
        if keys.len() <= STATS_PER_WORKER_CAP {
            for chunk in keys.chunks(500) {
                let values: Vec<Option<Vec<u8>>> = self
                    .timed(redis::cmd("MGET").arg(chunk).query_async(&mut con))
                    .await?;
                for r in values.into_iter().filter_map(Self::decode) {
                    let w = r.worker.as_deref().unwrap_or("-").to_string();
                    *per_worker.entry(w).or_insert(0u64) += 1;
                }
            }
        }
        Ok(StoreStats {
            active: keys.len() as u64,
            per_worker,
            evicted: 0,
            expired: 0,
            approximate,
        })
    }
}
