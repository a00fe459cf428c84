//! Observability: metric names and registry, the access log, latency windows, history,
//! resource sampling, events, alerts and tracing.

pub mod access_log;
pub mod alerts;
pub mod capacity;
pub mod custom;
pub mod events;
pub mod history;
pub mod latency;
pub mod live;
pub mod logfmt;
pub mod metrics;
pub mod otlp;
pub mod procstat;
pub mod resilience_metrics;
pub mod trace;
pub mod view;
pub mod webhook;
