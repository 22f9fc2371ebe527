//! A JSON value that borrows its strings from the request body: what the OpenAI front end
//! reads a request into instead of a `serde_json::Value` tree. Building a `Value` copied
//! every string and every key and put each object in a `BTreeMap`, which was a fifth of a
//! zero-latency request's cost; this keeps strings as slices of the body (copied only when
//! they hold escapes), objects as short vectors of pairs, and the top-level fields in a
//! struct ([`super::request`]), so unknown fields are skipped without being built at all.
//!
//! Numbers are `serde_json::Number`s made exactly as `Value` makes them, so a field passed
//! through to a real engine ([`Val::to_value`]) is the same JSON it would have been.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// One JSON value of a request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    Arr(Vec<Val<'a>>),
    Obj(Obj<'a>),
}

/// A JSON object's members in the order they came. Lookups scan it (request objects have
/// a handful of keys); a repeated key's last value counts, as with `serde_json::Value`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Obj<'a>(pub Vec<(Cow<'a, str>, Val<'a>)>);

impl<'a> Obj<'a> {
    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<'a> Val<'a> {
    /// An object's member; `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        match self {
            Val::Obj(o) => o.get(key),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Val::Num(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Val::Str(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Val::Arr(_))
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Val::Num(_))
    }

    /// The same value as a `serde_json::Value` (for fields sent on to a real engine).
    pub fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => Value::Number(n.clone()),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Arr(a) => Value::Array(a.iter().map(Val::to_value).collect()),
            Val::Obj(o) => {
                let mut m = serde_json::Map::new();
                for (k, v) in &o.0 {
                    m.insert(k.to_string(), v.to_value());
                }
                Value::Object(m)
            }
        }
    }
}

