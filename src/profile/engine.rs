//! Serving engines: the software half of a performance model. The same silicon runs at
//! very different speeds under vLLM 0.7, vLLM 0.20, SGLang, vLLM-Ascend or MindIE (graph
//! replay or eager dispatch, fused or unfused kernels, scheduler cost per step), so those
//! coefficients live here, per engine and chip family, apart from the datasheet figures in
//! `config/chips.toml`. `config/engines.toml` is embedded; `dujiang calibrate` fits the
//! coefficients to measured points and writes an overlay in the same format.
//!
//! ```toml
//! [default_engine]                     # chip id or family → engine id
//! hopper = "vllm-0.7"
//!
//! [engines."vllm-0.7"]
//! name = "vLLM 0.7.3"
//! source = "github.com/vllm-project/vllm v0.7.3"
//!
//! [engines."vllm-0.7".on.hopper]       # a family, or a chip id (which wins over its family)
//! prefill_efficiency = 0.7
//! # … every EngineCoefficients field
//! ```

use super::spec::{at_least_one, fraction, non_negative, not_blank, ChipSpec, SpecViolation};
use crate::config::{parse_toml, ConfigError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How one serving engine drives one chip family. The fitted fields each have physical
/// bounds ([`EngineCoefficients::FITTED`]); the last four are deployment settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineCoefficients {
    /// Fraction of the dtype's dense peak that large prefill GEMMs reach.
    pub prefill_efficiency: f64,
    /// Tokens in a step at which prefill GEMMs reach half of `prefill_efficiency`: the
    /// efficiency at `n` tokens is `prefill_efficiency · n / (n + prefill_half_tokens)`, so
    /// small chunks leave tensor cores idle (tile quantisation, too few waves).
    pub prefill_half_tokens: f64,
    /// Fraction of peak the decode GEMMs reach per decoding token. Decode feeds a GEMM one
    /// row per sequence, so this is a small-M efficiency, fitted apart from prefill's.
    pub decode_compute_efficiency: f64,
    /// Fraction of memory bandwidth reached streaming the weights (decode MBU).
    pub memory_efficiency: f64,
    /// Fraction of memory bandwidth reached reading the KV cache in attention: the memory
    /// cost that grows with context. Paged KV is gathered block by block, and one long
    /// sequence gives the attention kernel only its KV heads (and context splits) to spread
    /// over the cores, so it need not stream as fast as the weights' large contiguous
    /// GEMV reads; only points that read much KV beside the weights (long-context or
    /// large-batch decode) can tell it apart from `memory_efficiency`. An entry that omits
    /// it gets `memory_efficiency`, the one figure both used before they were separated.
    #[serde(default = "unset")]
    pub kv_read_efficiency: f64,
    /// New tokens (query rows) in a step at which KV reads reach half of
    /// `kv_read_efficiency`: the efficiency at `n` tokens is `kv_read_efficiency · n /
    /// (n + kv_read_half_tokens)`. An attention kernel that spreads its work over query
    /// rows and KV heads only leaves most cores idle for one decoding sequence (a batch-1
    /// step of a GQA model has 8 KV heads of work); kernels that also split the context
    /// (Flash-Decoding, vLLM's paged attention v2) have ~0. Absent means 0.
    #[serde(default)]
    pub kv_read_half_tokens: f64,
    /// Fraction of the BF16 peak reached by attention arithmetic (score and value mixing
    /// against the context): the cost that grows with context length.
    pub attention_efficiency: f64,
    /// Host time of a step that carries prompt tokens: scheduling, input preparation,
    /// sampling. Engines that capture graphs only for decode batches run these eagerly.
    pub prefill_step_overhead_us: f64,
    /// Host dispatch per model layer in those steps (eager kernels launched one by one).
    pub prefill_layer_overhead_us: f64,
    /// Host time of a pure decode step. Graph replay (CUDA graphs, ACL graphs) leaves
    /// only scheduling and sampling here.
    pub decode_step_overhead_us: f64,
    /// Host dispatch per layer of a pure decode step: large in eager mode, ~0 when the
    /// step is replayed as a captured graph.
    pub decode_layer_overhead_us: f64,
    /// Host time per decoding sequence per step: scheduler bookkeeping, sampling and
    /// detokenising grow with the batch (large in vLLM 0.7's Python V0 engine).
    pub decode_seq_overhead_us: f64,
    /// Latency of one tensor-parallel collective (two per layer when there are ranks to
    /// reduce over), on top of its bandwidth term, in pure decode steps: replayed inside a
    /// captured graph, ranks in lockstep.
    pub allreduce_latency_us: f64,
    /// The same in steps that carry prompt tokens. Engines that capture graphs for decode
    /// only run these eagerly: each collective is a separate host call on every rank
    /// (torch.distributed → NCCL/HCCL), and it is a barrier, so every layer waits for the
    /// slowest rank's host. Nothing of that exists at tp 1, so only multi-rank
    /// prompt-carrying points (a TP8 TTFT) can pin it. An overlay that omits it gets the
    /// decode figure.
    #[serde(default = "unset")]
    pub prefill_allreduce_latency_us: f64,
    /// Latency of one step of a ring all-reduce over the scale-up link: a collective over
    /// `r` ranks takes `2·(r − 1)` such steps on top of its launch latency (the two fields
    /// above), each a send, a receive and a flag wait on a peer. This is the part of a
    /// collective that grows with the rank count and belongs to the link and the collective
    /// library, not to the engine's call path: the same at TP4, TP8 and TP16 of one family.
    /// Absent means 0: a collective then costs its launch latency whatever the rank count.
    #[serde(default)]
    pub allreduce_hop_latency_us: f64,
    /// Host time per step for each tensor-parallel rank beyond the first: an executor that
    /// hands every step's inputs to each worker rank (vLLM 0.7's V0 multi-process executor
    /// broadcasts them; vLLM-Ascend's likewise) pays it `r − 1` times a step, in prompt and
    /// decode steps alike, whatever the model's layer count. Nothing of it exists at one
    /// rank, so only points at two or more rank counts can tell it from the collectives.
    /// Absent means 0.
    #[serde(default)]
    pub rank_step_overhead_us: f64,
    /// Fraction of the scale-up link's bandwidth a collective reaches.
    pub link_efficiency: f64,
    /// Fraction of device memory the engine may use (vLLM's `gpu_memory_utilization`).
    pub memory_utilization: f64,
    /// Memory held back per device (die) for activations, graphs, collective buffers.
    pub reserve_gb: f64,
    /// Most sequences in one step (vLLM's `max_num_seqs` as deployed on this chip).
    pub max_batch: u32,
    /// Whether the scheduler may split a prompt across steps to fill the token budget
    /// (vLLM's chunked prefill, on in its V1 engine). Off, a prompt runs whole in one
    /// step beside the decodes, and only if it fits what the step's budget has left, as
    /// TensorRT-LLM does unless `enable_chunked_context` is set. Absent means on.
    #[serde(default = "chunked_by_default", skip_serializing_if = "is_chunked")]
    pub chunked_prefill: bool,
}

