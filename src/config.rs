//! TOML loading with errors people can act on: every failure names the file, the line and
//! column, and the offending key, so a typo in a 300-line fleet file is found at once.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;

/// A configuration file that could not be read, parsed or validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given (or `<embedded …>` for built-in defaults).
    pub file: String,
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path of the offending field, when known (e.g. `chips.h20.memory_gb`).
    pub field: Option<String>,
    pub message: String,
}

/// Writes `file[:line[:column]]`, the place prefix every input error in dujiang starts with
/// (config files here, trace lines in `trace`), so editors and terminals can jump to it.
pub fn write_place(
    f: &mut fmt::Formatter<'_>,
    file: &str,
    line: Option<impl fmt::Display>,
    column: Option<usize>,
) -> fmt::Result {
    write!(f, "{file}")?;
    if let Some(line) = line {
        write!(f, ":{line}")?;
        if let Some(col) = column {
            write!(f, ":{col}")?;
        }
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_place(f, &self.file, self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    /// An error about `field` (a dotted path), placed at the line where its key is written
    /// in `src` if it can be found there.
    pub fn at_field(file: &str, src: &str, field: &str, message: impl Into<String>) -> Self {
        let (line, column) = match locate_key(src, field) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        ConfigError {
            file: file.to_string(),
            line,
            column,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// Finds where the last segment of a dotted key is assigned inside the table named by the
/// rest, e.g. `chips.h20.memory_gb` → the `memory_gb =` line after `[chips.h20]` or
/// `[h20]`. Best effort: falls back to the table header, then to nothing.
pub fn locate_key(src: &str, field: &str) -> Option<(usize, usize)> {
    let mut parts: Vec<&str> = field.split('.').collect();
    let key = parts.pop()?;
    let mut table_line: Option<usize> = None;
    let mut in_table = parts.is_empty();
    for (i, raw) in src.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let name = line.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = !parts.is_empty()
                && (name == parts.join(".")
                    || parts.ends_with(&name.split('.').collect::<Vec<_>>()));
            if in_table {
                table_line = Some(i + 1);
            }
            continue;
        }
        if in_table {
            if let Some(rest) = line.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    let col = raw.len() - raw.trim_start().len() + 1;
                    return Some((i + 1, col));
                }
            }
        }
    }
    table_line.map(|l| (l, 1))
}

/// Parses TOML into `T`, turning a parse or schema error into a [`ConfigError`] with the
/// line, column and key that toml reports.
pub fn parse_toml<T: DeserializeOwned>(src: &str, file: &str) -> Result<T, ConfigError> {
    toml::from_str(src).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = line_col(src, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let mut message = e.message().trim().to_string();
        // toml says only "duplicate key"; its span is the key written the second time.
        if message == "duplicate key" {
            if let Some(key) = e.span().and_then(|s| src.get(s)) {
                message = format!("duplicate key `{}`", key.trim());
            }
        }
        // A value of the wrong type: serde names the Rust type it wanted ("expected struct
        // PolicySpec"), and nothing names the key; the key is the one its line assigns.
        let mut field = None;
        if message.starts_with("invalid type") || message.starts_with("invalid value") {
            field = line.and_then(|l| key_on_line(src, l));
            if let Some(at) = message.find("expected struct ") {
                message.replace_range(at.., "expected a table");
            }
        }
        ConfigError {
            file: file.to_string(),
            line,
            column,
            field,
            message,
        }
    })
}

