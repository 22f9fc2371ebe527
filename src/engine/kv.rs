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
        debug_assert_eq!(
            self.residue.iter().sum::<u64>(),
            self.decoding.len() as u64,
            "residues count the decoding sequences"
        );
        growth(
            &self.residue,
            self.step % u64::from(self.cfg.block_size),
            self.decoding.len() as u64,
            k,
        )
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

/// Blocks that `n` decoding sequences open over `k` more tokens each, where `residue[key]`
/// counts those whose context is now ≡ key + shift (mod b = `residue.len()`).
///
/// A sequence with context ≡ r (mod b) crosses ⌈(r+k)/b⌉ − [r>0] block boundaries in `k`
/// steps; with k = q·b + rem that is q, plus one when r = 0 < rem (its context fills its
/// last block exactly, so its first token opens one) or when r + rem > b (it fills its
/// last block and opens another). So every sequence counts q, and only residue 0 and
/// residues b − rem + 1 .. b − 1 (contiguous keys, wrapping at most once) add one: a sum
/// over fewer than `rem` counters, not a pass over all b with a comparison each (this runs
/// for every decode stretch and every split of one).
fn growth(residue: &[u64], shift: u64, n: u64, k: u64) -> u64 {
    let b = residue.len() as u64;
    let key_of = |r: u64| (if r >= shift { r - shift } else { r + b - shift }) as usize;
    if k == 1 {
        // Only sequences whose context fills its last block exactly need a new one.
        return residue[key_of(0)];
    }
    let (q, rem) = (k / b, k % b);
    let mut total = q * n;
    if rem > 0 {
        total += residue[key_of(0)];
        // rem − 1 keys from residue b − rem + 1's (for rem = 1 an empty range, whose start
        // may be b itself).
        let start = key_of(b - rem + 1);
        let end = start + (rem - 1) as usize;
        if end <= residue.len() {
            total += residue[start..end].iter().sum::<u64>();
        } else {
            total += residue[start..].iter().sum::<u64>();
            total += residue[..end - residue.len()].iter().sum::<u64>();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::growth;
    use proptest::prelude::*;

    /// The count one sequence at a time: ⌈(r+k)/b⌉ − [r>0] boundaries for residue r.
    fn by_sequence(residue: &[u64], shift: u64, k: u64) -> u64 {
        let b = residue.len() as u64;
        residue
            .iter()
            .enumerate()
            .map(|(key, &count)| {
                let r = (key as u64 + shift) % b;
                count * ((r + k).div_ceil(b) - u64::from(r > 0))
            })
            .sum()
    }

    proptest! {
        #[test]
        fn growth_counts_each_sequences_boundaries(
            residue in proptest::collection::vec(0u64..5, 1..40),
            shift in 0u64..1000,
            k in 1u64..300,
        ) {
            let shift = shift % residue.len() as u64;
            let n = residue.iter().sum();
            prop_assert_eq!(growth(&residue, shift, n, k), by_sequence(&residue, shift, k));
        }
    }
}
