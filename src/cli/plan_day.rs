//! `dujiang plan --day doubao`: a provider-scale day planned in one command. It plans one
//! cell on the busiest hour of the day (that cell's traffic only, generated in memory,
//! never the whole day), writes the fleet as `cells = N` of that cell, verifies it by
//! replaying the whole day on every cell (the `dujiang replay` machinery, in process on
//! `--threads` threads: the same sums `replay --shard` + `replay merge` add up), and says
//! what the whole fleet is and whether the plan held for the day, hour by hour. With
//! `--verify off` it prints the sharded replay commands to run the verification elsewhere.
//!
//! Why one cell: cells share nothing (routing never crosses them) and the day's sessions
//! hash evenly into them, so every cell carries the same load up to sampling noise; the
//! verification replays all of them, so a cell heavier than the planned one shows up there.
//! Why the busiest hour: a fleet that serves the peak within the SLO serves the quieter
//! hours too (same fleet, less traffic), and planning one hour costs a 24th of the day.

use super::plan::{self as plan_cli, SweepArgs};
use super::replay::{self, RunArgs};
use super::replay_source::{DayArgs, Source};
use super::trace::{parse_hours, DayPreset};
use crate::fleet::{FleetTotals, MAX_CELLS};
use crate::plan::{self, PlanReport, SloSpec};
use crate::request::Slo;
use crate::sim::report::HourSlo;
use crate::sim::Report;
use crate::trace::{DiurnalProfile, TraceRecord};
use anyhow::{anyhow, bail, Result};
use clap::Parser;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// `--day` and what goes with it on `dujiang plan`.
#[derive(clap::Args, Debug)]
pub struct DayPlanArgs {
    /// Plan a generated provider-scale day instead of a trace file: one cell on the busiest
    /// hour (--plan-hours), the fleet `--cells` times that cell (--fleet-out, required), then
    /// the whole day replayed on it (--verify).
    #[arg(long, value_enum)]
    pub day: Option<DayPreset>,
    /// With --day: share of the 5e13-token Doubao day to plan for (e.g. 1e-3); or give
    /// --tokens-per-day instead.
    #[arg(long)]
    pub scale: Option<f64>,
    /// With --day: tokens (prompt + output) of the day to plan for (e.g. 5e10); or give
    /// --scale instead.
    #[arg(long)]
    pub tokens_per_day: Option<f64>,
    /// With --day: identical cells the fleet is cut into (traffic split by session hash).
    #[arg(long)]
    pub cells: Option<u32>,
    /// With --day: the hours of the day the cell is planned on, `auto` (the busiest whole
    /// hour of the diurnal curve: 20-21 for Doubao's) or A-B within 0-24 [default: auto].
    #[arg(long)]
    pub plan_hours: Option<String>,
    /// With --day: the day generator's seed (the same seed gives the same day everywhere)
    /// [default: 0].
    #[arg(long)]
    pub day_seed: Option<u64>,
    /// With --day: replay the whole day on the planned fleet here (on), or only print the
    /// sharded `dujiang replay` commands that do it elsewhere (off) [default: on].
    #[arg(long, value_parser = on_off, action = clap::ArgAction::Set)]
    pub verify: Option<bool>,
    /// With --day --verify off: the N of the printed `--shard I/N` commands (default: the
    /// number of cells, at most 8).
    #[arg(long)]
    pub verify_shards: Option<u32>,
}

impl DayPlanArgs {
    /// The first of the day's own flags given, for a plan without `--day`.
    pub fn given_without_day(&self) -> Option<&'static str> {
        if self.day.is_some() {
            return None;
        }
        [
            ("--scale", self.scale.is_some()),
            ("--tokens-per-day", self.tokens_per_day.is_some()),
            ("--cells", self.cells.is_some()),
            ("--plan-hours", self.plan_hours.is_some()),
            ("--day-seed", self.day_seed.is_some()),
            ("--verify", self.verify.is_some()),
            ("--verify-shards", self.verify_shards.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, got `{other}`")),
    }
}

const HOUR_NS: u64 = 3_600_000_000_000;

/// The day's volume as `dujiang replay --day` takes it: `--scale S` is a share of the
/// default 5e13-token day, `--tokens-per-day T` the day itself (`--scale 1`). Kept as the
/// flags were given so the verification and the printed commands generate the same day,
/// bit for bit.
#[derive(Clone, Copy, Debug)]
enum Volume {
    Scale(f64),
    Tokens(f64),
}

impl Volume {
    fn replay_args(self) -> Vec<String> {
        match self {
            Volume::Scale(s) => vec!["--scale".into(), format!("{s:e}")],
            Volume::Tokens(t) => vec![
                "--tokens-per-day".into(),
                format!("{t:e}"),
                "--scale".into(),
                "1".into(),
            ],
        }
    }

