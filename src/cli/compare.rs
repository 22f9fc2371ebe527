//! `dujiang compare A.json B.json`: two reports (replay or load) side by side with the
//! relative difference of every percentile, SLO attainment and goodput. With
//! `--max-diff PCT` it is also a check: it exits non-zero, naming each figure, when a
//! policy-level figure (or one of those chosen with `--metric`) differs by more.

use crate::loadgen::{compare, LoadSummary};
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

/// A report, and the load test's own figures when it is a `dujiang load` report.
fn read(path: &Path) -> Result<(Report, Option<LoadSummary>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let not_a_report = || {
        format!(
            "{} is not a dujiang report (JSON from `dujiang replay --json` or `dujiang load --json`)",
            path.display()
        )
    };
    let mut value: serde_json::Value = serde_json::from_str(&text).with_context(not_a_report)?;
    let load = match value.as_object_mut().and_then(|o| o.remove("load")) {
        Some(l) => Some(serde_json::from_value(l).with_context(not_a_report)?),
        None => None,
    };
    Ok((
        serde_json::from_value(value).with_context(not_a_report)?,
        load,
    ))
}

/// Share of a load test's scheduled requests that went out late or not at all, past
/// which its latencies are said to include the client's own delay.
const LATE_SHARE: f64 = 0.01;

/// Says so when a load test's client fell behind its schedule: its arrivals were then
/// bunched and its tails measure the load generator as much as the server, so a
/// difference from a replay may not be the server's.
fn client_note(side: &str, path: &Path, load: &LoadSummary) -> Option<String> {
    let late = load.late_sent + load.late_not_sent;
    let share = late as f64 / load.scheduled.max(1) as f64;
    (share > LATE_SHARE).then(|| {
        format!(
            "{side} ({}): the load client fell behind: {late} of {} requests were sent more than {} ms late or not at all ({:.1}%); its latencies include the client's delay (a busy machine, or a time scale too high for it)",
            path.display(),
            load.scheduled,
            load.late_after_ms,
            share * 100.0
        )
    })
}

pub fn run(args: Args) -> Result<()> {
    let ((a, load_a), (b, load_b)) = (read(&args.a)?, read(&args.b)?);
    let notes: Vec<String> = [("A", &args.a, &load_a), ("B", &args.b, &load_b)]
        .into_iter()
        .filter_map(|(side, path, load)| client_note(side, path, load.as_ref()?))
        .collect();
    // Checked before printing, so a mistyped metric does not look like a passed check.
    let over = match args.max_diff {
        Some(pct) => {
            Some(compare::excesses(&a, &b, pct, &args.metric).context("--max-diff cannot check")?)
        }
        None => None,
    };
    out!("{}", compare::render(&a, &b))?;
    for n in &notes {
        outln!("note: {n}")?;
    }
    let Some(over) = over else {
        return Ok(());
    };
    let pct = args.max_diff.unwrap_or_default();
    if !over.is_empty() {
        let lines: Vec<String> = over.iter().map(|e| format!("  {e}")).collect();
        let blame = if notes.is_empty() {
            String::new()
        } else {
            format!(
                "\nThe difference may be the load client's, not the server's:\n  {}",
                notes.join("\n  ")
            )
        };
        bail!(
            "{} figure(s) differ by more than --max-diff {pct}%:\n{}{blame}",
            over.len(),
            lines.join("\n")
        );
    }
    outln!("every checked figure is within {pct}%")?;
    Ok(())
}
