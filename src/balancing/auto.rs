//! `strategy: auto`: drover picks a strategy from what it observes and says why.
//!
//! Rules, in order (documented in docs/OPERATIONS.md):
//! 1. Backends' latencies differ a lot (slowest peak-EWMA ≥ 2× the fastest, and the
//!    slowest above 2 ms): `latency`, which routes around slow backends.
//! 2. Configured weights differ: `weighted_round_robin`, which honours them exactly.
//! 3. Otherwise: `least_connections`, which copes best with uneven request cost.

use super::{Backend, StrategyKind};
use std::sync::Arc;

/// Rule 1 fires when the slowest backend's latency is at least this many times the fastest's.
pub const LATENCY_SPREAD: f64 = 2.0;
/// Rule 1 also needs the slowest backend above this latency (2 ms, in ns), so tiny absolute
/// differences between fast backends do not count.
pub const LATENCY_FLOOR_NANOS: f64 = 2_000_000.0;

/// Picks the strategy for `strategy: auto` from the backends in rotation, by the rules above;
/// returns it with a one-line reason for logs and the admin API.
pub fn decide(backends: &[Arc<Backend>]) -> (StrategyKind, String) {
    if backends.len() < 2 {
        return (
            StrategyKind::LeastConnections,
            "fewer than two backends in rotation: least_connections".into(),
        );
    }
    let lat: Vec<f64> = backends.iter().map(|b| b.latency_nanos()).collect();
    let (min, max) = lat
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if max >= LATENCY_SPREAD * min && max > LATENCY_FLOOR_NANOS {
        return (
            StrategyKind::Latency,
            format!(
                "backend latencies differ {:.1}x ({:.1} ms vs {:.1} ms): latency",
                max / min,
                max / 1e6,
                min / 1e6
            ),
        );
    }
    let w0 = backends[0].weight;
    if backends.iter().any(|b| b.weight != w0) {
        return (
            StrategyKind::WeightedRoundRobin,
            "backends have different weights: weighted_round_robin".into(),
        );
    }
    (
        StrategyKind::LeastConnections,
        format!("latencies within {LATENCY_SPREAD}x and equal weights: least_connections"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::backend::test_util::backend;
    use super::*;
    use std::time::Duration;

    #[test]
    fn picks_latency_when_one_backend_is_slow() {
        let bs = vec![backend(0, 1), backend(1, 1)];
        bs[0].observe_latency(Duration::from_millis(1));
        bs[1].observe_latency(Duration::from_millis(50));
        let (k, why) = decide(&bs);
        assert_eq!(k, StrategyKind::Latency);
        // The reason names the slow backend's latency: 50 ms, less what the 10 s decay
        // took while the test ran (a loaded CI machine once stalled it ~140 ms: 49.3).
        let slow: f64 = why
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(" ms vs"))
            .and_then(|(ms, _)| ms.parse().ok())
            .unwrap_or_else(|| panic!("no latency in {why}"));
        assert!((45.0..=50.0).contains(&slow), "{why}");
    }

    #[test]
    fn picks_weighted_when_weights_differ() {
        let bs = vec![backend(0, 3), backend(1, 1)];
        assert_eq!(decide(&bs).0, StrategyKind::WeightedRoundRobin);
    }

    #[test]
    fn defaults_to_least_connections() {
        let bs = vec![backend(0, 1), backend(1, 1)];
        assert_eq!(decide(&bs).0, StrategyKind::LeastConnections);
        assert_eq!(decide(&bs[..1]).0, StrategyKind::LeastConnections);
    }
}
