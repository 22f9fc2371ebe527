//! `dujiang load`: an open-loop load test of a running daemon (over gRPC) or of any
//! OpenAI-compatible server (over HTTP), from a trace file or from synthetic Poisson
//! traffic. Prints the same table as `dujiang replay` and writes the same JSON (plus a
//! `load` section) and HTML, so the two can be compared.

use crate::loadgen::{self, Api, Endpoint, LoadConfig, OpenAiOptions, Progress};
use crate::request::{Slo, NANOS_PER_MS, NANOS_PER_SEC};
use crate::sim::html;
use crate::trace::{
    self, ArrivalProcess, Format, LengthDist, OnError, ReadOptions, SynthConfig, SyntheticTrace,
    TraceExt, TraceRecord,
};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server: dujiang's gRPC address (`http://127.0.0.1:50051`, `grpc://host:port`)
    /// or an OpenAI-compatible server's URL (`http://127.0.0.1:8000`, `…/v1`; without a
    /// path `/v1` is added).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The protocol: grpc, openai, or auto: gRPC for a `grpc://` or `grpcs://` target or
    /// port 50051, OpenAI for anything else (port 8000, a `/v1` path, ...).
    #[arg(long, default_value = "auto", value_parser = ["auto", "grpc", "openai"])]
    pub api: String,
    /// dujiang's Admin address, asked for the policy and the pools' chips and prices
    /// (`none`: learn pools from the responses only). Default: `http://127.0.0.1:50052`
    /// with --api grpc, none with --api openai.
    #[arg(long)]
    pub admin_target: Option<String>,
    /// OpenAI endpoint: chat (`/v1/chat/completions`) or completions (`/v1/completions`).
    #[arg(long, default_value = "chat", value_parser = parse_endpoint)]
    pub endpoint: Endpoint,
    /// OpenAI `model` of every request (default: the first id `GET /v1/models` lists).
    #[arg(long)]
    pub model: Option<String>,
    /// OpenAI API key, sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// OpenAI: wall seconds a request may take (retries included) before it counts as a
    /// `timeout` failure.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// OpenAI: send a request refused with 429 or 503 again after its Retry-After, up to
    /// this many times (0: a refusal is counted, as a replay counts a shed request).
    #[arg(long, default_value_t = 0)]
    pub max_retries: u32,
    /// Trace file to send (Azure CSV, BurstGPT CSV, Mooncake JSONL or dujiang JSONL).
    #[arg(long, required_unless_present = "rate", conflicts_with = "rate")]
    pub trace: Option<PathBuf>,
    /// Trace format: auto, azure, burstgpt, mooncake, jsonl.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// Instead of a trace: Poisson arrivals at this many requests per second (simulated).
    #[arg(long, requires = "duration")]
    pub rate: Option<f64>,
    /// With --rate: how long to send, simulated time (`90`, `90s`, `500ms`, `5m`, `1h`).
    #[arg(long, value_parser = parse_duration_s, requires = "rate")]
    pub duration: Option<f64>,
    /// With --rate: prompt lengths: `azure-conv` (lognormal fit of the Azure 2023
    /// conversation trace), a fixed count `N`, or `lognormal:MU,SIGMA`.
    #[arg(long, default_value = "azure-conv")]
    pub input_len: String,
    /// With --rate: output lengths, as --input-len.
    #[arg(long, default_value = "azure-conv")]
    pub output_len: String,
    /// Seed of the synthetic traffic (recorded in the report).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Multiply the trace's request rate, as `dujiang replay --rate-scale`.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Send only the first N requests of the trace.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Compress arrival times this many times; start the daemon with the same value.
    /// Latencies are reported in simulated time (wall × X).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Most requests in flight; a request due beyond it is not sent and counted late.
    #[arg(long)]
    pub concurrency_limit: Option<usize>,
    /// A send starting more than this many wall ms after its due time counts as late.
    #[arg(long, default_value_t = 10.0)]
    pub late_ms: f64,
    /// gRPC: HTTP/2 connections to spread requests over (OpenAI: one HTTP/1.1 connection
    /// per request in flight, reused).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// SLO on time to first token, ms (requests without their own SLO).
    #[arg(long, default_value_t = Slo::default().ttft_ns as f64 / NANOS_PER_MS as f64)]
    pub slo_ttft_ms: f64,
    /// SLO on mean time per output token, ms.
    #[arg(long, default_value_t = Slo::default().tpot_ns as f64 / NANOS_PER_MS as f64)]
    pub slo_tpot_ms: f64,
    /// Skip broken trace lines (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Progress display on stderr: auto (a bar on a terminal, lines otherwise), bar,
    /// lines or off.
    #[arg(long, default_value = "auto", value_parser = parse_progress)]
    pub progress: Progress,
    /// Write the report as JSON (replay's keys plus `load`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with plots.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    match s {
        "chat" => Ok(Endpoint::Chat),
        "completions" => Ok(Endpoint::Completions),
        _ => Err(format!("expected chat or completions, got `{s}`")),
    }
}

