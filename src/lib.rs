//! drover: an edge reverse proxy on Pingora that forks, supervises and balances a pool of
//! HTTP worker processes, and can front remote upstreams too.
//!
//! Module map, lowest layer first (folders import only lower ones; `.ci/imports.py --check`
//! keeps it so; the request path is in docs/ARCHITECTURE.md):
//! - leaves: `wire` (HTTP/1 rules both carriers share), `metric_names`, `stable_hash`,
//!   `in_flight` (the count of requests being proxied), `private_fs` (the private runtime
//!   folder and its files), `redact` (secrets out of what drover shows).
//! - `redis_link` (the connection to Redis: one node, Sentinel or Cluster; TLS; ACL),
//!   `resilience` (breakers, rate limits, retries, chaos), `tls` (certificates).
//! - `config`: YAML file types, validation into the runtime model, errors with lines.
//! - `balancing` (backends, the pool, one file per strategy), `sessions` (signed cookie,
//!   memory and Redis stores, encryption).
//! - `observe`: metrics, access log, latency windows, history, alerts, tracing;
//!   `health`: the one writer of backend health.
//! - `state`: `Shared`, the running state the services and the data plane hold.
//! - services: `supervisor` (forking, restarting, draining and scaling workers),
//!   `upstreams` (static and DNS-discovered remote hosts), `reload`.
//! - top: `proxy` (the pipeline and its two HTTP carriers), `admin` (the admin HTTP
//!   plane), `lifecycle` (control thread, signals, upgrade, shutdown, pid file).
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
