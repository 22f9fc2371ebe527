//! The queue of engine wake-up times: a tournament tree (a complete binary tree over one
//! leaf per backend, each inner node holding the smaller of its children's keys), so the
//! earliest wake-up is the root and re-keying a backend (every engine step does, and
//! every arrival can split a decode stretch) rewrites its leaf and the winners on the way
//! up, stopping at the first one that does not change. An indexed heap did the same with
//! a sift through up to four children per level and a position table to keep in step;
//! here each level is one comparison of two siblings and one write, and the common case,
//! the backend just woken (the root's winner) moving later, costs one pass of ~log2(n)
//! levels with no data-dependent branching on which child to follow. Ties break by backend
//! id, which keeps replays deterministic: a key is one integer (time, then backend), so
//! one comparison orders by both.
//!
//! The key is a `u64` (time shifted left by just enough bits for the backend ids) while the
//! times fit, which they do for any replay under 78 hours at 65,536 backends or 200 days
//! at 1,024; a later time switches the queue to `u128` keys, once. Both encodings order
//! entries alike, so the switch converts the tree in place and no replay can tell them
//! apart; the narrow keys halve the bytes and the work of each comparison on the hot path.
//! An empty leaf holds the key type's maximum, which no real key reaches (a narrow key
//! that would is widened).

use crate::request::Nanos;

/// A tree entry's encoding: the time in the high bits, the backend in the low `bits`, so
/// one integer comparison orders by time and then by backend.
pub(crate) trait Key: Copy + Ord + std::fmt::Debug {
    /// The empty leaf, larger than every real key.
    const NONE: Self;
    fn new(t: Nanos, backend: usize, bits: u32) -> Self;
    fn time(self, bits: u32) -> Nanos;
    fn backend(self, bits: u32) -> usize;
}

impl Key for u64 {
    const NONE: u64 = u64::MAX;
    fn new(t: Nanos, backend: usize, bits: u32) -> u64 {
        (t << bits) | backend as u64
    }
    fn time(self, bits: u32) -> Nanos {
        self >> bits
    }
    fn backend(self, bits: u32) -> usize {
        (self & ((1u64 << bits) - 1)) as usize
    }
}

