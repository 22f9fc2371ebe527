//! `dujiang trace gen` writes a seeded synthetic trace as dujiang JSONL; `dujiang trace
//! stats` summarises any supported trace (rate, burstiness, length percentiles, skips).

use crate::trace::{
    self, ArrivalProcess, DiurnalProfile, Format, JsonlWriter, OnError, PrefixSharing, ReadOptions,
    SynthConfig, SyntheticTrace, TraceReader, TraceStats,
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

#[derive(clap::Args, Debug)]
pub struct GenArgs {
    #[arg(long, value_enum, default_value_t = Process::Poisson)]
    pub process: Process,
    /// Number of requests to write.
    #[arg(long)]
    pub requests: u64,
    /// Mean arrival rate, requests per second.
    #[arg(long)]
    pub rate: f64,
    /// Inter-arrival coefficient of variation for --process gamma (> 1 is bursty).
    #[arg(long, default_value_t = 2.0)]
    pub cv: f64,
    /// Seed of the random generator: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of requests with batch priority (0 … 1).
    #[arg(long, default_value_t = 0.0)]
    pub batch_fraction: f64,
    /// Share of requests starting with one of 8 shared 2-block (1,024-token) prefixes;
    /// setting it also gives every request its 512-token block hash ids.
    #[arg(long)]
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
    let process = match a.process {
        Process::Poisson => ArrivalProcess::Poisson,
        Process::Gamma => ArrivalProcess::Gamma { cv: a.cv },
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
        ..SynthConfig::new(process, a.rate, a.seed)
    };
    let gen = SyntheticTrace::new(cfg).map_err(anyhow::Error::msg)?;
    let out: Box<dyn Write> = match &a.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let mut w = JsonlWriter::new(BufWriter::with_capacity(1 << 16, out));
    for rec in gen.take(a.requests as usize) {
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
    let mut out = io::stdout().lock();
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
