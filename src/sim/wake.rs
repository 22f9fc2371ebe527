//! The queue of engine wake-up times: an indexed 4-ary min-heap (half the depth of a
//! binary one; four 16-byte children fill 64 bytes) with one slot per backend, so a backend
//! whose next event moves (every arrival can split a decode stretch) is re-keyed in place
//! instead of leaving stale entries behind. Ties break by backend id, which keeps replays
//! deterministic. Sifting moves a hole rather than swapping, and a key is one `u128`
//! (time, then backend), so each level costs one comparison per child and one write.

use crate::request::Nanos;

const ABSENT: u32 = u32::MAX;
const ARITY: usize = 4;

/// A heap entry: the time in the high 64 bits, the backend in the low 32, so one 128-bit
/// comparison orders by time and then by backend.
type Key = u128;

fn key(t: Nanos, backend: usize) -> Key {
    (u128::from(t) << 64) | backend as u128
}

fn backend_of(k: Key) -> usize {
    k as u32 as usize
}

#[derive(Clone, Debug, Default)]
pub(crate) struct WakeQueue {
    /// Keys stored inline so sifting touches one array.
    heap: Vec<Key>,
    pos: Vec<u32>,
}

impl WakeQueue {
    pub(crate) fn new(backends: usize) -> Self {
        WakeQueue {
            heap: Vec::with_capacity(backends),
            pos: vec![ABSENT; backends],
        }
    }

    /// The earliest (time, backend), if any.
    pub(crate) fn peek(&self) -> Option<(Nanos, usize)> {
        self.heap
            .first()
            .map(|&k| ((k >> 64) as Nanos, backend_of(k)))
    }

    /// Sets or clears a backend's wake-up time.
    pub(crate) fn set(&mut self, backend: usize, at: Option<Nanos>) {
        let p = self.pos[backend];
        match (at, p) {
            (None, ABSENT) => {}
            (None, p) => self.remove_at(p as usize),
            (Some(t), ABSENT) => {
                self.heap.push(key(t, backend));
                self.up(self.heap.len() - 1, key(t, backend));
            }
            (Some(t), p) => {
                let (old, new) = (self.heap[p as usize], key(t, backend));
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
        self.pos[backend_of(gone)] = ABSENT;
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
    fn up(&mut self, mut i: usize, k: Key) {
        while i > 0 {
            let parent = (i - 1) / ARITY;
            let pk = self.heap[parent];
            if k >= pk {
                break;
            }
            self.heap[i] = pk;
            self.pos[backend_of(pk)] = i as u32;
            i = parent;
        }
        self.heap[i] = k;
        self.pos[backend_of(k)] = i as u32;
    }

    /// Places `k` at or below hole `i`, moving the smallest child up while it is smaller.
    fn down(&mut self, mut i: usize, k: Key) {
        let len = self.heap.len();
        loop {
            let first = ARITY * i + 1;
            if first + ARITY <= len {
                // A full node (all but the last on the way down): a fixed-size array, so
                // the four comparisons compile without bounds checks or a loop.
                let c: &[Key; ARITY] = self.heap[first..first + ARITY]
                    .try_into()
                    .expect("four children");
                let (m01, k01) = if c[1] < c[0] { (1, c[1]) } else { (0, c[0]) };
                let (m23, k23) = if c[3] < c[2] { (3, c[3]) } else { (2, c[2]) };
                let (m, mk) = if k23 < k01 { (m23, k23) } else { (m01, k01) };
                if mk >= k {
                    break;
                }
                self.heap[i] = mk;
                self.pos[backend_of(mk)] = i as u32;
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
            self.pos[backend_of(mk)] = i as u32;
            i = first + m;
        }
        self.heap[i] = k;
        self.pos[backend_of(k)] = i as u32;
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
    }
}
