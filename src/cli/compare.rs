//! `dujiang compare A.json B.json`: two reports (replay or load) side by side with the
//! relative difference of every percentile, SLO attainment and goodput.

use crate::loadgen::compare;
use crate::sim::Report;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The baseline report (JSON from `dujiang replay` or `dujiang load`).
    pub a: PathBuf,
    /// The report compared with it.
    pub b: PathBuf,
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
    print!("{}", compare::render(&a, &b));
    Ok(())
}
