//! `dujiang trace gen` writes a seeded synthetic trace as dujiang JSONL (a fixed number of
//! requests at a rate, or with `--day` a streaming provider-scale day, one cell shard or
//! hour window at a time); `dujiang trace stats` summarises any supported trace (rate,
//! burstiness, length percentiles, skips).

use crate::trace::{
    self, ArrivalProcess, DayConfig, DayTrace, DiurnalProfile, Format, JsonlWriter, OnError,
    PrefixSharing, ReadOptions, Shard, SynthConfig, SyntheticTrace, TraceReader, TraceStats,
};
use anyhow::{Context, Result};
use std::io::{self, BufRead, BufWriter, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: TraceCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TraceCommand {
    /// Write a seeded synthetic trace (dujiang JSONL) to stdout or --out.
    Gen(GenArgs),
    /// Summarise a trace: requests, duration, rate, inter-arrival CV, length percentiles.
    Stats(StatsArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// Exponential inter-arrival gaps (CV 1).
    Poisson,
    /// Gamma inter-arrival gaps with coefficient of variation --cv.
    Gamma,
    /// A 24-hour chat day (peak 21:00, trough 04:00, 5:1); --rate is the daily mean.
    Diurnal,
}

/// Provider-scale days `--day` can generate.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DayPreset {
    /// Doubao-like: 50T tokens/day (Dec 2025), chat diurnal curve, multi-turn sessions.
    Doubao,
}

#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Stream a whole provider-scale day instead of --requests at --rate (see
    /// --tokens-per-day, --scale, --shard, --hours). Arrivals are ns from the day's midnight.
    #[arg(long, value_enum)]
    pub day: Option<DayPreset>,
    /// With --day: tokens (prompt + output) of the full day [default: 5e13, Doubao Dec 2025].
    #[arg(long, requires = "day")]
    pub tokens_per_day: Option<f64>,
    /// With --day: share of the day's sessions to generate [default: 1e-6].
    #[arg(long, requires = "day")]
    pub scale: Option<f64>,
    /// With --day: cell shard I/N, only the sessions whose key is in shard I of N (N <= 256).
    #[arg(long, requires = "day")]
    pub shard: Option<Shard>,
    /// With --day: hours of the day to write, A-B (fractions allowed) [default: 0-24].
    #[arg(long, requires = "day")]
    pub hours: Option<String>,
    /// How arrivals are spaced [default: poisson]. Not with --day, whose curve is its own.
    #[arg(long, value_enum)]
    pub process: Option<Process>,
    /// Number of requests to write (with --day: at most this many).
    #[arg(long, required_unless_present = "day")]
    pub requests: Option<u64>,
    /// Mean arrival rate, requests per second.
    #[arg(long, required_unless_present = "day", conflicts_with = "day")]
    pub rate: Option<f64>,
    /// Inter-arrival coefficient of variation for --process gamma (> 1 is bursty)
    /// [default: 2]. Refused with another process rather than ignored.
    #[arg(long)]
    pub cv: Option<f64>,
    /// Seed of the random generator: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of requests with batch priority (0 … 1).
    #[arg(long, default_value_t = 0.0, conflicts_with = "day")]
    pub batch_fraction: f64,
    /// Share of requests starting with one of 8 shared 2-block (1,024-token) prefixes;
    /// setting it also gives every request its 512-token block hash ids.
    #[arg(long, conflicts_with = "day")]
    pub prefix_share: Option<f64>,
    /// Output file (stdout when absent).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Trace file (`-` for stdin).
    pub file: PathBuf,
    /// auto, azure, burstgpt, mooncake or jsonl.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// Skip lines that do not parse (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        TraceCommand::Gen(a) => generate(a),
        TraceCommand::Stats(a) => stats(a),
    }
}

