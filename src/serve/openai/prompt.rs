//! What the OpenAI front end learns from a prompt's text without a tokenizer: its length
//! in tokens and its prefix hashes, both from the one documented estimate
//! ([`crate::tokens`]).
//!
//! A chat is laid out message after message: each message takes
//! [`CHAT_TOKENS_PER_MESSAGE`] tokens of role marker, then its content's tokens, so its
//! length is [`crate::tokens::estimate_chat_tokens`], exactly what the gRPC front end
//! counts for the same messages. Within a content, a character's token position is the
//! number of whole tokens the characters before it make (a quarter token per ASCII
//! character, one per CJK character, a half per other character).
//!
//! Prefix hashes: the positions are cut into blocks of [`PREFIX_BLOCK_TOKENS`] tokens (the
//! core's block, Mooncake's `hash_ids` size), and block `k` hashes to FNV-1a 64 over the
//! previous block's hash and the bytes that fall in block `k` (each message's role marker
//! as `<|role|>`, then its content), finished with splitmix64's mixer. Chained, so equal
//! hashes mean equal text up to the end of that block: a later turn of a chat, whose
//! messages start with the earlier turn's, shares every full block of the earlier turn,
//! and `prefix-affinity` and the simulated prefix cache see that. There is at most one
//! hash per started block, which is what [`crate::request::check_request`] allows.
//! A prompt given as token ids is cut the same way, one id per token.

use crate::request::PREFIX_BLOCK_TOKENS;
use crate::tokens::{is_cjk, CHAT_TOKENS_PER_MESSAGE};

/// A prompt's estimated length and its chained block hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub tokens: u64,
    pub prefix_hashes: Vec<u64>,
}

/// A chat's messages as (role, content).
pub fn chat<'m>(messages: impl IntoIterator<Item = (&'m str, &'m str)>) -> Shape {
    let mut h = Blocks::default();
    let mut start = 0u64;
    for (role, content) in messages {
        h.feed(start, b"<|");
        h.feed(start, role.as_bytes());
        h.feed(start, b"|>");
        let tokens = content_at(&mut h, start + CHAT_TOKENS_PER_MESSAGE, content);
        start += CHAT_TOKENS_PER_MESSAGE + tokens;
    }
    // `start` is now estimate_chat_tokens of the contents (one pass over the text, not
    // three).
    Shape {
        tokens: start,
        prefix_hashes: h.finish(),
    }
}

/// A completion prompt's text.
pub fn text(prompt: &str) -> Shape {
    let mut h = Blocks::default();
    let tokens = content_at(&mut h, 0, prompt);
    Shape {
        tokens,
        prefix_hashes: h.finish(),
    }
}

/// A completion prompt given as token ids.
pub fn token_ids(ids: &[u64]) -> Shape {
    let mut h = Blocks::default();
    for (i, id) in ids.iter().enumerate() {
        h.feed(i as u64, &id.to_le_bytes());
    }
    Shape {
        tokens: ids.len() as u64,
        prefix_hashes: h.finish(),
    }
}

/// Feeds `content`'s characters at their token positions from `start`; returns its
/// length, [`estimate_tokens`](crate::tokens::estimate_tokens) of it (the same rates, counted in the same pass).
/// A run of ASCII characters within one block is fed at once (the hash absorbs bytes one
/// by one either way, so the hashes are those of feeding each character).
fn content_at(h: &mut Blocks, start: u64, content: &str) -> u64 {
    let bytes = content.as_bytes();
    let block = u64::from(PREFIX_BLOCK_TOKENS);
    let mut quarters = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        let at = start + quarters / 4;
        if bytes[i].is_ascii() {
            // Quarter tokens left before the next block starts.
            let room = ((at / block + 1) * block - start) * 4 - quarters;
            let limit = bytes.len().min(i.saturating_add(room as usize));
            let end = bytes[i..limit]
                .iter()
                .position(|b| !b.is_ascii())
                .map_or(limit, |n| i + n);
            h.feed(at, &bytes[i..end]);
            quarters += (end - i) as u64;
            i = end;
        } else {
            let c = content[i..].chars().next().expect("a char starts here");
            let n = c.len_utf8();
            h.feed(at, &bytes[i..i + n]);
            quarters += if is_cjk(c) { 4 } else { 2 };
            i += n;
        }
    }
    quarters.div_ceil(4).max(1)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Chained block hashing over bytes placed at token positions.
struct Blocks {
    /// Block index of the bytes being hashed.
    block: u64,
    state: u64,
    /// Whether any byte fell into the current block.
    open: bool,
    prev: u64,
    out: Vec<u64>,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks {
            block: 0,
            state: FNV_OFFSET,
            open: false,
            prev: 0,
            out: Vec::new(),
        }
    }
}

impl Blocks {
    fn feed(&mut self, position: u64, bytes: &[u8]) {
        let block = position / u64::from(PREFIX_BLOCK_TOKENS);
        if block != self.block {
            self.close();
            self.block = block;
        }
        if !self.open {
            self.open = true;
            self.state = FNV_OFFSET;
            self.absorb(&self.prev.to_le_bytes());
        }
        self.absorb(bytes);
    }

