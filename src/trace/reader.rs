//! The streaming trace reader: one `BufRead`, one line in memory at a time, one
//! [`TraceRecord`] out per request line. Layout-specific parsing (CSV columns by name,
//! JSON objects) lives here too, because it is a few lines per layout and shares the
//! error placement.

use super::error::{TraceError, TraceErrorKind};
use super::format::Format;
use super::timestamp::{parse_datetime_ns, parse_decimal_ns};
use super::TraceRecord;
use crate::request::{Nanos, Priority, Slo, NANOS_PER_MS, NANOS_PER_SEC};
use serde::Deserialize;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

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

    /// Parses one data line: `Ok(None)` for a request the trace marks as failed.
    /// The arrival is signed because an Azure row may predate the first row.
    fn parse_record(&mut self, line: &str) -> Result<Option<(i64, TraceRecord)>, TraceError> {
        match &self.layout {
            Layout::Azure { .. } => self.parse_azure(line).map(Some),
            Layout::BurstGpt { .. } => self.parse_burstgpt(line),
            Layout::Mooncake => self.parse_mooncake(line).map(Some),
            Layout::Jsonl => self.parse_jsonl(line).map(Some),
            Layout::Undetected => unreachable!("layout settled before records"),
        }
    }

    /// The text of column `idx` of the current CSV row, with its 1-based byte column.
    fn field<'l>(
        &self,
        line: &'l str,
        idx: usize,
        names: &[String],
    ) -> Result<(&'l str, usize), TraceError> {
        match self.fields.get(idx) {
            Some(&(a, b)) => Ok((line[a..b].trim(), a + 1)),
            None => Err(self
                .err(
                    TraceErrorKind::Line,
                    format!(
                        "missing column (row has {} of {} columns)",
                        self.fields.len(),
                        names.len()
                    ),
                )
                .in_field(names[idx].clone())),
        }
    }

    fn tokens(&self, text: &str, column: usize, name: &str) -> Result<u32, TraceError> {
        parse_tokens(text).map_err(|msg| {
            self.err(TraceErrorKind::Line, msg)
                .at_column(column)
                .in_field(name)
        })
    }

    fn parse_azure(&mut self, line: &str) -> Result<(i64, TraceRecord), TraceError> {
        split_csv(line, &mut self.fields);
        let Layout::Azure {
            names,
            timestamp,
            context,
            generated,
            origin_ns,
        } = &self.layout
        else {
            unreachable!()
        };
        let (ts_text, ts_col) = self.field(line, *timestamp, names)?;
        let (ctx_text, ctx_col) = self.field(line, *context, names)?;
        let (gen_text, gen_col) = self.field(line, *generated, names)?;
        let at = parse_datetime_ns(ts_text).map_err(|msg| {
            self.err(TraceErrorKind::Line, msg)
                .at_column(ts_col)
                .in_field(names[*timestamp].clone())
        })?;
        let prompt_tokens = self.tokens(ctx_text, ctx_col, &names[*context])?;
        let output_tokens = self.tokens(gen_text, gen_col, &names[*generated])?;
        let origin = origin_ns.unwrap_or(at);
        let since = at.checked_sub(origin).ok_or_else(|| {
            self.err(
                TraceErrorKind::Line,
                format!(
                    "timestamp \"{ts_text}\" is more than 292 years from the first row's; \
                     arrivals are kept as i64 nanoseconds"
                ),
            )
            .at_column(ts_col)
            .in_field(names[*timestamp].clone())
        })?;
        let rec = TraceRecord {
            prompt_tokens,
            output_tokens,
            ..TraceRecord::default()
        };
        if let Layout::Azure { origin_ns, .. } = &mut self.layout {
            *origin_ns = Some(origin);
        }
        Ok((since, rec))
    }

    fn parse_burstgpt(&mut self, line: &str) -> Result<Option<(i64, TraceRecord)>, TraceError> {
        split_csv(line, &mut self.fields);
        let Layout::BurstGpt {
            names,
            timestamp,
            request,
            response,
            model,
            session,
        } = &self.layout
        else {
            unreachable!()
        };
        let (ts_text, ts_col) = self.field(line, *timestamp, names)?;
        let (req_text, req_col) = self.field(line, *request, names)?;
        let (resp_text, resp_col) = self.field(line, *response, names)?;
        let at = parse_decimal_ns(ts_text, NANOS_PER_SEC).map_err(|msg| {
            self.err(TraceErrorKind::Line, msg)
                .at_column(ts_col)
                .in_field(names[*timestamp].clone())
        })?;
        let prompt_tokens = self.tokens(req_text, req_col, &names[*request])?;
        let output_tokens = self.tokens(resp_text, resp_col, &names[*response])?;
        if output_tokens == 0 {
            return Ok(None);
        }
        let model = match model {
            Some(i) => Some(self.field(line, *i, names)?.0)
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            None => None,
        };
        let session = match session {
            Some(i) => session_id(self.field(line, *i, names)?.0),
            None => None,
        };
        let at = i64::try_from(at).map_err(|_| {
            self.err(
                TraceErrorKind::Line,
                format!("time \"{ts_text}\" is too large"),
            )
            .in_field(names[*timestamp].clone())
        })?;
        Ok(Some((
            at,
            TraceRecord {
                prompt_tokens,
                output_tokens,
                model,
                session,
                ..TraceRecord::default()
            },
        )))
    }

    fn json_err(&self, line: &str, e: serde_json::Error) -> TraceError {
        let text = e.to_string();
        // serde_json appends " at line L column C"; the line is always 1 here.
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let err = self
            .err(TraceErrorKind::Line, message)
            .at_column(e.column());
        // A key serde names itself (an unknown or a missing one) is the field. Otherwise
        // serde_json does not say which key held a value of the wrong type; in a flat
        // object it is the last key before the error's column.
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| err.message.strip_prefix(p))
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, _)| key.to_string());
        match (named, e.classify()) {
            (Some(key), _) => err.in_field(key),
            (None, serde_json::error::Category::Data) => match key_before(line, e.column()) {
                Some(key) => err.in_field(key),
                None => err,
            },
            _ => err,
        }
    }

    /// A JSON trace line must be an object: serde would also take an array of the
    /// struct's fields in order, and name the struct in its error.
    fn json_object(&self, line: &str) -> Result<(), TraceError> {
        if line.trim_start().starts_with('{') {
            return Ok(());
        }
        Err(self
            .err(
                TraceErrorKind::Line,
                format!(
                    "not a JSON object: each line of a {} trace is one request as {{\"key\": value, ...}}",
                    self.format
                ),
            )
            .at_column(line.len() - line.trim_start().len() + 1))
    }

    fn parse_mooncake(&self, line: &str) -> Result<(i64, TraceRecord), TraceError> {
        self.json_object(line)?;
        let row: MooncakeLine = serde_json::from_str(line).map_err(|e| self.json_err(line, e))?;
        let at = ms_to_ns(&row.timestamp)
            .map_err(|msg| self.err(TraceErrorKind::Line, msg).in_field("timestamp"))?;
        Ok((
            at,
            TraceRecord {
                prompt_tokens: row.input_length,
                output_tokens: row.output_length,
                hash_ids: row.hash_ids,
                ..TraceRecord::default()
            },
        ))
    }

    fn parse_jsonl(&self, line: &str) -> Result<(i64, TraceRecord), TraceError> {
        self.json_object(line)?;
        let row: JsonlLine = serde_json::from_str(line).map_err(|e| self.json_err(line, e))?;
        let field_err =
            |field: &str, msg: String| self.err(TraceErrorKind::Line, msg).in_field(field);
        let at = match (&row.arrival_ms, row.arrival_ns) {
            (Some(ms), None) => ms_to_ns(ms).map_err(|m| field_err("arrival_ms", m))?,
            (None, Some(ns)) => i64::try_from(ns)
                .map_err(|_| field_err("arrival_ns", format!("{ns} is too large")))?,
            (None, None) => {
                return Err(field_err(
                    "arrival_ms",
                    "missing (give arrival_ms or arrival_ns)".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(field_err(
                    "arrival_ns",
                    "give arrival_ms or arrival_ns, not both".into(),
                ))
            }
        };
        let slo_part = |v: Option<f64>, field: &str| -> Result<Option<Nanos>, TraceError> {
            match v {
                None => Ok(None),
                Some(ms) if ms.is_finite() && ms >= 0.0 => {
                    Ok(Some((ms * NANOS_PER_MS as f64).round() as Nanos))
                }
                Some(ms) => Err(field_err(field, format!("{ms} is not a duration in ms"))),
            }
        };
        let ttft = slo_part(row.slo_ttft_ms, "slo_ttft_ms")?;
        let tpot = slo_part(row.slo_tpot_ms, "slo_tpot_ms")?;
        let slo = (ttft.is_some() || tpot.is_some()).then(|| {
            let d = Slo::default();
            Slo {
                ttft_ns: ttft.unwrap_or(d.ttft_ns),
                tpot_ns: tpot.unwrap_or(d.tpot_ns),
            }
        });
        Ok((
            at,
            TraceRecord {
                arrival_ns: 0,
                prompt_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
                hash_ids: row.hash_ids,
                priority: row.priority.unwrap_or_default(),
                slo,
                session: row.session,
                model: row.model,
            },
        ))
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

#[derive(Deserialize)]
struct MooncakeLine {
    timestamp: serde_json::Number,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlLine {
    arrival_ms: Option<serde_json::Number>,
    arrival_ns: Option<u64>,
    input_tokens: u32,
    output_tokens: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
    priority: Option<Priority>,
    slo_ttft_ms: Option<f64>,
    slo_tpot_ms: Option<f64>,
    session: Option<u64>,
    model: Option<String>,
}

/// The layout a first line has some of the keys of (see [`Format::detect`] for all of
/// them): a header missing a token column, a JSON object missing its prompt length.
fn resembles(line: &str) -> Option<Format> {
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
fn key_before(line: &str, column: usize) -> Option<&str> {
    let head = line.get(..column.min(line.len()))?;
    let colon = head.rfind("\":")?;
    let open = head[..colon].rfind('"')?;
    Some(&head[open + 1..colon])
}

/// A JSON number of milliseconds as signed nanoseconds; integers stay exact.
fn ms_to_ns(n: &serde_json::Number) -> Result<i64, String> {
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
fn parse_tokens(text: &str) -> Result<u32, String> {
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
fn session_id(text: &str) -> Option<u64> {
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
fn split_csv(line: &str, out: &mut Vec<(usize, usize)>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str, format: Format) -> Result<Vec<TraceRecord>, TraceError> {
        TraceReader::new(text.as_bytes(), "t", format).collect()
    }

    #[test]
    fn csv_split_handles_quotes_and_empties() {
        let mut f = Vec::new();
        let line = r#"1,"a,b",,"x""y",z"#;
        split_csv(line, &mut f);
        let parts: Vec<&str> = f.iter().map(|&(a, b)| &line[a..b]).collect();
        assert_eq!(parts, ["1", "a,b", "", "x\"\"y", "z"]);
        split_csv("", &mut f);
        assert_eq!(f, [(0, 0)]);
        split_csv("a,", &mut f);
        assert_eq!(f, [(0, 1), (2, 2)]);
    }

    #[test]
    fn tokens_accept_zero_fractions_only() {
        assert_eq!(parse_tokens("472"), Ok(472));
        assert_eq!(parse_tokens("472.0"), Ok(472));
        assert_eq!(parse_tokens("12x"), Err("invalid digit \"12x\"".into()));
        assert!(parse_tokens("4.5").is_err());
        assert!(parse_tokens("-3").unwrap_err().contains("negative"));
        assert!(parse_tokens("").is_err());
        assert!(parse_tokens("99999999999")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn azure_arrivals_count_from_the_first_row() {
        let recs = read_all(
            "TIMESTAMP,ContextTokens,GeneratedTokens\r\n\
             2024-05-10 00:00:00.009930+00:00,10,2\r\n\
             2024-05-10 00:00:01+00:00,20,3\r\n\
             \r\n\
             2024-05-10 00:00:01.5+00:00,30,4\r\n",
            Format::Azure,
        )
        .unwrap();
        let at: Vec<Nanos> = recs.iter().map(|r| r.arrival_ns).collect();
        assert_eq!(at, [0, 990_070_000, 1_490_070_000]);
        assert_eq!(recs[2].prompt_tokens, 30);
        assert_eq!(recs[2].output_tokens, 4);
    }

    #[test]
    fn columns_are_found_by_name_in_any_order() {
        let recs = read_all(
            "GeneratedTokens,TIMESTAMP,ContextTokens\n7,2023-11-16 18:15:46.0,100\n",
            Format::Auto,
        )
        .unwrap();
        assert_eq!((recs[0].prompt_tokens, recs[0].output_tokens), (100, 7));
    }

    #[test]
    fn missing_column_is_a_layout_error() {
        let err = read_all("TIMESTAMP,ContextTokens\n", Format::Azure).unwrap_err();
        assert_eq!(err.kind, TraceErrorKind::Layout);
        assert_eq!(err.line, Some(1));
        assert!(err.message.contains("GeneratedTokens"), "{err}");
    }

    #[test]
    fn timestamps_out_of_range_name_the_line_instead_of_wrapping() {
        let err = read_all(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2023-11-16 18:15:46.0,100,7\n\
             2300-01-01 00:00:00,100,7\n",
            Format::Azure,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("t:3:") && err.contains("outside the representable range"),
            "{err}"
        );
        // Each end representable, their distance not.
        let err = read_all(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             1700-01-01 00:00:00,100,7\n\
             2260-01-01 00:00:00,100,7\n",
            Format::Azure,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("t:3:") && err.contains("more than 292 years"),
            "{err}"
        );
    }

    #[test]
    fn short_row_names_the_missing_column() {
        let err = read_all(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,100\n",
            Format::Azure,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t:2: GeneratedTokens: missing column (row has 2 of 3 columns)"
        );
    }

    #[test]
    fn out_of_order_is_clamped_and_counted_or_rejected() {
        let text = "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1}\n\
                    {\"timestamp\": 3, \"input_length\": 1, \"output_length\": 1}\n\
                    {\"timestamp\": 9, \"input_length\": 1, \"output_length\": 1}\n";
        let mut r = TraceReader::new(text.as_bytes(), "m.jsonl", Format::Auto);
        let at: Vec<Nanos> = r.by_ref().map(|x| x.unwrap().arrival_ns).collect();
        assert_eq!(at, [5_000_000, 5_000_000, 9_000_000]);
        assert_eq!(r.counts().out_of_order, 1);
        assert_eq!(r.format(), Format::Mooncake);

        let err = TraceReader::new(text.as_bytes(), "m.jsonl", Format::Auto)
            .with_options(ReadOptions {
                out_of_order: OutOfOrder::Reject,
                ..ReadOptions::default()
            })
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert_eq!(err.kind, TraceErrorKind::OutOfOrder);
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn azure_row_before_the_first_clamps_to_zero() {
        let mut r = TraceReader::new(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2023-11-16 18:00:01.0,1,1\n\
             2023-11-16 18:00:00.0,1,1\n"
                .as_bytes(),
            "a.csv",
            Format::Auto,
        );
        let at: Vec<Nanos> = r.by_ref().map(|x| x.unwrap().arrival_ns).collect();
        assert_eq!(at, [0, 0]);
        assert_eq!(r.counts().out_of_order, 1);
    }

    #[test]
    fn skip_mode_counts_broken_lines_and_keeps_the_first_error() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:00:00.0,1,1\n\
                    2023-11-16 18:00:01.0,1x,1\n\
                    2023-11-16 25:00:01.0,1,1\n\
                    2023-11-16 18:00:02.0,2,2\n";
        let mut r =
            TraceReader::new(text.as_bytes(), "a.csv", Format::Auto).with_options(ReadOptions {
                on_error: OnError::Skip,
                ..ReadOptions::default()
            });
        let n = r.by_ref().collect::<Result<Vec<_>, _>>().unwrap().len();
        assert_eq!(n, 2);
        assert_eq!(r.counts().malformed, 2);
        assert_eq!(r.counts().records, 2);
        assert_eq!(r.counts().lines, 5);
        assert_eq!(
            r.first_skipped().unwrap().to_string(),
            "a.csv:3:23: ContextTokens: invalid digit \"1x\""
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_broken_line() {
        let text: &[u8] = b"TIMESTAMP,ContextTokens,GeneratedTokens\n\
                            2023-11-16 18:00:00.0,1,1\n\
                            2023-11-16 18:00:01.0,1\xff,1\n\
                            2023-11-16 18:00:02.0,2,2\n";
        let err = TraceReader::new(text, "a.csv", Format::Auto)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert_eq!(err.kind, TraceErrorKind::Line);
        assert_eq!(err.to_string(), "a.csv:3:24: not UTF-8 text (byte 0xff)");
        let mut r = TraceReader::new(text, "a.csv", Format::Auto).with_options(ReadOptions {
            on_error: OnError::Skip,
            ..ReadOptions::default()
        });
        let n = r.by_ref().collect::<Result<Vec<_>, _>>().unwrap().len();
        assert_eq!((n, r.counts().malformed, r.counts().lines), (2, 1, 4));
    }

    #[test]
    fn fail_mode_stops_after_the_error() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:00:00.0,1,x\n\
                    2023-11-16 18:00:02.0,2,2\n";
        let mut r = TraceReader::new(text.as_bytes(), "a.csv", Format::Auto);
        assert!(r.next().unwrap().is_err());
        assert!(r.next().is_none());
    }

    #[test]
    fn jsonl_reads_every_key_and_defaults_the_rest() {
        let recs = read_all(
            "{\"arrival_ms\": 1.5, \"input_tokens\": 10, \"output_tokens\": 2, \"hash_ids\": [1,2], \
              \"priority\": \"batch\", \"slo_ttft_ms\": 500, \"session\": 7, \"model\": \"qwen\"}\n\
             {\"arrival_ns\": 2000001, \"input_tokens\": 11, \"output_tokens\": 3}\n",
            Format::Auto,
        )
        .unwrap();
        assert_eq!(recs[0].arrival_ns, 1_500_000);
        assert_eq!(recs[0].priority, Priority::Batch);
        assert_eq!(
            recs[0].slo,
            Some(Slo {
                ttft_ns: 500 * NANOS_PER_MS,
                tpot_ns: Slo::default().tpot_ns
            })
        );
        assert_eq!(recs[0].hash_ids, [1, 2]);
        assert_eq!(recs[0].session, Some(7));
        assert_eq!(recs[0].model.as_deref(), Some("qwen"));
        assert_eq!(recs[1].arrival_ns, 2_000_001);
        assert_eq!(recs[1].priority, Priority::Interactive);
        assert_eq!(recs[1].slo, None);
    }

    #[test]
    fn jsonl_errors_name_the_key() {
        let err = read_all(
            "{\"arrival_ms\": 1, \"input_tokens\": 1, \"output_tokns\": 2}\n",
            Format::Jsonl,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("t:1:"), "{err}");
        assert!(err.message.contains("output_tokns"), "{err}");
        let err = read_all(
            "{\"arrival_ms\": 1, \"input_tokens\": \"x\", \"output_tokens\": 2}\n",
            Format::Jsonl,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("input_tokens"), "{err}");
        assert_eq!(err.column, Some(37), "{err}");
        let err = read_all(
            "{\"input_tokens\": 1, \"output_tokens\": 2}\n",
            Format::Jsonl,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("arrival_ms"));
        let err = read_all(
            "{\"arrival_ms\": 0, \"input_tokens\": 1, \"output_tokens\": 2, \"priority\": \"urgent\"}\n",
            Format::Jsonl,
        )
        .unwrap_err();
        assert!(err.message.contains("urgent"), "{err}");
        // Unknown and missing keys are the field, not the key before them.
        let err = read_all(
            "{\"arrival_ms\": 1, \"input_tokens\": 1, \"output_tokens\": 2, \"foo\": 1}\n",
            Format::Jsonl,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("foo"), "{err}");
        let err =
            read_all("{\"arrival_ms\": 1, \"input_tokens\": 1}\n", Format::Jsonl).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("output_tokens"), "{err}");
        let err = read_all(
            "{\"timestamp\": 1, \"input_length\": 1}\n",
            Format::Mooncake,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("output_length"), "{err}");
        // An array is not a request, even one with every field in order.
        for line in [
            "[1, 2]",
            "[0, null, 1, 2, [], null, null, null, null, null]",
            "7",
        ] {
            let err = read_all(&format!("{line}\n"), Format::Jsonl).unwrap_err();
            assert_eq!(err.to_string(), "t:1:1: not a JSON object: each line of a jsonl trace is one request as {\"key\": value, ...}");
        }
    }

    #[test]
    fn undetectable_first_line_is_a_layout_error() {
        let err = read_all("hello,world\n1,2\n", Format::Auto).unwrap_err();
        assert_eq!(err.kind, TraceErrorKind::Layout);
        assert_eq!(err.line, Some(1));
        // A header with some of a layout's columns names the one it lacks.
        let err = read_all("Timestamp,Model,Request tokens\n5,m,1\n", Format::Auto).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t:1: burstgpt header has no `Response tokens` column (columns: Timestamp, Model, Request tokens)"
        );
        let err = read_all("TIMESTAMP,ContextTokens\n", Format::Auto).unwrap_err();
        assert!(err.message.contains("no `GeneratedTokens` column"), "{err}");
        let err =
            read_all("{\"arrival_ms\": 1, \"output_tokens\": 2}\n", Format::Auto).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("input_tokens"), "{err}");
    }

    #[test]
    fn empty_input_has_no_records() {
        let mut r = TraceReader::new("\n\n".as_bytes(), "e", Format::Auto);
        assert!(r.next().is_none());
        assert_eq!(r.format(), Format::Auto);
    }

    #[test]
    fn burstgpt_session_ids_hash_when_not_numeric() {
        assert_eq!(session_id("42"), Some(42));
        assert_eq!(session_id(""), None);
        assert_eq!(session_id("abc"), session_id("abc"));
        assert_ne!(session_id("abc"), session_id("abd"));
    }
}
