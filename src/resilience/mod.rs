//! Resilience: keeping traffic off what is failing and keeping drover serving anyway.
//!
//! - `breaker`: circuit breaker state machine (per worker and per route).
//! - `classify`: what counts as a failure.
//! - `window`: lock-free rolling window of counts (breaker ratios, retry budget).
//! - `rate_limit`: per-client GCRA buckets; `shared_limit`: the same through Redis.

pub mod breaker;
pub mod chaos;
pub mod classify;
pub mod config;
pub mod metrics;
pub mod rate_limit;
pub mod retry;
pub mod routes;
pub mod shared_limit;
pub mod window;
