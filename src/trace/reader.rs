//! The streaming trace reader: one `BufRead`, one line in memory at a time, one
//! [`TraceRecord`] out per request line, with every error placed at file:line:column.
//! Here: settling the layout from the first lines, the header's columns, skipping or
//! stopping on bad lines and the out-of-order policy. Mapping each layout's columns and
//! keys onto a record is in [`layouts`]; what is parsed inside one field (the JSON line
//! types, CSV splitting, token counts, timestamps) is in [`fields`].

use super::error::{TraceError, TraceErrorKind};
use super::format::Format;
use super::timestamp::{parse_datetime_ns, parse_decimal_ns};
use super::TraceRecord;
use crate::request::{Nanos, Slo, NANOS_PER_MS, NANOS_PER_SEC};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

mod fields;
mod layouts;
use fields::*;

/// What to do with a line that cannot be parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Yield the error and stop: a trace with a broken line is usually the wrong file.
    #[default]
    Fail,
    /// Skip the line, count it in [`ReadCounts::malformed`], keep the first such error.
    Skip,
}

/// What to do with an arrival earlier than the previous one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutOfOrder {
    /// Use the previous arrival instead and count it in [`ReadCounts::out_of_order`].
    /// Real traces carry small clock jitter; a replay needs a non-decreasing clock.
    #[default]
    Clamp,
    /// Treat the line as broken (subject to [`OnError`]).
    Reject,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub on_error: OnError,
    pub out_of_order: OutOfOrder,
}

/// Tallies of one read so far; final once the iterator has returned `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Lines read, including the header and blank lines.
    pub lines: u64,
    /// Records yielded.
    pub records: u64,
    /// Requests the trace itself marks as failed (BurstGPT: zero response tokens), skipped.
    pub failed: u64,
    /// Broken lines skipped under [`OnError::Skip`].
    pub malformed: u64,
    /// Arrivals clamped to the previous one under [`OutOfOrder::Clamp`].
    pub out_of_order: u64,
}

/// Column positions of a CSV layout, found from its header.
#[derive(Debug)]
enum Layout {
    Undetected,
    Azure {
        names: Vec<String>,
        timestamp: usize,
        context: usize,
        generated: usize,
        /// Absolute time of the first record: arrivals are measured from it.
        origin_ns: Option<i64>,
    },
    BurstGpt {
        names: Vec<String>,
        timestamp: usize,
        request: usize,
        response: usize,
        model: Option<usize>,
        session: Option<usize>,
    },
    Mooncake,
    Jsonl,
}

/// An iterator of trace records over any `BufRead`.
///
/// ```
/// use dujiang::trace::{Format, TraceReader};
/// let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
///            2023-11-16 18:15:46.5,374,44\n\
///            2023-11-16 18:15:47.0,396,109\n";
/// let recs: Vec<_> = TraceReader::new(csv.as_bytes(), "mem.csv", Format::Auto)
///     .collect::<Result<_, _>>()
///     .unwrap();
/// assert_eq!(recs[1].arrival_ns, 500_000_000);
/// ```
pub struct TraceReader<R> {
    src: R,
    name: String,
    requested: Format,
    format: Format,
    opts: ReadOptions,
    layout: Layout,
    line_no: u64,
    buf: String,
    fields: Vec<(usize, usize)>,
    counts: ReadCounts,
    last_arrival: Option<i64>,
    first_skipped: Option<TraceError>,
    done: bool,
}

/// Opens a trace file for streaming. The file's path, as given, names it in errors.
pub fn open(
    path: impl AsRef<Path>,
    format: Format,
    opts: ReadOptions,
) -> Result<TraceReader<BufReader<File>>, TraceError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let file = File::open(path)
        .map_err(|e| TraceError::new(TraceErrorKind::Io, &name, format!("cannot open: {e}")))?;
    Ok(TraceReader::new(BufReader::with_capacity(1 << 18, file), name, format).with_options(opts))
}

impl<R: BufRead> TraceReader<R> {
    /// A reader of `src`, called `name` in errors.
    pub fn new(src: R, name: impl Into<String>, format: Format) -> Self {
        TraceReader {
            src,
            name: name.into(),
            requested: format,
            format,
            opts: ReadOptions::default(),
            layout: Layout::Undetected,
            line_no: 0,
            buf: String::with_capacity(256),
            fields: Vec::with_capacity(8),
            counts: ReadCounts::default(),
            last_arrival: None,
            first_skipped: None,
            done: false,
        }
    }

