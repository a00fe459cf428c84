//! nginx's smooth weighted round robin: for weights 5,1,1 the order is
//! a a b a c a a, interleaved rather than bursts of a.
//!
//! Each pick adds every backend's effective weight to its running score, takes the
//! highest, and subtracts the total from the winner. A backend that fails has its
//! effective weight lowered (and regains it one step per success), as nginx does.

use super::backend::Backend;
use std::sync::{Arc, Mutex};

/// Smooth weighted round-robin state for one selector snapshot, indexed like its eligible backends.
pub struct SmoothWeighted {
    /// (current score, effective weight) per backend, in eligible-set order. The lock is
    /// held for one pass over a handful of integers.
    state: Mutex<Vec<(i64, i64)>>,
}

impl SmoothWeighted {
    /// Starts every backend at score 0 with its configured weight as effective weight.
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        SmoothWeighted {
            state: Mutex::new(backends.iter().map(|b| (0, b.weight as i64)).collect()),
        }
    }

    /// Index of the next backend in smooth-WRR order; `backends` must be the slice this state was
    /// built for.
    pub fn pick(&self, backends: &[Arc<Backend>]) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best = 0usize;
        let mut best_score = i64::MIN;
        for (i, s) in st.iter_mut().enumerate() {
            s.0 += s.1;
            total += s.1;
            if s.0 > best_score {
                best_score = s.0;
                best = i;
            }
        }
        if let Some(s) = st.get_mut(best) {
            s.0 -= total;
        }
        debug_assert!(best < backends.len());
        best
    }

    /// Feedback from the request outcome: failures halve the effective weight (min 1),
    /// successes restore it one step at a time up to the configured weight.
    pub fn feedback(&self, backends: &[Arc<Backend>], backend_id: u64, success: bool) {
        let Some(i) = backends.iter().position(|b| b.id == backend_id) else {
            return;
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let configured = backends[i].weight as i64;
        if let Some(s) = st.get_mut(i) {
            if success {
                if s.1 < configured {
                    s.1 += 1;
                }
            } else {
                s.1 = (s.1 / 2).max(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::test_util::backend;
    use super::*;

    #[test]
    fn sequence_for_5_1_1_is_smooth() {
        let bs = vec![backend(0, 5), backend(1, 1), backend(2, 1)];
        let s = SmoothWeighted::new(&bs);
        let names = ['a', 'b', 'c'];
        let seq: String = (0..7).map(|_| names[s.pick(&bs)]).collect();
        assert_eq!(seq, "aabacaa");
    }

    #[test]
    fn exact_shares_over_a_cycle() {
        let bs = vec![backend(0, 3), backend(1, 1)];
        let s = SmoothWeighted::new(&bs);
        let mut counts = [0; 2];
        for _ in 0..4000 {
            counts[s.pick(&bs)] += 1;
        }
        assert_eq!(counts, [3000, 1000]);
    }

    #[test]
    fn failure_lowers_share_and_success_restores_it() {
        let bs = vec![backend(0, 4), backend(1, 4)];
        let s = SmoothWeighted::new(&bs);
        s.feedback(&bs, 0, false);
        s.feedback(&bs, 0, false);
        let mut counts = [0; 2];
        for _ in 0..500 {
            counts[s.pick(&bs)] += 1;
        }
        assert_eq!(counts, [100, 400], "weight 1 vs 4");
        for _ in 0..3 {
            s.feedback(&bs, 0, true);
        }
        let mut counts = [0; 2];
        for _ in 0..800 {
            counts[s.pick(&bs)] += 1;
        }
        assert_eq!(counts, [400, 400]);
    }
}