impl Key for u128 {
    // Backends take the low 32 bits of the 64 below the time, so no key is all ones.
    const NONE: u128 = u128::MAX;
    fn new(t: Nanos, backend: usize, _: u32) -> u128 {
        (u128::from(t) << 64) | backend as u128
    }
    fn time(self, _: u32) -> Nanos {
        (self >> 64) as Nanos
    }
    fn backend(self, _: u32) -> usize {
        self as u32 as usize
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Tree<K> {
    /// Node 1 is the root, node i's children are 2i and 2i + 1, and backend b's leaf is
    /// `leaves + b` (node 0 is unused).
    nodes: Vec<K>,
    leaves: usize,
    /// Low bits of a key that hold the backend.
    bits: u32,
}

/// The queue of wake-up times, in whichever key width its times need.
#[derive(Clone, Debug)]
pub(crate) enum WakeQueue {
    Narrow(Tree<u64>),
    Wide(Tree<u128>),
}

impl Default for WakeQueue {
    fn default() -> Self {
        WakeQueue::new(0)
    }
}

impl WakeQueue {
    pub(crate) fn new(backends: usize) -> Self {
        let bits = usize::BITS - backends.saturating_sub(1).leading_zeros();
        let leaves = backends.max(1).next_power_of_two();
        WakeQueue::Narrow(Tree {
            nodes: vec![u64::NONE; 2 * leaves],
            leaves,
            bits,
        })
    }

    /// The earliest (time, backend), if any.
    pub(crate) fn peek(&self) -> Option<(Nanos, usize)> {
        match self {
            WakeQueue::Narrow(h) => h.peek(),
            WakeQueue::Wide(h) => h.peek(),
        }
    }

    /// Sets or clears a backend's wake-up time.
    pub(crate) fn set(&mut self, backend: usize, at: Option<Nanos>) {
        if let (WakeQueue::Narrow(h), Some(t)) = (&*self, at) {
            // Past the narrow range, or exactly the all-ones key an empty leaf holds.
            let last = u64::MAX >> h.bits;
            if t > last || (t == last && u64::new(t, backend, h.bits) == u64::NONE) {
                self.widen();
            }
        }
        match self {
            WakeQueue::Narrow(h) => h.set(backend, at),
            WakeQueue::Wide(h) => h.set(backend, at),
        }
    }

    /// Switches to `u128` keys. The encodings order entries alike, so each key is
    /// converted in place and every inner node still holds its children's minimum.
    fn widen(&mut self) {
        let WakeQueue::Narrow(h) = self else { return };
        let bits = h.bits;
        let nodes = h
            .nodes
            .iter()
            .map(|&k| {
                if k == u64::NONE {
                    u128::NONE
                } else {
                    u128::new(k.time(bits), k.backend(bits), bits)
                }
            })
            .collect();
        *self = WakeQueue::Wide(Tree {
            nodes,
            leaves: h.leaves,
            bits,
        });
    }
}

impl<K: Key> Tree<K> {
    fn peek(&self) -> Option<(Nanos, usize)> {
        let k = self.nodes[1];
        (k != K::NONE).then(|| (k.time(self.bits), k.backend(self.bits)))
    }

    fn set(&mut self, backend: usize, at: Option<Nanos>) {
        let k = at.map_or(K::NONE, |t| K::new(t, backend, self.bits));
        let mut i = self.leaves + backend;
        if self.nodes[i] == k {
            return;
        }
        self.nodes[i] = k;
        // Replay each match on the way up; once a winner stays the same, so does every
        // one above it.
        while i > 1 {
            let won = self.nodes[i].min(self.nodes[i ^ 1]);
            i >>= 1;
            if self.nodes[i] == won {
                return;
            }
            self.nodes[i] = won;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_sorted_map(ops in proptest::collection::vec((0usize..16, proptest::option::of(0u64..50)), 0..200)) {
            let mut q = WakeQueue::new(16);
            let mut model: std::collections::BTreeMap<usize, u64> = Default::default();
            for (b, at) in ops {
                q.set(b, at);
                match at {
                    Some(t) => { model.insert(b, t); }
                    None => { model.remove(&b); }
                }
                let expect = model.iter().map(|(&b, &t)| (t, b)).min();
                prop_assert_eq!(q.peek(), expect);
            }
        }

        /// Times past what a narrow key holds switch the queue to wide keys mid-run,
        /// with entries in place, and it goes on answering as the model does.
        #[test]
        fn widening_keeps_the_order(ops in proptest::collection::vec((0usize..16, proptest::option::of(0u64..50), any::<bool>()), 0..200)) {
            let mut q = WakeQueue::new(16);
            let far = u64::MAX >> 4;
            let mut model: std::collections::BTreeMap<usize, u64> = Default::default();
            for (b, at, late) in ops {
                // `late` times sit at and past the narrow limit (backend ids take 4 bits).
                let at = at.map(|t| if late { far - 25 + t } else { t });
                q.set(b, at);
                match at {
                    Some(t) => { model.insert(b, t); }
                    None => { model.remove(&b); }
                }
                let expect = model.iter().map(|(&b, &t)| (t, b)).min();
                prop_assert_eq!(q.peek(), expect);
            }
        }
    }

    #[test]
    fn keys_start_narrow_and_widen_once_times_need_it() {
        let mut q = WakeQueue::new(1024);
        q.set(1023, Some(5));
        q.set(7, Some(u64::MAX >> 10));
        assert!(matches!(q, WakeQueue::Narrow(_)));
        q.set(8, Some((u64::MAX >> 10) + 1));
        assert!(matches!(q, WakeQueue::Wide(_)));
        assert_eq!(q.peek(), Some((5, 1023)));
        q.set(1023, None);
        assert_eq!(q.peek(), Some((u64::MAX >> 10, 7)));
        q.set(7, None);
        assert_eq!(q.peek(), Some(((u64::MAX >> 10) + 1, 8)));
    }

    #[test]
    fn the_all_ones_narrow_key_widens_rather_than_reading_as_empty() {
        let mut q = WakeQueue::new(4);
        let last = u64::MAX >> 2;
        q.set(2, Some(last));
        assert!(matches!(q, WakeQueue::Narrow(_)));
        // Backend 3 at the last narrow time would encode as all ones: an empty leaf's key.
        q.set(3, Some(last));
        assert!(matches!(q, WakeQueue::Wide(_)));
        q.set(2, None);
        assert_eq!(q.peek(), Some((last, 3)));
    }
}