fn parse_progress(s: &str) -> Result<Progress, String> {
    match s {
        "auto" => Ok(Progress::Auto),
        "bar" => Ok(Progress::Bar),
        "lines" => Ok(Progress::Lines),
        "off" => Ok(Progress::Off),
        _ => Err(format!("expected auto, bar, lines or off, got `{s}`")),
    }
}

/// Seconds from `90`, `90s`, `500ms`, `5m` or `1h`.
fn parse_duration_s(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 90s, 500ms, 5m)"))?;
    let factor = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (ms, s, m or h)")),
    };
    let secs = v * factor;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration must be positive, got `{s}`"));
    }
    Ok(secs)
}

/// A length distribution from `azure-conv`, `N` or `lognormal:MU,SIGMA`.
fn parse_length(flag: &str, s: &str, azure: LengthDist) -> Result<LengthDist> {
    if s == "azure-conv" {
        return Ok(azure);
    }
    if let Ok(n) = s.parse::<u32>() {
        if n == 0 {
            bail!("{flag} must be at least 1 token");
        }
        return Ok(LengthDist::Fixed(n));
    }
    if let Some(rest) = s.strip_prefix("lognormal:") {
        if let Some((mu, sigma)) = rest.split_once(',') {
            if let (Ok(mu), Ok(sigma)) = (mu.trim().parse(), sigma.trim().parse()) {
                return Ok(LengthDist::LogNormal {
                    mu,
                    sigma,
                    min: 1,
                    max: 32_768,
                });
            }
        }
    }
    bail!("{flag} `{s}`: expected azure-conv, a token count, or lognormal:MU,SIGMA")
}

type Records = Box<dyn Iterator<Item = Result<TraceRecord, anyhow::Error>> + Send>;

/// The traffic to send, its name in the report and (for the progress bar) its size.
fn traffic(args: &Args) -> Result<(Records, String, Option<u64>)> {
    if let Some(path) = &args.trace {
        if !(args.rate_scale.is_finite() && args.rate_scale > 0.0) {
            bail!(
                "--rate-scale must be a positive number, got {}",
                args.rate_scale
            );
        }
        let opts = ReadOptions {
            on_error: if args.skip_bad_lines {
                OnError::Skip
            } else {
                OnError::Fail
            },
            ..ReadOptions::default()
        };
        let limit = args.limit.unwrap_or(u64::MAX);
        if limit == 0 {
            bail!("--limit must be at least 1");
        }
        // A first pass counts the requests for the progress bar and finds a broken file
        // (or one with no request) before anything is sent, and says what it skipped.
        let mut count = 0u64;
        let mut reader = trace::open(path, args.format, opts)?;
        for rec in reader.by_ref().limit(limit) {
            rec?;
            count += 1;
        }
        let tally = super::replay_source::Tally {
            counts: reader.counts(),
            first_skipped: reader.first_skipped().cloned(),
        };
        for note in tally.notes(&path.display().to_string())? {
            eprintln!("note: {note}");
        }
        let records = trace::open(path, args.format, opts)?
            .scale_rate(args.rate_scale)
            .limit(limit)
            .map(|r| r.map_err(anyhow::Error::from));
        return Ok((Box::new(records), path.display().to_string(), Some(count)));
    }
    let (Some(rate), Some(duration)) = (args.rate, args.duration) else {
        bail!("give --trace FILE, or --rate R with --duration D");
    };
    let cfg = SynthConfig {
        input: parse_length("--input-len", &args.input_len, LengthDist::AZURE_CONV_INPUT)?,
        output: parse_length(
            "--output-len",
            &args.output_len,
            LengthDist::AZURE_CONV_OUTPUT,
        )?,
        ..SynthConfig::new(ArrivalProcess::Poisson, rate, args.seed)
    };
    let gen = SyntheticTrace::new(cfg).map_err(|e| anyhow::anyhow!("--rate: {e}"))?;
    let end = (duration * NANOS_PER_SEC as f64) as u64;
    let records = gen
        .window(0, end)
        .limit(args.limit.unwrap_or(u64::MAX))
        .map(Ok);
    let name = format!(
        "synthetic Poisson {rate} req/s for {duration} s (input {}, output {}, seed {})",
        args.input_len, args.output_len, args.seed
    );
    Ok((Box::new(records), name, Some((rate * duration) as u64)))
}

