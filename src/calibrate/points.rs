//! Measured points: one published or lab measurement of one serving stack, with the
//! workload that produced it. Read from TOML (`[[point]]` tables) or CSV (a header row, one
//! point per line); every problem is reported as `file:line: field `name`: what is wrong`.

use super::lengths::Lengths;
use crate::config::{parse_toml, ConfigError};
use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// What was run to get the measurement.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// One prefill of `tokens` prompt tokens, nothing cached, nothing else in the step.
    Prefill { tokens: u64 },
    /// One decode step of `batch` sequences, each holding `context` tokens.
    Decode { batch: u64, context: u64 },
    /// A closed-loop run: `concurrency` clients each send their next request when the last
    /// one finished, `requests` in all, with prompt and output lengths as stated. Replayed
    /// through the engine in virtual time.
    Served {
        concurrency: u32,
        requests: u32,
        input: Lengths,
        output: Lengths,
    },
}

/// The quantity measured. Times in milliseconds, rates in tokens per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Duration of the prefill step (prefill workload).
    PrefillMs,
    /// Duration of one decode step (decode workload); TPOT at that batch.
    StepMs,
    TtftMsP50,
    TtftMsMean,
    TpotMsP50,
    TpotMsMean,
    /// Mean over requests of each request's mean gap between output tokens.
    ItlMsMean,
    /// Output tokens per second of the whole instance.
    OutputTokensPerS,
    OutputTokensPerSPerChip,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::PrefillMs,
        Metric::StepMs,
        Metric::TtftMsP50,
        Metric::TtftMsMean,
        Metric::TpotMsP50,
        Metric::TpotMsMean,
        Metric::ItlMsMean,
        Metric::OutputTokensPerS,
        Metric::OutputTokensPerSPerChip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::PrefillMs => "prefill_ms",
            Metric::StepMs => "step_ms",
            Metric::TtftMsP50 => "ttft_ms_p50",
            Metric::TtftMsMean => "ttft_ms_mean",
            Metric::TpotMsP50 => "tpot_ms_p50",
            Metric::TpotMsMean => "tpot_ms_mean",
            Metric::ItlMsMean => "itl_ms_mean",
            Metric::OutputTokensPerS => "output_tokens_per_s",
            Metric::OutputTokensPerSPerChip => "output_tokens_per_s_per_chip",
        }
    }

    fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Which workloads can produce this metric.
    fn fits(self, w: &Workload) -> bool {
        matches!(
            (self, w),
            (Metric::PrefillMs, Workload::Prefill { .. })
                | (
                    Metric::StepMs | Metric::OutputTokensPerS | Metric::OutputTokensPerSPerChip,
                    Workload::Decode { .. }
                )
                | (
                    Metric::TtftMsP50
                        | Metric::TtftMsMean
                        | Metric::TpotMsP50
                        | Metric::TpotMsMean
                        | Metric::ItlMsMean
                        | Metric::OutputTokensPerS
                        | Metric::OutputTokensPerSPerChip,
                    Workload::Served { .. }
                )
        )
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Short unique name used in reports.
    pub id: String,
    pub chip: String,
    pub engine: String,
    pub model: String,
    pub tp: u32,
    /// `bf16`, `fp8` or `int8`: the precision of weights and matmuls (FP16 runs are
    /// written `bf16`: same width, same peak on every chip here).
    pub dtype: String,
    /// Precision of the KV cache when it differs from the model's (`fp8`: TensorRT-LLM
    /// and vLLM `--kv-cache-dtype fp8` store one byte per element).
    pub kv_dtype: Option<String>,
    pub workload: Workload,
    pub metric: Metric,
    pub value: f64,
    pub source: String,
    /// Where the point was read: file and 1-based line of its first key (TOML: its
    /// `[[point]]` header).
    pub file: String,
    pub line: usize,
}

impl Point {
    /// `file:line`, for messages about this point.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// A short description of the workload for tables: `prefill 512`, `decode b4 c1024`,
    /// `served c8 n100`.
    pub fn workload_label(&self) -> String {
        match &self.workload {
            Workload::Prefill { tokens } => format!("prefill {tokens}"),
            Workload::Decode { batch, context } => format!("decode b{batch} c{context}"),
            Workload::Served {
                concurrency,
                requests,
                ..
            } => format!("served c{concurrency} n{requests}"),
        }
    }
}

