//! A small JSON reader over borrowed text, for the two places that read OpenAI JSON on
//! every request or token: the daemon's request bodies (`serve::openai`) and the stream
//! chunks engines send (`sse::read_chunk`, on every token a proxied engine streams). For
//! bodies of a few hundred bytes, serde's generic visitors cost several times the reading
//! itself; this reader walks the bytes once and borrows strings without escapes.
//!
//! It accepts only what serde_json accepts (JSON's grammar, no control characters in
//! strings, valid escapes). It gives up (`None`) on what it does not handle itself
//! (nesting past [`MAX_DEPTH`]), and its users then read the text again through serde,
//! so errors and edge cases stay serde_json's. Escaped strings are decoded by serde_json.

use std::borrow::Cow;

/// Nesting deeper than this is left to serde_json (which refuses past 128).
pub const MAX_DEPTH: u32 = 100;

pub struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    at: usize,
    depth: u32,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a str) -> Reader<'a> {
        Reader {
            s: text.as_bytes(),
            text,
            at: 0,
            depth: 0,
        }
    }

    pub fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    pub fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    pub fn eat(&mut self, want: u8) -> Option<()> {
        (self.bump()? == want).then_some(())
    }

    /// Skips JSON's whitespace (not all of ASCII's: serde_json refuses a form feed).
    pub fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Whitespace, then the end of the text.
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.at == self.s.len()
    }

    /// Enters an object or array (at its opening byte); `None` past [`MAX_DEPTH`].
    pub fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        self.at += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    pub fn leave(&mut self) {
        self.depth -= 1;
    }

    /// After a member or element: `Some(true)` at `,`, `Some(false)` at `close`.
    pub fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.bump()? {
            b',' => {
                self.ws();
                Some(true)
            }
            b if b == close => Some(false),
            _ => None,
        }
    }

    /// Just inside `{` or `[`: false (and past it) if `close` comes first.
    pub fn opens(&mut self, close: u8) -> bool {
        self.ws();
        if self.peek() == Some(close) {
            self.at += 1;
            return false;
        }
        true
    }

    /// An object key and its `:`.
    pub fn key(&mut self) -> Option<Cow<'a, str>> {
        let k = self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(k)
    }

    /// `w` (`true`, `false`, `null`) if it comes next.
    pub fn word(&mut self, w: &str) -> Option<()> {
        let end = self.at + w.len();
        (self.s.get(self.at..end)? == w.as_bytes()).then_some(())?;
        self.at = end;
        Some(())
    }

    /// `null` if it comes next (and past it).
    pub fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.word("null").is_some()
    }

    /// A number by JSON's grammar: its text, and whether it is a plain non-negative
    /// integer (no sign, fraction or exponent) of at most 19 digits, which fits a u64.
    pub fn number(&mut self) -> Option<(&'a str, Option<u64>)> {
        let start = self.at;
        let plain = self.number_end()?;
        let text = &self.text[start..self.at];
        let value = plain.then(|| text.bytes().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        Some((text, value))
    }

    /// Past a number by JSON's grammar; whether it is plain (see [`Reader::number`]).
    /// Skipping a number (every chunk's `created` and `index`) needs no value.
    fn number_end(&mut self) -> Option<bool> {
        let digits = |r: &mut Reader| {
            let from = r.at;
            while let Some(b'0'..=b'9') = r.peek() {
                r.at += 1;
            }
            r.at > from
        };
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        if !digits(self) {
            return None;
        }
        let int_len = self.at - int_start;
        if int_len > 1 && self.s[int_start] == b'0' {
            return None;
        }
        let mut plain = !negative && int_len <= 19;
        if self.peek() == Some(b'.') {
            self.at += 1;
            plain = false;
            if !digits(self) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            plain = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        Some(plain)
    }

    /// A string at `"`: borrowed from the text unless it has escapes (then decoded by
    /// serde_json). Control characters are refused, as JSON does.
    #[inline]
    pub fn string(&mut self) -> Option<Cow<'a, str>> {
        match self.plain_string() {
            Some(s) => Some(Cow::Borrowed(s)),
            None => self.escaped_string(),
        }
    }

    /// A string at `"` without escapes, and past it; `None`, not moved, for anything
    /// else. Most strings are plain: this path stays short (the general loop's set-up
    /// cost more than the scan of a chunk's short keys).
    #[inline]
    pub fn plain_string(&mut self) -> Option<&'a str> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.at + 1;
        let end = start + plain_run(&self.s[start..])?;
        if self.s[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        self.text.get(start..end)
    }

    /// An object key without escapes and its `:`; `None` for an escaped key (whose
    /// reader then leaves the text to serde) or anything invalid.
    #[inline]
    pub fn plain_key(&mut self) -> Option<&'a str> {
        let k = self.plain_string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(k)
    }

    /// [`Reader::string`] for the rest: escapes, or not a string at all.
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = &self.s[self.at..];
            let i = plain_run(rest)?;
            self.at += i + 1;
            match rest[i] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    // The escaped character is never the closing quote.
                    self.bump()?;
                }
                _ => return None,
            }
        }
        if !escaped {
            return Some(Cow::Borrowed(&self.text[start..self.at - 1]));
        }
        serde_json::from_str::<String>(&self.text[start - 1..self.at])
            .ok()
            .map(Cow::Owned)
    }

    /// Skips one value, checking it as it goes.
    pub fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.enter()?;
                if self.opens(b'}') {
                    loop {
                        self.key()?;
                        self.skip()?;
                        if !self.more(b'}')? {
                            break;
                        }
                    }
                }
                self.leave();
                Some(())
            }
            b'[' => {
                self.enter()?;
                if self.opens(b']') {
                    loop {
                        self.skip()?;
                        if !self.more(b']')? {
                            break;
                        }
                    }
                }
                self.leave();
                Some(())
            }
            b't' => self.word("true"),
            b'f' => self.word("false"),
            b'n' => self.word("null"),
            b'-' | b'0'..=b'9' => self.number_end().map(drop),
            _ => None,
        }
    }
}

