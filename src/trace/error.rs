//! The one error type of the trace readers: every failure names the file and the 1-based
//! line, and the column and field where it has them, so a bad row in a ten-million-line
//! trace is found without bisecting the file.

use std::fmt;

/// What went wrong, coarsely: callers branch on this, people read the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceErrorKind {
    /// The file could not be opened or read.
    Io,
    /// The first line does not look like any known layout, or a header lacks a column.
    Layout,
    /// One line could not be parsed (bad number, bad timestamp, malformed JSON).
    Line,
    /// A line's arrival is earlier than the one before it and the reader rejects that.
    OutOfOrder,
}

/// A trace that could not be read, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    pub kind: TraceErrorKind,
    /// File name as given (or a label such as `<stdin>` for other sources).
    pub file: String,
    /// 1-based line number, when the problem has one.
    pub line: Option<u64>,
    /// 1-based byte column within the line, when known.
    pub column: Option<usize>,
    /// Column or key name (`ContextTokens`, `input_length`), when the problem is in one.
    pub field: Option<String>,
    pub message: String,
}

impl TraceError {
    pub fn new(kind: TraceErrorKind, file: &str, message: impl Into<String>) -> Self {
        TraceError {
            kind,
            file: file.to_string(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    pub fn at_column(mut self, column: usize) -> Self {
        self.column = Some(column);
        self
    }

    pub fn in_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::config::write_place(f, &self.file, self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TraceError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_column_and_field() {
        let err = TraceError::new(TraceErrorKind::Line, "trace.csv", "invalid digit \"12x\"")
            .at_line(17)
            .in_field("ContextTokens");
        assert_eq!(
            err.to_string(),
            "trace.csv:17: ContextTokens: invalid digit \"12x\""
        );
        let err = err.at_column(29);
        assert_eq!(
            err.to_string(),
            "trace.csv:17:29: ContextTokens: invalid digit \"12x\""
        );
    }
}
