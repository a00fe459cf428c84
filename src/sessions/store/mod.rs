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

/// Proof of holding a session's lock on a shared store: the random value its lock key
/// holds while this token owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken {
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
    async fn stats(&self) -> Result<StoreStats, StoreError>;
}