/// The dotted key assigned on 1-based `line` (`key = …` under the nearest `[table]`
/// header above it), if that line is an assignment.
fn key_on_line(src: &str, line: usize) -> Option<String> {
    let text = src.lines().nth(line.checked_sub(1)?)?.trim();
    let (key, _) = text.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with(['[', '#', '"', '\'']) || key.contains(char::is_whitespace)
    {
        return None;
    }
    let table = src
        .lines()
        .take(line - 1)
        .map(str::trim)
        .filter(|l| l.starts_with('['))
        .last()
        .map(|h| h.trim_matches(['[', ']']).trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// Reads a config file's text; `name` names it in errors. Bytes that are not UTF-8 are
/// placed at their line and column (the I/O error alone said neither).
pub fn read_text(path: &Path, name: &str) -> Result<String, ConfigError> {
    let bytes =
        std::fs::read(path).map_err(|e| ConfigError::new(name, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // The valid prefix is text, so lines and columns count as everywhere else.
        let valid = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
        let (line, column) = line_col(valid, at);
        ConfigError {
            file: name.to_string(),
            line: Some(line),
            column: Some(column),
            field: None,
            message: format!(
                "not UTF-8 text (byte 0x{:02x}); the file must be UTF-8",
                bytes[at]
            ),
        }
    })
}

/// Reads and parses a TOML file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let name = path.display().to_string();
    let src = read_text(path, &name)?;
    parse_toml(&src, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Pool {
        chip: String,
        count: u32,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Fleet {
        pools: std::collections::BTreeMap<String, Pool>,
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let src = "[pools.a]\nchip = \"h20\"\ncount = 2\n\n[pools.b]\nchip = \"h20\"\ncuont = 3\n";
        let err = parse_toml::<Fleet>(src, "fleet.toml").unwrap_err();
        assert_eq!(err.file, "fleet.toml");
        assert_eq!(err.line, Some(7), "{err}");
        assert!(err.to_string().contains("cuont"), "{err}");
    }

    #[test]
    fn wrong_type_is_placed() {
        let src = "[pools.a]\nchip = \"h20\"\ncount = -2\n";
        let err = parse_toml::<Fleet>(src, "f.toml").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key_and_no_rust_type() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct File {
            name: String,
            policy: Option<Pool>,
            pools: std::collections::BTreeMap<String, Pool>,
        }
        let src = "name = \"x\"\npolicy = \"least-work\"\n[pools.a]\nchip = \"h20\"\ncount = 2\n";
        let err = parse_toml::<File>(src, "f.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.toml:2:10: field `policy`: invalid type: string \"least-work\", expected a table"
        );
        let src = src
            .replace("policy = \"least-work\"\n", "")
            .replace("count = 2", "count = \"two\"");
        let err = parse_toml::<File>(&src, "f.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.toml:4:9: field `pools.a.count`: invalid type: string \"two\", expected u32"
        );
    }

    #[test]
    fn duplicate_keys_are_named() {
        let src = "[pools.a]\nchip = \"h20\"\ncount = 2\n[pools.a]\nchip = \"h20\"\n";
        let err = parse_toml::<Fleet>(src, "f.toml").unwrap_err();
        assert_eq!(err.to_string(), "f.toml:4:8: duplicate key `a`");
        let src = "[pools.a]\nchip = \"h20\"\ncount = 2\ncount = 3\n";
        let err = parse_toml::<Fleet>(src, "f.toml").unwrap_err();
        assert_eq!(err.to_string(), "f.toml:4:1: duplicate key `count`");
    }

    #[test]
    fn non_utf8_text_is_placed() {
        let path = std::env::temp_dir().join(format!("dujiang-utf8-{}.toml", std::process::id()));
        std::fs::write(&path, b"[pools.a]\nchip = \"h2\xff0\"\n").unwrap();
        let err = read_text(&path, "f.toml").unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            err.to_string(),
            "f.toml:2:11: not UTF-8 text (byte 0xff); the file must be UTF-8"
        );
    }

    #[test]
    fn locate_key_finds_nested_assignment() {
        let src = "[pools.a]\ncount = 1\n[pools.b]\n  count = 2\n";
        assert_eq!(locate_key(src, "pools.b.count"), Some((4, 3)));
        assert_eq!(locate_key(src, "pools.b.missing"), Some((3, 1)));
        let err = ConfigError::at_field("f.toml", src, "pools.b.count", "must be positive");
        assert_eq!(
            err.to_string(),
            "f.toml:4:3: field `pools.b.count`: must be positive"
        );
    }
}
