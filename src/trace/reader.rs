//! The streaming trace reader: one `BufRead`, one line in memory at a time, one
//! [`TraceRecord`] out per request line, with every error placed at file:line:column.
//! Mapping each layout's columns and keys onto a record lives here, since it shares that
//! placement; what is parsed inside one line (the JSON line types, CSV splitting, token
//! counts, timestamps) is in [`fields`].

use super::error::{TraceError, TraceErrorKind};
use super::format::Format;
use super::timestamp::{parse_datetime_ns, parse_decimal_ns};
use super::TraceRecord;
use crate::request::{Nanos, Slo, NANOS_PER_MS, NANOS_PER_SEC};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

mod fields;
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
                // A 0 target (or one under half a nanosecond) no request can meet: every
                // request would count as missing its SLO. Refused, as the OpenAI front end
                // refuses `slo.ttft_ms: 0`, rather than read as a typo's nonsense.
                Some(ms) if ms.is_finite() && ms >= 0.0 => match (ms * NANOS_PER_MS as f64).round()
                {
                    ns if ns >= 1.0 => Ok(Some(ns as Nanos)),
                    _ => Err(field_err(
                        field,
                        format!(
                            "{ms} ms: an SLO must be above 0 (leave the key out for the default)"
                        ),
                    )),
                },
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

#[cfg(test)]
mod tests;
