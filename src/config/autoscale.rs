//! `workers.autoscale:`: file format and validation (see `supervisor/autoscale.rs`).

use super::duration::Dur;
use super::error::ConfigIssue;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `workers.autoscale:` as written; off by default, `workers.count` is then the fixed size.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleFile {
    /// Whether the supervisor resizes the pool from load (default false).
    pub enabled: bool,
    /// Fewest workers autoscaling keeps (at least 1, default 1).
    pub min: usize,
    /// Most workers autoscaling starts (at least `min`, at most 512, default 8).
    pub max: usize,
    /// Requests in flight (plus queued) one worker should carry.
    pub target_in_flight: f64,
    /// Scale down (one worker at a time) when the load is below this share of what the
    /// current workers can carry at the target.
    pub scale_down_below: f64,
    /// Load is averaged over this window before any decision.
    pub window: Dur,
    /// Minimum time between two changes.
    pub cooldown: Dur,
}

impl Default for AutoscaleFile {
    fn default() -> Self {
        AutoscaleFile {
            enabled: false,
            min: 1,
            max: 8,
            target_in_flight: 8.0,
            scale_down_below: 0.5,
            window: Dur::secs(30),
            cooldown: Dur::secs(60),
        }
    }
}

/// Validated `workers.autoscale:`, read by the supervisor's autoscaler.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    /// Whether the pool is resized from load; when false the other fields are unused.
    pub enabled: bool,
    /// Fewest workers (1..=`max`).
    pub min: usize,
    /// Most workers (`min`..=`MAX_WORKERS`, i.e. 512).
    pub max: usize,
    /// Requests in flight plus queued that one worker should carry (positive, finite).
    pub target_in_flight: f64,
    /// Scale down one worker when load is below this share (0..1 exclusive) of capacity.
    pub scale_down_below: f64,
    /// Load is averaged over this window before any decision (greater than zero).
    pub window: Duration,
    /// Minimum time between two changes of the pool size.
    pub cooldown: Duration,
}

/// Checks `workers.autoscale:`; `max_workers` is the hard cap on `max`. Returns every
/// problem at once.
pub fn validate_autoscale(
    f: &AutoscaleFile,
    max_workers: usize,
) -> Result<AutoscaleConfig, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut fail = |field: &str, message: String| {
        issues.push(ConfigIssue {
            field: format!("workers.autoscale.{field}"),
            line: None,
            message,
        })
    };
    if f.min == 0 || f.min > f.max {
        fail(
            "min",
            format!("{} must be at least 1 and at most `max` ({})", f.min, f.max),
        );
    }
    if f.max > max_workers {
        fail(
            "max",
            format!("{} is above the limit of {max_workers}", f.max),
        );
    }
    if !(f.target_in_flight > 0.0 && f.target_in_flight.is_finite()) {
        fail("target_in_flight", "must be a positive number".into());
    }
    if !(f.scale_down_below > 0.0 && f.scale_down_below < 1.0) {
        fail(
            "scale_down_below",
            "must be between 0 and 1 (exclusive)".into(),
        );
    }
    if f.window.0.is_zero() {
        fail("window", "must be greater than zero".into());
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(AutoscaleConfig {
        enabled: f.enabled,
        min: f.min,
        max: f.max,
        target_in_flight: f.target_in_flight,
        scale_down_below: f.scale_down_below,
        window: f.window.0,
        cooldown: f.cooldown.0,
    })
}