    fn tokens_per_day(self) -> f64 {
        match self {
            Volume::Scale(s) => crate::trace::day::DOUBAO_TOKENS_PER_DAY_DEC_2025 * s,
            Volume::Tokens(t) => t,
        }
    }
}

/// The checked `--day` request.
struct DayPlan {
    volume: Volume,
    cells: u32,
    /// The plan window, `A-B` in hours of the day, and how it was chosen.
    plan_hours: String,
    plan_hours_why: &'static str,
    day_seed: u64,
}

impl DayPlan {
    fn from_args(a: &SweepArgs) -> Result<DayPlan> {
        let d = &a.day;
        let volume = match (d.scale, d.tokens_per_day) {
            (Some(_), Some(_)) => bail!(
                "--scale and --tokens-per-day both given: give one (--scale S plans S x the 5e13-token Doubao day, --tokens-per-day T a day of T tokens)"
            ),
            (None, None) => bail!(
                "--day needs the day's volume: --scale S (a share of the 5e13-token Doubao day, e.g. 1e-3) or --tokens-per-day T (e.g. 5e10)"
            ),
            (Some(s), None) if !(s.is_finite() && s > 0.0) => {
                bail!("--scale must be a positive number, got {s}")
            }
            (None, Some(t)) if !(t.is_finite() && t > 0.0) => {
                bail!("--tokens-per-day must be a positive number, got {t}")
            }
            (Some(s), None) => Volume::Scale(s),
            (None, Some(t)) => Volume::Tokens(t),
        };
        let cells = d.cells.ok_or_else(|| {
            anyhow!("--day needs --cells N: the identical cells the fleet is cut into (1 for one)")
        })?;
        if cells == 0 || cells > MAX_CELLS {
            bail!("--cells must be from 1 to {MAX_CELLS}, got {cells}");
        }
        let given_hours = d.plan_hours.as_deref().unwrap_or("auto");
        let (plan_hours, plan_hours_why) = if given_hours == "auto" {
            let h = DiurnalProfile::default().busiest_hour();
            (
                format!("{h}-{}", h + 1),
                "auto: the busiest whole hour of the diurnal curve",
            )
        } else {
            let w = parse_hours(given_hours).map_err(|_| {
                anyhow!("--plan-hours must be auto or A-B with 0 <= A < B <= 24 (e.g. 20-22), got {given_hours:?}")
            })?;
            if w.end > 24 * HOUR_NS {
                bail!("--plan-hours {given_hours}: past the end of the day (hours are 0-24)");
            }
            (given_hours.to_string(), "as given")
        };
        if a.trace.is_some() {
            bail!("--trace and --day both given: plan a trace file or a generated day");
        }
        if a.shard.is_some() {
            bail!("--shard splits a trace's capacity sweep; with --day the sweep runs here");
        }
        if a.rate_scale != 1.0 {
            bail!("--rate-scale does not go with --day: set the day's volume with --scale or --tokens-per-day");
        }
        if a.out.split_fleet_out.is_some() {
            bail!("--split-fleet-out does not go with --day: the day's fleet is the aggregated plan (--fleet-out)");
        }
        if a.out.fleet_out.is_none() {
            bail!("--day needs --fleet-out FILE: the day's fleet (`cells = N` of the planned cell) is written there and verified from it");
        }
        if d.verify_shards == Some(0) {
            bail!("--verify-shards must be at least 1");
        }
        if let Some(n) = d.verify_shards {
            if n > cells {
                bail!(
                    "--verify-shards {n}: at most --cells ({cells}); a shard replays whole cells"
                );
            }
        }
        Ok(DayPlan {
            volume,
            cells,
            plan_hours,
            plan_hours_why,
            day_seed: d.day_seed.unwrap_or(0),
        })
    }

