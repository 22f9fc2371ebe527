//! `dujiang replay`: streams a trace (or a generated provider-scale day) through the
//! scheduler and engines in virtual time, once per `--policy`, and prints (or writes) the
//! comparison. Admission is the daemon's: its default limits, or those of the daemon config
//! file given with `--config`. A fleet of `cells` identical cells replays cell by cell, each
//! on its own slice of the traffic; `--shard I/N --partial-out FILE` replays only the cells
//! `c ≡ I (mod N)` and writes their raw sums, which `dujiang replay merge` adds up into the
//! report one process would have written (see `replay_shard`).

use super::replay_shard::{self, Partial, RunInputs};
use super::replay_source::{DayArgs, Source};
use crate::fleet::{FleetSpec, PolicySpec, PoolConfig};
use crate::request::{Slo, NANOS_PER_MS};
use crate::serve::ServeConfig;
use crate::sim::totals::cells_section;
use crate::sim::{html, FaultPlan, FaultSummary, Replay, ReplayConfig, Report, RunTotals};
use crate::trace::{self, Format, ReadOptions, Shard};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<ReplayCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ReplayCommand {
    /// Add up the partial reports of `dujiang replay --shard I/N --partial-out FILE` into
    /// the report one process would have written.
    Merge(replay_shard::MergeArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Trace file (Azure CSV, BurstGPT CSV, Mooncake JSONL or dujiang JSONL).
    #[arg(long, required_unless_present = "day")]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub day: DayArgs,
    /// Trace format: auto, azure, burstgpt, mooncake, jsonl.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// The daemon's config file (`dujiang serve --config`): its `[admission]` limits,
    /// `reliability.migration_retries`, and its fleet and policy where the flags below do
    /// not name them, so the replay admits and sheds as that daemon does. Default: the
    /// daemon's default configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fleet file (default: the config's, else the embedded demo fleet the daemon uses).
    /// With `cells = N` in it, each of N cells replays on its share of the traffic.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// Routing policy; repeat to compare several on the same trace (default: the config's,
    /// else the fleet's).
    #[arg(long = "policy")]
    pub policies: Vec<String>,
    /// Seed for every random choice (policies that sample).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Multiply the trace's request rate (2 = twice as many requests per second).
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// SLO on time to first token, ms (requests without their own SLO; default: the
    /// daemon's).
    #[arg(long, default_value_t = Slo::default().ttft_ns as f64 / NANOS_PER_MS as f64)]
    pub slo_ttft_ms: f64,
    /// SLO on mean time per output token, ms (default: the daemon's).
    #[arg(long, default_value_t = Slo::default().tpot_ns as f64 / NANOS_PER_MS as f64)]
    pub slo_tpot_ms: f64,
    /// Fault plan (TOML): fail, recover or slow down backends or pools at given simulated
    /// times, e.g. to see what a chip failure at peak does to p99 TTFT.
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Times a request may be moved off a failed backend before it counts as failed
    /// (default: the config's `reliability.migration_retries`).
    #[arg(long)]
    pub migration_retries: Option<u32>,
    /// Skip broken trace lines (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Replay only the cells `c` with `c mod N = I` of the fleet's cells (N <= cells) and
    /// write their partial report to --partial-out, for `dujiang replay merge`.
    #[arg(long, requires = "partial_out")]
    pub shard: Option<Shard>,
    /// Where --shard writes its partial report (raw counters and histograms, JSON).
    #[arg(long, requires = "shard")]
    pub partial_out: Option<PathBuf>,
    /// Replays run at once, each one cell under one policy (default: one per --policy).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub out: ReportOut,
    #[command(flatten)]
    pub catalogue: super::CatalogueArgs,
}

/// The fleet and its pools, from a file or the embedded demo.
pub fn load_fleet(
    path: Option<&Path>,
    catalogue: &super::CatalogueArgs,
) -> Result<(FleetSpec, Vec<PoolConfig>)> {
    let catalogue = catalogue.load()?;
    let spec = match path {
        Some(p) => FleetSpec::load(p)?,
        None => FleetSpec::embedded_demo(),
    };
    let pools = spec.resolve(&catalogue)?;
    Ok((spec, pools))
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(ReplayCommand::Merge(m)) => replay_shard::merge(m),
        None => replay(args.run),
    }
}

/// A replay run to its raw sums, before anything is printed: what `replay` prints and
/// `plan --day` verifies a fleet with.
pub(super) struct Ran {
    pub inputs: RunInputs,
    /// The cells replayed here (all of them without --shard).
    pub owned: Vec<u32>,
    /// Per policy, in the order given, summed over `owned`.
    pub runs: Vec<RunTotals>,
    /// Per policy: the first cell's fault summary (a fault plan goes with one cell only).
    pub summaries: Vec<FaultSummary>,
    pub faults: bool,
    /// Wall time of the replays, seconds.
    pub wall: f64,
}

