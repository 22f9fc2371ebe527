//! `dujiang plan`: the cheapest fleet of the given chips that serves a trace within the
//! SLO at a domestic-share floor, plus the cost frontier across floors. Replays run on a
//! pool of `--threads` threads. `--shard I/N` measures one slice of the capacity sweep and
//! writes it as JSON; `dujiang plan merge part-*.json` joins the slices and finishes the
//! plan (see deploy/k8s/plan-job/).

use crate::fleet::PolicySpec;
use crate::plan::report::SHARD_KIND;
use crate::plan::{
    self, Measurement, PlanInputs, PlanReport, PlanSettings, ReplayJob, ReplayRunner, Shard,
    ShardReport, SloSpec, Workload, DEFAULT_SLO,
};
use crate::profile::Catalogue;
use crate::sim::PolicyReport;
use crate::trace::{self, Format, ReadOptions, TraceExt, TraceRecord};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<PlanCommand>,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum PlanCommand {
    /// Join the shard results of `dujiang plan --shard I/N` and finish the plan.
    Merge(MergeArgs),
}

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// Trace file (Azure CSV, BurstGPT CSV, Mooncake JSONL or dujiang JSONL).
    #[arg(long, conflicts_with = "day")]
    pub trace: Option<PathBuf>,
    /// Trace format: auto, azure, burstgpt, mooncake, jsonl.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// Model every backend serves (a catalogue id, e.g. llama-3-8b).
    #[arg(long)]
    pub model: Option<String>,
    /// Chip kinds the fleet may use, comma-separated (e.g. h20,ascend-910b,mlu590); name
    /// the serving engine with `chip:engine` (e.g. h20:sglang; default: the chip's).
    #[arg(long, value_delimiter = ',')]
    pub chips: Vec<String>,
    /// Latency bounds, comma-separated `metric_percentile<=duration` (metrics ttft, tpot,
    /// e2e; percentiles p50, p90, p99, p999). The TTFT and TPOT bounds are also the
    /// per-request SLO that --attainment counts.
    #[arg(long, default_value = DEFAULT_SLO)]
    pub slo: String,
    /// Share of requests that must meet the per-request TTFT and TPOT bounds.
    #[arg(long, default_value_t = 0.99)]
    pub attainment: f64,
    /// Least domestic share of the fleet (0 … 1).
    #[arg(long, default_value_t = 0.0)]
    pub min_domestic_share: f64,
    /// What the domestic share counts: chips or spend.
    #[arg(long, default_value = "chips")]
    pub share_by: String,
    /// Routing policy of the planned fleet (and of its verification replays).
    #[arg(long, default_value = "predicted-latency")]
    pub policy: String,
    /// Multiply the trace's request rate (2 = plan for twice the traffic).
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Try every power-of-two tensor parallelism up to N (default: the smallest that
    /// fits and twice that).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tp: Option<u32>,
    /// Request-size classes per dimension (prompt length, output length).
    #[arg(long, default_value_t = 3)]
    pub buckets: usize,
    /// Requests of each size class replayed when measuring a chip's capacity.
    #[arg(long, default_value_t = 2000)]
    pub probe_requests: usize,
    /// Least simulated seconds of one capacity probe (the requests are looped).
    #[arg(long, default_value_t = 120.0)]
    pub probe_seconds: f64,
    /// Seed for policies that sample.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Measure only this slice of the capacity sweep (`I/N`) and write it with --json.
    #[arg(long)]
    pub shard: Option<String>,
    /// Chip catalogue file (default: embedded).
    #[arg(long)]
    pub chip_catalogue: Option<PathBuf>,
    /// Model catalogue file (default: embedded).
    #[arg(long)]
    pub model_catalogue: Option<PathBuf>,
    /// Engine catalogue overlay (e.g. what `dujiang calibrate` writes); repeatable.
    #[arg(long, value_name = "FILE")]
    pub engines: Vec<PathBuf>,
    #[command(flatten)]
    pub day: super::plan_day::DayPlanArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(clap::Args, Debug)]
