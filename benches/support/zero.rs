//! A chip whose every step takes (almost) no time: the H20 with peaks raised to 10^12 and
//! every per-step and per-layer overhead set to zero, so front-end and proxy benches
//! measure the daemon's own work, not modelled GPU time.

use dujiang::profile::{Catalogue, Dtype, EngineCoefficients, PerfModel};
use std::sync::Arc;

/// The zero-latency chip serving llama-3-8b at tp 1.
pub fn zero_latency_perf() -> Arc<PerfModel> {
    let cat = Catalogue::embedded();
    let mut chip = cat.chip("h20").unwrap().clone();
    chip.id = "zero".into();
    chip.bf16_tflops = 1e12;
    chip.int8_tops = Some(1e12);
    chip.bandwidth_tbps = 1e12;
    chip.link_gbps = 1e12;
    let mut engine = cat.engine_for("h20", None).unwrap();
    for (field, _, _) in EngineCoefficients::FITTED {
        if field.ends_with("_us") || *field == "prefill_half_tokens" {
            engine.coefficients.set(field, 0.0).unwrap();
        }
    }
    let model = cat.model("llama-3-8b").unwrap();
    Arc::new(PerfModel::new(&chip, &engine, model, 1, Dtype::Bf16).unwrap())
}
