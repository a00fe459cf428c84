//! The shared store: Redis through one multiplexed, self-reconnecting connection
//! (`redis::aio::ConnectionManager`), for several drover instances sharing sessions.
//!
//! Keys: `{prefix}s:{id}` holds the encoded record with a `PX` expiry (Redis expires
//! sessions itself); `{prefix}l:{id}` is a session's lock, whose value is a fencing token
//! from `INCR {prefix}fence`. Lock + read and write + unlock are single Lua scripts, so a
//! request costs two round trips, and a write is applied only while the writer's token
//! still holds the lock: an instance whose lease ran out cannot overwrite a newer update.
//! Every call has a timeout; a slow Redis is a failed call, never a stuck request. A lock
//! request that Redis executes after its caller gave up (a Redis paused and resumed)
//! takes nothing: the script carries a deadline checked against Redis' clock (so the
//! hosts' clocks must agree to within the store timeout, as NTP gives), and a timed-out
//! attempt also sends a delete matched on its nonce.

use super::{LockToken, SessionStore, StoreError, StoreStats};
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
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, false} end
local t = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[1], t .. ':' .. ARGV[2], 'PX', ARGV[1])
return {t, redis.call('GET', KEYS[2])}
";

/// Deletes a lock taken by an acquire whose reply never arrived (timed out): matched
/// by the attempt's nonce, so a lock that is now someone else's is left alone.
const ABANDON: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
redis.call('DEL', KEYS[1])
return 1
";

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
    release: redis::Script,
    abandon: redis::Script,
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
            release: redis::Script::new(RELEASE),
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
        nonce: String,
        lease: Duration,
    ) {
        let script = self.abandon.clone();
        tokio::spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.key(&lock).arg(&nonce);
            let _ = tokio::time::timeout(lease, inv.invoke_async::<i64>(&mut con)).await;
        });
    }

    fn decode(bytes: Option<Vec<u8>>) -> Option<Record> {
        bytes.and_then(|b| Record::decode(&b))
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

    async fn lock_and_get(
        &self,
        id: &SessionId,
        wait: Duration,
        lease: Duration,
    ) -> Result<(LockToken, Option<Record>), StoreError> {
        let lock = self.key("l:", id);
        let rec = self.key("s:", id);
        let fence = format!("{}fence", self.prefix);
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut con = self.con()?;
            let nonce = format!(":{:016x}", rand::random::<u64>());
            let mut inv = self.acquire.prepare_invoke();
            inv.key(&lock)
                .key(&rec)
                .key(&fence)
                .arg(lease.as_millis().max(1) as u64)
                .arg(&nonce[1..])
                .arg(super::memory::now_ms() + 2 * self.timeout.as_millis() as u64);
            let reply: Result<(i64, Option<Vec<u8>>), StoreError> =
                self.timed(inv.invoke_async(&mut con)).await;
            let (token, bytes) = match reply {
                Ok(r) => r,
                Err(e) => {
                    // The script may still run (a hung Redis resumes): free what it takes.
                    self.abandon_later(con, lock, nonce, lease);
                    return Err(e);
                }
            };
            if token > 0 {
                let value = format!("{token}{nonce}");
                let fence = token as u64;
                return Ok((LockToken { fence, value }, Self::decode(bytes)));
            }
            if token < 0 {
                // Redis ran the script after our deadline: it took nothing.
                return Err(StoreError::Timeout);
            }
            // Held by a request on another instance (this instance's own requests queue
            // on its in-process lock first).
            if Instant::now() + pause > deadline {
                return Err(StoreError::Locked);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn set_and_unlock(
        &self,
        id: &SessionId,
        token: LockToken,
        record: Option<&Record>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut con = self.con()?;
        let lock = self.key("l:", id);
        let rec = self.key("s:", id);
        let mut inv = self.release.prepare_invoke();
        inv.key(&lock).key(&rec).arg(&token.value);
        match record {
            Some(r) => inv
                .arg("1")
                .arg(r.encode())
                .arg(ttl.as_millis().max(1) as u64),
            None => inv.arg("0").arg("").arg(0),
        };
        let applied: i64 = self.timed(inv.invoke_async(&mut con)).await?;
        Ok(applied == 1)
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