pub struct OutputArgs {
    /// Write the plan (or, with --shard, the shard's measurements) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML page with the plan and the cost-frontier plot.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write the planned fleet as a fleet file (for `replay --fleet` and `serve`).
    #[arg(long)]
    pub fleet_out: Option<PathBuf>,
    /// Write the cheapest prefill/decode split fleet the plan found as a fleet file
    /// (roles, the `disaggregated` policy and its link); an error when none met the SLO.
    #[arg(long)]
    pub split_fleet_out: Option<PathBuf>,
    /// Replays run at once (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also search prefill/decode split fleets (replayed with the `disaggregated` policy
    /// on the default KV links) and print the cheapest beside the aggregated plan: on or
    /// off (default on).
    #[arg(long, default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub split: bool,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, got `{other}`")),
    }
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Shard results (`part-*.json`), one per shard.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// Read the trace from here instead of the path the shards recorded.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Runs each batch of replays on a rayon pool of `threads` workers, results in job order.
/// Threads belong to this layer, not to the pure planner; the plan bench uses it too.
pub struct ThreadPool {
    pub threads: usize,
}

impl ReplayRunner for ThreadPool {
    fn run_all(&self, jobs: &[ReplayJob]) -> Vec<Result<PolicyReport, String>> {
        // A replay that panics fails its own job, not the plan.
        let run = |job: &ReplayJob| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()))
                .unwrap_or_else(|_| Err("a replay thread panicked".into()))
        };
        match rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.max(1))
            .build()
        {
            Ok(pool) => pool.install(|| jobs.par_iter().map(run).collect()),
            // No threads to be had: the batch still runs, on this one.
            Err(_) => jobs.iter().map(run).collect(),
        }
    }
}

