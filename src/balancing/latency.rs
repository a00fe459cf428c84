//! Latency-aware choice: power of two random choices on peak-EWMA × (in-flight + 1),
//! as Linkerd and Finagle do. Two random candidates keep the choice cheap and avoid
//! herding every request onto the single fastest backend.

use super::backend::Backend;
use std::sync::Arc;

fn cost(b: &Backend) -> f64 {
    b.latency_nanos() * (b.inflight() as f64 + 1.0) / b.weight as f64
}

/// Index into `backends` of the cheaper of two distinct random backends (latency × (in-flight + 1)
/// / weight). `backends` must not be empty.
pub fn pick(backends: &[Arc<Backend>]) -> usize {
    let n = backends.len();
    if n == 1 {
        return 0;
    }
    let a = rand::random_range(0..n);
    let mut b = rand::random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    if cost(&backends[b]) < cost(&backends[a]) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::test_util::backend;
    use super::*;
    use std::time::Duration;

    #[test]
    fn slow_backend_loses_most_of_its_share() {
        let bs: Vec<_> = (0..3).map(|i| backend(i, 1)).collect();
        bs[0].observe_latency(Duration::from_millis(200));
        bs[1].observe_latency(Duration::from_millis(2));
        bs[2].observe_latency(Duration::from_millis(2));
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pick(&bs)] += 1;
        }
        // With two choices the slow one only wins when drawn twice, which cannot happen
        // (candidates are distinct), so it gets nothing.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert_eq!(counts[1] + counts[2], 3000);
        assert!(counts[1] > 500 && counts[2] > 500, "{counts:?}");
    }

    #[test]
    fn equal_backends_share_evenly() {
        let bs: Vec<_> = (0..2).map(|i| backend(i, 1)).collect();
        let mut counts = [0i32; 2];
        for _ in 0..10_000 {
            counts[pick(&bs)] += 1;
        }
        assert!((counts[0] - 5000).abs() < 300, "{counts:?}");
    }
}
