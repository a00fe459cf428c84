//! Weighted random choice.

use super::backend::Backend;
use std::sync::Arc;

/// Index into `backends` chosen at random in proportion to weight; `total_weight` is the sum of
/// their weights (precomputed per snapshot).
pub fn pick(backends: &[Arc<Backend>], total_weight: u64) -> usize {
    let mut r = rand::random_range(0..total_weight.max(1));
    for (i, b) in backends.iter().enumerate() {
        let w = b.weight as u64;
        if r < w {
            return i;
        }
        r -= w;
    }
    backends.len() - 1
}

#[cfg(test)]
mod tests {
    use super::super::backend::test_util::backend;
    use super::*;

    #[test]
    fn follows_weights_within_tolerance() {
        let bs = vec![backend(0, 3), backend(1, 1)];
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[pick(&bs, 4)] += 1;
        }
        let share = counts[0] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }
}