fn generate(a: GenArgs) -> Result<()> {
    // Flags that do nothing here are refused, not ignored: a user who asked for bursty
    // arrivals must not get Poisson ones without a word. (--cv does not imply gamma: with
    // --process poisson or diurnal the two flags contradict each other, and with no
    // --process the refusal costs one flag while a silent switch hides a typo.)
    if a.day.is_some() {
        if a.process.is_some() || a.cv.is_some() {
            let flag = if a.process.is_some() {
                "--process"
            } else {
                "--cv"
            };
            anyhow::bail!(
                "{flag} does not apply to --day, whose arrivals follow its own day curve"
            );
        }
        return generate_day(a);
    }
    let process = a.process.unwrap_or(Process::Poisson);
    if let (Some(_), false) = (a.cv, process == Process::Gamma) {
        anyhow::bail!(
            "--cv applies to --process gamma only (the arrivals here are {}): add --process gamma",
            match process {
                Process::Poisson => "poisson",
                Process::Gamma => "gamma",
                Process::Diurnal => "diurnal",
            }
        );
    }
    let cv = a.cv.unwrap_or(2.0);
    for (flag, given) in [
        ("--tokens-per-day", a.tokens_per_day.is_some()),
        ("--scale", a.scale.is_some()),
        ("--shard", a.shard.is_some()),
        ("--hours", a.hours.is_some()),
    ] {
        if given {
            anyhow::bail!("{flag} needs --day");
        }
    }
    let (Some(requests), Some(rate)) = (a.requests, a.rate) else {
        anyhow::bail!("--requests and --rate are required without --day");
    };
    if requests == 0 {
        // An empty trace is one that replay and plan refuse.
        anyhow::bail!("--requests must be at least 1");
    }
    // The generator checks these too, but its messages cannot name the flags.
    if !(rate.is_finite() && rate > 0.0) {
        anyhow::bail!("--rate must be positive (requests per second), got {rate}");
    }
    if !(0.0..=1.0).contains(&a.batch_fraction) {
        anyhow::bail!(
            "--batch-fraction must be in [0, 1], got {}",
            a.batch_fraction
        );
    }
    if process == Process::Gamma && !(cv.is_finite() && cv > 0.0) {
        anyhow::bail!("--cv must be a positive number, got {cv}");
    }
    let process = match process {
        Process::Poisson => ArrivalProcess::Poisson,
        Process::Gamma => ArrivalProcess::Gamma { cv },
        Process::Diurnal => ArrivalProcess::Diurnal(DiurnalProfile::default()),
    };
    let prefix = match a.prefix_share {
        Some(share) if !(0.0..=1.0).contains(&share) => {
            anyhow::bail!("--prefix-share must be in [0, 1], got {share}")
        }
        Some(share) => Some(PrefixSharing {
            share_fraction: share,
            ..PrefixSharing::default()
        }),
        None => None,
    };
    let cfg = SynthConfig {
        prefix,
        batch_fraction: a.batch_fraction,
        ..SynthConfig::new(process, rate, a.seed)
    };
    let gen = SyntheticTrace::new(cfg).map_err(anyhow::Error::msg)?;
    write_all(&a.out, gen.take(requests as usize))
}

/// `--day`: the whole day (or the shard and hours asked for), streamed to the output.
fn generate_day(a: GenArgs) -> Result<()> {
    let tokens = a
        .tokens_per_day
        .unwrap_or(trace::day::DOUBAO_TOKENS_PER_DAY_DEC_2025);
    if !(tokens.is_finite() && tokens > 0.0) {
        anyhow::bail!("--tokens-per-day must be positive, got {tokens}");
    }
    let scale = a.scale.unwrap_or(1e-6);
    if !(scale.is_finite() && scale > 0.0) {
        anyhow::bail!("--scale must be positive, got {scale}");
    }
    let window = match &a.hours {
        Some(h) => parse_hours(h)?,
        None => 0..24 * HOUR_NS,
    };
    let cfg = DayConfig::doubao(tokens, scale, a.seed);
    let shard = a.shard.unwrap_or(Shard::WHOLE);
    if shard.count > cfg.buckets {
        anyhow::bail!(
            "--shard {}/{}: at most {} shards",
            shard.index,
            shard.count,
            cfg.buckets
        );
    }
    let day = DayTrace::new(&cfg, shard, window).map_err(anyhow::Error::msg)?;
    let limit = a.requests.map_or(usize::MAX, |n| n as usize);
    write_all(&a.out, day.take(limit))
}

const HOUR_NS: u64 = 3_600_000_000_000;