/// The fields of one point as written, before checking.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    id: Option<String>,
    chip: Option<String>,
    engine: Option<String>,
    model: Option<String>,
    tp: Option<i64>,
    dtype: Option<String>,
    kv_dtype: Option<String>,
    workload: Option<String>,
    tokens: Option<i64>,
    batch: Option<i64>,
    context: Option<i64>,
    concurrency: Option<i64>,
    requests: Option<i64>,
    input: Option<LengthField>,
    output: Option<LengthField>,
    metric: Option<String>,
    value: Option<f64>,
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LengthField {
    Count(i64),
    Spec(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointsFile {
    #[serde(default)]
    point: Vec<RawPoint>,
}

/// The recognised column and key names, in the order a CSV header lists them.
pub const FIELDS: [&str; 18] = [
    "id",
    "chip",
    "engine",
    "model",
    "tp",
    "dtype",
    "kv_dtype",
    "workload",
    "tokens",
    "batch",
    "context",
    "concurrency",
    "requests",
    "input",
    "output",
    "metric",
    "value",
    "source",
];

/// Where each field of a raw point was written, to place errors.
struct Places<'a> {
    file: &'a str,
    /// Line of the point itself (TOML header or CSV row).
    line: usize,
    /// Line of a given key, when known (TOML); CSV keys are all on `line`.
    key_line: &'a dyn Fn(&str) -> Option<usize>,
}

impl Places<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let line = (self.key_line)(field).unwrap_or(self.line);
        ConfigError {
            file: self.file.to_string(),
            line: Some(line),
            column: None,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

fn required<T: Clone>(p: &Places, field: &str, v: &Option<T>) -> Result<T, ConfigError> {
    v.clone().ok_or_else(|| p.err(field, "missing"))
}

fn positive_int(p: &Places, field: &str, v: Option<i64>) -> Result<u64, ConfigError> {
    match v {
        None => Err(p.err(field, "missing")),
        Some(n) if n >= 1 => Ok(n as u64),
        Some(n) => Err(p.err(field, format!("must be at least 1, got {n}"))),
    }
}

fn not_allowed(p: &Places, field: &str, present: bool, workload: &str) -> Result<(), ConfigError> {
    if present {
        Err(p.err(field, format!("does not apply to a `{workload}` workload")))
    } else {
        Ok(())
    }
}

fn lengths(p: &Places, field: &str, v: &Option<LengthField>) -> Result<Lengths, ConfigError> {
    match v {
        None => Err(p.err(field, "missing")),
        Some(LengthField::Count(n)) if *n >= 1 && *n <= i64::from(u32::MAX) => {
            Ok(Lengths::fixed(*n as u32))
        }
        Some(LengthField::Count(n)) => Err(p.err(field, format!("must be at least 1, got {n}"))),
        Some(LengthField::Spec(s)) => Lengths::parse(s).map_err(|m| p.err(field, m)),
    }
}

fn check(raw: RawPoint, p: &Places) -> Result<Point, ConfigError> {
    let nonblank = |field: &str, v: &Option<String>| -> Result<String, ConfigError> {
        let s = required(p, field, v)?;
        if s.trim().is_empty() {
            return Err(p.err(field, "must not be empty"));
        }
        Ok(s.trim().to_string())
    };
    let id = nonblank("id", &raw.id)?;
    let chip = nonblank("chip", &raw.chip)?;
    let engine = nonblank("engine", &raw.engine)?;
    let model = nonblank("model", &raw.model)?;
    let tp = positive_int(p, "tp", raw.tp)?;
    let tp = u32::try_from(tp).map_err(|_| p.err("tp", "too large"))?;
    let dtype = nonblank("dtype", &raw.dtype)?;
    if !matches!(dtype.as_str(), "bf16" | "fp8" | "int8") {
        return Err(p.err(
            "dtype",
            format!("unknown dtype `{dtype}` (expected bf16, fp8 or int8)"),
        ));
    }
    let kv_dtype = match &raw.kv_dtype {
        None => None,
        Some(k) => match k.trim() {
            "bf16" | "fp8" | "int8" => Some(k.trim().to_string()),
            other => {
                return Err(p.err(
                    "kv_dtype",
                    format!("unknown KV-cache dtype `{other}` (expected bf16, fp8 or int8)"),
                ))
            }
        },
    };
    let kind = nonblank("workload", &raw.workload)?;
    let workload = match kind.as_str() {
        "prefill" => {
            for (f, present) in [
                ("batch", raw.batch.is_some()),
                ("context", raw.context.is_some()),
                ("concurrency", raw.concurrency.is_some()),
                ("requests", raw.requests.is_some()),
                ("input", raw.input.is_some()),
                ("output", raw.output.is_some()),
            ] {
                not_allowed(p, f, present, &kind)?;
            }
            Workload::Prefill {
                tokens: positive_int(p, "tokens", raw.tokens)?,
            }
        }
        "decode" => {
            for (f, present) in [
                ("tokens", raw.tokens.is_some()),
                ("concurrency", raw.concurrency.is_some()),
                ("requests", raw.requests.is_some()),
                ("input", raw.input.is_some()),
                ("output", raw.output.is_some()),
            ] {
                not_allowed(p, f, present, &kind)?;
            }
            Workload::Decode {
                batch: positive_int(p, "batch", raw.batch)?,
                context: positive_int(p, "context", raw.context)?,
            }
        }
        "served" => {
            for (f, present) in [
                ("tokens", raw.tokens.is_some()),
                ("batch", raw.batch.is_some()),
                ("context", raw.context.is_some()),
            ] {
                not_allowed(p, f, present, &kind)?;
            }
            let concurrency = positive_int(p, "concurrency", raw.concurrency)?;
            let requests = positive_int(p, "requests", raw.requests)?;
            if requests > 100_000 {
                return Err(p.err("requests", "at most 100000 requests per served point"));
            }
            Workload::Served {
                concurrency: u32::try_from(concurrency)
                    .map_err(|_| p.err("concurrency", "too large"))?,
                requests: requests as u32,
                input: lengths(p, "input", &raw.input)?,
                output: lengths(p, "output", &raw.output)?,
            }
        }
        other => {
            return Err(p.err(
                "workload",
                format!("unknown workload `{other}` (expected prefill, decode or served)"),
            ))
        }
    };
    let metric_name = nonblank("metric", &raw.metric)?;
    let metric = Metric::parse(&metric_name).ok_or_else(|| {
        let known: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
        p.err(
            "metric",
            format!(
                "unknown metric `{metric_name}` (expected one of {})",
                known.join(", ")
            ),
        )
    })?;
    if !metric.fits(&workload) {
        return Err(p.err(
            "metric",
            format!("`{metric}` is not measured by a `{kind}` workload"),
        ));
    }
    let value = required(p, "value", &raw.value)?;
    if !(value.is_finite() && value > 0.0) {
        return Err(p.err("value", format!("must be a positive number, got {value}")));
    }
    let source = nonblank("source", &raw.source)?;
    Ok(Point {
        id,
        chip,
        engine,
        model,
        tp,
        dtype,
        kv_dtype,
        workload,
        metric,
        value,
        source,
        file: p.file.to_string(),
        line: p.line,
    })
}

/// Parses a TOML points file: `[[point]]` tables with the keys in [`FIELDS`].
pub fn parse_toml_points(src: &str, file: &str) -> Result<Vec<Point>, ConfigError> {
    let parsed: PointsFile = parse_toml(src, file)?;
    // Header lines of the `[[point]]` tables, in order, to place each point's errors.
    let lines: Vec<&str> = src.lines().collect();
    let headers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim().starts_with("[[point]]"))
        .map(|(i, _)| i)
        .collect();
    let mut points = Vec::with_capacity(parsed.point.len());
    for (k, raw) in parsed.point.into_iter().enumerate() {
        let start = headers.get(k).copied().unwrap_or(0);
        let end = headers.get(k + 1).copied().unwrap_or(lines.len());
        let key_line = |key: &str| -> Option<usize> {
            (start..end)
                .find(|&i| {
                    lines[i]
                        .trim_start()
                        .strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
                .map(|i| i + 1)
        };
        let places = Places {
            file,
            line: start + 1,
            key_line: &key_line,
        };
        points.push(check(raw, &places)?);
    }
    unique_ids(&points)?;
    Ok(points)
}

/// Splits one CSV record: commas separate fields, double quotes enclose a field that
/// contains commas, and `""` inside quotes is a quote.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' && cur.trim().is_empty() && !was_quoted {
            cur.clear();
            quoted = true;
            was_quoted = true;
        } else if c == ',' {
            fields.push(std::mem::take(&mut cur));
            was_quoted = false;
        } else {
            cur.push(c);
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(cur);
    Ok(fields)
}

/// Parses a CSV points file. The first non-comment line names the columns (any order,
/// any subset of [`FIELDS`]); lines starting with `#` and blank lines are skipped.
pub fn parse_csv_points(src: &str, file: &str) -> Result<Vec<Point>, ConfigError> {
    let at = |line: usize, field: Option<&str>, message: String| ConfigError {
        file: file.to_string(),
        line: Some(line),
        column: None,
        field: field.map(str::to_string),
        message,
    };
    let mut header: Option<Vec<String>> = None;
    let mut points = Vec::new();
    for (i, raw_line) in src.lines().enumerate() {
        let line_no = i + 1;
        let line = raw_line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let cells = split_csv(line).map_err(|m| at(line_no, None, m))?;
        let Some(cols) = &header else {
            let cols: Vec<String> = cells.iter().map(|c| c.trim().to_string()).collect();
            for c in &cols {
                if !FIELDS.contains(&c.as_str()) {
                    return Err(at(
                        line_no,
                        Some(c),
                        format!("unknown column (expected some of {})", FIELDS.join(", ")),
                    ));
                }
            }
            header = Some(cols);
            continue;
        };
        if cells.len() != cols.len() {
            return Err(at(
                line_no,
                None,
                format!(
                    "{} fields, but the header names {}",
                    cells.len(),
                    cols.len()
                ),
            ));
        }
        let mut raw = RawPoint::default();
        for (col, cell) in cols.iter().zip(&cells) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            let int = || -> Result<i64, ConfigError> {
                cell.parse::<i64>()
                    .map_err(|_| at(line_no, Some(col), format!("`{cell}` is not an integer")))
            };
            match col.as_str() {
                "id" => raw.id = Some(cell.into()),
                "chip" => raw.chip = Some(cell.into()),
                "engine" => raw.engine = Some(cell.into()),
                "model" => raw.model = Some(cell.into()),
                "dtype" => raw.dtype = Some(cell.into()),
                "kv_dtype" => raw.kv_dtype = Some(cell.into()),
                "workload" => raw.workload = Some(cell.into()),
                "metric" => raw.metric = Some(cell.into()),
                "source" => raw.source = Some(cell.into()),
                "tp" => raw.tp = Some(int()?),
                "tokens" => raw.tokens = Some(int()?),
                "batch" => raw.batch = Some(int()?),
                "context" => raw.context = Some(int()?),
                "concurrency" => raw.concurrency = Some(int()?),
                "requests" => raw.requests = Some(int()?),
                "input" => raw.input = Some(LengthField::Spec(cell.into())),
                "output" => raw.output = Some(LengthField::Spec(cell.into())),
                "value" => {
                    raw.value =
                        Some(cell.parse::<f64>().map_err(|_| {
                            at(line_no, Some(col), format!("`{cell}` is not a number"))
                        })?)
                }
                _ => unreachable!("header checked"),
            }
        }
        let none = |_: &str| None;
        let places = Places {
            file,
            line: line_no,
            key_line: &none,
        };
        points.push(check(raw, &places)?);
    }
    if header.is_none() {
        return Err(ConfigError::new(file, "no header line"));
    }
    unique_ids(&points)?;
    Ok(points)
}

fn unique_ids(points: &[Point]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashMap::new();
    for p in points {
        if let Some(first) = seen.insert(p.id.as_str(), p.line) {
            return Err(ConfigError {
                file: p.file.clone(),
                line: Some(p.line),
                column: None,
                field: Some("id".into()),
                message: format!("`{}` already names the point at line {first}", p.id),
            });
        }
    }
    Ok(())
}

/// Parses a points file, TOML or CSV by extension (`.csv` is CSV, anything else TOML).
pub fn parse_points(src: &str, file: &str) -> Result<Vec<Point>, ConfigError> {
    if file.to_ascii_lowercase().ends_with(".csv") {
        parse_csv_points(src, file)
    } else {
        parse_toml_points(src, file)
    }
}

/// Reads points from files; ids must be unique across all of them.
pub fn load_points(paths: &[&Path]) -> Result<Vec<Point>, ConfigError> {
    let mut all: Vec<Point> = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let src = crate::config::read_text(path, &name)?;
        let points = parse_points(&src, &name)?;
        for p in points {
            if let Some(q) = all.iter().find(|q| q.id == p.id) {
                return Err(ConfigError {
                    file: p.file.clone(),
                    line: Some(p.line),
                    column: None,
                    field: Some("id".into()),
                    message: format!("`{}` already names the point at {}", p.id, q.place()),
                });
            }
            // The same measurement under another id (a copied table) would weigh twice in
            // the fit; two sources, or two values, are two measurements.
            let same = |q: &Point| {
                *q == Point {
                    id: q.id.clone(),
                    file: q.file.clone(),
                    line: q.line,
                    ..p.clone()
                }
            };
            if let Some(q) = all.iter().find(|q| same(q)) {
                return Err(ConfigError {
                    file: p.file.clone(),
                    line: Some(p.line),
                    column: None,
                    field: None,
                    message: format!(
                        "point `{}` repeats point `{}` at {}: the same conditions, value and source would count twice in the fit",
                        p.id,
                        q.id,
                        q.place()
                    ),
                });
            }
            all.push(p);
        }
    }
    if all.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ConfigError::new(&names.join(", "), "no points"));
    }
    Ok(all)
}

#[cfg(test)]
mod tests;
