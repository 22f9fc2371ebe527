//! The queue of engine wake-up times: an indexed 4-ary min-heap (half the depth of a
//! binary one; four 16-byte children fill 64 bytes) with one slot per backend, so a backend
//! whose next event moves (every arrival can split a decode stretch) is re-keyed in place
//! instead of leaving stale entries behind. Ties break by backend id, which keeps replays
//! deterministic. Sifting moves a hole rather than swapping, and a key is one integer
//! (time, then backend), so each level costs one comparison per child and one write.
//!
//! The key is a `u64` (time shifted left by just enough bits for the backend ids) while the
//! times fit, which they do for any replay under 78 hours at 65,536 backends or 200 days
//! at 1,024; a later time switches the queue to `u128` keys, once. Both encodings order
//! entries alike, so the switch keeps the heap as it is and no replay can tell them apart;
//! the narrow keys halve the bytes and the work of each comparison on the hot path (every
//! engine wake-up re-keys its backend, sifting it down the heap).

use crate::request::Nanos;

const ABSENT: u32 = u32::MAX;
const ARITY: usize = 4;

/// A heap entry's encoding: the time in the high bits, the backend in the low `bits`, so
/// one integer comparison orders by time and then by backend.
pub(crate) trait Key: Copy + Ord + std::fmt::Debug {
    fn new(t: Nanos, backend: usize, bits: u32) -> Self;
    fn time(self, bits: u32) -> Nanos;
    fn backend(self, bits: u32) -> usize;
}

impl Key for u64 {
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
pub(crate) struct Heap<K> {
    /// Keys stored inline so sifting touches one array.
    heap: Vec<K>,
    pos: Vec<u32>,
    /// Low bits of a key that hold the backend.
    bits: u32,
}

/// The queue of wake-up times, in whichever key width its times need.
#[derive(Clone, Debug)]
pub(crate) enum WakeQueue {
    Narrow(Heap<u64>),
    Wide(Heap<u128>),
}

impl Default for WakeQueue {
    fn default() -> Self {
        WakeQueue::new(0)
    }
}

impl WakeQueue {
    pub(crate) fn new(backends: usize) -> Self {
        let bits = usize::BITS - backends.saturating_sub(1).leading_zeros();
        WakeQueue::Narrow(Heap {
            heap: Vec::with_capacity(backends),
            pos: vec![ABSENT; backends],
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
            if t > u64::MAX >> h.bits {
                self.widen();
            }
        }
        match self {
            WakeQueue::Narrow(h) => h.set(backend, at),
            WakeQueue::Wide(h) => h.set(backend, at),
        }
    }

    /// Switches to `u128` keys. The encodings order entries alike, so each key is
    /// converted in place and the heap's shape stays valid.
    fn widen(&mut self) {
        let WakeQueue::Narrow(h) = self else { return };
        let bits = h.bits;
        let heap = h
            .heap
            .iter()
            .map(|&k| u128::new(k.time(bits), k.backend(bits), bits))
            .collect();
        let pos = std::mem::take(&mut h.pos);
        *self = WakeQueue::Wide(Heap { heap, pos, bits });
    }
}

impl<K: Key> Heap<K> {
    fn peek(&self) -> Option<(Nanos, usize)> {
        self.heap
            .first()
            .map(|&k| (k.time(self.bits), k.backend(self.bits)))
    }

    fn key(&self, t: Nanos, backend: usize) -> K {
        K::new(t, backend, self.bits)
    }

    fn backend_of(&self, k: K) -> usize {
        k.backend(self.bits)
    }

    fn set(&mut self, backend: usize, at: Option<Nanos>) {
        let p = self.pos[backend];
        match (at, p) {
            (None, ABSENT) => {}
            (None, p) => self.remove_at(p as usize),
            (Some(t), ABSENT) => {
                let k = self.key(t, backend);
                self.heap.push(k);
                self.up(self.heap.len() - 1, k);
            }
            (Some(t), p) => {
                let (old, new) = (self.heap[p as usize], self.key(t, backend));
                if new < old {
                    self.up(p as usize, new);
                } else if new > old {
                    self.down(p as usize, new);
                }
            }
        }
    }

    fn remove_at(&mut self, i: usize) {
        let gone = self.heap.swap_remove(i);
        let b = self.backend_of(gone);
        self.pos[b] = ABSENT;
        if let Some(&moved) = self.heap.get(i) {
            // The last entry fills the hole: it may belong above or below it.
            if i > 0 && moved < self.heap[(i - 1) / ARITY] {
                self.up(i, moved);
            } else {
                self.down(i, moved);
            }
        }
    }

    /// Places `k` at or above hole `i`, moving larger parents down into the hole (one
    /// write per level instead of a swap).
    fn up(&mut self, mut i: usize, k: K) {
        while i > 0 {
            let parent = (i - 1) / ARITY;
            let pk = self.heap[parent];
            if k >= pk {
                break;
            }
            self.heap[i] = pk;
            let b = self.backend_of(pk);
            self.pos[b] = i as u32;
            i = parent;
        }
        self.heap[i] = k;
        let b = self.backend_of(k);
        self.pos[b] = i as u32;
    }

    /// Places `k` at or below hole `i`, moving the smallest child up while it is smaller.
    fn down(&mut self, mut i: usize, k: K) {
        let len = self.heap.len();
        loop {
            let first = ARITY * i + 1;
            if first + ARITY <= len {
                // A full node (all but the last on the way down): a fixed-size array, so
                // the four comparisons compile without bounds checks or a loop.
                let c: &[K; ARITY] = self.heap[first..first + ARITY]
                    .try_into()
                    .expect("four children");
                let (m01, k01) = if c[1] < c[0] { (1, c[1]) } else { (0, c[0]) };
                let (m23, k23) = if c[3] < c[2] { (3, c[3]) } else { (2, c[2]) };
                let (m, mk) = if k23 < k01 { (m23, k23) } else { (m01, k01) };
                if mk >= k {
                    break;
                }
                self.heap[i] = mk;
                let b = self.backend_of(mk);
                self.pos[b] = i as u32;
                i = first + m;
                continue;
            }
            if first >= len {
                break;
            }
            let children = &self.heap[first..len];
            let (mut m, mut mk) = (0, children[0]);
            for (c, &ck) in children.iter().enumerate().skip(1) {
                if ck < mk {
                    (m, mk) = (c, ck);
                }
            }
            if mk >= k {
                break;
            }
            self.heap[i] = mk;
            let b = self.backend_of(mk);
            self.pos[b] = i as u32;
            i = first + m;
        }
        self.heap[i] = k;
        let b = self.backend_of(k);
        self.pos[b] = i as u32;
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
}
