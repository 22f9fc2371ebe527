//! A router-side, approximate record of which prompt prefix blocks each backend holds in
//! its prefix cache, built from what the router sent where, not from what the engines
//! report (as llm-d's approximate prefix-cache scorer does). The `disaggregated` policy
//! reads it to count a prompt's *uncached* tokens on a whole-serving backend.
//!
//! It is a fixed table of `capacity` words, allocated on the first record (a trace without
//! prefix hashes never pays for it), each holding one (block hash, backend) key's tag and
//! the backend's clock when it was recorded. A key has one slot: a newer key landing
//! there overwrites the older one, so memory is flat and the record forgets under churn.
//! It also forgets what the engine would have evicted: each backend's clock counts the
//! KV blocks (of 512 tokens) that requests recorded on it took, and an entry older than
//! a window the caller gives (the KV its running sequences leave free) is no longer
//! believed, since the engine's cache keeps prefixes, least recently used evicted first,
//! only in the room running sequences leave. Seeing an entry again refreshes it, as a
//! cache hit does in the engine. Both are approximations: the clock counts a request's
//! KV when it ends, not as it grows, and the window is read when asked, not when the
//! request starts.
//!
//! Words are atomics, never a lock: the daemon records and looks up from many threads,
//! and a race only loses or refreshes an entry, which an approximate record tolerates.
//! Replay calls it from one thread in arrival order, so its contents, and the routes
//! read from it, are reproducible.

use crate::fleet::{mix64, BackendId};
use crate::request::PREFIX_BLOCK_TOKENS;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// Bits of a word holding the backend clock at record time; the rest hold the key's tag.
const STAMP_BITS: u32 = 24;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
/// Per-backend clocks; backends beyond this many share one (their entries age faster,
/// which only makes the record more cautious).
const CLOCKS: usize = 4096;

#[derive(Debug)]
pub(crate) struct Table {
    words: Box<[AtomicU64]>,
    clocks: Box<[AtomicU64]>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct PrefixRecord {
    capacity: usize,
    table: OnceLock<Table>,
}

impl PrefixRecord {
    /// A record of at most `entries` (block, backend) pairs, rounded up to a power of two.
    pub(crate) fn new(entries: usize) -> Self {
        PrefixRecord {
            capacity: entries.max(1).next_power_of_two(),
            table: OnceLock::new(),
        }
    }

    /// Whether anything was ever recorded (the table is allocated).
    pub(crate) fn is_allocated(&self) -> bool {
        self.table.get().is_some()
    }

    fn slot(&self, hash: u64, backend: BackendId) -> (usize, u64) {
        let key = mix64(hash ^ mix64(u64::from(backend.0) ^ 0x7072_6566_6978));
        // Index from the low bits, tag from the high ones (never zero: zero is empty).
        let index = key as usize & (self.capacity - 1);
        let tag = (key | 1 << 63) >> STAMP_BITS;
        (index, tag)
    }

    fn clock(table: &Table, backend: BackendId) -> &AtomicU64 {
        &table.clocks[backend.index() % CLOCKS]
    }

    /// Leading blocks of `hashes` (at most `max_blocks`) recorded on `backend` and no older
    /// than `kv_blocks` new blocks there.
    pub(crate) fn cached_blocks(
        &self,
        backend: BackendId,
        hashes: &[u64],
        max_blocks: usize,
        kv_blocks: u64,
    ) -> usize {
        let Some(table) = self.table.get() else {
            return 0;
        };
        let now = Self::clock(table, backend).load(Relaxed);
        let window = kv_blocks.min(STAMP_MASK);
        let mut n = 0;
        for &h in hashes.iter().take(max_blocks) {
            let (i, tag) = self.slot(h, backend);
            let word = table.words[i].load(Relaxed);
            if word >> STAMP_BITS != tag || now.wrapping_sub(word) & STAMP_MASK > window {
                break;
            }
            n += 1;
        }
        n
    }

