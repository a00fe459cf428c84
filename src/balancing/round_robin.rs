//! Plain round robin: each eligible backend in turn, weights ignored.

use super::backend::Backend;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The cursor lives in the pool, not here, so a rebuild of the eligible set does not
/// send the next request back to the first backend.
pub fn pick(cursor: &AtomicUsize, backends: &[Arc<Backend>]) -> usize {
    cursor.fetch_add(1, Ordering::Relaxed) % backends.len()
}

#[cfg(test)]
mod tests {
    use super::super::backend::test_util::backend;
    use super::*;

    #[test]
    fn visits_each_backend_in_turn() {
        let bs: Vec<_> = (0..3).map(|i| backend(i, 1)).collect();
        let c = AtomicUsize::new(0);
        let seq: Vec<_> = (0..6).map(|_| pick(&c, &bs)).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    }
}
