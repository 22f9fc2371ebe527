//! Prompt length in tokens from text, for requests that send text without a count
//! (`prompt_tokens`). There is no tokenizer here, only a per-script rate, because the
//! count feeds the context-limit check and the routing estimate, where a few percent do
//! not matter but a factor of four does: the old flat "four characters per token" counted a
//! Chinese prompt (Doubao traffic) at a quarter of its length.
//!
//! Rates, per character:
//! - ASCII (English, code, digits, punctuation, spaces): 1/4 token. Source: Tokenizer
//!   Arena's compression table on cc100-en (huggingface.co/spaces/eson/tokenizer-arena,
//!   README, "n_chars/n_tokens"): about 3.8–4.2 characters per token for 32k–250k
//!   vocabularies.
//! - CJK (Han ideographs, kana, Hangul, CJK punctuation and full-width forms): 1 token.
//!   Same source, cc100-zh-Hans: the Llama 3 tokenizer takes 1.24 Chinese characters per
//!   token (0.81 tokens per character; the 32k Llama 1/2 vocabulary 0.7, i.e. 1.4 tokens
//!   per character). `estimate`: rounded up to 1 so that a prompt near the context limit is
//!   refused rather than overflowing. Qwen's tokenizer is more compact on Chinese than
//!   Llama's (gigagpu.com/ai-tokenizer-considerations), so 1 covers it too.
//! - Any other character (accented Latin, Cyrillic, Greek, Arabic, emoji, ...): 1/2
//!   token. `estimate`, between the two, unmeasured here.

/// Quarter-tokens per character of each class, so mixed text sums exactly before one
/// rounding up.
const ASCII_QUARTERS: u64 = 1;
const CJK_QUARTERS: u64 = 4;
const OTHER_QUARTERS: u64 = 2;

/// Whether `c` is written in a CJK script (or is CJK punctuation / a full-width form).
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x2E80..=0x2FDF     // CJK radicals, Kangxi radicals
        | 0x3000..=0x303F   // CJK symbols and punctuation
        | 0x3040..=0x30FF   // Hiragana, Katakana
        | 0x3100..=0x31BF   // Bopomofo, Hangul compatibility jamo, Kanbun
        | 0x31C0..=0x31FF   // CJK strokes, Katakana extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0xFF00..=0xFFEF   // half-width and full-width forms
        | 0x20000..=0x3FFFF // CJK extensions B and later
    )
}

/// Estimated tokens of `text` (at least 1): see the module documentation for the rates.
pub fn estimate_tokens(text: &str) -> u64 {
    let quarters: u64 = text
        .chars()
        .map(|c| {
            if c.is_ascii() {
                ASCII_QUARTERS
            } else if is_cjk(c) {
                CJK_QUARTERS
            } else {
                OTHER_QUARTERS
            }
        })
        .sum();
    quarters.div_ceil(4).max(1)
}

/// Tokens a chat template adds per message (role markers and separators): Llama 3's
/// template spends 4 on `<|start_header_id|>user<|end_header_id|>\n\n` and 1 on
/// `<|eot_id|>` (meta-llama/Llama-3.1-8B-Instruct, `tokenizer_config.json`'s
/// `chat_template`); `estimate`: 4, rounded down from that.
pub const CHAT_TOKENS_PER_MESSAGE: u64 = 4;

/// Estimated prompt tokens of a chat: each message's content by [`estimate_tokens`] plus
/// [`CHAT_TOKENS_PER_MESSAGE`]. Both front ends count chats this way.
pub fn estimate_chat_tokens<'a>(contents: impl IntoIterator<Item = &'a str>) -> u64 {
    contents
        .into_iter()
        .map(|c| estimate_tokens(c) + CHAT_TOKENS_PER_MESSAGE)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_is_four_characters_per_token() {
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        let text = "Why does the Dujiangyan weir split the river in two?"; // 52 chars
        assert_eq!(estimate_tokens(text), 13);
    }

    #[test]
    fn chinese_is_one_token_per_character() {
        // 13 Han characters and a full-width question mark.
        let text = "都江堰为什么把岷江一分为二？";
        assert_eq!(text.chars().count(), 14);
        assert_eq!(estimate_tokens(text), 14);
        // Kana and Hangul count as CJK too.
        assert_eq!(estimate_tokens("ひらがなカタカナ"), 8);
        assert_eq!(estimate_tokens("한국어"), 3);
    }

    #[test]
    fn mixed_text_sums_per_script_before_rounding() {
        // 8 ASCII (2 tokens) + 4 Han (4 tokens) + 2 Cyrillic (1 token).
        assert_eq!(estimate_tokens("Qwen3 8B都江堰水ДЖ"), 7);
        // 1 ASCII + 1 other: 3 quarters, rounded up.
        assert_eq!(estimate_tokens("aé"), 1);
        assert_eq!(estimate_tokens("éé é"), 2);
    }

    #[test]
    fn empty_text_is_still_one_token() {
        assert_eq!(estimate_tokens(""), 1);
    }

    #[test]
    fn long_text_does_not_overflow() {
        let text = "字".repeat(100_000);
        assert_eq!(estimate_tokens(&text), 100_000);
    }
}
