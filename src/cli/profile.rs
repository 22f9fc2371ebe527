//! `dujiang profile`: a readable sweep of one chip × engine × model × tp × dtype performance
//! model, or with `--json` one point of it as a JSON object for scripts.

use crate::profile::{Dtype, MeasuredTables, PerfModel, StepShape};
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Block size of the KV cache reported in block counts (vLLM's default).
const BLOCK_TOKENS: u32 = 16;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Chip id from the catalogue (e.g. h20, ascend-910b).
    #[arg(long)]
    pub chip: String,
    /// Model id from the catalogue (e.g. llama-3-8b).
    #[arg(long)]
    pub model: String,
    /// Serving engine id (config/engines.toml, e.g. vllm-0.7, sglang, vllm-ascend-0.18);
    /// default: the chip's default engine.
    #[arg(long)]
    pub engine: Option<String>,
    /// Weight and matmul format: bf16, fp8 or int8; default: the model's release format
    /// as the chip runs it.
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Tensor-parallel degree: chips serving one instance.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub tp: u32,
    #[command(flatten)]
    pub catalogue: super::CatalogueArgs,
    /// Measured step-time tables; one matching chip, model and tp replaces the roofline.
    #[arg(long, value_name = "FILE")]
    pub measured: Option<PathBuf>,
    /// Prompt tokens for the single-point (`--json`) prefill time.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub prompt: u64,
    /// Decode batch (sequences) for the single-point output.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Context per sequence for decode steps, in both the sweep and the single point.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub context: u64,
    /// Print one JSON object for --prompt/--batch/--context instead of the sweep.
    #[arg(long)]
    pub json: bool,
}

/// One operating point of a performance model, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct ProfilePoint {
    pub chip: String,
    pub engine: String,
    pub dtype: Dtype,
    pub model: String,
    pub tp: u32,
    pub measured_table: Option<String>,
    pub prompt_tokens: u64,
    pub batch: u64,
    pub context: u64,
    pub prefill_ms: f64,
    pub decode_step_ms: f64,
    /// Output tokens per second of the whole instance at `batch` sequences.
    pub decode_tokens_per_s: f64,
    pub decode_tokens_per_s_per_chip: f64,
    pub kv_capacity_tokens: u64,
    pub kv_capacity_blocks: u64,
    /// Whether `batch` sequences of `context` tokens fit in the KV cache.
    pub kv_fits: bool,
    /// Most sequences of `context` tokens one step can hold (KV and the chip's max batch).
    pub largest_batch: u64,
    pub price_per_hour_usd: f64,
}

pub fn run(args: Args) -> Result<()> {
    let perf = build(&args)?;
    if args.json {
        let point = point(&perf, args.prompt, args.batch, args.context);
        outln!("{}", serde_json::to_string_pretty(&point)?)?;
    } else {
        out!("{}", sweep(&perf, args.context))?;
    }
    Ok(())
}