    fn day_args(&self, hours: &str) -> DayArgs {
        let (scale, tokens_per_day) = match self.volume {
            Volume::Scale(s) => (Some(s), None),
            Volume::Tokens(t) => (Some(1.0), Some(t)),
        };
        DayArgs {
            day: Some(DayPreset::Doubao),
            tokens_per_day,
            scale,
            hours: Some(hours.to_string()),
            day_seed: Some(self.day_seed),
        }
    }

    /// The planned cell's traffic: cell 0 of `cells` in the plan window, arrivals from 0.
    fn plan_records(&self) -> Result<(Vec<TraceRecord>, String)> {
        let source =
            Source::day(&self.day_args(&self.plan_hours), self.cells)?.expect("--day is set");
        let records = source
            .cell(0, self.cells, 1.0)?
            .collect::<Result<Vec<_>>>()?;
        Ok((records, source.describe()))
    }

    /// `dujiang replay` arguments (after `replay`) that replay the whole day on `fleet`
    /// judged by `slo` with the plan's policy seed: the verification, as anyone can rerun it.
    fn replay_argv(&self, fleet: &Path, slo: Slo, a: &SweepArgs) -> Vec<String> {
        let mut v: Vec<String> = vec!["--day".into(), "doubao".into()];
        v.extend(self.volume.replay_args());
        v.extend(["--hours".into(), "0-24".into()]);
        if self.day_seed != 0 {
            v.extend(["--day-seed".into(), self.day_seed.to_string()]);
        }
        v.extend(["--fleet".into(), fleet.display().to_string()]);
        if a.seed != 1 {
            v.extend(["--seed".into(), a.seed.to_string()]);
        }
        // The plan's per-request SLO, so the day is judged as the plan was (shortest
        // round-trip text, so the replay reads back the same nanoseconds).
        let ms = |ns: u64| ns as f64 / 1e6;
        if slo.ttft_ns != Slo::default().ttft_ns {
            v.extend(["--slo-ttft-ms".into(), format!("{}", ms(slo.ttft_ns))]);
        }
        if slo.tpot_ns != Slo::default().tpot_ns {
            v.extend(["--slo-tpot-ms".into(), format!("{}", ms(slo.tpot_ns))]);
        }
        for (flag, path) in [
            ("--chips", &a.chip_catalogue),
            ("--models", &a.model_catalogue),
        ] {
            if let Some(p) = path {
                v.extend([flag.into(), p.display().to_string()]);
            }
        }
        for p in &a.engines {
            v.extend(["--engines".into(), p.display().to_string()]);
        }
        v
    }
}

/// `dujiang replay`'s own arguments, parsed from a command line.
#[derive(clap::Parser, Debug)]
#[command(no_binary_name = true)]
struct ReplayLine {
    #[command(flatten)]
    run: RunArgs,
}

/// What the day's replay said about the plan.
#[derive(Debug, Serialize)]
struct Verification {
    /// The day met the plan's SLO: attainment over all requests and every bound.
    held: bool,
    requests: u64,
    slo_attainment: f64,
    /// Hours (of the day, by arrival) whose attainment fell below the target.
    hours_below_target: Vec<HourSlo>,
    /// The three hours of lowest attainment.
    tightest_hours: Vec<HourSlo>,
    threads: usize,
    wall_seconds: f64,
    /// The day's replay report, as `dujiang replay` (or `replay merge`) writes it.
    report: Report,
}

/// `--json` under `--day`.
#[derive(Debug, Serialize)]
struct DayPlanOut<'a> {
    kind: &'static str,
    day: DaySummary,
    /// One cell's plan, as `dujiang plan --json` writes it.
    plan: &'a PlanReport,
    fleet_file: String,
    cell: FleetTotals,
    fleet: FleetTotals,
    /// `dujiang replay` arguments that replay the day on the fleet (add `--shard I/N
    /// --partial-out FILE` to split it).
    verify_command: Vec<String>,
    verification: Option<Verification>,
}

#[derive(Debug, Serialize)]
struct DaySummary {
    preset: &'static str,
    tokens_per_day: f64,
    cells: u32,
    day_seed: u64,
    plan_hours: String,
    plan_cell: u32,
    plan_requests: usize,
}