fn chunked_by_default() -> bool {
    true
}

fn is_chunked(on: &bool) -> bool {
    *on
}

/// Marks a coefficient as absent from a file, to be filled once the entry is read:
/// `prefill_allreduce_latency_us` from `allreduce_latency_us`, `kv_read_efficiency` from
/// `memory_efficiency`.
fn unset() -> f64 {
    f64::NAN
}

/// Field name, lower and upper bound (inclusive). Efficiencies never reach 0, so a fit
/// stays physical and a model never divides by zero.
pub type FieldBounds = (&'static str, f64, f64);

impl EngineCoefficients {
    /// Every coefficient `dujiang calibrate` may fit, with the bounds a fit must respect.
    pub const FITTED: &'static [FieldBounds] = &[
        ("prefill_efficiency", 0.01, 1.0),
        ("prefill_half_tokens", 0.0, 8192.0),
        ("decode_compute_efficiency", 0.01, 1.0),
        ("memory_efficiency", 0.01, 1.0),
        ("kv_read_efficiency", 0.01, 1.0),
        ("kv_read_half_tokens", 0.0, 4096.0),
        ("attention_efficiency", 0.01, 1.0),
        ("prefill_step_overhead_us", 0.0, 1e6),
        ("prefill_layer_overhead_us", 0.0, 1e4),
        ("decode_step_overhead_us", 0.0, 1e6),
        ("decode_layer_overhead_us", 0.0, 1e4),
        ("decode_seq_overhead_us", 0.0, 1e4),
        ("allreduce_latency_us", 0.0, 1e4),
        ("prefill_allreduce_latency_us", 0.0, 1e4),
        // A hop on NVLink, HCCS or a switched fabric is ~1–5 µs with the library's flag
        // handshake; 100 µs would be a slower network than any scale-up link.
        ("allreduce_hop_latency_us", 0.0, 100.0),
        // A host hand-off per step and rank: 100 ms would exceed any step measured.
        ("rank_step_overhead_us", 0.0, 1e5),
        ("link_efficiency", 0.01, 1.0),
    ];

    fn slot(&mut self, field: &str) -> Option<&mut f64> {
        Some(match field {
            "prefill_efficiency" => &mut self.prefill_efficiency,
            "prefill_half_tokens" => &mut self.prefill_half_tokens,
            "decode_compute_efficiency" => &mut self.decode_compute_efficiency,
            "memory_efficiency" => &mut self.memory_efficiency,
            "kv_read_efficiency" => &mut self.kv_read_efficiency,
            "kv_read_half_tokens" => &mut self.kv_read_half_tokens,
            "attention_efficiency" => &mut self.attention_efficiency,
            "prefill_step_overhead_us" => &mut self.prefill_step_overhead_us,
            "prefill_layer_overhead_us" => &mut self.prefill_layer_overhead_us,
            "decode_step_overhead_us" => &mut self.decode_step_overhead_us,
            "decode_layer_overhead_us" => &mut self.decode_layer_overhead_us,
            "decode_seq_overhead_us" => &mut self.decode_seq_overhead_us,
            "allreduce_latency_us" => &mut self.allreduce_latency_us,
            "prefill_allreduce_latency_us" => &mut self.prefill_allreduce_latency_us,
            "allreduce_hop_latency_us" => &mut self.allreduce_hop_latency_us,
            "rank_step_overhead_us" => &mut self.rank_step_overhead_us,
            "link_efficiency" => &mut self.link_efficiency,
            _ => return None,
        })
    }

    /// The value of a fitted coefficient by name.
    pub fn get(&self, field: &str) -> Option<f64> {
        self.clone().slot(field).map(|v| *v)
    }

    /// Sets a fitted coefficient, refusing unknown names and values outside its bounds.
    pub fn set(&mut self, field: &str, value: f64) -> Result<(), String> {
        let (_, lo, hi) = Self::FITTED
            .iter()
            .find(|(name, _, _)| *name == field)
            .ok_or_else(|| format!("`{field}` is not a fitted engine coefficient"))?;
        if !(value.is_finite() && (*lo..=*hi).contains(&value)) {
            return Err(format!("{field} = {value} is outside [{lo}, {hi}]"));
        }
        *self.slot(field).expect("every FITTED name has a slot") = value;
        Ok(())
    }

    /// Fills the coefficients a file may omit from the ones they were split from.
    pub fn fill_unset(&mut self) {
        if self.prefill_allreduce_latency_us.is_nan() {
            self.prefill_allreduce_latency_us = self.allreduce_latency_us;
        }
        if self.kv_read_efficiency.is_nan() {
            self.kv_read_efficiency = self.memory_efficiency;
        }
    }

    /// Rejects values outside the physical bounds: the first problem found, by field.
    pub fn validate(&self) -> Result<(), SpecViolation> {
        for (field, lo, hi) in Self::FITTED {
            let v = self.get(field).expect("every FITTED name has a slot");
            if !(v.is_finite() && (*lo..=*hi).contains(&v)) {
                return Err((field, format!("must be in [{lo}, {hi}], got {v}")));
            }
        }
        fraction("memory_utilization", self.memory_utilization)?;
        non_negative("reserve_gb", self.reserve_gb)?;
        at_least_one("max_batch", self.max_batch)
    }
}

