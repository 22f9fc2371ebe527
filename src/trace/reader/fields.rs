//! What the reader parses inside one line: the JSON layouts' objects, CSV fields split
//! with quotes, token counts, millisecond timestamps, session ids, and the guesses that
//! name a layout's missing column (a first line with some of its keys).

use super::super::format::Format;
use crate::request::{Priority, NANOS_PER_MS};
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct MooncakeLine {
    pub(super) timestamp: serde_json::Number,
    pub(super) input_length: u32,
    pub(super) output_length: u32,
    #[serde(default)]
    pub(super) hash_ids: Vec<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonlLine {
    pub(super) arrival_ms: Option<serde_json::Number>,
    pub(super) arrival_ns: Option<u64>,
    pub(super) input_tokens: u32,
    pub(super) output_tokens: u32,
    #[serde(default)]
    pub(super) hash_ids: Vec<u64>,
    pub(super) priority: Option<Priority>,
    pub(super) slo_ttft_ms: Option<f64>,
    pub(super) slo_tpot_ms: Option<f64>,
    pub(super) session: Option<u64>,
    pub(super) model: Option<String>,
}

/// The layout a first line has some of the keys of (see [`Format::detect`] for all of
/// them): a header missing a token column, a JSON object missing its prompt length.
pub(super) fn resembles(line: &str) -> Option<Format> {
    let line = line.trim_start_matches('\u{feff}').trim();
    let any = |names: &[&str]| {
        line.split(',')
            .any(|c| names.contains(&c.trim().trim_matches('"')))
    };
    if line.starts_with('{') {
        if line.contains("\"output_length\"") {
            return Some(Format::Mooncake);
        }
        if ["\"output_tokens\"", "\"arrival_ms\"", "\"arrival_ns\""]
            .iter()
            .any(|k| line.contains(k))
        {
            return Some(Format::Jsonl);
        }
        return None;
    }
    if any(&["ContextTokens", "GeneratedTokens"]) {
        Some(Format::Azure)
    } else if any(&["Request tokens", "Response tokens"]) {
        Some(Format::BurstGpt)
    } else {
        None
    }
}

/// The last `"key":` that starts before byte column `column` (1-based) of a JSON line.
pub(super) fn key_before(line: &str, column: usize) -> Option<&str> {
    let head = line.get(..column.min(line.len()))?;
    let colon = head.rfind("\":")?;
    let open = head[..colon].rfind('"')?;
    Some(&head[open + 1..colon])
}

/// A JSON number of milliseconds as signed nanoseconds; integers stay exact.
pub(super) fn ms_to_ns(n: &serde_json::Number) -> Result<i64, String> {
    if let Some(ms) = n.as_u64() {
        return ms
            .checked_mul(NANOS_PER_MS)
            .and_then(|ns| i64::try_from(ns).ok())
            .ok_or_else(|| format!("{n} ms is too large"));
    }
    match n.as_f64() {
        Some(ms) if ms >= 0.0 && ms * 1e6 < i64::MAX as f64 => Ok((ms * 1e6).round() as i64),
        _ => Err(format!("{n} is not a time in ms from the start")),
    }
}

/// A token count: a non-negative integer, also accepted with a zero fraction (`472.0`)
/// because pandas writes integer columns that way when any cell is missing.
pub(super) fn parse_tokens(text: &str) -> Result<u32, String> {
    let digits = match text.split_once('.') {
        Some((int, frac)) if !int.is_empty() && frac.bytes().all(|c| c == b'0') => int,
        _ => text,
    };
    if digits.is_empty() {
        return Err("empty token count".into());
    }
    if digits.starts_with('-') {
        return Err(format!("negative token count \"{text}\""));
    }
    digits.parse::<u32>().map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => format!("token count \"{text}\" is too large"),
        _ => format!("invalid digit \"{text}\""),
    })
}

/// BurstGPT session ids are numbers in the files seen so far; anything else is hashed
/// (FNV-1a, stable across runs) so equal ids still mean the same conversation.
pub(super) fn session_id(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    if let Ok(v) = text.parse::<u64>() {
        return Some(v);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Some(h)
}

/// Splits a CSV line into byte ranges of its fields. A quoted field's range excludes the
/// quotes (doubled quotes inside stay doubled: the readers only take numbers and names
/// from quoted fields).
pub(super) fn split_csv(line: &str, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        if i < b.len() && b[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            while j < b.len() {
                if b[j] == b'"' {
                    if j + 1 < b.len() && b[j + 1] == b'"' {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            out.push((start, j.min(b.len())));
            // Skip to the next comma after the closing quote.
            i = match b[j.min(b.len())..].iter().position(|&c| c == b',') {
                Some(p) => j + p + 1,
                None => {
                    return;
                }
            };
        } else {
            match b[i..].iter().position(|&c| c == b',') {
                Some(p) => {
                    out.push((i, i + p));
                    i += p + 1;
                }
                None => {
                    out.push((i, b.len()));
                    return;
                }
            }
        }
    }
}
