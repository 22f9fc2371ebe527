//! The text of a load-test prompt: a trace record gives a length and block ids, not
//! text, so the prompt is made to reproduce them on any server. It is `prompt_tokens`
//! words of exactly four ASCII characters (` the`, ` and`, …): dujiang's estimate counts
//! four ASCII characters as one token, and each such word is one token in the GPT-2-style
//! and SentencePiece vocabularies real servers use. Each `hash_ids` block (512 tokens)
//! becomes words derived from its id, so requests sharing blocks in the trace share a text
//! prefix (a real server's prefix cache hits where the trace says); the rest is unique to
//! the request. A per-run salt keeps one run's prompts out of a cache an earlier run
//! warmed.

use crate::request::PREFIX_BLOCK_TOKENS;
use crate::trace::TraceRecord;

/// Words of four ASCII characters, each one token in common vocabularies (a space and a
/// frequent three-letter English word).
const WORDS: [&str; 32] = [
    " the", " and", " for", " you", " are", " not", " but", " all", " can", " had", " her", " was",
    " one", " our", " out", " day", " get", " has", " him", " his", " how", " man", " new", " now",
    " old", " see", " two", " way", " who", " did", " its", " say",
];

/// SplitMix64: a well-mixed 64-bit value from any seed.
pub(super) fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Appends `n` words chosen by `seed`.
fn push_words(text: &mut String, seed: u64, n: u32) {
    let mut state = seed;
    let mut bits = 0u64;
    for i in 0..n {
        // Five bits a word, twelve words from one 64-bit draw.
        if i % 12 == 0 {
            state = splitmix(state);
            bits = state;
        }
        text.push_str(WORDS[(bits & 31) as usize]);
        bits >>= 5;
    }
}

/// The prompt of record `index`: `prompt_tokens` four-character words, the leading
/// `hash_ids` blocks derived from the block ids (shared text where the trace shares
/// blocks), the rest from the request's index; all salted by `salt`.
pub(super) fn prompt_text(salt: u64, index: u64, rec: &TraceRecord) -> String {
    let total = rec.prompt_tokens.max(1);
    let mut text = String::with_capacity(total as usize * 4);
    let mut left = total;
    for &id in &rec.hash_ids {
        if left == 0 {
            break;
        }
        let n = left.min(PREFIX_BLOCK_TOKENS);
        push_words(&mut text, splitmix(salt ^ splitmix(id)), n);
        left -= n;
    }
    if left > 0 {
        // A different stream of seeds from the blocks' (the request index is mixed once
        // more), so a request's own text never equals some block's.
        push_words(&mut text, splitmix(splitmix(salt ^ index) ^ 0x5EED), left);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_trace_length_and_share_what_the_trace_shares() {
        for n in [1u32, 7, 512, 513, 1500] {
            let rec = TraceRecord {
                prompt_tokens: n,
                ..TraceRecord::default()
            };
            let text = prompt_text(9, 3, &rec);
            assert_eq!(text.len(), 4 * n as usize);
            assert!(text.is_ascii());
            assert_eq!(crate::tokens::estimate_tokens(&text), u64::from(n));
        }
        let rec = |ids: Vec<u64>, n: u32| TraceRecord {
            prompt_tokens: n,
            hash_ids: ids,
            ..TraceRecord::default()
        };
        let block = 4 * PREFIX_BLOCK_TOKENS as usize;
        let a = prompt_text(9, 1, &rec(vec![10, 11, 12], 1200));
        let b = prompt_text(9, 2, &rec(vec![10, 11, 13], 1400));
        assert_eq!(a[..2 * block], b[..2 * block], "shared blocks, shared text");
        assert_ne!(a[2 * block..2 * block + 40], b[2 * block..2 * block + 40]);
        // Requests without blocks share nothing, and another run's salt changes all.
        let c = prompt_text(9, 1, &rec(vec![], 100));
        let d = prompt_text(9, 2, &rec(vec![], 100));
        assert_ne!(c[..40], d[..40]);
        assert_ne!(prompt_text(8, 1, &rec(vec![], 100))[..40], c[..40]);
        // Deterministic for a salt.
        assert_eq!(prompt_text(9, 1, &rec(vec![], 100)), c);
    }
}
