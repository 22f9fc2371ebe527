//! Chip and model specifications: the public numbers a performance model is built from.
//! Catalogue files (`config/chips.toml`, `config/models.toml`) deserialise into these.
//! How fast software drives the silicon is not here: see `engine.rs`.

use serde::{Deserialize, Serialize};

/// One accelerator kind, as sold: silicon only. How fast software drives it (efficiencies,
/// overheads, batch limits) lives in the engine catalogue (`config/engines.toml`), keyed by
/// `family`.
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
    /// Which engine coefficients apply (`hopper`, `ampere`, `ascend`, `cambricon`): chips of
    /// one family share an instruction set, memory system and software port.
    pub family: String,
    /// Dies in one package. Every figure here is for the whole package; the serving
    /// runtime addresses each die as its own device, so a `tp`-package instance runs
    /// tensor parallelism over `tp · dies` ranks.
    #[serde(default = "one_die")]
    pub dies: u32,
    /// Dense BF16/FP16 TFLOPS per package.
    pub bf16_tflops: f64,
    /// Dense FP8 TFLOPS; absent on chips without FP8 tensor cores (A100, Ascend, MLU).
    #[serde(default)]
    pub fp8_tflops: Option<f64>,
    /// Dense INT8 TOPS; absent where the chip has no INT8 matrix path worth using.
    #[serde(default)]
    pub int8_tops: Option<f64>,
    pub memory_gb: f64,
    pub bandwidth_tbps: f64,
    /// Scale-up link bandwidth per package, one way (NVLink, HCCS, MLU-Link).
    pub link_gbps: f64,
    pub watts: f64,
    pub price_per_hour_usd: f64,
}

fn one_die() -> u32 {
    1
}

/// Number format of weights and activations in the matrix multiplies. KV-cache precision is
/// the model's (`kv_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Bf16,
    Fp8,
    Int8,
}

impl Dtype {
    pub const ALL: [Dtype; 3] = [Dtype::Bf16, Dtype::Fp8, Dtype::Int8];

    /// Bytes per weight.
    pub fn bytes(self) -> f64 {
        match self {
            Dtype::Bf16 => 2.0,
            Dtype::Fp8 | Dtype::Int8 => 1.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::Fp8 => "fp8",
            Dtype::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bf16" => Ok(Dtype::Bf16),
            "fp8" => Ok(Dtype::Fp8),
            "int8" => Ok(Dtype::Int8),
            other => Err(format!("unknown dtype `{other}`; known: bf16, fp8, int8")),
        }
    }
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
    /// MLP width (config.json `intermediate_size`); informational, 0 when not stated.
    #[serde(default)]
    pub intermediate_size: u32,
    /// Vocabulary size (config.json `vocab_size`); informational, 0 when not stated.
    #[serde(default)]
    pub vocab_size: u32,
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

pub(super) fn positive(field: &'static str, v: f64) -> Result<(), SpecViolation> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err((field, format!("must be a positive number, got {v}")))
    }
}

pub(super) fn non_negative(field: &'static str, v: f64) -> Result<(), SpecViolation> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err((field, format!("must be zero or more, got {v}")))
    }
}

pub(super) fn fraction(field: &'static str, v: f64) -> Result<(), SpecViolation> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err((field, format!("must be in (0, 1], got {v}")))
    }
}

pub(super) fn at_least_one(field: &'static str, v: u32) -> Result<(), SpecViolation> {
    if v >= 1 {
        Ok(())
    } else {
        Err((field, "must be at least 1".to_string()))
    }
}

pub(super) fn not_blank(field: &'static str, v: &str) -> Result<(), SpecViolation> {
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
        not_blank("family", &self.family)?;
        at_least_one("dies", self.dies)?;
        positive("bf16_tflops", self.bf16_tflops)?;
        if let Some(v) = self.fp8_tflops {
            positive("fp8_tflops", v)?;
        }
        if let Some(v) = self.int8_tops {
            positive("int8_tops", v)?;
        }
        positive("memory_gb", self.memory_gb)?;
        positive("bandwidth_tbps", self.bandwidth_tbps)?;
        positive("link_gbps", self.link_gbps)?;
        positive("watts", self.watts)?;
        non_negative("price_per_hour_usd", self.price_per_hour_usd)
    }

    /// Dense peak for matrix multiplies in `dtype`, TFLOPS per package; `None` if the chip
    /// has no such tensor-core path.
    pub fn peak_tflops(&self, dtype: Dtype) -> Option<f64> {
        match dtype {
            Dtype::Bf16 => Some(self.bf16_tflops),
            Dtype::Fp8 => self.fp8_tflops,
            Dtype::Int8 => self.int8_tops,
        }
    }

    /// One die of a multi-die package, as the runtime sees it: every package figure
    /// divided by `dies`. A measurement taken on one die (e.g. AccelMark's "910C one die")
    /// is a `tp = 1` point of this chip.
    pub fn one_die(&self) -> ChipSpec {
        let d = f64::from(self.dies.max(1));
        ChipSpec {
            id: format!("{}-die", self.id),
            name: format!("{} (one of {} dies)", self.name, self.dies),
            vendor: self.vendor.clone(),
            domestic: self.domestic,
            family: self.family.clone(),
            dies: 1,
            bf16_tflops: self.bf16_tflops / d,
            fp8_tflops: self.fp8_tflops.map(|v| v / d),
            int8_tops: self.int8_tops.map(|v| v / d),
            memory_gb: self.memory_gb / d,
            bandwidth_tbps: self.bandwidth_tbps / d,
            link_gbps: self.link_gbps / d,
            watts: self.watts / d,
            price_per_hour_usd: self.price_per_hour_usd / d,
        }
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

    /// The format the weights are released in: 8-bit releases (DeepSeek-V3/R1) are FP8.
    pub fn native_dtype(&self) -> Dtype {
        if self.weight_bytes <= 1.0 {
            Dtype::Fp8
        } else {
            Dtype::Bf16
        }
    }

    pub fn weight_bytes_total(&self) -> f64 {
        self.params_total_b * 1e9 * self.weight_bytes
    }
}
