//! Where session records live. Both backends offer the same Redis-like operations; the
//! session service uses them through [`SessionStore`] (admin, tests, Redis) and calls the
//! memory store's synchronous methods directly on the hot path (no boxed future per
//! request for the embedded default).

pub mod memory;
pub mod redis;

use super::cookie::SessionId;
use super::record::Record;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("session store call timed out")]
    Timeout,
    #[error("session store is failing; its circuit breaker is open")]
    CircuitOpen,
    #[error("session store: {0}")]
    Backend(String),
    #[error("session is locked by another request")]
    Locked,
}

/// Proof of holding a session's lock. `fence` increases with every lock taken on a
/// shared store; a write carrying a stale fence (our lease expired and another instance
/// locked the session) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken {
    pub fence: u64,
    /// What the lock key holds while this token owns it (fence and a random nonce).
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub active: u64,
    /// Sessions per pinned backend name (may lag by one sweep cycle).
    pub per_worker: BTreeMap<String, u64>,
    pub evicted: u64,
    pub expired: u64,
    /// True when `active` was counted from a bounded scan and may be an undercount.
    pub approximate: bool,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    fn kind(&self) -> &'static str;
    async fn get(&self, id: &SessionId) -> Result<Option<Record>, StoreError>;
    async fn set(&self, id: &SessionId, record: &Record, ttl: Duration) -> Result<(), StoreError>;
    /// Extends a session's time to live; false when it does not exist.
    async fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool, StoreError>;
    async fn delete(&self, id: &SessionId) -> Result<(), StoreError>;
    /// Locks a session for a read-modify-write and reads it, waiting at most `wait`.
    /// The lock expires by itself after `lease` if its holder dies.
    async fn lock_and_get(
        &self,
        id: &SessionId,
        wait: Duration,
        lease: Duration,
    ) -> Result<(LockToken, Option<Record>), StoreError>;
    /// Writes `record` (when given) only if `token` still holds the lock, then releases
    /// it. `Ok(false)`: the lock was lost and nothing was written.
    async fn set_and_unlock(
        &self,
        id: &SessionId,
        token: LockToken,
        record: Option<&Record>,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    async fn stats(&self) -> Result<StoreStats, StoreError>;
}
