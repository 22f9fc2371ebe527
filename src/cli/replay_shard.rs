//! Sharded replay: `dujiang replay --shard I/N --partial-out FILE` writes the raw sums of
//! the cells it replayed ([`Partial`]), and `dujiang replay merge FILES…` adds them up and
//! renders the report. Shards split by cell, never by time: cells share no state (routing
//! never crosses them), and the sums are integers and histogram counts, so the merged
//! report is the one a single process replaying every cell writes, byte for byte. A time
//! split would start each window with empty queues, which the whole run never has.

use crate::sim::{merge_runs, CellsReport, Report, RunTotals};
use crate::trace::Shard;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Marks a file as a replay partial, and its layout's version.
pub const PARTIAL_KIND: &str = "dujiang-replay-partial/1";

/// What every shard of one sharded replay must agree on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInputs {
    /// The traffic, as the report names it.
    pub trace: String,
    pub fleet: String,
    pub seed: u64,
    pub cell_count: u32,
    pub cells: Option<CellsReport>,
    /// A generated day's window start, in hours of the day.
    pub day_start_hour: Option<f64>,
}

/// One shard's share of a replay: every policy's raw sums over the shard's cells.
#[derive(Debug, Serialize, Deserialize)]
pub struct Partial {
    pub kind: String,
    pub shard: Shard,
    pub inputs: RunInputs,
    /// The cells replayed here (`c mod N = I`).
    pub cells: Vec<u32>,
    pub wall_seconds: f64,
    /// Per policy, in the order given.
    pub runs: Vec<RunTotals>,
}

impl Partial {
    pub fn new(
        shard: Shard,
        inputs: RunInputs,
        cells: Vec<u32>,
        wall_seconds: f64,
        runs: Vec<RunTotals>,
    ) -> Partial {
        Partial {
            kind: PARTIAL_KIND.into(),
            shard,
            inputs,
            cells,
            wall_seconds,
            runs,
        }
    }

    /// Writes to a temporary name first, so a merge never reads half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("partial-tmp");
        let text = serde_json::to_string(self).context("serialising the partial report")?;
        std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<Partial> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let part: Partial = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a `dujiang replay --shard` partial report",
                path.display()
            )
        })?;
        if part.kind != PARTIAL_KIND {
            bail!(
                "{}: kind is `{}`, expected `{PARTIAL_KIND}`",
                path.display(),
                part.kind
            );
        }
        Ok(part)
    }

    /// The requests replayed here (arrivals, of the first policy).
    pub fn requests(&self) -> u64 {
        self.runs.first().map_or(0, |r| r.requests)
    }

    pub fn summary_line(&self, path: &Path) -> String {
        let requests = self.requests().saturating_mul(self.runs.len() as u64);
        format!(
            "shard {}/{}: {} of {} cells, {} requests x {} policies in {:.2} s wall ({:.0} simulated requests/s) -> {}",
            self.shard.index,
            self.shard.count,
            self.cells.len(),
            self.inputs.cell_count,
            self.requests(),
            self.runs.len(),
            self.wall_seconds,
            if self.wall_seconds > 0.0 {
                requests as f64 / self.wall_seconds
            } else {
                0.0
            },
            path.display()
        )
    }
}

/// The report of `runs` (per policy, over all cells), as `dujiang replay` prints it.
pub fn report(inputs: &RunInputs, runs: &[RunTotals], wall_seconds: f64) -> Report {
    let policies: Vec<_> = runs.iter().map(RunTotals::report).collect();
    Report {
        source: "replay".into(),
        trace: inputs.trace.clone(),
        fleet: inputs.fleet.clone(),
        seed: inputs.seed,
        simulated_seconds: policies
            .iter()
            .map(|p| p.simulated_seconds)
            .fold(0.0, f64::max),
        wall_seconds,
        policies,
        cells: inputs.cells.clone(),
        day_start_hour: inputs.day_start_hour,
    }
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The partial reports, one per shard (any order).
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    #[command(flatten)]
    pub out: super::replay::ReportOut,
}

/// `dujiang replay merge`: checks that the parts are the shards of one replay, each there
/// once, adds them up and writes the report.
pub fn merge(m: MergeArgs) -> Result<()> {
    let mut parts: Vec<Partial> = Vec::new();
    for path in &m.parts {
        let part = Partial::read(path)?;
        parts.push(part);
    }
    let shards: Vec<_> = parts.iter().map(|p| (p.shard, &p.inputs)).collect();
    let count = super::shards::check_whole(&shards, &m.parts, "a replay of other inputs than")?;
    let pieces: Vec<(std::path::Display, Vec<RunTotals>)> = parts
        .iter()
        .zip(&m.parts)
        .map(|(p, path)| (path.display(), p.runs.clone()))
        .collect();
    let runs = merge_runs(&pieces).map_err(|e| anyhow::anyhow!("merging the shards: {e}"))?;
    let inputs = &parts[0].inputs;
    for r in &runs {
        if r.cells != inputs.cell_count {
            bail!(
                "the shards replayed {} cells of {} (policy `{}`)",
                r.cells,
                inputs.cell_count,
                r.policy
            );
        }
    }
    // The shards ran side by side: the slowest is the merged run's wall time.
    let slowest = parts.iter().map(|p| p.wall_seconds).fold(0.0, f64::max);
    let total: f64 = parts.iter().map(|p| p.wall_seconds).sum();
    let report = report(inputs, &runs, m.out.wall_seconds(slowest));
    out!("{}", report.to_table())?;
    // Saturating: a figure for the eye only, of counts the merge has checked.
    let requests: u64 = parts.iter().fold(0, |sum, p| {
        sum.saturating_add(p.requests().saturating_mul(p.runs.len() as u64))
    });
    outln!(
        "merged {count} shard(s): {requests} simulated requests; shard wall time max {slowest:.2} s, sum {total:.2} s ({:.0} simulated requests per shard-second)",
        if total > 0.0 { requests as f64 / total } else { 0.0 }
    )?;
    m.out.write(&report)
}
