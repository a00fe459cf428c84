//! The shared store: Redis through one multiplexed, self-reconnecting connection
//! (`redis::aio::ConnectionManager`), for several drover instances sharing sessions.
//!
//! Keys: `{prefix}s:{id}` holds the encoded record with a `PX` expiry (Redis expires
//! sessions itself); `{prefix}l:{id}` is a session's lock while a request that may write
//! the session runs (`SET NX PX lease`, holding a random token). Every write is a
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
use crate::sessions::cookie::SessionId;
use crate::sessions::record::Record;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use std::collections::BTreeMap;
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
    Write {
        expect: Expect,
        record: &'a Record,
        ttl: Duration,
    },
    Delete {
        expect: Expect,
    },
    /// Regenerate: a tombstone under the old id, the record under `new`.
    Rotate {
        expect: Expect,
        tombstone: &'a Record,
        tombstone_ttl: Duration,
        new: &'a SessionId,
        record: &'a Record,
        ttl: Duration,
    },
}

/// `stats` counts at most this many keys (SCAN is O(keys); the admin API must stay fast).
const STATS_SCAN_CAP: usize = 200_000;
/// Per-worker counts read records only up to this many sessions.
const STATS_PER_WORKER_CAP: usize = 20_000;

pub struct RedisStore {
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    /// Created on first use, inside a tokio runtime (its connection task needs one).
    con: std::sync::OnceLock<Result<ConnectionManager, String>>,
    prefix: String,
    timeout: Duration,
    acquire: redis::Script,
    commit: redis::Script,
    abandon: redis::Script,
}

fn px(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

fn backend_err(e: redis::RedisError) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedisStore {
    /// Connects lazily: drover starts (and serves, degraded) while Redis is down.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url `{url}`: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(RedisStore {
            client,
            config,
            con: std::sync::OnceLock::new(),
            prefix: prefix.to_string(),
            timeout,
            acquire: redis::Script::new(ACQUIRE),
            commit: redis::Script::new(COMMIT),
            abandon: redis::Script::new(ABANDON),
        })
    }

    /// The shared connection (a cheap clone). Must be called from within a runtime.
    fn con(&self) -> Result<ConnectionManager, StoreError> {
        self.con
            .get_or_init(|| {
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(StoreError::Backend)
    }

    fn key(&self, kind: &str, id: &SessionId) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 2 + 32);
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push_str(&id.hex());
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

    fn abandon_later(
        &self,
        mut con: ConnectionManager,
        lock: String,
        token: String,
        lease: Duration,
    ) {
        let script = self.abandon.clone();
        tokio::spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.key(&lock).arg(&token);
            let _ = tokio::time::timeout(lease, inv.invoke_async::<i64>(&mut con)).await;
        });
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
            let mut inv = self.acquire.prepare_invoke();
            inv.key(&lock)
                .key(&rec)
                .arg(px(lease))
                .arg(&token)
                .arg(super::memory::now_ms() + 2 * self.timeout.as_millis() as u64);
            let reply: Result<(i64, Option<Vec<u8>>), StoreError> =
                self.timed(inv.invoke_async(&mut con)).await;
            let (taken, bytes) = match reply {
                Ok(r) => r,
                Err(e) => {
                    // The script may still run (a hung Redis resumes): free what it takes.
                    self.abandon_later(con, lock, token, lease);
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
        let mut con = self.con()?;
        let rec = self.key("s:", id);
        let lock = self.key("l:", id);
        let mut inv = self.commit.prepare_invoke();
        inv.key(&rec).key(&lock);
        inv.arg(token.map(|t| t.value.as_str()).unwrap_or(""));
        let expect_arg = |e: Expect| -> Vec<u8> {
            match e {
                Expect::Absent => Vec::new(),
                Expect::Version(v) => Record::version_bytes(v).to_vec(),
            }
        };
        match op {
            Commit::Release => {
                inv.key(&rec).arg("u");
            }
            Commit::Write {
                expect,
                record,
                ttl,
            } => {
                inv.key(&rec)
                    .arg("w")
                    .arg(expect_arg(expect))
                    .arg(record.encode())
                    .arg(px(ttl));
            }
            Commit::Delete { expect } => {
                inv.key(&rec).arg("d").arg(expect_arg(expect));
            }
            Commit::Rotate {
                expect,
                tombstone,
                tombstone_ttl,
                new,
                record,
                ttl,
            } => {
                inv.key(self.key("s:", new))
                    .arg("r")
                    .arg(expect_arg(expect))
                    .arg(tombstone.encode())
                    .arg(px(tombstone_ttl))
                    .arg(record.encode())
                    .arg(px(ttl));
            }
        }
        let applied: i64 = self.timed(inv.invoke_async(&mut con)).await?;
        Ok(applied == 1)
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
        let v: Option<Vec<u8>> = self
            .timed(redis::cmd("GET").arg(&key).query_async(&mut con))
            .await?;
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
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        let mut approximate = false;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut con),
                )
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
            if keys.len() >= STATS_SCAN_CAP {
                approximate = true;
                break;
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