/// `A-B` hours, `0 <= A < B`, as a ns window.
pub(super) fn parse_hours(s: &str) -> Result<std::ops::Range<u64>> {
    let bad = || anyhow::anyhow!("--hours must be A-B with 0 <= A < B (e.g. 0-1), got {s:?}");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: f64 = a.trim().parse().map_err(|_| bad())?;
    let b: f64 = b.trim().parse().map_err(|_| bad())?;
    if !(a.is_finite() && b.is_finite() && 0.0 <= a && a < b) {
        return Err(bad());
    }
    let ns = |h: f64| (h * HOUR_NS as f64).round() as u64;
    Ok(ns(a)..ns(b))
}

fn write_all(out: &Option<PathBuf>, recs: impl Iterator<Item = trace::TraceRecord>) -> Result<()> {
    let out: Box<dyn Write> = match out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(super::stdout::stdout()),
    };
    let mut w = JsonlWriter::new(BufWriter::with_capacity(1 << 16, out));
    for (n, rec) in recs.enumerate() {
        // The readers hold arrivals in signed 64-bit nanoseconds; a generator at a rate
        // so low that it passes them saturates, and would write what no reader takes.
        if rec.arrival_ns > i64::MAX as u64 {
            anyhow::bail!(
                "request {}: its arrival is past the 292 years of simulated time a trace holds; the rate is too low for this many requests",
                n + 1
            );
        }
        w.write(&rec).context("writing the trace")?;
    }
    w.flush().context("writing the trace")?;
    Ok(())
}

fn stats(a: StatsArgs) -> Result<()> {
    let opts = ReadOptions {
        on_error: if a.skip_bad {
            OnError::Skip
        } else {
            OnError::Fail
        },
        ..ReadOptions::default()
    };
    let name = a.file.display().to_string();
    let summary = if name == "-" {
        summarise(TraceReader::new(io::stdin().lock(), "<stdin>", a.format).with_options(opts))?
    } else {
        summarise(trace::open(&a.file, a.format, opts)?)?
    };
    let (stats, first_skipped) = summary;
    let mut out = super::stdout::stdout();
    if a.json {
        let mut v = serde_json::to_value(&stats)?;
        v["file"] = serde_json::Value::String(name);
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &name, &stats)?;
        if let Some(e) = first_skipped {
            writeln!(out, "first skipped line: {e}")?;
        }
    }
    Ok(())
}

fn summarise<R: BufRead>(mut reader: TraceReader<R>) -> Result<(TraceStats, Option<String>)> {
    let stats = TraceStats::of_reader(&mut reader)?;
    Ok((stats, reader.first_skipped().map(|e| e.to_string())))
}

fn print_table(out: &mut impl Write, name: &str, s: &TraceStats) -> io::Result<()> {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |x| format!("{x:.digits$}"));
    writeln!(out, "file              {name}")?;
    writeln!(out, "format            {}", s.format)?;
    writeln!(out, "requests          {}", s.requests)?;
    writeln!(out, "duration          {:.3} s", s.duration_s)?;
    writeln!(out, "mean rate         {} req/s", opt(s.mean_rate_rps, 3))?;
    writeln!(
        out,
        "inter-arrival CV  {}  (1 = Poisson, > 1 bursty)",
        opt(s.interarrival_cv, 3)
    )?;
    writeln!(
        out,
        "tokens            {:>9} {:>7} {:>7} {:>7} {:>7}",
        "mean", "p50", "p90", "p99", "max"
    )?;
    for (label, l) in [("input", &s.input_tokens), ("output", &s.output_tokens)] {
        writeln!(
            out,
            "  {label:<15} {:>9.1} {:>7} {:>7} {:>7} {:>7}",
            l.mean, l.p50, l.p90, l.p99, l.max
        )?;
    }
    if s.prefix_hashed_requests > 0 || s.batch_requests > 0 {
        writeln!(
            out,
            "with hash ids     {}; batch priority {}",
            s.prefix_hashed_requests, s.batch_requests
        )?;
    }
    writeln!(
        out,
        "skipped           {} failed (trace-marked), {} malformed; {} out-of-order arrivals clamped",
        s.skipped_failed, s.skipped_malformed, s.out_of_order
    )
}
