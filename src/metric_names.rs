//! Every metric name drover exports, in one place (Prometheus conventions: base units,
//! `_total` for counters, `_seconds` for durations).

/// Counter: requests answered, by `class` (`1xx`..`5xx`; `error`: failed before any status).
pub const REQUESTS_TOTAL: &str = "drover_requests_total";
/// Histogram: time from request to response end, buckets 0.5 ms to 30 s.
pub const REQUEST_DURATION_SECONDS: &str = "drover_request_duration_seconds";
/// Gauge: requests being proxied now; copied from the data plane's counter at scrape time.
pub const REQUESTS_IN_FLIGHT: &str = "drover_requests_in_flight";
/// Counter: requests answered, by the client's HTTP `version` (`1.0`, `1.1`, `2`).
pub const REQUESTS_BY_VERSION_TOTAL: &str = "drover_requests_by_version_total";
/// Gauge: client connections switched to another protocol (WebSocket) and still open,
/// by `backend`.
pub const UPGRADED_CONNECTIONS: &str = "drover_upgraded_connections";
/// Counter: gRPC calls answered, by grpc-status `code` (0 = OK, 14 = UNAVAILABLE, ...).
pub const GRPC_RESPONSES_TOTAL: &str = "drover_grpc_responses_total";
/// Gauge: expiry (Unix seconds) of each served TLS certificate, by `cert_file`.
pub const TLS_CERTIFICATE_NOT_AFTER: &str = "drover_tls_certificate_not_after_seconds";
/// Counter: upstream errors, by `kind` (`connect`, `proxy`).
pub const UPSTREAM_ERRORS_TOTAL: &str = "drover_upstream_errors_total";
/// Counter: requests retried on another backend.
pub const RETRIES_TOTAL: &str = "drover_retries_total";
/// Counter: requests answered 503 because no backend was available.
pub const NO_BACKEND_TOTAL: &str = "drover_no_backend_total";
/// Counter: requests sent to each `backend`; series survive a worker restart (same name).
pub const BACKEND_REQUESTS_TOTAL: &str = "drover_backend_requests_total";
/// Counter: failed requests, by `backend`.
pub const BACKEND_FAILURES_TOTAL: &str = "drover_backend_failures_total";
/// Gauge: requests in flight, by `backend`; filled from the pool at scrape time.
pub const BACKEND_IN_FLIGHT: &str = "drover_backend_in_flight";
/// Gauge: 1 if the backend is in rotation, by `backend` and its `state`; set at scrape time.
pub const BACKEND_HEALTHY: &str = "drover_backend_healthy";
/// Gauge: peak-EWMA latency (seconds) the balancer sees, by `backend`.
pub const BACKEND_LATENCY_EWMA_SECONDS: &str = "drover_backend_latency_ewma_seconds";
/// Histogram: upstream response time, by `backend`, buckets 0.5 ms to 30 s.
pub const BACKEND_DURATION_SECONDS: &str = "drover_backend_request_duration_seconds";
/// Gauge: backend circuit breaker state (0 closed, 1 open, 2 half-open), by `backend`.
pub const BREAKER_STATE: &str = "drover_circuit_breaker_state";
/// Counter: backend circuit breaker transitions, by `backend` and `to`
/// (`open`, `half_open`, `closed`); synced from the breakers at scrape time.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "drover_circuit_breaker_transitions_total";
/// Counter: worker processes restarted after exiting, by `worker`.
pub const WORKER_RESTARTS_TOTAL: &str = "drover_worker_restarts_total";
/// Gauge: worker processes running.
pub const WORKERS_RUNNING: &str = "drover_workers_running";
/// Gauge: workers the supervisor considers crash-looping.
pub const WORKERS_CRASH_LOOPING: &str = "drover_workers_crash_looping";
/// Counter: worker-reported metric values dropped (bad name, label or value, or over the caps).
pub const WORKER_METRICS_REJECTED_TOTAL: &str = "drover_worker_metrics_rejected_total";
/// Prefix of metrics workers report (`X-Drover-Metric`); no name above may start with it.
pub const WORKER_REPORTED_PREFIX: &str = "drover_app_";
/// Counter: config reloads, by `result` (`ok`, `invalid`).
pub const CONFIG_RELOADS_TOTAL: &str = "drover_config_reloads_total";
/// Gauge: version of the running config: 1 at start, +1 per applied reload.
pub const CONFIG_VERSION: &str = "drover_config_version";
/// Gauge: 1 while too few backends are healthy and traffic is spread over all of them.
pub const BALANCING_PANIC: &str = "drover_balancing_panic_mode";
/// Gauge: 1 for the balancing `strategy` in use, 0 for the others.
pub const BALANCING_STRATEGY: &str = "drover_balancing_strategy";
/// Counter: health check results, by `result`: active probes (`pass`, `fail`) and
/// connections a backend refused (`refused`, a passive check).
pub const HEALTH_CHECKS_TOTAL: &str = "drover_health_checks_total";
/// Gauge: requests waiting in the queue for a free backend.
pub const QUEUE_LENGTH: &str = "drover_queue_length";
/// Histogram: time requests waited in the queue, buckets 0.5 ms to 30 s.
pub const QUEUE_WAIT_SECONDS: &str = "drover_queue_wait_seconds";
/// Counter: requests answered 503 by the queue, by `reason` (`full`, `timeout`).
pub const QUEUE_REJECTED_TOTAL: &str = "drover_queue_rejected_total";
/// Counter: times each balancing `strategy` chose each `backend`.
pub const BACKEND_SELECTIONS_TOTAL: &str = "drover_backend_selections_total";
/// Gauge: sessions in the store; published on the control thread's tick.
pub const SESSIONS_ACTIVE: &str = "drover_sessions_active";
/// Counter: sessions created.
pub const SESSIONS_CREATED_TOTAL: &str = "drover_sessions_created_total";
/// Counter: sessions removed on expiry.
pub const SESSIONS_EXPIRED_TOTAL: &str = "drover_sessions_expired_total";
/// Counter: sessions evicted because the memory store was at its cap.
pub const SESSIONS_EVICTED_TOTAL: &str = "drover_sessions_evicted_total";
/// Counter: sessions re-pinned because their backend left rotation.
pub const SESSIONS_MIGRATED_TOTAL: &str = "drover_sessions_migrated_total";
/// Counter: session cookies ignored, by `reason` (`malformed`, `bad_signature`, `expired`,
/// `unknown`).
pub const SESSIONS_REJECTED_TOTAL: &str = "drover_sessions_cookie_rejected_total";
/// Gauge: sessions pinned to each `backend`.
pub const SESSIONS_PER_BACKEND: &str = "drover_sessions_per_backend";
/// Counter: failed session store calls, by error `kind`.
pub const SESSION_STORE_ERRORS_TOTAL: &str = "drover_session_store_errors_total";
/// Histogram: duration of shared (Redis) session store calls, buckets 0.1 ms to 1 s.
pub const SESSION_STORE_DURATION_SECONDS: &str = "drover_session_store_call_duration_seconds";
/// Gauge: 1 while the session store answers (its breaker is closed).
pub const SESSION_STORE_UP: &str = "drover_session_store_up";
/// Counter: serialised requests that ran without the session lock because the previous
/// writer held it past `lock_timeout`.
pub const SESSION_LOCK_TIMEOUTS_TOTAL: &str = "drover_session_lock_timeouts_total";
/// Counter: session updates not saved because another request wrote the session after this
/// one read it (a detected lost update), or the store was unavailable.
pub const SESSION_WRITE_CONFLICTS_TOTAL: &str = "drover_session_write_conflicts_total";
/// Counter: session updates from workers refused (too large or not a header value).
pub const SESSION_DATA_REFUSED_TOTAL: &str = "drover_session_data_refused_total";
/// Counter: session writes whose store call failed (breaker open, timeout, error): not
/// saved, or saved without drover knowing.
pub const SESSION_WRITES_FAILED_TOTAL: &str = "drover_session_writes_failed_total";
/// Counter: session writes applied on the Redis master but not acknowledged by
/// `sessions.redis.durability.replicas` replicas within its timeout.
pub const SESSION_WRITES_UNREPLICATED_TOTAL: &str = "drover_session_writes_unreplicated_total";
/// Counter: shared (Redis) rate-limit decisions, by `result`: `allowed`, `denied`, or
/// `fallback` (made by the local buckets because Redis did not answer).
pub const RATE_LIMIT_SHARED_TOTAL: &str = "drover_rate_limit_shared_decisions_total";
/// Gauge: backends found by DNS discovery, by `upstream` entry.
pub const UPSTREAM_DISCOVERY_BACKENDS: &str = "drover_upstream_discovered_backends";
/// Counter: failed DNS lookups of discovered upstreams, by `upstream`; the last answer
/// stays in force.
pub const UPSTREAM_DISCOVERY_ERRORS_TOTAL: &str = "drover_upstream_discovery_errors_total";
/// Counter: autoscaling decisions, by `direction` (`up`, `down`).
pub const AUTOSCALE_DECISIONS_TOTAL: &str = "drover_autoscale_decisions_total";
/// Counter: circuit breaker openings, by `breaker` (`worker-N` or `route:NAME`) and `reason`.
pub const BREAKER_TRIPS_TOTAL: &str = "drover_circuit_breaker_trips_total";
/// Gauge: route circuit breaker state (0 closed, 1 open, 2 half-open), by `route`.
pub const ROUTE_BREAKER_STATE: &str = "drover_route_breaker_state";
/// Counter: route circuit breaker transitions, by `route` and `to`
/// (`open`, `half_open`, `closed`).
pub const ROUTE_BREAKER_TRANSITIONS_TOTAL: &str = "drover_route_breaker_transitions_total";
/// Gauge: requests in flight per `route` (bulkhead occupancy); set at scrape time.
pub const ROUTE_IN_FLIGHT: &str = "drover_route_in_flight";
/// Counter: requests a route turned away, by `route` and `reason` (`bulkhead`,
/// `breaker_open`).
pub const ROUTE_REJECTED_TOTAL: &str = "drover_route_rejected_total";
/// Counter: requests answered by a route's fallback, by `route` and `kind`
/// (`static`, `upstream`).
pub const ROUTE_FALLBACK_TOTAL: &str = "drover_route_fallback_total";
/// Counter: requests answered 429 by a rate limit, by `scope` (`global` or the route name).
pub const RATE_LIMITED_TOTAL: &str = "drover_rate_limited_total";
/// Gauge: memory (bytes) of each rate limiter's client table, by `scope`; fixed at config
/// load.
pub const RATE_LIMIT_TABLE_BYTES: &str = "drover_rate_limit_table_bytes";
/// Counter: retries not made, by `reason` (`budget`, `deadline`).
pub const RETRIES_DENIED_TOTAL: &str = "drover_retries_denied_total";
/// Counter: total time (seconds) spent in backoff before retries.
pub const RETRY_BACKOFF_SECONDS_TOTAL: &str = "drover_retry_backoff_seconds_total";
/// Counter: faults injected by chaos hooks, by `kind` and `target`.
pub const CHAOS_INJECTED_TOTAL: &str = "drover_chaos_injected_total";
/// Counter: admin requests and connections refused, by `reason` (`host`, `cross_site`,
/// `token`, `connection_cap`, `subscriber_cap`).
pub const ADMIN_REFUSED_TOTAL: &str = "drover_admin_refused_total";
/// Gauge: open admin connections (WebSocket subscribers not included).
pub const ADMIN_CONNECTIONS: &str = "drover_admin_connections";
// Sliding-window percentiles, resources and alerts (observe::live, observe::alerts).
/// Gauge: request duration percentile over a sliding `window` (`10s`, `1m`, `5m`), by
/// `percentile` (`50`, `95`, `99`, `99.9`); from HDR histograms, <1% error.
pub const REQUEST_DURATION_PERCENTILE_SECONDS: &str = "drover_request_duration_percentile_seconds";
/// Gauge: upstream response time percentile, by `backend`, `window` and `percentile`
/// (same windows and percentiles as [`REQUEST_DURATION_PERCENTILE_SECONDS`]).
pub const BACKEND_DURATION_PERCENTILE_SECONDS: &str =
    "drover_backend_request_duration_percentile_seconds";