    pub fn with_options(mut self, opts: ReadOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The layout being read: the requested one, or under `Auto` the detected one once the
    /// first line has been read (`Auto` until then, and for an empty file).
    pub fn format(&self) -> Format {
        self.format
    }

    pub fn counts(&self) -> ReadCounts {
        self.counts
    }

    /// The first line skipped under [`OnError::Skip`], to show what kind of breakage it was.
    pub fn first_skipped(&self) -> Option<&TraceError> {
        self.first_skipped.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, kind: TraceErrorKind, message: impl Into<String>) -> TraceError {
        TraceError::new(kind, &self.name, message).at_line(self.line_no)
    }

    /// Reads the next line into `buf`; `false` at the end of input. A line that is not
    /// UTF-8 is a broken line (skippable like any other), placed at its first bad byte:
    /// `read_line` would make it an I/O error that ends the read.
    fn next_line(&mut self, buf: &mut String) -> Result<bool, TraceError> {
        let mut bytes = std::mem::take(buf).into_bytes();
        bytes.clear();
        match self.src.read_until(b'\n', &mut bytes) {
            Ok(0) => Ok(false),
            Ok(_) => {
                self.line_no += 1;
                self.counts.lines += 1;
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        *buf = text;
                        Ok(true)
                    }
                    Err(e) => {
                        let at = e.utf8_error().valid_up_to();
                        let byte = e.as_bytes()[at];
                        Err(self
                            .err(
                                TraceErrorKind::Line,
                                format!("not UTF-8 text (byte 0x{byte:02x})"),
                            )
                            .at_column(at + 1))
                    }
                }
            }
            Err(e) => {
                Err(
                    TraceError::new(TraceErrorKind::Io, &self.name, format!("read failed: {e}"))
                        .at_line(self.line_no + 1),
                )
            }
        }
    }

    /// Reads the header (CSV) or settles the layout (JSONL) from the first non-blank line.
    /// Returns whether the line is also a record.
    fn settle_layout(&mut self, line: &str) -> Result<bool, TraceError> {
        let format = match self.requested {
            // A line with some of a layout's keys but not all is read as that layout, so
            // the error names what it lacks instead of "cannot tell the trace format".
            Format::Auto => Format::detect(line)
                .or_else(|| resembles(line))
                .ok_or_else(|| {
                    self.err(
                        TraceErrorKind::Layout,
                        "cannot tell the trace format from the first line (expected an Azure or \
                     BurstGPT CSV header or a Mooncake/dujiang JSON object); pass --format",
                    )
                })?,
            f => f,
        };
        self.format = format;
        match format {
            Format::Azure => {
                let names = self.header(line);
                let col = |want: &str| self.column(&names, want);
                self.layout = Layout::Azure {
                    timestamp: col("TIMESTAMP")?,
                    context: col("ContextTokens")?,
                    generated: col("GeneratedTokens")?,
                    names,
                    origin_ns: None,
                };
                Ok(false)
            }
            Format::BurstGpt => {
                let names = self.header(line);
                let col = |want: &str| self.column(&names, want);
                let timestamp = col("Timestamp")?;
                let request = col("Request tokens")?;
                let response = col("Response tokens")?;
                let model = col("Model").ok();
                let session = col("Session ID").ok();
                self.layout = Layout::BurstGpt {
                    names,
                    timestamp,
                    request,
                    response,
                    model,
                    session,
                };
                Ok(false)
            }
            Format::Mooncake => {
                self.layout = Layout::Mooncake;
                Ok(true)
            }
            Format::Jsonl => {
                self.layout = Layout::Jsonl;
                Ok(true)
            }
            Format::Auto => unreachable!("detect never answers Auto"),
        }
    }

    fn header(&mut self, line: &str) -> Vec<String> {
        split_csv(line, &mut self.fields);
        self.fields
            .iter()
            .map(|&(a, b)| line[a..b].trim().to_string())
            .collect()
    }

    fn column(&self, names: &[String], want: &str) -> Result<usize, TraceError> {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(want))
            .ok_or_else(|| {
                self.err(
                    TraceErrorKind::Layout,
                    format!(
                        "{} header has no `{want}` column (columns: {})",
                        self.format,
                        names.join(", ")
                    ),
                )
            })
    }

    /// Applies the out-of-order policy and stamps the arrival.
    fn order(&mut self, at: i64, mut rec: TraceRecord) -> Result<TraceRecord, TraceError> {
        let at = match self.last_arrival {
            Some(last) if at < last => match self.opts.out_of_order {
                OutOfOrder::Clamp => {
                    self.counts.out_of_order += 1;
                    last
                }
                OutOfOrder::Reject => {
                    return Err(self.err(
                        TraceErrorKind::OutOfOrder,
                        format!(
                            "arrival {:.6} s is before the previous one ({:.6} s)",
                            at as f64 / 1e9,
                            last as f64 / 1e9
                        ),
                    ))
                }
            },
            // Only Azure can produce a negative arrival (a row before the first row); with
            // nothing before it to clamp to, start the clock there.
            None if at < 0 => 0,
            _ => at,
        };
        self.last_arrival = Some(at);
        rec.arrival_ns = at as Nanos;
        Ok(rec)
    }

    fn step(&mut self, buf: &mut String) -> Option<Result<TraceRecord, TraceError>> {
        loop {
            match self.next_line(buf) {
                Ok(true) => {}
                Ok(false) => return None,
                // A line past the header that is not text is skipped like a broken one.
                Err(e)
                    if e.kind == TraceErrorKind::Line
                        && self.opts.on_error == OnError::Skip
                        && !matches!(self.layout, Layout::Undetected) =>
                {
                    self.counts.malformed += 1;
                    self.first_skipped.get_or_insert(e);
                    continue;
                }
                Err(e) => return Some(Err(e)),
            }
            let mut line = buf.trim_end_matches(['\n', '\r']);
            if self.line_no == 1 {
                line = line.trim_start_matches('\u{feff}');
            }
            if line.trim().is_empty() {
                continue;
            }
            if matches!(self.layout, Layout::Undetected) {
                match self.settle_layout(line) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            let parsed = self
                .parse_record(line)
                .and_then(|p| p.map(|(at, rec)| self.order(at, rec)).transpose());
            match parsed {
                Ok(Some(rec)) => {
                    self.counts.records += 1;
                    return Some(Ok(rec));
                }
                Ok(None) => self.counts.failed += 1,
                Err(e) if self.opts.on_error == OnError::Skip => {
                    self.counts.malformed += 1;
                    self.first_skipped.get_or_insert(e);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<TraceRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let item = self.step(&mut buf);
        self.buf = buf;
        // After an error the stream position is meaningless: stop (the iterator is fused).
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

impl<R: BufRead> std::iter::FusedIterator for TraceReader<R> {}

#[cfg(test)]
mod tests;