fn build(args: &Args) -> Result<PerfModel> {
    let cat = args.catalogue.load()?;
    let mut perf = cat
        .perf(
            &args.chip,
            args.engine.as_deref(),
            &args.model,
            args.tp,
            args.dtype,
        )
        .map_err(|e| anyhow!(e))?;
    let (chip, model) = (perf.chip.clone(), perf.model.clone());
    if let Some(path) = &args.measured {
        let tables = MeasuredTables::load(path)?;
        let table = tables
            .find(&chip.id, &model.id, args.tp)
            .with_context(|| {
                format!(
                    "{} has no table for {} on {} x{}",
                    path.display(),
                    model.id,
                    chip.id,
                    args.tp
                )
            })?
            .clone();
        perf = perf.with_table(table)?;
    }
    Ok(perf)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn largest_batch(perf: &PerfModel, context: u64) -> u64 {
    (perf.kv_capacity_tokens() / context.max(1)).min(u64::from(perf.max_batch()))
}

/// The numbers of one operating point, computed from the library's model.
pub fn point(perf: &PerfModel, prompt: u64, batch: u64, context: u64) -> ProfilePoint {
    let step = perf.decode_step_ns(batch, batch * context);
    let tokens_per_s = if step == 0 {
        0.0
    } else {
        batch as f64 * 1e9 / step as f64
    };
    ProfilePoint {
        chip: perf.chip.id.clone(),
        engine: perf.engine.engine.clone(),
        dtype: perf.dtype,
        model: perf.model.id.clone(),
        tp: perf.tp,
        measured_table: perf.table().map(|t| t.name.clone()),
        prompt_tokens: prompt,
        batch,
        context,
        prefill_ms: ms(perf.prefill_ns(prompt, 0)),
        decode_step_ms: ms(step),
        decode_tokens_per_s: tokens_per_s,
        decode_tokens_per_s_per_chip: tokens_per_s / f64::from(perf.tp),
        kv_capacity_tokens: perf.kv_capacity_tokens(),
        kv_capacity_blocks: perf.kv_capacity_blocks(BLOCK_TOKENS),
        kv_fits: batch * context <= perf.kv_capacity_tokens(),
        largest_batch: largest_batch(perf, context),
        price_per_hour_usd: perf.price_per_hour_usd(),
    }
}

/// The human-readable sweep: prefill 128…32k tokens, decode batch 1…256 at `context`.
pub fn sweep(perf: &PerfModel, context: u64) -> String {
    let mut out = String::new();
    let chip = &perf.chip;
    let model = &perf.model;
    let _ = writeln!(
        out,
        "{} on {} x{} ({}{}), ${:.2}/h",
        model.name,
        chip.name,
        perf.tp,
        chip.vendor,
        if chip.domestic { ", domestic" } else { "" },
        perf.price_per_hour_usd()
    );
    let _ = writeln!(
        out,
        "engine {} (coefficients for `{}`), {}",
        perf.engine.engine, perf.engine.on, perf.dtype
    );
    match perf.table() {
        Some(t) => {
            let _ = writeln!(
                out,
                "step times: measured table `{}` ({})",
                t.name, t.source
            );
        }
        None => {
            let _ = writeln!(out, "step times: roofline model");
        }
    }
    let weights_gb = model.weight_bytes_total() / 1e9 / f64::from(perf.tp);
    let _ = writeln!(
        out,
        "weights {weights_gb:.1} GB per chip; KV {:.1} KiB per token",
        model.kv_bytes_per_token() / 1024.0
    );
    let _ = writeln!(
        out,
        "KV capacity: {} tokens = {} blocks of {BLOCK_TOKENS}",
        perf.kv_capacity_tokens(),
        perf.kv_capacity_blocks(BLOCK_TOKENS)
    );
    let _ = writeln!(
        out,
        "largest batch at {context} tokens of context: {} (KV holds {}, engine max_batch {})",
        largest_batch(perf, context),
        perf.kv_capacity_tokens() / context.max(1),
        perf.max_batch()
    );

    let _ = writeln!(out, "\nprefill (one step, nothing cached)");
    let _ = writeln!(
        out,
        "{:>8}  {:>10}  {:>12}",
        "tokens", "time ms", "tokens/s"
    );
    let mut n = 128u64;
    while n <= 32 * 1024 {
        let ns = perf.step_ns(&StepShape::prefill(n, 0));
        let note = if n > u64::from(model.max_context) {
            "  (beyond the model's max context)"
        } else if n > perf.kv_capacity_tokens() {
            "  (beyond KV capacity)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{n:>8}  {:>10.2}  {:>12.0}{note}",
            ms(ns),
            n as f64 * 1e9 / ns as f64
        );
        n *= 2;
    }

    let _ = writeln!(out, "\ndecode at {context} tokens of context per sequence");
    let _ = writeln!(
        out,
        "{:>8}  {:>10}  {:>14}  {:>14}",
        "batch", "step ms", "tokens/s", "tokens/s/chip"
    );
    let mut b = 1u64;
    while b <= 256 {
        let step = perf.decode_step_ns(b, b * context);
        let tps = b as f64 * 1e9 / step as f64;
        let note = if b * context > perf.kv_capacity_tokens() {
            "  (KV does not fit)"
        } else if b > u64::from(perf.max_batch()) {
            "  (above max_batch)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{b:>8}  {:>10.2}  {tps:>14.0}  {:>14.0}{note}",
            ms(step),
            tps / f64::from(perf.tp)
        );
        b *= 2;
    }
    out
}