fn chips(t: &FleetTotals) -> String {
    t.chips
        .iter()
        .map(|(c, n)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn totals_line(t: &FleetTotals) -> String {
    format!(
        "{} backends ({}), ${:.2}/h, domestic {:.1}% of chips, {:.1}% of spend",
        t.backends,
        chips(t),
        t.cost_per_hour_usd,
        t.domestic_chip_share * 100.0,
        t.domestic_spend_share * 100.0
    )
}

fn hour_label(h: &HourSlo) -> String {
    format!(
        "{:02}:00 {:.2}% of {}",
        h.hour % 24,
        h.slo_attainment * 100.0,
        h.requests
    )
}

/// `dujiang plan --day …`.
pub(super) fn run(a: SweepArgs, started: Instant) -> Result<()> {
    let day = DayPlan::from_args(&a)?;
    let fleet_out = a.out.fleet_out.clone().expect("checked");
    // Fail on a bad model, chip or SLO before generating anything.
    let mut inputs = plan_cli::inputs_of(&a, String::new(), "day".into())?;
    let slo = SloSpec::parse(&inputs.slo, inputs.attainment).map_err(|e| anyhow!("--slo: {e}"))?;

    // 1. The planned cell's busiest hour(s), in memory: one cell of one window.
    let generated = Instant::now();
    let (records, describe) = day.plan_records()?;
    if records.is_empty() {
        bail!("{describe}: cell 0 of {} has no requests in hours {}; raise --scale/--tokens-per-day or lower --cells", day.cells, day.plan_hours);
    }
    let plan_requests = records.len();
    outln!(
        "day: {:e} tokens/day in {} cell(s); planning cell 0 on {} ({}): {} requests, generated in {:.1} s",
        day.volume.tokens_per_day(),
        day.cells,
        day.plan_hours,
        day.plan_hours_why,
        plan_requests,
        generated.elapsed().as_secs_f64()
    )?;

    // 2. The cell's plan, exactly as `dujiang plan --trace` makes it.
    inputs.trace = format!("{describe}, cell 0 of {}", day.cells);
    let runner = plan_cli::threads(a.out.threads)?;
    let prepared = plan_cli::prepare_with(&inputs, Some(records))?;
    plan::check_floor(&prepared.candidates, inputs.min_domestic_share)
        .map_err(anyhow::Error::msg)?;
    let (measurements, replays) = plan::measure(
        &prepared.workload,
        &prepared.candidates,
        &prepared.settings,
        &runner,
        plan::Shard::WHOLE,
    )
    .map_err(anyhow::Error::msg)?;
    let report = plan_cli::plan_report(
        &inputs,
        &prepared,
        measurements,
        replays,
        &runner,
        a.out.split,
        started,
    )?;
    drop(prepared);

    // 3. The fleet: N of that cell.
    plan_cli::write(&fleet_out, &report.fleet_toml_cells(day.cells))?;
    if let Some(p) = &a.out.html {
        plan_cli::write(p, &report.to_html())?;
    }
    let argv = day.replay_argv(&fleet_out, slo.request_slo(), &a);
    let line = ReplayLine::try_parse_from(&argv)
        .map_err(|e| anyhow!("the verification's replay command does not parse: {e}"))?;
    let (_, pools) = replay::load_fleet(Some(&fleet_out), &line.run.catalogue)?;
    let cell = FleetTotals::of(&pools, 1);
    let fleet = FleetTotals::of(&pools, day.cells);
    outln!(
        "\nfleet -> {}: {} cell(s) of {} backends\n  one cell:    {}\n  whole fleet: {}",
        fleet_out.display(),
        day.cells,
        cell.backends,
        totals_line(&cell),
        totals_line(&fleet)
    )?;

    // 4. The whole day on that fleet, every cell, or the commands that do it elsewhere.
    let verification = if a.day.verify.unwrap_or(true) {
        Some(verify(line.run, &slo, a.out.threads, &argv)?)
    } else {
        print_commands(&day, &argv, a.day.verify_shards)?;
        None
    };

    if let Some(p) = &a.out.json {
        let out = DayPlanOut {
            kind: "dujiang-day-plan/1",
            day: DaySummary {
                preset: "doubao",
                tokens_per_day: day.volume.tokens_per_day(),
                cells: day.cells,
                day_seed: day.day_seed,
                plan_hours: day.plan_hours.clone(),
                plan_cell: 0,
                plan_requests,
            },
            plan: &report,
            fleet_file: fleet_out.display().to_string(),
            cell,
            fleet,
            verify_command: std::iter::once("replay".to_string()).chain(argv).collect(),
            verification,
        };
        let text = serde_json::to_string_pretty(&out).expect("the day plan serialises");
        plan_cli::write(p, &(text + "\n"))?;
    }
    Ok(())
}

/// Replays the whole day on every cell (in process, `threads` at once) and judges it.
fn verify(
    mut run: RunArgs,
    slo: &SloSpec,
    threads: Option<usize>,
    argv: &[String],
) -> Result<Verification> {
    let threads = match threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    run.threads = Some(threads);
    outln!(
        "\nverifying: the whole day on every cell, {threads} thread(s) (= dujiang replay {})",
        argv.join(" ")
    )?;
    let ran = replay::run_cells(&run)?;
    let wall = (ran.wall * 1000.0).round() / 1000.0;
    let report = super::replay_shard::report(&ran.inputs, &ran.runs, wall);
    out!("{}", report.to_table())?;
    let day = report
        .policies
        .first()
        .ok_or_else(|| anyhow!("the verification replayed no policy"))?;
    let held = slo.meets(day);
    let with_requests = || day.hourly.iter().filter(|h| h.requests > 0).cloned();
    let below: Vec<HourSlo> = with_requests()
        .filter(|h| h.slo_attainment < slo.attainment)
        .collect();
    let mut tightest: Vec<HourSlo> = with_requests().collect();
    tightest.sort_by(|a, b| {
        a.slo_attainment
            .total_cmp(&b.slo_attainment)
            .then(a.hour.cmp(&b.hour))
    });
    tightest.truncate(3);
    let bounds: Vec<String> = slo.bounds.iter().map(|b| b.to_string()).collect();
    outln!(
        "\nthe day: {} requests, {:.2}% within the per-request SLO (target {}%), TTFT p99 {:.0} ms, TPOT p99 {:.1} ms, {:.1} s wall on {threads} thread(s)",
        day.stats.requests,
        day.stats.slo_attainment * 100.0,
        slo.attainment * 100.0,
        day.stats.ttft_ms.p99,
        day.stats.tpot_ms.p99,
        ran.wall
    )?;
    if held {
        outln!(
            "plan HELD for the whole day: {:.2}% >= {}% and {} over the day",
            day.stats.slo_attainment * 100.0,
            slo.attainment * 100.0,
            bounds.join(", ")
        )?;
    } else {
        outln!(
            "plan DID NOT HOLD for the whole day: {slo} missed (attainment {:.2}%); re-plan with a busier --plan-hours window, a higher --attainment, or more cells",
            day.stats.slo_attainment * 100.0
        )?;
    }
    if below.is_empty() {
        outln!("hours below {}%: none", slo.attainment * 100.0)?;
    } else {
        outln!(
            "hours below {}%: {}",
            slo.attainment * 100.0,
            below.iter().map(hour_label).collect::<Vec<_>>().join(", ")
        )?;
    }
    outln!(
        "tightest hours: {}",
        tightest
            .iter()
            .map(hour_label)
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(Verification {
        held,
        requests: day.stats.requests,
        slo_attainment: day.stats.slo_attainment,
        hours_below_target: below,
        tightest_hours: tightest,
        threads,
        wall_seconds: wall,
        report,
    })
}

/// `--verify off`: the sharded replay and its merge, to run on other machines (or as
/// deploy/k8s/replay-job with these arguments in replay.args).
fn print_commands(day: &DayPlan, argv: &[String], shards: Option<u32>) -> Result<()> {
    let n = shards.unwrap_or_else(|| day.cells.min(8));
    let cmd = argv.join(" ");
    outln!("\nverify elsewhere: the whole day in {n} shard(s) of whole cells, then the merge (or deploy/k8s/replay-job with replay.args = {cmd}):")?;
    for i in 0..n {
        outln!("dujiang replay {cmd} --shard {i}/{n} --partial-out day-part-{i}.json")?;
    }
    let parts: Vec<String> = (0..n).map(|i| format!("day-part-{i}.json")).collect();
    outln!("dujiang replay merge {} --json day.json", parts.join(" "))?;
    Ok(())
}
