//! Smooth weighted round robin (the NGINX algorithm), precomputed into one cycle of
//! `sum(weights)` picks and indexed by an atomic counter, so concurrent picks never lock.
//!
//! For weights {a: 5, b: 1, c: 1} the cycle is
//!
//! ```text
//!   pick:      1  2  3  4  5  6  7
//!   endpoint:  a  a  b  a  c  a  a      then repeat
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Wrr {
    cycle: Box<[u32]>,
    next: AtomicUsize,
}

impl Wrr {
    /// Builds the cycle. Zero weights are treated as absent; if every weight is zero (or
    /// the list is empty) the table is empty and [`Wrr::pick`] returns None.
    pub fn new(weights: &[u32]) -> Self {
        Wrr {
            cycle: smooth_cycle(weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint index in the cycle.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.cycle[n % self.cycle.len()] as usize)
    }

    /// The next index that is not in `skip` (for retries on another endpoint). Walks at
    /// most one cycle; None if every endpoint is skipped.
    pub fn pick_except(&self, skip: &[usize]) -> Option<usize> {
        for _ in 0..self.cycle.len() {
            let i = self.pick()?;
            if !skip.contains(&i) {
                return Some(i);
            }
        }
        None
    }
}

/// One full cycle of smooth WRR: each step adds every weight to its current value, picks
/// the largest current (the first on ties) and subtracts the total from it.
pub fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weights_5_1_1_give_the_nginx_sequence() {
        let wrr = Wrr::new(&[5, 1, 1]);
        let names = ["a", "b", "c"];
        let picks: Vec<&str> = (0..14)
            .map(|_| names[wrr.pick().expect("non-empty")])
            .collect();
        assert_eq!(
            picks.join(" "),
            "a a b a c a a a a b a c a a",
            "the cycle repeats exactly"
        );
    }

    #[test]
    fn pick_except_skips_the_failed_endpoint() {
        let wrr = Wrr::new(&[5, 1, 1]);
        for _ in 0..20 {
            assert_ne!(wrr.pick_except(&[0]), Some(0));
        }
        assert_eq!(wrr.pick_except(&[0, 1, 2]), None);
    }

    proptest! {
        #[test]
        fn every_window_of_one_cycle_holds_each_endpoint_weight_times(
            weights in proptest::collection::vec(1u32..=20, 1..8),
            offset in 0usize..200,
        ) {
            let wrr = Wrr::new(&weights);
            for _ in 0..offset { wrr.pick(); }
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total { counts[wrr.pick().expect("non-empty")] += 1; }
            prop_assert_eq!(counts, weights);
        }
    }
}
