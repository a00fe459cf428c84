//! Every metric name drover exports, in one place (Prometheus conventions: base units,
//! `_total` for counters, `_seconds` for durations).

pub const REQUESTS_TOTAL: &str = "drover_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "drover_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "drover_requests_in_flight";
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
pub const CONFIG_RELOADS_TOTAL: &str = "drover_config_reloads_total";
pub const CONFIG_VERSION: &str = "drover_config_version";
pub const BALANCING_PANIC: &str = "drover_balancing_panic_mode";
pub const BALANCING_STRATEGY: &str = "drover_balancing_strategy";
pub const HEALTH_CHECKS_TOTAL: &str = "drover_health_checks_total";
pub const QUEUE_LENGTH: &str = "drover_queue_length";
pub const QUEUE_WAIT_SECONDS: &str = "drover_queue_wait_seconds";
pub const QUEUE_REJECTED_TOTAL: &str = "drover_queue_rejected_total";
pub const BACKEND_SELECTIONS_TOTAL: &str = "drover_backend_selections_total";
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
