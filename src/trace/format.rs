//! Names of the trace layouts, and recognising one from a file's first line.

use std::fmt;
use std::str::FromStr;

/// A trace layout. `Auto` looks at the first non-blank line: a CSV header names its
/// columns, and a JSON object's keys tell Mooncake (`input_length`) from dujiang JSONL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    #[default]
    Auto,
    /// Azure LLM inference traces 2023 and 2024: `TIMESTAMP,ContextTokens,GeneratedTokens`.
    Azure,
    /// BurstGPT: `Timestamp`, `Model`, `Request tokens`, `Response tokens`, … by name.
    BurstGpt,
    /// Mooncake JSONL: `timestamp` (ms), `input_length`, `output_length`, `hash_ids`.
    Mooncake,
    /// dujiang's own JSONL (see the module doc).
    Jsonl,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Auto,
        Format::Azure,
        Format::BurstGpt,
        Format::Mooncake,
        Format::Jsonl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Azure => "azure",
            Format::BurstGpt => "burstgpt",
            Format::Mooncake => "mooncake",
            Format::Jsonl => "jsonl",
        }
    }

    /// The layout a first line belongs to, or `None` if it matches none.
    pub fn detect(first_line: &str) -> Option<Format> {
        let line = first_line.trim_start_matches('\u{feff}').trim();
        if line.starts_with('{') {
            if line.contains("\"input_length\"") {
                return Some(Format::Mooncake);
            }
            if line.contains("\"input_tokens\"") {
                return Some(Format::Jsonl);
            }
            return None;
        }
        let has = |name: &str| line.split(',').any(|c| c.trim().trim_matches('"') == name);
        if has("ContextTokens") && has("GeneratedTokens") {
            Some(Format::Azure)
        } else if has("Request tokens") && has("Response tokens") {
            Some(Format::BurstGpt)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown trace format `{s}` (expected auto, azure, burstgpt, mooncake or jsonl)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_layout_from_its_first_line() {
        assert_eq!(
            Format::detect("TIMESTAMP,ContextTokens,GeneratedTokens"),
            Some(Format::Azure)
        );
        assert_eq!(
            Format::detect("\u{feff}TIMESTAMP,ContextTokens,GeneratedTokens\r"),
            Some(Format::Azure)
        );
        assert_eq!(
            Format::detect("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"),
            Some(Format::BurstGpt)
        );
        assert_eq!(
            Format::detect(
                r#"{"timestamp": 0, "input_length": 5, "output_length": 6, "hash_ids": [0]}"#
            ),
            Some(Format::Mooncake)
        );
        assert_eq!(
            Format::detect(r#"{"arrival_ms":0,"input_tokens":5,"output_tokens":6}"#),
            Some(Format::Jsonl)
        );
        assert_eq!(Format::detect("a,b,c"), None);
        assert_eq!(Format::detect(r#"{"foo": 1}"#), None);
    }

    #[test]
    fn parses_names() {
        assert_eq!("BurstGPT".parse::<Format>().unwrap(), Format::BurstGpt);
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>().unwrap(), f);
        }
        assert!("csv".parse::<Format>().is_err());
    }
}
