//! `dujiang compare A.json B.json`: two reports (replay or load) side by side with the
//! relative difference of every percentile, SLO attainment and goodput. With
//! `--max-diff PCT` it is also a check: it exits non-zero, naming each figure, when a
//! policy-level figure (or one of those chosen with `--metric`) differs by more.

use crate::loadgen::compare;
use crate::sim::Report;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The baseline report (JSON from `dujiang replay` or `dujiang load`).
    pub a: PathBuf,
    /// The report compared with it.
    pub b: PathBuf,
    /// Exit non-zero if a policy-level figure of B differs from A's by more than PCT
    /// percent of A's (a figure that is 0 in A allows no difference).
    #[arg(long, value_name = "PCT", allow_negative_numbers = true)]
    pub max_diff: Option<f64>,
    /// Check only this figure (repeatable): ttft-p99, e2e-p50, tpot-p90, queue-p999,
    /// requests, completed, slo-attainment, goodput, ... Default: every figure.
    #[arg(long, value_name = "KEY", requires = "max_diff")]
    pub metric: Vec<String>,
}

fn read(path: &Path) -> Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a dujiang report (JSON from `dujiang replay --json` or `dujiang load --json`)",
            path.display()
        )
    })
}

pub fn run(args: Args) -> Result<()> {
    let (a, b) = (read(&args.a)?, read(&args.b)?);
    // Checked before printing, so a mistyped metric does not look like a passed check.
    let over = match args.max_diff {
        Some(pct) => {
            Some(compare::excesses(&a, &b, pct, &args.metric).context("--max-diff cannot check")?)
        }
        None => None,
    };
    print!("{}", compare::render(&a, &b));
    let Some(over) = over else {
        return Ok(());
    };
    let pct = args.max_diff.unwrap_or_default();
    if !over.is_empty() {
        let lines: Vec<String> = over.iter().map(|e| format!("  {e}")).collect();
        bail!(
            "{} figure(s) differ by more than --max-diff {pct}%:\n{}",
            over.len(),
            lines.join("\n")
        );
    }
    println!("every checked figure is within {pct}%");
    Ok(())
}
