//! Measured step-time tables: what a real deployment timed for one chip × model × tp, used
//! in place of the roofline for that pair (see `docs/calibration.md`, "Measured tables").
//!
//! A table file holds any number of named tables:
//!
//! ```toml
//! [qwen3-8b-on-910b]
//! chip = "ascend-910b"
//! model = "qwen3-8b"
//! tp = 1
//! source = "our lab, vLLM-Ascend 0.9, 2025-06"
//! prefill_tokens = [128, 1024, 8192]         # prompt tokens in one step, no cache
//! prefill_ms = [60.0, 140.0, 900.0]
//! decode_batches = [1, 8, 64]                # sequences in the step
//! decode_contexts = [512, 4096]              # context per sequence
//! decode_step_ms = [[45.0, 46.0], [47.0, 52.0], [60.0, 95.0]]   # one row per batch
//! ```
//!
//! Between points the time is piecewise linear (bilinear for decode). Below the first
//! point the first value holds: a step never gets cheaper than its fixed overhead. Beyond
//! the last point the last segment's slope continues, so a table measured up to batch 64
//! still charges batch 128 more.

use super::spec::SpecViolation;
use crate::config::{parse_toml, ConfigError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Measured step times for one chip × model × tp. Either half may be empty, in which case
/// the roofline serves that kind of step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredTable {
    /// The table's name in its file. Filled from the table key when loading.
    #[serde(default)]
    pub name: String,
    pub chip: String,
    pub model: String,
    pub tp: u32,
    /// Where the numbers come from (lab, engine version, date).
    pub source: String,
    /// Prompt lengths of single-step prefills with nothing cached, strictly increasing.
    #[serde(default)]
    pub prefill_tokens: Vec<u64>,
    #[serde(default)]
    pub prefill_ms: Vec<f64>,
    /// Decode batch sizes, strictly increasing.
    #[serde(default)]
    pub decode_batches: Vec<u64>,
    /// Context per sequence, strictly increasing.
    #[serde(default)]
    pub decode_contexts: Vec<u64>,
    /// `decode_step_ms[i][j]`: one decode step of `decode_batches[i]` sequences with
    /// `decode_contexts[j]` tokens of context each.
    #[serde(default)]
    pub decode_step_ms: Vec<Vec<f64>>,
}

/// Piecewise-linear interpolation through `(xs, ys)`: the first value holds below `xs[0]`,
/// the last segment extends beyond the end (never sloping down).
pub fn interpolate(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    debug_assert_eq!(xs.len(), ys.len());
    match xs.len() {
        0 => return 0.0,
        1 => return ys[0],
        _ => {}
    }
    if x <= xs[0] {
        return ys[0];
    }
    let last = xs.len() - 1;
    // Index of the segment [i, i+1] holding x, or the last one when x is beyond the end.
    let i = xs.partition_point(|&v| v <= x).clamp(1, last) - 1;
    let slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]);
    if x > xs[last] {
        return ys[last] + slope.max(0.0) * (x - xs[last]);
    }
    ys[i] + slope * (x - xs[i])
}

fn increasing(field: &'static str, xs: &[u64]) -> Result<(), SpecViolation> {
    if xs.first() == Some(&0) {
        return Err((field, "points must be positive".into()));
    }
    if xs.windows(2).any(|w| w[0] >= w[1]) {
        return Err((field, "points must be strictly increasing".into()));
    }
    Ok(())
}

fn times(field: &'static str, ms: &[f64]) -> Result<(), SpecViolation> {
    match ms.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        Some(v) => Err((
            field,
            format!("times must be positive milliseconds, got {v}"),
        )),
        None => Ok(()),
    }
}