    fn absorb(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = (self.state ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
    }

    fn close(&mut self) {
        if self.open {
            let h = mix(self.state);
            self.out.push(h);
            self.prev = h;
            self.open = false;
        }
    }

    fn finish(mut self) -> Vec<u64> {
        self.close();
        self.out
    }
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{check_request, RequestLimits};
    use crate::tokens::{estimate_chat_tokens, estimate_tokens};

    fn chat_of(m: &[(String, String)]) -> Shape {
        chat(m.iter().map(|(r, c)| (r.as_str(), c.as_str())))
    }

    fn msgs(turns: &[(&str, &str)]) -> Vec<(String, String)> {
        turns
            .iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn a_later_turn_shares_the_earlier_turns_full_blocks() {
        let system = "You are a hydrologist. ".repeat(200); // 4,600 chars = 1,150 tokens
        let question = "How does the weir split the Min river? ".repeat(60);
        let first = msgs(&[("system", &system), ("user", &question)]);
        let answer = "It splits it at the fish mouth. ".repeat(80);
        let second = msgs(&[
            ("system", &system),
            ("user", &question),
            ("assistant", &answer),
            ("user", "And in the dry season?"),
        ]);
        let a = chat_of(&first);
        let b = chat_of(&second);
        let full = (a.tokens / u64::from(PREFIX_BLOCK_TOKENS)) as usize;
        assert!(full >= 3, "{a:?}");
        assert_eq!(a.prefix_hashes[..full], b.prefix_hashes[..full]);
        // The earlier turn's partial block differs, as its text does.
        assert_ne!(a.prefix_hashes[full], b.prefix_hashes[full]);
        assert!(b.prefix_hashes.len() > a.prefix_hashes.len());
    }

    #[test]
    fn different_text_or_roles_hash_differently() {
        let long = "x".repeat(4000);
        let a = chat_of(&msgs(&[("user", &long)]));
        let b = chat_of(&msgs(&[("system", &long)]));
        assert_ne!(a.prefix_hashes[0], b.prefix_hashes[0]);
        let c = text(&format!("y{}", &long[1..]));
        let d = text(&long);
        assert_ne!(c.prefix_hashes[0], d.prefix_hashes[0]);
        // Same text, same hashes.
        assert_eq!(text(&long), text(&long));
    }

    #[test]
    fn lengths_follow_the_documented_estimate() {
        let t = "What is the Dujiangyan irrigation system?";
        assert_eq!(text(t).tokens, estimate_tokens(t));
        let m = msgs(&[("system", "Be brief."), ("user", t)]);
        assert_eq!(
            chat_of(&m).tokens,
            estimate_tokens("Be brief.") + estimate_tokens(t) + 2 * CHAT_TOKENS_PER_MESSAGE
        );
        assert_eq!(token_ids(&[1, 2, 3]).tokens, 3);
        // Counted while hashing: the same as the estimate for every script and mix.
        for t in [
            "",
            "a",
            "abcde",
            "都江堰",
            "é",
            "aé字b",
            "Dujiangyan 都江堰 — été",
        ] {
            assert_eq!(text(t).tokens, estimate_tokens(t), "{t}");
            let m = msgs(&[("user", t), ("assistant", "ok")]);
            assert_eq!(
                chat_of(&m).tokens,
                estimate_chat_tokens(m.iter().map(|(_, c)| c.as_str())),
                "{t}"
            );
        }
    }

    /// Character by character, as the hashes are defined (the module's doc).
    fn content_by_char(h: &mut Blocks, start: u64, content: &str) -> u64 {
        let mut quarters = 0u64;
        let mut buf = [0u8; 4];
        for c in content.chars() {
            h.feed(start + quarters / 4, c.encode_utf8(&mut buf).as_bytes());
            quarters += if c.is_ascii() {
                1
            } else if is_cjk(c) {
                4
            } else {
                2
            };
        }
        quarters.div_ceil(4).max(1)
    }

    #[test]
    fn ascii_runs_hash_as_their_characters_do() {
        // Runs that cross block edges at every offset, between CJK and other characters.
        for lead in [0usize, 1, 3, 2047, 2049] {
            for t in ["a".repeat(5000), "ab字".repeat(900), "é".repeat(1100) + "x"] {
                let text = format!("{}{t}字{}", "q".repeat(lead), "z".repeat(lead));
                for start in [0u64, 3, 511] {
                    let (mut fast, mut slow) = (Blocks::default(), Blocks::default());
                    let n = content_at(&mut fast, start, &text);
                    assert_eq!(n, content_by_char(&mut slow, start, &text));
                    assert_eq!(fast.finish(), slow.finish(), "lead {lead} start {start}");
                }
            }
        }
    }

    #[test]
    fn hashes_pass_the_shared_check_at_every_length() {
        // One hash per started block and all distinct, for lengths around block edges and
        // for each script.
        let limits = RequestLimits {
            model: "m",
            max_context: 1 << 20,
        };
        for n in [1usize, 511, 512, 513, 2047, 2048, 2049, 6000] {
            for unit in ["a", "字", "é"] {
                let s = text(&unit.repeat(n));
                check_request(s.tokens, 1, &s.prefix_hashes, "", limits).unwrap();
                let c = chat_of(&msgs(&[("user", &unit.repeat(n)), ("assistant", "ok")]));
                check_request(c.tokens, 1, &c.prefix_hashes, "", limits).unwrap();
            }
            let ids: Vec<u64> = (0..n as u64).map(|i| i % 7).collect();
            let s = token_ids(&ids);
            assert_eq!(
                s.prefix_hashes.len(),
                n.div_ceil(PREFIX_BLOCK_TOKENS as usize)
            );
            check_request(s.tokens, 1, &s.prefix_hashes, "", limits).unwrap();
        }
    }
}
