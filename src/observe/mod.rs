//! Observability: metric names and registry, the access log.

pub mod access_log;
pub mod metrics;
pub mod names;