impl MeasuredTable {
    /// Rejects tables that cannot be interpolated: the first problem found, by field.
    pub fn validate(&self) -> Result<(), SpecViolation> {
        if self.tp == 0 {
            return Err(("tp", "must be at least 1".into()));
        }
        increasing("prefill_tokens", &self.prefill_tokens)?;
        if self.prefill_ms.len() != self.prefill_tokens.len() {
            return Err((
                "prefill_ms",
                format!(
                    "{} times for {} prefill_tokens points",
                    self.prefill_ms.len(),
                    self.prefill_tokens.len()
                ),
            ));
        }
        times("prefill_ms", &self.prefill_ms)?;
        increasing("decode_batches", &self.decode_batches)?;
        increasing("decode_contexts", &self.decode_contexts)?;
        if self.decode_step_ms.len() != self.decode_batches.len()
            || self
                .decode_step_ms
                .iter()
                .any(|row| row.len() != self.decode_contexts.len())
        {
            return Err((
                "decode_step_ms",
                format!(
                    "must have one row per decode_batches point ({}) with one time per decode_contexts point ({})",
                    self.decode_batches.len(),
                    self.decode_contexts.len()
                ),
            ));
        }
        if self.decode_contexts.is_empty() != self.decode_batches.is_empty() {
            return Err((
                "decode_contexts",
                "decode_batches and decode_contexts must both be given, or neither".into(),
            ));
        }
        for row in &self.decode_step_ms {
            times("decode_step_ms", row)?;
        }
        if !self.has_prefill() && !self.has_decode() {
            return Err((
                "prefill_tokens",
                "the table has no prefill and no decode points".into(),
            ));
        }
        Ok(())
    }

    pub fn has_prefill(&self) -> bool {
        !self.prefill_tokens.is_empty()
    }

    pub fn has_decode(&self) -> bool {
        !self.decode_batches.is_empty()
    }

    /// Interpolated prefill time of `tokens` prompt tokens, in nanoseconds.
    pub fn prefill_ns(&self, tokens: f64) -> f64 {
        let xs: Vec<f64> = self.prefill_tokens.iter().map(|&t| t as f64).collect();
        interpolate(&xs, &self.prefill_ms, tokens) * 1e6
    }

    /// Interpolated decode step time of `batch` sequences with `context` tokens each, in
    /// nanoseconds: linear along context within each measured batch row, then along batch.
    pub fn decode_step_ns(&self, batch: f64, context: f64) -> f64 {
        let ctx: Vec<f64> = self.decode_contexts.iter().map(|&c| c as f64).collect();
        let rows: Vec<f64> = self
            .decode_step_ms
            .iter()
            .map(|row| interpolate(&ctx, row, context))
            .collect();
        let batches: Vec<f64> = self.decode_batches.iter().map(|&b| b as f64).collect();
        interpolate(&batches, &rows, batch) * 1e6
    }
}

/// Every table of one measured-table file, keyed by table name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeasuredTables {
    pub tables: BTreeMap<String, MeasuredTable>,
}

