//! A JSON value that borrows its strings from the request body: what the OpenAI front end
//! reads a request into instead of a `serde_json::Value` tree. Building a `Value` copied
//! every string and every key and put each object in a `BTreeMap`, which was a fifth of a
//! zero-latency request's cost; this keeps strings as slices of the body (copied only when
//! they hold escapes), objects as short vectors of pairs, and the top-level fields in a
//! struct ([`super::request`]), so unknown fields are skipped without being built at all.
//!
//! Numbers are `serde_json::Number`s made exactly as `Value` makes them, so a field passed
//! through to a real engine ([`Val::to_value`]) is the same JSON it would have been.

use crate::openai_client::json::Reader;
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
/// object, or `member` declines, or the [`Reader`] gives up. The request path's reader:
/// the serde route ([`Val`]'s `Deserialize`) spends most of a small body's reading in its
/// generic visitors. Its values are the ones serde builds (numbers other than plain
/// non-negative integers are made by serde_json's own parser); when it gives up, the
/// caller reads the body again through serde, so errors stay serde_json's.
pub fn read_object<'a>(
    text: &'a [u8],
    mut member: impl FnMut(Cow<'a, str>, Val<'a>) -> Option<()>,
) -> Option<()> {
    let mut r = Reader::new(std::str::from_utf8(text).ok()?);
    r.ws();
    if r.peek() != Some(b'{') {
        return None;
    }
    r.enter()?;
    if r.opens(b'}') {
        loop {
            let key = r.key()?;
            member(key, value(&mut r)?)?;
            if !r.more(b'}')? {
                break;
            }
        }
    }
    r.leave();
    r.at_end().then_some(())
}

/// One value, built.
fn value<'a>(r: &mut Reader<'a>) -> Option<Val<'a>> {
    match r.peek()? {
        b'"' => r.string().map(Val::Str),
        b'{' => {
            r.enter()?;
            let mut out = Vec::new();
            if r.opens(b'}') {
                loop {
                    let k = r.key()?;
                    out.push((k, value(r)?));
                    if !r.more(b'}')? {
                        break;
                    }
                }
            }
            r.leave();
            Some(Val::Obj(Obj(out)))
        }
        b'[' => {
            r.enter()?;
            let mut out = Vec::new();
            if r.opens(b']') {
                loop {
                    out.push(value(r)?);
                    if !r.more(b']')? {
                        break;
                    }
                }
            }
            r.leave();
            Some(Val::Arr(out))
        }
        b't' => r.word("true").map(|()| Val::Bool(true)),
        b'f' => r.word("false").map(|()| Val::Bool(false)),
        b'n' => r.word("null").map(|()| Val::Null),
        b'-' | b'0'..=b'9' => {
            let (text, plain) = r.number()?;
            let n: Number = match plain {
                Some(n) => n.into(),
                None => text.parse().ok()?,
            };
            Some(Val::Num(n))
        }
        _ => None,
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
