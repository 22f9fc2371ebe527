//! Chip and model specifications: the public numbers a performance model is built from.
//! Catalogue files (`config/chips.toml`, `config/models.toml`) deserialise into these.

use serde::{Deserialize, Serialize};

/// One accelerator kind, as sold. Efficiencies and overheads are calibrated, not datasheet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipSpec {
    /// Catalogue key, e.g. `ascend-910b`. Filled from the table name when loading.
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub vendor: String,
    /// Made in China (Huawei, Cambricon): counts towards domestic-share targets.
    pub domestic: bool,
    /// Dense BF16/FP16 TFLOPS per chip.
    pub bf16_tflops: f64,
    /// Dense INT8 or FP8 TOPS per chip; used when a model's weights are 8-bit.
    pub int8_tops: f64,
    pub memory_gb: f64,
    pub bandwidth_tbps: f64,
    /// Scale-up link bandwidth per chip, one way (NVLink, HCCS, MLU-Link).
    pub link_gbps: f64,
    pub watts: f64,
    pub price_per_hour_usd: f64,
    /// Model FLOPs utilisation reached in practice (0..1].
    pub compute_efficiency: f64,
    /// Memory bandwidth utilisation reached in practice (0..1].
    pub memory_efficiency: f64,
    /// Fixed time per engine step: kernel launches, scheduling, sampling. Eager-mode stacks
    /// pay more than CUDA-graph ones.
    pub step_overhead_us: f64,
    /// Host time per model layer per step. Eager-mode stacks (torch_npu, Cambricon's
    /// torch_mlu) dispatch every layer's kernels from Python, so their overhead grows with
    /// depth; CUDA-graph stacks replay a captured graph and pay almost nothing per layer.
    pub layer_overhead_us: f64,
    /// Latency of one tensor-parallel all-reduce, on top of its bandwidth term.
    pub allreduce_latency_us: f64,
    /// Fraction of device memory the serving engine may use (vLLM's
    /// `gpu_memory_utilization`).
    pub memory_utilization: f64,
    /// Memory held back per chip for activations and runtime workspace.
    pub reserve_gb: f64,
    /// Largest decode batch the software stack runs well on this chip.
    pub max_batch: u32,
}

/// One model architecture. KV bytes per token are derived, not stated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub layers: u32,
    pub hidden_size: u32,
    pub attention_heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// Total parameters, billions.
    pub params_total_b: f64,
    /// Parameters a token passes through, billions (equal to total for dense models).
    pub params_active_b: f64,
    /// Routed experts per MoE layer; 0 for a dense model.
    #[serde(default)]
    pub experts: u32,
    /// Routed experts each token activates.
    #[serde(default)]
    pub experts_per_token: u32,
    /// Bytes per weight: 2 for BF16, 1 for FP8/INT8.
    pub weight_bytes: f64,
    /// Bytes per KV-cache element.
    pub kv_bytes: f64,
    /// Multi-head latent attention: the compressed KV rank plus the decoupled RoPE key
    /// dimension replace `2 · kv_heads · head_dim` per layer (DeepSeek-V2/V3).
    #[serde(default)]
    pub mla_kv_lora_rank: u32,
    #[serde(default)]
    pub mla_rope_head_dim: u32,
    /// Longest context (prompt + output) the model accepts.
    pub max_context: u32,
}

/// A value that cannot describe real hardware or a real model: the field (relative to the
/// catalogue entry) and why.
pub type SpecViolation = (&'static str, String);

fn positive(field: &'static str, v: f64) -> Result<(), SpecViolation> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err((field, format!("must be a positive number, got {v}")))
    }
}

fn non_negative(field: &'static str, v: f64) -> Result<(), SpecViolation> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err((field, format!("must be zero or more, got {v}")))
    }
}

fn fraction(field: &'static str, v: f64) -> Result<(), SpecViolation> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err((field, format!("must be in (0, 1], got {v}")))
    }
}

fn at_least_one(field: &'static str, v: u32) -> Result<(), SpecViolation> {
    if v >= 1 {
        Ok(())
    } else {
        Err((field, "must be at least 1".to_string()))
    }
}

fn not_blank(field: &'static str, v: &str) -> Result<(), SpecViolation> {
    if v.trim().is_empty() {
        Err((field, "must not be empty".to_string()))
    } else {
        Ok(())
    }
}

