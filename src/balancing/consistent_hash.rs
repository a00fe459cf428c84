//! Consistent hashing on a ring of virtual nodes, so adding or removing one of N
//! backends moves about 1/N of the keys.
//!
//! Points are placed by hashing the backend's stable *name* (not its address), so a
//! worker restarted on a new port keeps its keys. The hash is FNV-1a with a fixed seed:
//! every drover instance builds the same ring and agrees on where a key goes.

use super::backend::Backend;
use std::sync::Arc;

/// Virtual nodes per unit of weight; 160 is what ketama uses.
const POINTS_PER_WEIGHT: u32 = 160;

use crate::stable_hash::fnv1a;

/// The ring of one selector snapshot: `POINTS_PER_WEIGHT` points per unit of weight (weights above
/// 100 count as 100) for each backend.
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds the ring over `backends`; the indices it returns are positions in this slice.
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let mut points = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            for v in 0..POINTS_PER_WEIGHT * b.weight.min(100) {
                let label = format!("{}#{v}", b.name);
                points.push((fnv1a(label.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Index of the backend owning `key`: the first point at or after it, wrapping around; 0 for an
    /// empty ring.
    pub fn pick(&self, key: u64) -> usize {
        if self.points.is_empty() {
            return 0;
        }
        let i = self.points.partition_point(|p| p.0 < key);
        self.points[i % self.points.len()].1 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::test_util::backend;
    use super::*;

    fn owners(bs: &[Arc<Backend>], keys: u64) -> Vec<Arc<str>> {
        let ring = Ring::new(bs);
        (0..keys)
            .map(|k| bs[ring.pick(fnv1a(&k.to_le_bytes()))].name.clone())
            .collect()
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let all: Vec<_> = (0..5).map(|i| backend(i, 1)).collect();
        let before = owners(&all, 20_000);
        let fewer: Vec<_> = all.iter().filter(|b| b.id != 3).cloned().collect();
        let after = owners(&fewer, 20_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let share = moved as f64 / 20_000.0;
        assert!((share - 0.2).abs() < 0.05, "moved {share}");
        // Only keys owned by the removed backend moved.
        for (a, b) in before.iter().zip(&after) {
            if a != b {
                assert_eq!(&**a, "worker-3");
            }
        }
    }

    #[test]
    fn adding_one_moves_about_one_over_n_plus_one() {
        let four: Vec<_> = (0..4).map(|i| backend(i, 1)).collect();
        let five: Vec<_> = (0..5).map(|i| backend(i, 1)).collect();
        let before = owners(&four, 20_000);
        let after = owners(&five, 20_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let share = moved as f64 / 20_000.0;
        assert!((share - 0.2).abs() < 0.05, "moved {share}");
    }

    #[test]
    fn keys_spread_roughly_evenly() {
        let bs: Vec<_> = (0..4).map(|i| backend(i, 1)).collect();
        let ring = Ring::new(&bs);
        let mut counts = [0i32; 4];
        for k in 0..40_000u64 {
            counts[ring.pick(fnv1a(&k.to_le_bytes()))] += 1;
        }
        for c in counts {
            assert!((c - 10_000).abs() < 2_000, "{counts:?}");
        }
    }
}