/// Counter: CPU seconds (user + system), by `process` (`drover` or `worker-N` slot).
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "drover_process_cpu_seconds_total";
/// Gauge: resident memory in bytes, by `process` (`drover` or `worker-N`).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "drover_process_resident_memory_bytes";
/// Gauge: open file descriptors, by `process` (`drover` or `worker-N`).
pub const PROCESS_OPEN_FDS: &str = "drover_process_open_fds";
/// Gauge: series held by the in-memory history store.
pub const HISTORY_SERIES: &str = "drover_history_series";
/// Counter: notable events recorded in the live event log, by `kind`.
pub const OBSERVE_EVENTS_TOTAL: &str = "drover_events_total";
/// Gauge: alert rule state (0 inactive, 1 pending, 2 firing, 3 resolved), by `alertname`
/// and `severity`.
pub const ALERT_STATE: &str = "drover_alert_state";
/// Counter: alert webhook notifications, by `result` (`delivered`, `failed` after retries,
/// `dropped`).
pub const ALERT_NOTIFICATIONS_TOTAL: &str = "drover_alert_notifications_total";
/// Gauge: share of each `slo`'s error budget left over its window (negative = overspent).
pub const SLO_ERROR_BUDGET_REMAINING: &str = "drover_slo_error_budget_remaining";
/// Gauge: SLO burn rate, by `slo` and `window`; 1 = spending the budget exactly over the SLO
/// window.
pub const SLO_BURN_RATE: &str = "drover_slo_burn_rate";
/// Counter: requests refused by an edge limit (431, 413, 408, 503), by `limit`
/// (`header_bytes`, `header_count`, `body_bytes`, `in_flight`, `body_timeout`,
/// `header_timeout`).
pub const LIMIT_REJECTIONS_TOTAL: &str = "drover_limit_rejections_total";
/// Counter: HTTP/1 requests by the `engine` that served them: `fast` (drover's engine) or
/// `pingora` (request bodies, upgrades, HTTP/1.0, `proxy.fast_path` off).
pub const HTTP1_ENGINE_REQUESTS_TOTAL: &str = "drover_http1_engine_requests_total";
// OTLP span export (observe::otlp).
/// Counter: spans of sampled requests, by export `result` (`exported`, `dropped` when the
/// queue was full, `failed`); rendered by hand in `observe::otlp`.
pub const TRACE_SPANS_TOTAL: &str = "drover_trace_spans_total";

/// Whether `name` is a valid worker metric name (`[a-z_][a-z0-9_]*`, ≤ 64 bytes).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}