impl ChipSpec {
    /// Rejects values no real chip has: the first problem found, by field.
    pub fn validate(&self) -> Result<(), SpecViolation> {
        not_blank("name", &self.name)?;
        not_blank("vendor", &self.vendor)?;
        positive("bf16_tflops", self.bf16_tflops)?;
        positive("int8_tops", self.int8_tops)?;
        positive("memory_gb", self.memory_gb)?;
        positive("bandwidth_tbps", self.bandwidth_tbps)?;
        positive("link_gbps", self.link_gbps)?;
        positive("watts", self.watts)?;
        non_negative("price_per_hour_usd", self.price_per_hour_usd)?;
        fraction("compute_efficiency", self.compute_efficiency)?;
        fraction("memory_efficiency", self.memory_efficiency)?;
        non_negative("step_overhead_us", self.step_overhead_us)?;
        non_negative("layer_overhead_us", self.layer_overhead_us)?;
        non_negative("allreduce_latency_us", self.allreduce_latency_us)?;
        fraction("memory_utilization", self.memory_utilization)?;
        non_negative("reserve_gb", self.reserve_gb)?;
        if self.reserve_gb >= self.memory_gb * self.memory_utilization {
            return Err((
                "reserve_gb",
                format!(
                    "{} GB leaves nothing of the {} GB × {} the engine may use",
                    self.reserve_gb, self.memory_gb, self.memory_utilization
                ),
            ));
        }
        at_least_one("max_batch", self.max_batch)
    }
}

impl ModelSpec {
    /// Rejects architectures that cannot exist: the first problem found, by field.
    pub fn validate(&self) -> Result<(), SpecViolation> {
        not_blank("name", &self.name)?;
        at_least_one("layers", self.layers)?;
        at_least_one("hidden_size", self.hidden_size)?;
        at_least_one("attention_heads", self.attention_heads)?;
        at_least_one("kv_heads", self.kv_heads)?;
        at_least_one("head_dim", self.head_dim)?;
        if self.kv_heads > self.attention_heads
            || !self.attention_heads.is_multiple_of(self.kv_heads)
        {
            return Err((
                "kv_heads",
                format!(
                    "{} KV heads must divide the {} attention heads (grouped-query attention)",
                    self.kv_heads, self.attention_heads
                ),
            ));
        }
        positive("params_total_b", self.params_total_b)?;
        positive("params_active_b", self.params_active_b)?;
        if self.params_active_b > self.params_total_b {
            return Err((
                "params_active_b",
                format!(
                    "{}B active exceeds {}B total",
                    self.params_active_b, self.params_total_b
                ),
            ));
        }
        if self.experts_per_token > self.experts {
            return Err((
                "experts_per_token",
                format!(
                    "{} experts per token but only {} experts",
                    self.experts_per_token, self.experts
                ),
            ));
        }
        if self.experts > 0 && self.experts_per_token == 0 {
            return Err((
                "experts_per_token",
                "an MoE model (experts > 0) must route each token to at least 1 expert".into(),
            ));
        }
        if self.experts == 0 && self.params_active_b != self.params_total_b {
            return Err((
                "params_active_b",
                "a dense model (no experts) uses every parameter per token: must equal params_total_b"
                    .into(),
            ));
        }
        for (field, bytes) in [
            ("weight_bytes", self.weight_bytes),
            ("kv_bytes", self.kv_bytes),
        ] {
            if !(bytes.is_finite() && bytes > 0.0 && bytes <= 4.0) {
                return Err((
                    field,
                    format!("must be in (0, 4] bytes per element, got {bytes}"),
                ));
            }
        }
        if (self.mla_kv_lora_rank == 0) != (self.mla_rope_head_dim == 0) {
            return Err((
                "mla_rope_head_dim",
                "multi-head latent attention needs both mla_kv_lora_rank and mla_rope_head_dim (or neither)"
                    .into(),
            ));
        }
        at_least_one("max_context", self.max_context)
    }

    /// KV-cache bytes one token occupies across all layers.
    pub fn kv_bytes_per_token(&self) -> f64 {
        let per_layer_elems = if self.mla_kv_lora_rank > 0 {
            f64::from(self.mla_kv_lora_rank + self.mla_rope_head_dim)
        } else {
            2.0 * f64::from(self.kv_heads) * f64::from(self.head_dim)
        };
        per_layer_elems * f64::from(self.layers) * self.kv_bytes
    }

    pub fn is_moe(&self) -> bool {
        self.experts > 0 && self.experts_per_token > 0
    }

    /// Parameters of one routed expert and of everything that is not a routed expert
    /// (attention, shared experts, embeddings), in billions. Derived from the totals:
    /// total = shared + E·x and active = shared + k·x.
    pub fn expert_split_b(&self) -> (f64, f64) {
        if !self.is_moe() || self.experts <= self.experts_per_token {
            return (0.0, self.params_total_b);
        }
        let per_expert = (self.params_total_b - self.params_active_b)
            / f64::from(self.experts - self.experts_per_token);
        let shared = self.params_active_b - f64::from(self.experts_per_token) * per_expert;
        (per_expert, shared.max(0.0))
    }

    pub fn weight_bytes_total(&self) -> f64 {
        self.params_total_b * 1e9 * self.weight_bytes
    }
}