/// The length of the run of plain string bytes `s` starts with: the index of its first
/// `"`, `\\` or control character, if any. Eight bytes at a time (every string of every
/// chunk a proxied engine streams goes through here): a byte-by-byte scan cost about five
/// instructions a byte.
#[inline]
fn plain_run(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(word) = s.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte's high bit is set in `hits` where it is below 0x20, or equal to `"` or
        // `\\` (zero after the xor). A borrow can only set bits above a true hit, so the
        // lowest set bit is the first such byte; bytes of 0x80 and up never hit.
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        let hits = ((x.wrapping_sub(ONES * 0x20) & !x)
            | (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash))
            & HIGH;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    s[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_run_bytewise(s: &[u8]) -> Option<usize> {
        s.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    }

    #[test]
    fn plain_runs_end_where_a_bytewise_scan_ends_them() {
        let cases: [&[u8]; 8] = [
            b"",
            b"abc",
            b"chatcmpl-0123456789\"",
            b"0123456\"",
            b"01234567\\n\"",
            b"\x1f",
            "\u{7f}\u{80}\u{a2}\u{dc}\u{e9}x\"".as_bytes(),
            b"abcdefgh!#$%&'()*+,-./\x00",
        ];
        for c in cases {
            assert_eq!(plain_run(c), plain_run_bytewise(c), "{c:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_runs_match_a_bytewise_scan(
            s in proptest::collection::vec(proptest::sample::select(
                vec![0u8, 0x1f, 0x20, b'!', b'"', b'#', b'\\', b'[', b']', b'a', 0x7f, 0x80, 0xa2, 0xdc, 0xff]
            ), 0..40)
        ) {
            proptest::prop_assert_eq!(plain_run(&s), plain_run_bytewise(&s));
        }
    }
}
