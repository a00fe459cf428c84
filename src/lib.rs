//! drover: an edge reverse proxy on Pingora that forks, supervises and balances a pool of
//! HTTP worker processes, and can front remote upstreams too.
//!
//! Module map (the request path is described in docs/ARCHITECTURE.md):
//! - `config`: YAML file types, validation into the runtime `Config`, errors with lines.
//! - `proxy`: the Pingora `ProxyHttp` implementation (thin hooks).
//! - `balancing`: backends, the pool and one file per strategy.
//! - `resilience`: circuit breakers.
//! - `sessions`: sticky sessions: signed cookie, memory and Redis stores, encryption.
//! - `health`: active health checks.
//! - `supervisor`: forking, restarting, draining and scaling worker processes.
//! - `observe`: metric names and registry, access log.
//! - `admin`: the admin HTTP plane.
//! - `in_flight`: the count of requests being proxied, owned by the data plane (leaf).
//! - `lifecycle`: control thread, signals, reload, shutdown, pid file.
//! - `private_fs`: the private runtime folder and the files drover reads and writes there.
//! - `redact`: hiding secrets in what drover shows (admin API, logs).
//! - `redis_link`: the connection to Redis (one node, Sentinel or Cluster; TLS; ACL).
#![deny(unsafe_code)]

pub mod admin;
pub mod balancing;
pub mod config;
pub mod health;
pub mod in_flight;
pub mod lifecycle;
pub mod metric_names;
pub mod observe;
pub mod private_fs;
pub mod proxy;
pub mod redact;
pub mod redis_link;
pub mod reload;
pub mod resilience;
pub mod sessions;
pub mod stable_hash;
pub mod state;
pub mod supervisor;
pub mod tls;
pub mod upstreams;
pub mod wire;
