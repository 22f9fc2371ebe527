//! KV-cache accounting: blocks free, blocks evictable from the prefix cache, making room
//! by eviction, the blocks a prefill chunk needs, and the closed form for the blocks the
//! decoding sequences allocate over `k` steps (residue counting: a sequence needs a new
//! block exactly when its context crosses a multiple of the block size), from which the
//! longest decode stretch that fits is found.

use super::instance::Engine;
use super::seq::Seq;

impl Engine {
    pub(super) fn block_of(&self, tokens: u64) -> u64 {
        tokens.div_ceil(u64::from(self.cfg.block_size))
    }

    /// Blocks free now, and free after evicting every unpinned prefix entry.
    pub(super) fn free_blocks(&self) -> u64 {
        self.kv_total_blocks - self.dec_blocks - self.other_blocks - self.cache.blocks()
    }

    pub(super) fn available_blocks(&self) -> u64 {
        self.free_blocks() + self.cache.evictable_blocks()
    }

    /// Makes `n` blocks free, evicting prefix entries least recently used first.
    pub(super) fn make_room(&mut self, n: u64) {
        while self.free_blocks() < n {
            if self.cache.evict_one() == 0 {
                break;
            }
        }
        debug_assert!(self.free_blocks() >= n, "KV over capacity");
    }

    /// New KV blocks decoding sequences need to grow by `k` tokens each.
    pub(super) fn kv_growth(&self, k: u64) -> u64 {
        let b = u64::from(self.cfg.block_size);
        let shift = self.step % b;
        if k == 1 {
            // Only sequences whose context fills its last block exactly need a new one.
            return self.residue[((b - shift) % b) as usize];
        }
        // A sequence with context ≡ r (mod b) crosses ⌈(r+k)/b⌉ − [r>0] block boundaries
        // in k steps; with k = q·b + rem and r + rem < 2b that is q plus two comparisons,
        // which keeps divisions out of this loop.
        let (q, rem) = (k / b, k % b);
        let mut total = 0;
        for (key, &count) in self.residue.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let mut r = key as u64 + shift;
            if r >= b {
                r -= b;
            }
            let x = r + rem;
            let crossings = q + u64::from(x > 0) + u64::from(x > b) - u64::from(r > 0);
            total += count * crossings;
        }
        total
    }

    /// Largest number of decode steps whose KV growth fits in what is available.
    pub(super) fn kv_horizon(&self, max: u64) -> u64 {
        let avail = self.available_blocks();
        // Each sequence crosses at most ⌈k/b⌉ + 1 boundaries: usually KV is plentiful and
        // this settles it without the exact count.
        let bound = self.decoding.len() as u64 * (max.div_ceil(u64::from(self.cfg.block_size)) + 1);
        if bound <= avail || self.kv_growth(max) <= avail {
            return max;
        }
        let (mut lo, mut hi) = (0, max);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.kv_growth(mid) <= avail {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Advances the step counter by `k` pure decode steps, allocating their KV.
    pub(super) fn apply_decode_steps(&mut self, k: u64) {
        let growth = self.kv_growth(k);
        self.make_room(growth);
        self.dec_blocks += growth;
        self.step += k;
    }

    pub(super) fn residue_key(ctx: u64, join_step: u64, b: u64) -> usize {
        ((ctx % b + b - join_step % b) % b) as usize
    }

    /// Blocks needed to prefill `chunk` more tokens of `s` (plus room for the token the
    /// last chunk produces).
    pub(super) fn chunk_blocks(&self, s: &Seq, chunk: u32) -> u64 {
        let cached = s.cached_tokens(self.cfg.prefix_block_tokens);
        self.blocks_after(s.prefilled + chunk, s.prefill_target, cached)
            .saturating_sub(s.private_blocks)
    }

    /// Private blocks a sequence holds once `after` of its `target` prefill tokens are in
    /// KV (the last chunk also makes room for the token it produces).
    pub(super) fn blocks_after(&self, after: u32, target: u32, cached_tokens: u64) -> u64 {
        let tokens = u64::from(after) + u64::from(after == target);
        self.block_of(tokens - cached_tokens)
    }
}