/// One serving engine and the chip families it has coefficients for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Catalogue key, e.g. `vllm-0.7`. Filled from the table name when loading.
    #[serde(default, skip_serializing)]
    pub id: String,
    pub name: String,
    /// Where the engine (version) comes from.
    pub source: String,
    /// Coefficients by chip family or chip id.
    pub on: BTreeMap<String, EngineCoefficients>,
}

/// The engine catalogue file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineCatalogue {
    /// Chip id or family → the engine a pool runs when it names none.
    #[serde(default)]
    pub default_engine: BTreeMap<String, String>,
    #[serde(default)]
    pub engines: BTreeMap<String, EngineSpec>,
}

/// The coefficients one pool runs with: which engine, for which chip key (id or family).
#[derive(Clone, Debug, PartialEq)]
pub struct EngineProfile {
    pub engine: String,
    /// The `on.KEY` the coefficients came from: the chip id or its family.
    pub on: String,
    pub coefficients: EngineCoefficients,
}

impl EngineCatalogue {
    /// Parses and checks an engine catalogue; `file` names it in errors.
    pub fn parse(src: &str, file: &str) -> Result<EngineCatalogue, ConfigError> {
        let mut cat: EngineCatalogue = parse_toml(src, file)?;
        cat.check(src, file)?;
        Ok(cat)
    }

    fn check(&mut self, src: &str, file: &str) -> Result<(), ConfigError> {
        for (id, engine) in &mut self.engines {
            engine.id = id.clone();
            let header = format!("engines.{id}");
            for (field, v) in [("name", &engine.name), ("source", &engine.source)] {
                not_blank(field, v).map_err(|(f, m)| table_error(file, src, &header, f, m))?;
            }
            if engine.on.is_empty() {
                return Err(table_error(
                    file,
                    src,
                    &header,
                    "on",
                    "an engine needs coefficients for at least one chip family",
                ));
            }
            for (key, c) in &mut engine.on {
                c.fill_unset();
                c.validate().map_err(|(f, m)| {
                    table_error(file, src, &format!("engines.{id}.on.{key}"), f, m)
                })?;
            }
        }
        for (key, engine) in &self.default_engine {
            if !self.engines.contains_key(engine) {
                return Err(table_error(
                    file,
                    src,
                    "default_engine",
                    key,
                    format!("unknown engine `{engine}`; known engines: {}", self.ids()),
                ));
            }
        }
        Ok(())
    }