pub(super) fn threads(n: Option<usize>) -> Result<ThreadPool> {
    let threads = match n {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Ok(ThreadPool { threads })
}

/// Everything a plan needs in memory, built from its inputs.
pub(super) struct Prepared {
    pub(super) workload: Workload,
    pub(super) candidates: Vec<plan::Candidate>,
    pub(super) settings: PlanSettings,
}

fn prepare(inputs: &PlanInputs) -> Result<Prepared> {
    prepare_with(inputs, None)
}

/// Checks the inputs and builds the workload: from `day_records` (a generated day's
/// window, already in memory) when given, else from the trace file `inputs` names.
pub(super) fn prepare_with(
    inputs: &PlanInputs,
    day_records: Option<Vec<TraceRecord>>,
) -> Result<Prepared> {
    if !(inputs.rate_scale.is_finite() && inputs.rate_scale > 0.0) {
        bail!(
            "--rate-scale must be a positive number, got {}",
            inputs.rate_scale
        );
    }
    if !(0.0..=1.0).contains(&inputs.min_domestic_share) {
        bail!(
            "--min-domestic-share must be in [0, 1], got {}",
            inputs.min_domestic_share
        );
    }
    if inputs.buckets == 0 || inputs.probe_requests == 0 {
        bail!("--buckets and --probe-requests must be at least 1");
    }
    if !(inputs.probe_seconds.is_finite() && inputs.probe_seconds >= 0.0) {
        bail!(
            "--probe-seconds must be a non-negative number, got {}",
            inputs.probe_seconds
        );
    }
    let slo = SloSpec::parse(&inputs.slo, inputs.attainment).map_err(|e| anyhow!("--slo: {e}"))?;
    let catalogue = Catalogue::load_with_engines(
        inputs.chip_catalogue.as_deref().map(Path::new),
        inputs.model_catalogue.as_deref().map(Path::new),
        &inputs.engine_catalogues,
    )?;
    let candidates = plan::candidates(&catalogue, &inputs.model, &inputs.chips, inputs.max_tp)
        .map_err(anyhow::Error::msg)?;
    let policy = PolicySpec {
        name: inputs.policy.clone(),
        params: toml::Table::new(),
    };
    crate::policy::build(&policy.name, &policy.params, inputs.seed)?;
    let records = match day_records {
        Some(records) => records,
        None => {
            let format: Format = inputs
                .format
                .parse()
                .map_err(|e| anyhow!("--format: {e}"))?;
            let reader = trace::open(Path::new(&inputs.trace), format, ReadOptions::default())?;
            reader
                .scale_rate(inputs.rate_scale)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", inputs.trace))?
        }
    };
    let workload = Workload::new(records, inputs.buckets, inputs.probe_requests)
        .map_err(|e| anyhow!("{}: {e}", inputs.trace))?;
    Ok(Prepared {
        workload,
        candidates,
        settings: PlanSettings {
            slo,
            share_by: inputs.share_by,
            policy,
            seed: inputs.seed,
            probe_seconds: inputs.probe_seconds,
        },
    })
}

pub(super) fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Plans from the measurements (and the split search, unless off), prints the plan table
/// and returns the report.
pub(super) fn plan_report(
    inputs: &PlanInputs,
    prepared: &Prepared,
    measurements: Vec<Measurement>,
    measure_replays: u64,
    runner: &ThreadPool,
    split: bool,
    started: Instant,
) -> Result<PlanReport> {
    let mut report: PlanReport = plan::plan(
        inputs,
        &prepared.workload,
        &prepared.candidates,
        measurements,
        &prepared.settings,
        runner,
        measure_replays,
    )
    .map_err(anyhow::Error::msg)?;
    if split {
        plan::add_split(
            &mut report,
            &prepared.workload,
            &prepared.candidates,
            &prepared.settings,
            runner,
        );
    }
    out!("{}", report.to_table())?;
    outln!(
        "planned in {:.1} s on {} thread(s)",
        started.elapsed().as_secs_f64(),
        runner.threads
    )?;
    Ok(report)
}

fn finish(
    inputs: &PlanInputs,
    prepared: &Prepared,
    measurements: Vec<Measurement>,
    measure_replays: u64,
    runner: &ThreadPool,
    out: &OutputArgs,
    started: Instant,
) -> Result<()> {
    let report = plan_report(
        inputs,
        prepared,
        measurements,
        measure_replays,
        runner,
        out.split,
        started,
    )?;
    if let Some(p) = &out.json {
        write(p, &(report.to_json() + "\n"))?;
    }
    if let Some(p) = &out.html {
        write(p, &report.to_html())?;
    }
    if let Some(p) = &out.fleet_out {
        write(p, &report.fleet_toml())?;
    }
    if let Some(p) = &out.split_fleet_out {
        let Some(split) = &report.disaggregated else {
            bail!(
                "--split-fleet-out {}: the split search is off (--split off)",
                p.display()
            );
        };
        let Some(text) = split.fleet_toml(&report.inputs) else {
            bail!(
                "--split-fleet-out {}: no split fleet met the SLO ({}); nothing written",
                p.display(),
                split.note.as_deref().unwrap_or("none found")
            );
        };
        write(p, &text)?;
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(PlanCommand::Merge(m)) => merge(m),
        None => sweep(args.sweep),
    }
}

/// The plan's inputs as given, with the traffic named `trace` (a file, or a generated
/// day's window) read as `format`.
pub(super) fn inputs_of(a: &SweepArgs, trace: String, format: String) -> Result<PlanInputs> {
    let model = a
        .model
        .clone()
        .ok_or_else(|| anyhow!("--model is required"))?;
    if a.chips.is_empty() {
        bail!("--chips is required (e.g. --chips h20,ascend-910b,mlu590)");
    }
    Ok(PlanInputs {
        trace,
        format,
        model,
        chips: a.chips.iter().map(|c| c.trim().to_string()).collect(),
        slo: a.slo.clone(),
        attainment: a.attainment,
        min_domestic_share: a.min_domestic_share,
        share_by: a.share_by.parse().map_err(|e| anyhow!("--share-by: {e}"))?,
        policy: a.policy.clone(),
        rate_scale: a.rate_scale,
        max_tp: a.max_tp,
        buckets: a.buckets,
        probe_requests: a.probe_requests,
        probe_seconds: a.probe_seconds,
        seed: a.seed,
        chip_catalogue: a.chip_catalogue.as_ref().map(|p| p.display().to_string()),
        model_catalogue: a.model_catalogue.as_ref().map(|p| p.display().to_string()),
        engine_catalogues: a.engines.iter().map(|p| p.display().to_string()).collect(),
    })
}

fn sweep(a: SweepArgs) -> Result<()> {
    let started = Instant::now();
    for (flag, path) in [
        ("--json", &a.out.json),
        ("--html", &a.out.html),
        ("--fleet-out", &a.out.fleet_out),
        ("--split-fleet-out", &a.out.split_fleet_out),
    ] {
        super::check_output(flag, path.as_deref())?;
    }
    if a.day.day.is_some() {
        return super::plan_day::run(a, started);
    }
    if let Some(flag) = a.day.given_without_day() {
        bail!("{flag} plans a generated day: it goes with --day doubao");
    }
    let trace = a.trace.clone().ok_or_else(|| {
        anyhow!("--trace FILE or --day doubao is required (or use `dujiang plan merge`)")
    })?;
    let inputs = inputs_of(
        &a,
        trace.display().to_string(),
        a.format.as_str().to_string(),
    )?;
    let shard = match &a.shard {
        Some(s) => Shard::parse(s).map_err(|e| anyhow!("--shard: {e}"))?,
        None => Shard::WHOLE,
    };
    if a.shard.is_some() && a.out.json.is_none() {
        bail!("--shard needs --json OUT: the shard's measurements go there for `plan merge`");
    }
    let runner = threads(a.out.threads)?;
    let prepared = prepare(&inputs)?;
    plan::check_floor(&prepared.candidates, inputs.min_domestic_share)
        .map_err(anyhow::Error::msg)?;
    let (measurements, replays) = plan::measure(
        &prepared.workload,
        &prepared.candidates,
        &prepared.settings,
        &runner,
        shard,
    )
    .map_err(anyhow::Error::msg)?;
    if a.shard.is_some() {
        let part = ShardReport {
            kind: SHARD_KIND.into(),
            shard,
            inputs,
            measurements,
            replays,
        };
        let path = a.out.json.as_ref().expect("checked above");
        write(
            path,
            &(serde_json::to_string_pretty(&part).expect("shard serialises") + "\n"),
        )?;
        outln!(
            "shard {}/{}: {} measurements, {} replays in {:.1} s -> {}",
            shard.index,
            shard.count,
            part.measurements
                .iter()
                .filter(|m| m.sustained_rps.is_some())
                .count(),
            replays,
            started.elapsed().as_secs_f64(),
            path.display()
        )?;
        return Ok(());
    }
    finish(
        &inputs,
        &prepared,
        measurements,
        replays,
        &runner,
        &a.out,
        started,
    )
}

fn merge(m: MergeArgs) -> Result<()> {
    let started = Instant::now();
    let mut parts: Vec<ShardReport> = Vec::new();
    for path in &m.parts {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let part: ShardReport = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a `dujiang plan --shard` result", path.display()))?;
        if part.kind != SHARD_KIND {
            bail!(
                "{}: kind is `{}`, expected `{SHARD_KIND}`",
                path.display(),
                part.kind
            );
        }
        parts.push(part);
    }
    let shards: Vec<_> = parts.iter().map(|p| (p.shard, &p.inputs)).collect();
    super::shards::check_whole(&shards, &m.parts, "planned with different inputs than")?;
    let mut inputs = parts[0].inputs.clone();
    if let Some(t) = &m.trace {
        inputs.trace = t.display().to_string();
    }
    let mut measurements = parts[0].measurements.clone();
    for p in &parts[1..] {
        if p.measurements.len() != measurements.len() {
            bail!("shards disagree on the number of (chip, bucket) pairs");
        }
        for (acc, m) in measurements.iter_mut().zip(&p.measurements) {
            if acc.sustained_rps.is_none() {
                acc.sustained_rps = m.sustained_rps;
            }
        }
    }
    // Checked: a corrupted count must be an error naming the file, not a panic (debug
    // build) or a wrapped total (release).
    let mut replays = 0u64;
    for (p, path) in parts.iter().zip(&m.parts) {
        replays = replays.checked_add(p.replays).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: replays: {} + {} (the shards before it) overflows u64",
                path.display(),
                p.replays,
                replays
            )
        })?;
    }
    let runner = threads(m.out.threads)?;
    let prepared = prepare(&inputs)?;
    finish(
        &inputs,
        &prepared,
        measurements,
        replays,
        &runner,
        &m.out,
        started,
    )
}