pub fn run(args: Args) -> Result<()> {
    super::check_output("--json", args.json.as_deref())?;
    super::check_output("--html", args.html.as_deref())?;
    for (name, v) in [
        ("--slo-ttft-ms", args.slo_ttft_ms),
        ("--slo-tpot-ms", args.slo_tpot_ms),
        ("--late-ms", args.late_ms),
        ("--request-timeout", args.request_timeout * 1e3),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number of milliseconds, got {v}");
        }
    }
    let api = match args.api.as_str() {
        "auto" => loadgen::detect_api(&args.target),
        other => other,
    };
    let api = match api {
        "grpc" => Api::Grpc,
        _ => Api::OpenAi(OpenAiOptions {
            endpoint: args.endpoint,
            model: args.model.clone(),
            api_key: args.api_key.clone().filter(|k| !k.is_empty()),
            request_timeout: Duration::from_secs_f64(args.request_timeout.min(1e9)),
            max_retries: args.max_retries,
        }),
    };
    let admin_target = match (&args.admin_target, &api) {
        (Some(t), _) => Some(t.clone()).filter(|t| t != "none"),
        (None, Api::Grpc) => Some("http://127.0.0.1:50052".to_string()),
        (None, Api::OpenAi(_)) => None,
    };
    let (records, trace_name, expected) = traffic(&args)?;
    let cfg = LoadConfig {
        target: args.target.clone(),
        api,
        admin_target,
        time_scale: args.time_scale,
        concurrency_limit: args.concurrency_limit,
        late_after: Duration::from_secs_f64(args.late_ms / 1e3),
        connections: args.connections,
        slo: Slo {
            ttft_ns: (args.slo_ttft_ms * NANOS_PER_MS as f64) as u64,
            tpot_ns: (args.slo_tpot_ms * NANOS_PER_MS as f64) as u64,
        },
        progress: args.progress,
        expected_requests: expected,
        trace_name,
        seed: args.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(loadgen::run(cfg, records))?;
    out!("{}", report.to_table())?;
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&report.report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // A target nobody listens on is not a load test's result: the report is written for
    // the record, and the command fails.
    let s = &report.load;
    if s.sent > 0 && s.status_codes.get("connect_error") == Some(&s.sent) {
        bail!(
            "no request reached {}: all {} failed to connect; is the server running there?",
            args.target,
            s.sent
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_lengths_parse() {
        assert_eq!(parse_duration_s("90").unwrap(), 90.0);
        assert_eq!(parse_duration_s("500ms").unwrap(), 0.5);
        assert_eq!(parse_duration_s("2m").unwrap(), 120.0);
        assert!(parse_duration_s("5 parsecs").is_err());
        assert!(parse_duration_s("-1s").is_err());
        assert_eq!(
            parse_length("--input-len", "128", LengthDist::AZURE_CONV_INPUT).unwrap(),
            LengthDist::Fixed(128)
        );
        let err = parse_length("--output-len", "lots", LengthDist::AZURE_CONV_OUTPUT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--output-len `lots`"), "{err}");
    }
}
