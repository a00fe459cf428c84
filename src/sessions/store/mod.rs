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

/// Why a store call failed; each kind is counted separately in the store-errors counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within the store's timeout.
    #[error("session store call timed out")]
    Timeout,
    /// Not attempted: the store's breaker is open after repeated failures.
    #[error("session store is failing; its circuit breaker is open")]
    CircuitOpen,
    /// The store answered with an error or could not be reached; the text says which.
    #[error("session store: {0}")]
    Backend(String),
    /// Another request holds the session's lock on the shared store (the store is working, not
    /// failing).
    #[error("session is locked by another request")]
    Locked,
}

/// Proof of holding a session's lock on a shared store: the random value its lock key
/// holds while this token owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken {
    /// Random value stored under the session's lock key; only its holder can release the lock.
    pub value: String,
}

/// What a conditional write expects the store to hold for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No record (a session whose record is being created).
    Absent,
    /// The record at this `version` (what the request read).
    Version(u64),
}

/// Whole-store counts for `/api/sessions`, the dashboard and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Sessions stored now (see `approximate`).
    pub active: u64,
    /// Sessions per pinned backend name (may lag by one sweep cycle).
    pub per_worker: BTreeMap<String, u64>,
    /// Records evicted at the memory store's cap since start (always 0 on Redis).
    pub evicted: u64,
    /// Records removed on expiry since start (always 0 on Redis, where keys simply expire).
    pub expired: u64,
    /// True when `active` was counted from a bounded scan and may be an undercount.
    pub approximate: bool,
}

/// The operations every store offers, for the admin API, tests and the Redis path; the hot path
/// calls the memory store's synchronous methods directly.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;
    /// The session's record; `None` when absent or expired.
    async fn get(&self, id: &SessionId) -> Result<Option<Record>, StoreError>;
    /// Stores `record` unconditionally, to expire after `ttl`.
    async fn set(&self, id: &SessionId, record: &Record, ttl: Duration) -> Result<(), StoreError>;
    /// Extends a session's time to live; false when it does not exist.
    async fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool, StoreError>;
    /// Removes the session's record; an absent one is not an error.
    async fn delete(&self, id: &SessionId) -> Result<(), StoreError>;
    /// Whole-store counts (bounded work on Redis).
    async fn stats(&self) -> Result<StoreStats, StoreError>;
}