    /// Allocates the table (once): from now on [`Self::record`] records.
    pub(crate) fn arm(&self) -> &Table {
        self.table.get_or_init(|| Table {
            words: (0..self.capacity).map(|_| AtomicU64::new(0)).collect(),
            clocks: (0..CLOCKS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Records that `backend` now holds `hashes` (the prompt's full blocks), after the
    /// request took `footprint` blocks of its KV: every entry on `backend` recorded before
    /// ages by that much, since the engine evicts its least recently used prefixes to make
    /// room for whatever a request allocates (on a decode backend an arrived KV is
    /// allocated whole even where its prefix was cached), not only for new prefixes.
    pub(crate) fn record(&self, backend: BackendId, hashes: &[u64], footprint: u64) {
        if hashes.is_empty() {
            return;
        }
        let table = self.arm();
        let now = Self::clock(table, backend).fetch_add(footprint.max(1), Relaxed);
        for &h in hashes {
            let (i, tag) = self.slot(h, backend);
            table.words[i].store(tag << STAMP_BITS | (now & STAMP_MASK), Relaxed);
        }
    }
}

/// Full prefix blocks a backend would cache after prefilling a `prompt_tokens` prompt.
pub(crate) fn full_blocks(prompt_tokens: u32) -> usize {
    (prompt_tokens / PREFIX_BLOCK_TOKENS) as usize
}

/// Blocks an engine may reuse for a `prompt_tokens` prompt: it computes at least the last
/// token, so a prompt of exactly n blocks reuses n − 1 (`engine::schedule`).
pub(crate) fn reusable_blocks(prompt_tokens: u32) -> usize {
    (prompt_tokens.saturating_sub(1) / PREFIX_BLOCK_TOKENS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_backend_and_counts_leading_blocks() {
        let r = PrefixRecord::new(1 << 12);
        assert!(!r.is_allocated());
        assert_eq!(r.cached_blocks(BackendId(1), &[1, 2, 3], 3, 1000), 0);
        r.record(BackendId(1), &[1, 2, 3], 3);
        assert!(r.is_allocated());
        assert_eq!(r.cached_blocks(BackendId(1), &[1, 2, 3, 4], 4, 1000), 3);
        assert_eq!(r.cached_blocks(BackendId(1), &[1, 2, 3, 4], 2, 1000), 2);
        // Another backend holds nothing; a different first block breaks the run.
        assert_eq!(r.cached_blocks(BackendId(2), &[1, 2, 3], 3, 1000), 0);
        assert_eq!(r.cached_blocks(BackendId(1), &[9, 2, 3], 3, 1000), 0);
    }

    #[test]
    fn entries_older_than_the_backends_kv_are_not_believed_until_seen_again() {
        let r = PrefixRecord::new(1 << 12);
        r.record(BackendId(0), &[1, 2], 2);
        // Requests taking 10 more blocks on the same backend: a 12-block window still
        // holds the prefix, an 8-block one has evicted it.
        r.record(BackendId(0), &[100, 101, 102], 4);
        r.record(BackendId(0), &[103], 6);
        assert_eq!(r.cached_blocks(BackendId(0), &[1, 2], 2, 12), 2);
        assert_eq!(r.cached_blocks(BackendId(0), &[1, 2], 2, 8), 0);
        // Requests on another backend do not age this one's.
        r.record(BackendId(5), &(200..300).collect::<Vec<_>>(), 100);
        assert_eq!(r.cached_blocks(BackendId(0), &[1, 2], 2, 12), 2);
        // Routing the prefix again refreshes it.
        r.record(BackendId(0), &[1, 2], 2);
        assert_eq!(r.cached_blocks(BackendId(0), &[1, 2], 2, 2), 2);
        assert_eq!(r.cached_blocks(BackendId(0), &[100], 1, 8), 0);
    }

    #[test]
    fn memory_is_flat_whatever_is_recorded() {
        let r = PrefixRecord::new(1000);
        assert_eq!(r.capacity, 1024);
        for b in 0..64 {
            let hashes: Vec<u64> = (0..10_000u64).map(|h| h * 64 + 7).collect();
            r.record(BackendId(b), &hashes, 10_000);
        }
        let table = r.table.get().unwrap();
        assert_eq!((table.words.len(), table.clocks.len()), (1024, CLOCKS));
        // 640k keys through 1,024 slots: at most 1,024 (block, backend) pairs survive.
        let held: usize = (0..64)
            .map(|b| {
                (0..10_000u64)
                    .filter(|h| r.cached_blocks(BackendId(b), &[h * 64 + 7], 1, u64::MAX) == 1)
                    .count()
            })
            .sum();
        assert!(held <= 1024, "{held}");
        assert!(held > 0);
    }
}
