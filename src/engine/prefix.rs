//! The prefix cache: KV blocks of prompt prefixes kept after their request ends, keyed by
//! the prompt's block hashes, so a later request with the same prefix skips that prefill.
//! Entries used by a running sequence are pinned; unpinned ones are evicted least recently
//! used first, and only when a fresh allocation needs their blocks.

use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug)]
struct Entry {
    refs: u32,
    /// Position in the LRU order while unpinned.
    stamp: u64,
}

/// Prefix-cache entries, each holding `blocks_per_entry` KV blocks.
#[derive(Clone, Debug, Default)]
pub(crate) struct PrefixCache {
    entries: FxHashMap<u64, Entry>,
    lru: BTreeMap<u64, u64>,
    next_stamp: u64,
    pub(crate) blocks_per_entry: u32,
}

impl PrefixCache {
    pub(crate) fn new(blocks_per_entry: u32) -> Self {
        PrefixCache {
            blocks_per_entry,
            ..Default::default()
        }
    }

    pub(crate) fn contains(&self, hash: u64) -> bool {
        self.entries.contains_key(&hash)
    }

    /// Blocks held by all entries, pinned or not.
    pub(crate) fn blocks(&self) -> u64 {
        self.entries.len() as u64 * u64::from(self.blocks_per_entry)
    }

    /// Blocks that could be freed by eviction.
    pub(crate) fn evictable_blocks(&self) -> u64 {
        self.lru.len() as u64 * u64::from(self.blocks_per_entry)
    }

    /// Takes a reference on an existing entry, taking it out of the eviction order.
    pub(crate) fn pin(&mut self, hash: u64) {
        let e = self.entries.get_mut(&hash).expect("pin of a cached hash");
        e.refs += 1;
        if e.refs == 1 {
            self.lru.remove(&e.stamp);
        }
    }

    /// Adds a new entry pinned once by its creator.
    pub(crate) fn insert_pinned(&mut self, hash: u64) {
        self.entries.insert(hash, Entry { refs: 1, stamp: 0 });
    }

    pub(crate) fn unpin(&mut self, hash: u64) {
        let e = self.entries.get_mut(&hash).expect("unpin of a cached hash");
        e.refs -= 1;
        if e.refs == 0 {
            e.stamp = self.next_stamp;
            self.next_stamp += 1;
            self.lru.insert(e.stamp, hash);
        }
    }

    /// Undoes a [`Self::pin`] that was not a use (a start that did not fit): an entry
    /// left unpinned goes back to its place in the eviction order, not to the newest.
    /// Were a refused start to count as a use, a sequence retried at every step boundary
    /// would reorder the cache more often than one retried once per decode stretch, and
    /// the two engine granularities would evict different entries.
    pub(crate) fn unpin_unused(&mut self, hash: u64) {
        let e = self.entries.get_mut(&hash).expect("unpin of a cached hash");
        e.refs -= 1;
        if e.refs == 0 {
            self.lru.insert(e.stamp, hash);
        }
    }

    /// Evicts the least recently used unpinned entry; returns the blocks freed.
    pub(crate) fn evict_one(&mut self) -> u64 {
        match self.lru.pop_first() {
            Some((_, hash)) => {
                self.entries.remove(&hash);
                u64::from(self.blocks_per_entry)
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PrefixCache;

    #[test]
    fn a_pin_given_back_unused_keeps_the_eviction_order() {
        let mut c = PrefixCache::new(1);
        for h in [1, 2] {
            c.insert_pinned(h);
            c.unpin(h);
        }
        // 1 is the least recently used. Looked at and given back, it stays so.
        c.pin(1);
        c.unpin_unused(1);
        c.evict_one();
        assert!(!c.contains(1) && c.contains(2));
        // A real use (unpinned after running) makes it the most recent.
        c.insert_pinned(3);
        c.unpin(3);
        c.pin(2);
        c.unpin(2);
        c.evict_one();
        assert!(!c.contains(3) && c.contains(2));
    }
}