    /// Engine ids, comma-separated, for "unknown engine" messages.
    pub fn ids(&self) -> String {
        self.engines.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Adds the overlay's engines and defaults, replacing whole `[engines.E.on.KEY]`
    /// entries (and engine names and sources) that both define.
    pub fn overlay(&mut self, other: EngineCatalogue) {
        self.default_engine.extend(other.default_engine);
        for (id, engine) in other.engines {
            match self.engines.get_mut(&id) {
                Some(mine) => {
                    mine.name = engine.name;
                    mine.source = engine.source;
                    mine.on.extend(engine.on);
                }
                None => {
                    self.engines.insert(id, engine);
                }
            }
        }
    }

    /// The engine a chip runs when none is named: by chip id, else by family.
    pub fn default_for(&self, chip: &ChipSpec) -> Option<&str> {
        let base = chip.id.strip_suffix("-die").unwrap_or(&chip.id);
        self.default_engine
            .get(&chip.id)
            .or_else(|| self.default_engine.get(base))
            .or_else(|| self.default_engine.get(&chip.family))
            .map(String::as_str)
    }

    /// The coefficients of `engine` (or the chip's default) on `chip`: a chip-id entry
    /// wins over the family's.
    pub fn profile_for(
        &self,
        chip: &ChipSpec,
        engine: Option<&str>,
    ) -> Result<EngineProfile, String> {
        let id = match engine {
            Some(e) => e,
            None => self.default_for(chip).ok_or_else(|| {
                format!(
                    "chip `{}` (family `{}`) has no default engine; name one (known engines: {}) or add `{} = \"…\"` to [default_engine] in the engine catalogue",
                    chip.id,
                    chip.family,
                    self.ids(),
                    chip.family
                )
            })?,
        };
        let spec = self
            .engines
            .get(id)
            .ok_or_else(|| format!("unknown engine `{id}`; known engines: {}", self.ids()))?;
        let base = chip.id.strip_suffix("-die").unwrap_or(&chip.id);
        for key in [chip.id.as_str(), base, chip.family.as_str()] {
            if let Some(c) = spec.on.get(key) {
                return Ok(EngineProfile {
                    engine: id.to_string(),
                    on: key.to_string(),
                    coefficients: c.clone(),
                });
            }
        }
        Err(format!(
            "engine `{id}` does not run on `{}` (family `{}`); it has coefficients for: {}",
            chip.id,
            chip.family,
            spec.on.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    }

    /// Every engine with coefficients for `chip` (by id or family), sorted by id.
    pub fn engines_for(&self, chip: &ChipSpec) -> Vec<&str> {
        self.engines
            .values()
            .filter(|e| self.profile_for(chip, Some(&e.id)).is_ok())
            .map(|e| e.id.as_str())
            .collect()
    }
}

/// An error about `key` inside the table `table` (dotted, ids unquoted), placed at the line
/// that assigns it, or at the table header when the key is missing. Engine ids contain
/// dots (`vllm-0.7`), so headers are compared with their quotes removed.
fn table_error(
    file: &str,
    src: &str,
    table: &str,
    key: &str,
    message: impl Into<String>,
) -> ConfigError {
    let mut err = ConfigError::new(file, message);
    err.field = Some(format!("{table}.{key}"));
    // Headers are compared with quotes and spaces removed.
    let is_header = |line: &str| {
        let name: String = line
            .trim_matches(|c| c == '[' || c == ']')
            .chars()
            .filter(|c| !matches!(c, '"' | '\'' | ' '))
            .collect();
        name == table
    };
    super::catalogue::place_in_table(&mut err, src, is_header, key);
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::fixtures::engine_coefficients;

    #[test]
    fn set_and_get_respect_bounds() {
        let mut c = engine_coefficients();
        for (field, lo, hi) in EngineCoefficients::FITTED {
            c.set(field, *lo).unwrap();
            assert_eq!(c.get(field), Some(*lo));
            c.set(field, *hi).unwrap();
            assert!(c.set(field, hi + 1.0).is_err(), "{field}");
            assert!(c.set(field, f64::NAN).is_err(), "{field}");
        }
        assert!(c.set("max_batch", 3.0).is_err());
        assert_eq!(c.get("nope"), None);
    }
}
