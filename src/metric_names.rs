//! Every metric name drover exports, in one place (Prometheus conventions: base units,
//! `_total` for counters, `_seconds` for durations).

pub const REQUESTS_TOTAL: &str = "drover_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "drover_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "drover_requests_in_flight";
pub const REQUESTS_BY_VERSION_TOTAL: &str = "drover_requests_by_version_total";
pub const UPGRADED_CONNECTIONS: &str = "drover_upgraded_connections";
pub const GRPC_RESPONSES_TOTAL: &str = "drover_grpc_responses_total";
pub const TLS_CERTIFICATE_NOT_AFTER: &str = "drover_tls_certificate_not_after_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "drover_upstream_errors_total";
pub const RETRIES_TOTAL: &str = "drover_retries_total";
pub const NO_BACKEND_TOTAL: &str = "drover_no_backend_total";
pub const BACKEND_REQUESTS_TOTAL: &str = "drover_backend_requests_total";
pub const BACKEND_FAILURES_TOTAL: &str = "drover_backend_failures_total";
pub const BACKEND_IN_FLIGHT: &str = "drover_backend_in_flight";
pub const BACKEND_HEALTHY: &str = "drover_backend_healthy";
pub const BACKEND_LATENCY_EWMA_SECONDS: &str = "drover_backend_latency_ewma_seconds";
pub const BACKEND_DURATION_SECONDS: &str = "drover_backend_request_duration_seconds";
pub const BREAKER_STATE: &str = "drover_circuit_breaker_state";
pub const BREAKER_TRANSITIONS_TOTAL: &str = "drover_circuit_breaker_transitions_total";
pub const WORKER_RESTARTS_TOTAL: &str = "drover_worker_restarts_total";
pub const WORKERS_RUNNING: &str = "drover_workers_running";
pub const WORKERS_CRASH_LOOPING: &str = "drover_workers_crash_looping";
pub const WORKER_METRICS_REJECTED_TOTAL: &str = "drover_worker_metrics_rejected_total";
/// Prefix of metrics workers report (`X-Drover-Metric`); no name above may start with it.
pub const WORKER_REPORTED_PREFIX: &str = "drover_app_";
pub const CONFIG_RELOADS_TOTAL: &str = "drover_config_reloads_total";
pub const CONFIG_VERSION: &str = "drover_config_version";
pub const BALANCING_PANIC: &str = "drover_balancing_panic_mode";
pub const BALANCING_STRATEGY: &str = "drover_balancing_strategy";
pub const HEALTH_CHECKS_TOTAL: &str = "drover_health_checks_total";
pub const QUEUE_LENGTH: &str = "drover_queue_length";
pub const QUEUE_WAIT_SECONDS: &str = "drover_queue_wait_seconds";
pub const QUEUE_REJECTED_TOTAL: &str = "drover_queue_rejected_total";
pub const BACKEND_SELECTIONS_TOTAL: &str = "drover_backend_selections_total";
pub const SESSIONS_ACTIVE: &str = "drover_sessions_active";
pub const SESSIONS_CREATED_TOTAL: &str = "drover_sessions_created_total";
pub const SESSIONS_EXPIRED_TOTAL: &str = "drover_sessions_expired_total";
pub const SESSIONS_EVICTED_TOTAL: &str = "drover_sessions_evicted_total";
pub const SESSIONS_MIGRATED_TOTAL: &str = "drover_sessions_migrated_total";
pub const SESSIONS_REJECTED_TOTAL: &str = "drover_sessions_cookie_rejected_total";
pub const SESSIONS_PER_BACKEND: &str = "drover_sessions_per_backend";
pub const SESSION_STORE_ERRORS_TOTAL: &str = "drover_session_store_errors_total";
pub const SESSION_STORE_DURATION_SECONDS: &str = "drover_session_store_call_duration_seconds";
pub const SESSION_STORE_UP: &str = "drover_session_store_up";
pub const SESSION_LOCK_TIMEOUTS_TOTAL: &str = "drover_session_lock_timeouts_total";
pub const SESSION_WRITE_CONFLICTS_TOTAL: &str = "drover_session_write_conflicts_total";
pub const SESSION_DATA_REFUSED_TOTAL: &str = "drover_session_data_refused_total";
pub const SESSION_WRITES_FAILED_TOTAL: &str = "drover_session_writes_failed_total";
pub const SESSION_WRITES_UNREPLICATED_TOTAL: &str = "drover_session_writes_unreplicated_total";
pub const RATE_LIMIT_SHARED_TOTAL: &str = "drover_rate_limit_shared_decisions_total";
pub const UPSTREAM_DISCOVERY_BACKENDS: &str = "drover_upstream_discovered_backends";
pub const UPSTREAM_DISCOVERY_ERRORS_TOTAL: &str = "drover_upstream_discovery_errors_total";
pub const AUTOSCALE_DECISIONS_TOTAL: &str = "drover_autoscale_decisions_total";
pub const BREAKER_TRIPS_TOTAL: &str = "drover_circuit_breaker_trips_total";
pub const ROUTE_BREAKER_STATE: &str = "drover_route_breaker_state";
pub const ROUTE_BREAKER_TRANSITIONS_TOTAL: &str = "drover_route_breaker_transitions_total";
pub const ROUTE_IN_FLIGHT: &str = "drover_route_in_flight";
pub const ROUTE_REJECTED_TOTAL: &str = "drover_route_rejected_total";
pub const ROUTE_FALLBACK_TOTAL: &str = "drover_route_fallback_total";
pub const RATE_LIMITED_TOTAL: &str = "drover_rate_limited_total";
pub const RATE_LIMIT_TABLE_BYTES: &str = "drover_rate_limit_table_bytes";
pub const RETRIES_DENIED_TOTAL: &str = "drover_retries_denied_total";
pub const RETRY_BACKOFF_SECONDS_TOTAL: &str = "drover_retry_backoff_seconds_total";
pub const CHAOS_INJECTED_TOTAL: &str = "drover_chaos_injected_total";
pub const ADMIN_REFUSED_TOTAL: &str = "drover_admin_refused_total";
pub const ADMIN_CONNECTIONS: &str = "drover_admin_connections";
// Sliding-window percentiles, resources and alerts (observe::live, observe::alerts).
pub const REQUEST_DURATION_PERCENTILE_SECONDS: &str = "drover_request_duration_percentile_seconds";
pub const BACKEND_DURATION_PERCENTILE_SECONDS: &str =
    "drover_backend_request_duration_percentile_seconds";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "drover_process_cpu_seconds_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "drover_process_resident_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "drover_process_open_fds";
pub const HISTORY_SERIES: &str = "drover_history_series";
pub const OBSERVE_EVENTS_TOTAL: &str = "drover_events_total";
pub const ALERT_STATE: &str = "drover_alert_state";
pub const ALERT_NOTIFICATIONS_TOTAL: &str = "drover_alert_notifications_total";
pub const SLO_ERROR_BUDGET_REMAINING: &str = "drover_slo_error_budget_remaining";
pub const SLO_BURN_RATE: &str = "drover_slo_burn_rate";
pub const LIMIT_REJECTIONS_TOTAL: &str = "drover_limit_rejections_total";
pub const HTTP1_ENGINE_REQUESTS_TOTAL: &str = "drover_http1_engine_requests_total";
// OTLP span export (observe::otlp).
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