impl MeasuredTables {
    /// Parses a table file; `file` names it in errors.
    pub fn parse(src: &str, file: &str) -> Result<MeasuredTables, ConfigError> {
        let mut tables: BTreeMap<String, MeasuredTable> = parse_toml(src, file)?;
        let mut seen: BTreeMap<(String, String, u32), String> = BTreeMap::new();
        for (name, table) in &mut tables {
            table.name = name.clone();
            table.validate().map_err(|(field, message)| {
                ConfigError::at_field(file, src, &format!("{name}.{field}"), message)
            })?;
            let key = (table.chip.clone(), table.model.clone(), table.tp);
            if let Some(other) = seen.insert(key, name.clone()) {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    &format!("{name}.chip"),
                    format!("table `{other}` already covers this chip, model and tp"),
                ));
            }
        }
        Ok(MeasuredTables { tables })
    }

    pub fn load(path: &Path) -> Result<MeasuredTables, ConfigError> {
        let name = path.display().to_string();
        let src = crate::config::read_text(path, &name)?;
        MeasuredTables::parse(&src, &name)
    }

    /// The table for exactly this chip, model and tp, if any.
    pub fn find(&self, chip: &str, model: &str, tp: u32) -> Option<&MeasuredTable> {
        self.tables
            .values()
            .find(|t| t.chip == chip && t.model == model && t.tp == tp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
[small]
chip = "h20"
model = "llama-3-8b"
tp = 1
source = "unit test"
prefill_tokens = [100, 1000]
prefill_ms = [10.0, 40.0]
decode_batches = [1, 10]
decode_contexts = [100, 1100]
decode_step_ms = [[5.0, 6.0], [8.0, 13.0]]
"#;

    fn table() -> MeasuredTable {
        MeasuredTables::parse(SRC, "t.toml").unwrap().tables["small"].clone()
    }

    #[test]
    fn one_dimensional_interpolation_is_piecewise_linear() {
        let xs = [1.0, 3.0, 7.0];
        let ys = [2.0, 6.0, 8.0];
        assert_eq!(interpolate(&xs, &ys, 1.0), 2.0);
        assert_eq!(interpolate(&xs, &ys, 2.0), 4.0);
        assert_eq!(interpolate(&xs, &ys, 3.0), 6.0);
        assert_eq!(interpolate(&xs, &ys, 5.0), 7.0);
        assert_eq!(interpolate(&xs, &ys, 7.0), 8.0);
        // Below: the first value holds. Beyond: the last slope (0.5) continues.
        assert_eq!(interpolate(&xs, &ys, 0.0), 2.0);
        assert_eq!(interpolate(&xs, &ys, 11.0), 10.0);
        // A falling last segment does not extrapolate downwards.
        assert_eq!(interpolate(&[1.0, 2.0], &[5.0, 4.0], 10.0), 4.0);
        assert_eq!(interpolate(&[4.0], &[9.0], 100.0), 9.0);
    }

    #[test]
    fn prefill_hits_points_and_interpolates_between() {
        let t = table();
        assert_eq!(t.prefill_ns(100.0), 10e6);
        assert_eq!(t.prefill_ns(1000.0), 40e6);
        assert!((t.prefill_ns(550.0) - 25e6).abs() < 1e-3);
        assert_eq!(t.prefill_ns(10.0), 10e6);
        assert!((t.prefill_ns(1900.0) - 70e6).abs() < 1e-3);
    }

    #[test]
    fn decode_is_bilinear_on_the_grid() {
        let t = table();
        assert_eq!(t.decode_step_ns(1.0, 100.0), 5e6);
        assert_eq!(t.decode_step_ns(10.0, 1100.0), 13e6);
        // Middle of the cell: mean of the four corners.
        let mid = t.decode_step_ns(5.5, 600.0);
        assert!((mid - 8e6).abs() < 1e-3, "{mid}");
        // Edge midpoints.
        assert!((t.decode_step_ns(1.0, 600.0) - 5.5e6).abs() < 1e-3);
        assert!((t.decode_step_ns(5.5, 100.0) - 6.5e6).abs() < 1e-3);
        // Beyond the batch axis the last slope continues: at 1100 context,
        // (13 − 6) / 9 ms per sequence.
        let b19 = t.decode_step_ns(19.0, 1100.0);
        assert!((b19 - 20e6).abs() < 1e-3, "{b19}");
    }

    #[test]
    fn bad_tables_name_the_field_and_line() {
        let cases = [
            (
                "prefill_ms = [10.0, 40.0]",
                "prefill_ms = [10.0]",
                "small.prefill_ms",
                8,
            ),
            (
                "prefill_tokens = [100, 1000]",
                "prefill_tokens = [1000, 100]",
                "small.prefill_tokens",
                7,
            ),
            (
                "decode_step_ms = [[5.0, 6.0], [8.0, 13.0]]",
                "decode_step_ms = [[5.0, 6.0], [8.0]]",
                "small.decode_step_ms",
                11,
            ),
            (
                "decode_step_ms = [[5.0, 6.0], [8.0, 13.0]]",
                "decode_step_ms = [[5.0, -6.0], [8.0, 13.0]]",
                "small.decode_step_ms",
                11,
            ),
            ("tp = 1", "tp = 0", "small.tp", 5),
        ];
        for (from, to, field, line) in cases {
            let src = SRC.replace(from, to);
            let err = MeasuredTables::parse(&src, "t.toml").unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert_eq!(err.line, Some(line), "{err}");
            assert!(err.to_string().starts_with("t.toml:"), "{err}");
        }
        let twice = format!("{SRC}\n{}", SRC.replace("[small]", "[again]"));
        let err = MeasuredTables::parse(&twice, "t.toml").unwrap_err();
        assert!(err.to_string().contains("already covers"), "{err}");
    }

    #[test]
    fn find_matches_chip_model_and_tp() {
        let tables = MeasuredTables::parse(SRC, "t.toml").unwrap();
        assert!(tables.find("h20", "llama-3-8b", 1).is_some());
        assert!(tables.find("h20", "llama-3-8b", 2).is_none());
        assert!(tables.find("h100", "llama-3-8b", 1).is_none());
    }
}