fn replay(args: RunArgs) -> Result<()> {
    for (flag, path) in [
        ("--json", &args.out.json),
        ("--html", &args.out.html),
        ("--partial-out", &args.partial_out),
    ] {
        super::check_output(flag, path.as_deref())?;
    }
    let ran = run_cells(&args)?;
    let wall_seconds = args.out.wall_seconds((ran.wall * 1000.0).round() / 1000.0);
    if let (Some(path), Some(shard)) = (&args.partial_out, args.shard) {
        let part = Partial::new(shard, ran.inputs, ran.owned, wall_seconds, ran.runs);
        part.write(path)?;
        outln!("{}", part.summary_line(path))?;
        return Ok(());
    }
    let report = replay_shard::report(&ran.inputs, &ran.runs, wall_seconds);
    out!("{}", report.to_table())?;
    if ran.faults {
        for (p, s) in report.policies.iter().zip(&ran.summaries) {
            outln!(
                "faults [{}]: {} applied; {} requests re-routed, {} migrated mid-stream, {} lost; {} stragglers ejected, {} re-admitted",
                p.policy, s.faults, s.rerouted, s.migrated, s.failed, s.ejected, s.readmitted
            )?;
        }
    }
    args.out.write(&report)
}

/// Replays the cells `args` names (all, or those of its --shard) under every policy, on
/// `--threads` threads, each (policy, cell) pair a job of its own; the cells' sums are
/// added up as they finish, which is exact in any order (see `sim::totals`).
pub(super) fn run_cells(args: &RunArgs) -> Result<Ran> {
    if !(args.rate_scale.is_finite() && args.rate_scale > 0.0) {
        bail!(
            "--rate-scale must be a positive number, got {}",
            args.rate_scale
        );
    }
    for (name, v) in [
        ("--slo-ttft-ms", args.slo_ttft_ms),
        ("--slo-tpot-ms", args.slo_tpot_ms),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number of milliseconds, got {v}");
        }
    }
    let serve = match &args.config {
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::default(),
    };
    if let (Some(path), None) = (&args.config, &args.fleet) {
        if !serve.fleet.as_os_str().is_empty() {
            super::check_config_path(path, "fleet", &serve.fleet)?;
        }
    }
    let fleet = args
        .fleet
        .clone()
        .or_else(|| (!serve.fleet.as_os_str().is_empty()).then(|| serve.fleet.clone()));
    let (spec, pools) = load_fleet(fleet.as_deref(), &args.catalogue)?;
    let cells = spec.cells.count;
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    if shard.count > cells {
        bail!(
            "--shard {}/{}: the fleet has {cells} cell(s), and a shard replays whole cells (N <= cells)",
            shard.index,
            shard.count
        );
    }
    let names = if args.policies.is_empty() && !serve.policy.is_empty() {
        vec![serve.policy.clone()]
    } else {
        args.policies.clone()
    };
    let policies: Vec<PolicySpec> = if names.is_empty() {
        vec![spec.policy.clone()]
    } else {
        names
            .iter()
            .map(|name| PolicySpec {
                name: name.clone(),
                // The fleet file's parameters apply when it names the same policy.
                params: if *name == spec.policy.name {
                    spec.policy.params.clone()
                } else {
                    toml::Table::new()
                },
            })
            .collect()
    };
    // Build every policy up front so a typo fails before any replay starts. The fleet
    // file's own policy is blamed on its `[policy]` lines, a named one on the flag.
    for p in &policies {
        if p.name == spec.policy.name {
            crate::policy::from_fleet(&spec, args.seed)?;
        } else {
            crate::policy::build(&p.name, &p.params, args.seed).map_err(|e| {
                if args.policies.is_empty() {
                    anyhow!("{e}")
                } else {
                    anyhow!("--policy: {e}")
                }
            })?;
        }
    }
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => policies.len(),
    };
    let faults = args.faults.as_deref().map(FaultPlan::load).transpose()?;
    if let Some(plan) = &faults {
        if cells > 1 || args.shard.is_some() {
            bail!("--faults replays one fleet: a fault plan names backends of one cell, so it does not go with `cells` > 1 or --shard");
        }
        // Check the plan's targets before any replay starts.
        let policy = crate::policy::build(&policies[0].name, &policies[0].params, args.seed)?;
        Replay::new(pools.clone(), policy, ReplayConfig::default())
            .and_then(|r| r.with_faults(plan))
            .map_err(|e| anyhow!("{}: {e}", args.faults.as_ref().expect("set").display()))?;
    }
    let cfg = ReplayConfig {
        admission: serve.admission,
        migration_retries: args
            .migration_retries
            .unwrap_or(serve.reliability.migration_retries),
        model: Some(spec.model.clone()),
        links: Some(spec.link_table(&pools)?),
        slo: Slo {
            ttft_ns: (args.slo_ttft_ms * NANOS_PER_MS as f64) as u64,
            tpot_ns: (args.slo_tpot_ms * NANOS_PER_MS as f64) as u64,
        },
        ..ReplayConfig::default()
    };
    let source = match (Source::day(&args.day, cells)?, &args.trace) {
        (Some(day), _) => day,
        (None, Some(path)) => Source::file(
            path.clone(),
            args.format,
            ReadOptions {
                on_error: if args.skip_bad_lines {
                    trace::OnError::Skip
                } else {
                    trace::OnError::Fail
                },
                ..ReadOptions::default()
            },
        ),
        (None, None) => bail!("--trace FILE or --day doubao is required"),
    };
    // Check the trace opens and its format is known before fanning out.
    source.check()?;
    let owned: Vec<u32> = (0..cells).filter(|&c| shard.owns(c as usize)).collect();

    // One cell under one policy. Each holds only its own requests in flight, so memory
    // grows with the threads, not with the cells.
    let one = |p: &PolicySpec, cell: u32| -> Result<(RunTotals, FaultSummary)> {
        let policy = crate::policy::build(&p.name, &p.params, args.seed)?;
        let mut replay =
            Replay::new(pools.clone(), policy, cfg.clone()).map_err(anyhow::Error::msg)?;
        if let Some(plan) = &faults {
            replay = replay.with_faults(plan).map_err(anyhow::Error::msg)?;
        }
        let records = source.cell(cell, cells, args.rate_scale)?;
        replay
            .run_totals(records)
            .with_context(|| format!("replaying {}", source.describe()))
    };
    let jobs: Vec<(usize, u32)> = (0..policies.len())
        .flat_map(|p| owned.iter().map(move |&c| (p, c)))
        .collect();
    type Acc = Vec<Option<(RunTotals, FaultSummary)>>;
    let add = |mut acc: Acc, (p, got): (usize, (RunTotals, FaultSummary))| -> Result<Acc> {
        match &mut acc[p] {
            slot @ None => *slot = Some(got),
            Some((a, _)) => a.merge(&got.0).map_err(anyhow::Error::msg)?,
        }
        Ok(acc)
    };
    let started = Instant::now();
    let fold = || -> Result<Acc> {
        jobs.par_iter()
            .map(|&(p, cell)| {
                // A replay that panics fails the run with a message, not a crash.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&policies[p], cell)))
                    .unwrap_or_else(|_| Err(anyhow!("a replay thread panicked")))
                    .map(|got| (p, got))
            })
            .try_fold(|| vec![None; policies.len()], |acc, got| add(acc, got?))
            .try_reduce(
                || vec![None; policies.len()],
                |a, b| {
                    b.into_iter()
                        .enumerate()
                        .filter_map(|(p, got)| got.map(|g| (p, g)))
                        .try_fold(a, add)
                },
            )
    };
    let acc = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(fold)?,
        // No threads to be had: the replays still run, on this one.
        Err(_) => fold()?,
    };
    let wall = started.elapsed().as_secs_f64();
    // What the file held that was not replayed as written, said rather than left silent.
    if let Some(tally) = source.tally() {
        for note in tally.notes(&source.describe())? {
            eprintln!("note: {note}");
        }
    }
    let (runs, summaries): (Vec<RunTotals>, Vec<FaultSummary>) = acc
        .into_iter()
        .map(|got| got.ok_or_else(|| anyhow!("no cell to replay")))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let inputs = RunInputs {
        trace: source.describe(),
        fleet: spec.name.clone(),
        seed: args.seed,
        cells: cells_section(spec.cells, &pools),
        cell_count: cells,
        day_start_hour: source.day_start_hour(),
    };
    Ok(Ran {
        inputs,
        owned,
        runs,
        summaries,
        faults: faults.is_some(),
        wall,
    })
}

/// Where a replay report goes beside the table on stdout: `replay` and `replay merge`
/// take the same options.
#[derive(clap::Args, Debug)]
pub struct ReportOut {
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with plots.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Record wall_seconds as 0 so the JSON is byte-identical across runs.
    #[arg(long)]
    pub reproducible: bool,
}

impl ReportOut {
    /// The wall time to record: 0 under --reproducible.
    pub(super) fn wall_seconds(&self, wall: f64) -> f64 {
        if self.reproducible {
            0.0
        } else {
            wall
        }
    }

    /// Writes the report's JSON and HTML where asked.
    pub(super) fn write(&self, report: &Report) -> Result<()> {
        if let Some(path) = &self.json {
            std::fs::write(path, report.to_json() + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &self.html {
            std::fs::write(path, html::render(report))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}