/// Reads a body that is one JSON object, handing `member` each top-level key and value
/// in order (a `null` value as [`Val::Null`]); `None` if the text is not exactly one
/// object or `member` declines. A hand-written reader for the request path: the serde
/// route ([`Val`]'s `Deserialize`) spends most of a small body's reading in its generic
/// visitors. It accepts only what serde_json accepts and builds the same values; on
/// anything it does not take (invalid JSON, a number other than a plain non-negative
/// integer is still read, through serde_json's own number parser), the caller reads the
/// body again through serde, so errors and edge cases are serde_json's.
pub fn read_object<'a>(
    text: &'a [u8],
    mut member: impl FnMut(Cow<'a, str>, Val<'a>) -> Option<()>,
) -> Option<()> {
    let text = std::str::from_utf8(text).ok()?;
    let mut r = Reader {
        s: text.as_bytes(),
        text,
        at: 0,
        depth: 0,
    };
    r.ws();
    r.eat(b'{')?;
    r.ws();
    if r.peek() == Some(b'}') {
        r.at += 1;
    } else {
        loop {
            let key = r.string()?;
            r.ws();
            r.eat(b':')?;
            let v = r.value()?;
            member(key, v)?;
            r.ws();
            match r.next()? {
                b',' => r.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    r.ws();
    (r.at == r.s.len()).then_some(())
}

/// Nesting deeper than this is left to serde_json (which refuses past 128).
const MAX_DEPTH: u32 = 100;

struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    at: usize,
    depth: u32,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's whitespace (not all of ASCII's: serde_json refuses a form feed).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn value(&mut self) -> Option<Val<'a>> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(Val::Str),
            b'{' => {
                self.deeper()?;
                self.at += 1;
                let mut out = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                } else {
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        out.push((k, self.value()?));
                        self.ws();
                        match self.next()? {
                            b',' => {}
                            b'}' => break,
                            _ => return None,
                        }
                    }
                }
                self.depth -= 1;
                Some(Val::Obj(Obj(out)))
            }
            b'[' => {
                self.deeper()?;
                self.at += 1;
                let mut out = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.at += 1;
                } else {
                    loop {
                        out.push(self.value()?);
                        self.ws();
                        match self.next()? {
                            b',' => {}
                            b']' => break,
                            _ => return None,
                        }
                    }
                }
                self.depth -= 1;
                Some(Val::Arr(out))
            }
            b't' => self.word("true", Val::Bool(true)),
            b'f' => self.word("false", Val::Bool(false)),
            b'n' => self.word("null", Val::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn deeper(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn word(&mut self, w: &str, v: Val<'a>) -> Option<Val<'a>> {
        let end = self.at + w.len();
        (self.s.get(self.at..end)? == w.as_bytes()).then_some(())?;
        self.at = end;
        Some(v)
    }

    /// A number by JSON's grammar; a plain non-negative integer that fits is made here,
    /// anything else (sign, fraction, exponent, overflow) by serde_json's own parser, so
    /// every number is the `Number` serde_json makes.
    fn number(&mut self) -> Option<Val<'a>> {
        let start = self.at;
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
        let mut plain = !negative;
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
        let text = &self.text[start..self.at];
        if plain && int_len <= 19 {
            // At most 19 digits: below 10^19, inside u64.
            let n = text.bytes().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            return Some(Val::Num(n.into()));
        }
        let n: Number = text.parse().ok()?;
        Some(Val::Num(n))
    }

    /// A string at `"`: borrowed from the body unless it has escapes (then decoded by
    /// serde_json). Control characters are refused, as JSON does.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = &self.s[self.at..];
            let i = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            self.at += i + 1;
            match rest[i] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    // The escaped character is never the closing quote.
                    self.next()?;
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
}

struct ValVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ValVisitor<'a> {
    type Value = Val<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Val<'a>, E> {
        Ok(Val::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Val<'a>, E> {
        Ok(Val::Num(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Val<'a>, E> {
        Ok(Val::Num(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Val<'a>, E> {
        // As `Value` does: JSON has no NaN or infinity to parse into one.
        Ok(Number::from_f64(v).map_or(Val::Null, Val::Num))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Val<'a>, E> {
        Ok(Val::Null)
    }

    fn visit_none<E>(self) -> Result<Val<'a>, E> {
        Ok(Val::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Val<'a>, D::Error> {
        Val::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'a>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Val::Arr(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'a>, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
        while let Some(Key(k)) = map.next_key()? {
            out.push((k, map.next_value()?));
        }
        Ok(Val::Obj(Obj(out)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Val<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Val<'a>, D::Error> {
        d.deserialize_any(ValVisitor(PhantomData))
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

struct KeyVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
    type Value = Key<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'a>, D::Error> {
        d.deserialize_str(KeyVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The members the fast reader takes, as one object.
    fn fast(text: &str) -> Option<Val<'_>> {
        let mut members = Vec::new();
        read_object(text.as_bytes(), |k, v| {
            members.push((k, v));
            Some(())
        })?;
        Some(Val::Obj(Obj(members)))
    }

    /// Whatever the fast reader takes, serde_json takes too and reads the same.
    fn agrees(text: &str) {
        let slow = serde_json::from_str::<Val>(text);
        if let Some(v) = fast(text) {
            assert_eq!(Ok(&v), slow.as_ref().map_err(|e| e.to_string()), "{text:?}");
        }
    }

    #[test]
    fn the_fast_reader_reads_what_serde_reads_or_leaves_it() {
        let taken = [
            r#"{}"#,
            r#" { "a" : 1 , "b":[true,false,null,{"c":"d"}] } "#,
            r#"{"q":"say \"hi\"\n\u00e9\ud83d\ude00","n":-0,"f":2.5e-3,"big":18446744073709551615}"#,
            r#"{"huge":18446744073709551616,"neg":-9223372036854775808,"z":0,"e":1E2}"#,
            r#"{"a":1,"a":2,"":"","\u0061":"é 水"}"#,
        ];
        for t in taken {
            assert!(fast(t).is_some(), "{t}");
            agrees(t);
        }
        let left = [
            "",
            "[]",
            "{",
            "{}x",
            "{} {}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"{a:1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\ud800"}"#,
            "\u{c}{}",
            r#"{"a":1e999}"#,
        ];
        for t in left {
            assert!(fast(t).is_none(), "{t}");
            agrees(t);
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(120), "]".repeat(120));
        assert!(fast(&deep).is_none());
    }

    proptest! {
        #[test]
        fn the_fast_reader_never_reads_differently(
            text in r#"\{( ?"[a-c\\"\\u0-9]{0,3}" ?: ?(-?[0-9]{1,21}(\.[0-9]{0,2})?([eE][-+]?[0-9]{1,3})?|"[a-z\\"\\nu0-9 ]{0,4}"|true|null|\[[0-9, ]{0,6}\]|\{[":a1, ]{0,6}\}) ?,?){0,4}\} ?"#
        ) {
            agrees(&text);
        }
    }

    #[test]
    fn values_borrow_and_convert_like_serde_json() {
        let text = r#"{"a":"x","b":"q\"uote","c":[1,-2,2.5,true,null],"d":{"e":{}},"a":"last"}"#;
        let v: Val = serde_json::from_str(text).unwrap();
        let Val::Obj(o) = &v else { panic!("{v:?}") };
        assert!(matches!(o.get("b"), Some(Val::Str(Cow::Owned(s))) if s == "q\"uote"));
        assert!(matches!(o.get("a"), Some(Val::Str(Cow::Borrowed("last")))));
        // The same JSON as serde_json's own reading, repeated key included.
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v.to_value(), expected);
    }
}
