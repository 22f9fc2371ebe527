//! The queue of engine wake-up times: an indexed 4-ary min-heap (half the depth of a
//! binary one, and four children share a cache line) with one slot per backend, so a backend whose next event moves (every arrival can split a decode
//! stretch) is re-keyed in place instead of leaving stale entries behind. Ties break by
//! backend id, which keeps replays deterministic.

use crate::request::Nanos;

const ABSENT: u32 = u32::MAX;
const ARITY: usize = 4;

#[derive(Clone, Debug, Default)]
pub(crate) struct WakeQueue {
    /// (time, backend), keys stored inline so sifting touches one array.
    heap: Vec<(Nanos, u32)>,
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
        self.heap.first().map(|&(t, b)| (t, b as usize))
    }

    /// Sets or clears a backend's wake-up time.
    pub(crate) fn set(&mut self, backend: usize, at: Option<Nanos>) {
        let p = self.pos[backend];
        match (at, p) {
            (None, ABSENT) => {}
            (None, p) => self.remove_at(p as usize),
            (Some(t), ABSENT) => {
                self.heap.push((t, backend as u32));
                let i = self.heap.len() - 1;
                self.pos[backend] = i as u32;
                self.up(i);
            }
            (Some(t), p) => {
                let old = self.heap[p as usize].0;
                self.heap[p as usize].0 = t;
                if t < old {
                    self.up(p as usize);
                } else {
                    self.down(p as usize);
                }
            }
        }
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.swap(i, last);
        let (_, b) = self.heap.pop().expect("non-empty");
        self.pos[b as usize] = ABSENT;
        if i < self.heap.len() {
            self.down(i);
            self.up(i);
        }
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        self.pos[self.heap[i].1 as usize] = i as u32;
        self.pos[self.heap[j].1 as usize] = j as u32;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if self.heap[i] < self.heap[parent] {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let first = ARITY * i + 1;
            let last = (first + ARITY).min(self.heap.len());
            let mut m = i;
            for c in first..last {
                if self.heap[c] < self.heap[m] {
                    m = c;
                }
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
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
    }
}
