//! The calibration backend for dujiang's own performance model: points are grouped by the
//! engine-catalogue entry they resolve to (`engine` on a chip family, or on a chip id where
//! the catalogue has one), the group's coefficients are the entry's fitted fields
//! ([`EngineCoefficients::FITTED`]), and a point's model is [`PerfModel::new`] with those
//! coefficients replaced. The fitted result is written back in the engine catalogue's own
//! format, so any command takes it with `--engines FILE`.

use super::{Backend, Calibration, Param, ParamStatus, Point};
use crate::profile::{Catalogue, Dtype, EngineCoefficients, EngineProfile, PerfModel};
use std::fmt::Write as _;

/// Fits the coefficients of an engine catalogue.
pub struct CatalogueBackend {
    pub catalogue: Catalogue,
}

fn dtype_of(p: &Point) -> Result<Dtype, String> {
    Dtype::ALL
        .into_iter()
        .find(|d| d.as_str() == p.dtype)
        .ok_or_else(|| format!("unknown dtype `{}`", p.dtype))
}

/// `engine on key` ↔ its parts.
fn split_group(group: &str) -> (&str, &str) {
    group.split_once(" on ").unwrap_or((group, ""))
}

impl CatalogueBackend {
    pub fn new(catalogue: Catalogue) -> Self {
        CatalogueBackend { catalogue }
    }

    /// The catalogue's current coefficients for a group.
    pub fn coefficients(&self, group: &str) -> Option<&EngineCoefficients> {
        let (engine, key) = split_group(group);
        self.catalogue.engines.engines.get(engine)?.on.get(key)
    }

    fn profile(&self, group: &str, values: &[f64]) -> Result<EngineProfile, String> {
        let (engine, key) = split_group(group);
        let mut coefficients = self
            .coefficients(group)
            .ok_or_else(|| format!("no engine catalogue entry for {group}"))?
            .clone();
        for ((name, _, _), v) in EngineCoefficients::FITTED.iter().zip(values) {
            coefficients.set(name, *v)?;
        }
        Ok(EngineProfile {
            engine: engine.to_string(),
            on: key.to_string(),
            coefficients,
        })
    }
}

impl Backend for CatalogueBackend {
    fn group(&self, p: &Point) -> Result<String, String> {
        let cat = &self.catalogue;
        let chip = cat
            .chip(&p.chip)
            .ok_or_else(|| format!("unknown chip `{}`; known chips: {}", p.chip, cat.chip_ids()))?;
        if cat.model(&p.model).is_none() {
            return Err(format!(
                "unknown model `{}`; known models: {}",
                p.model,
                cat.model_ids()
            ));
        }
        dtype_of(p)?;
        let profile = cat.engines.profile_for(chip, Some(&p.engine))?;
        Ok(format!("{} on {}", profile.engine, profile.on))
    }

    fn params(&self, group: &str) -> Vec<Param> {
        let c = self.coefficients(group);
        EngineCoefficients::FITTED
            .iter()
            .map(|(name, lo, hi)| {
                let prior = c.and_then(|c| c.get(name)).unwrap_or(*lo);
                Param::new(*name, *lo, *hi, prior).with_typical(typical(name))
            })
            .collect()
    }

    /// Host overheads and collective latencies are the engine's code path (Python
    /// scheduler, kernel launches, the collective library's call): shared by an engine
    /// release across the chip families it runs on. Efficiencies, half points, link
    /// efficiency and the all-reduce hop latency (the link and its collective library, the
    /// same at every rank count) are silicon × kernels: shared by the releases of one engine project on
    /// one silicon family (`vllm-0.7` and `vllm-0.20` on the A100; a chip's own entry with
    /// its family's, the 910C die with the 910B), never across families.
    fn share(&self, group: &str, name: &str) -> Option<String> {
        let (engine, on) = split_group(group);
        if software(name) {
            return Some(engine.to_string());
        }
        let family = self.catalogue.chip(on).map_or(on, |c| c.family.as_str());
        Some(format!("{} on {family}", project(engine)))
    }

    /// The KV cache's read efficiency is the weights' memory efficiency times a ratio
    /// (`pool.rs`): the same memory read by the same engine, apart only where points read
    /// much KV beside the weights.
    fn tied(&self, name: &str) -> Option<&'static str> {
        (name == "kv_read_efficiency").then_some("memory_efficiency")
    }

    fn perf(&self, group: &str, values: &[f64], p: &Point) -> Result<PerfModel, String> {
        let cat = &self.catalogue;
        let chip = cat.chip(&p.chip).ok_or("unknown chip")?;
        let model = cat.model(&p.model).ok_or("unknown model")?;
        let profile = self.profile(group, values)?;
        let dtype = dtype_of(p)?;
        match p.kv_dtype.as_deref() {
            None => PerfModel::new(chip, &profile, model, p.tp, dtype),
            Some(kv) => {
                let mut model = model.clone();
                model.kv_bytes = if kv == "bf16" { 2.0 } else { 1.0 };
                PerfModel::new(chip, &profile, &model, p.tp, dtype)
            }
        }
        .map_err(|e| e.to_string())
    }
}

/// Host costs: the engine release's code path, whatever chip it drives.
fn software(name: &str) -> bool {
    name.ends_with("_overhead_us") || name.ends_with("allreduce_latency_us")
}

/// The project an engine release belongs to: its catalogue id without the trailing
/// release number (`vllm-0.20` → `vllm`, `vllm-ascend-0.18` → `vllm-ascend`).
fn project(engine: &str) -> &str {
    match engine.rsplit_once('-') {
        Some((p, release)) if release.starts_with(|c: char| c.is_ascii_digit()) => p,
        _ => engine,
    }
}

/// The magnitude a coefficient whose catalogue value is zero is measured against: a
/// graph-mode engine's per-layer overhead of 0 µs moves as far by reaching 10 µs as an
/// eager one's 500 µs does by doubling.
fn typical(name: &str) -> f64 {
    match name {
        "prefill_half_tokens" => 64.0,
        // One decoding sequence: a half point of 1 halves a batch-1 step's KV rate.
        "kv_read_half_tokens" => 1.0,
        "prefill_step_overhead_us" | "decode_step_overhead_us" | "rank_step_overhead_us" => 500.0,
        n if n.ends_with("_us") => 10.0,
        _ => 0.1,
    }
}

/// A TOML key, quoted unless it is a bare key.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        format!("\"{k}\"")
    }
}

/// The fitted coefficients as an engine-catalogue overlay: one `[engines.E.on.KEY]` table
/// per group with every field (fitted ones replaced, each with the points that pin it),
/// plus the engine's name and source. `origin` names the points files.
pub fn overlay(backend: &CatalogueBackend, cal: &Calibration, origin: &str) -> String {
    let mut out = format!(
        "# Engine-catalogue overlay written by `dujiang calibrate` from {origin}.\n\
         # Use it with --engines FILE on any command. Fitted coefficients say which points pin\n\
         # them; the others keep the catalogue's value.\n"
    );
    let mut named: Vec<&str> = Vec::new();
    for g in &cal.groups {
        let (engine, on) = split_group(&g.group);
        let Ok(profile) = backend.profile(&g.group, &g.fit.values) else {
            continue;
        };
        if !named.contains(&engine) {
            named.push(engine);
            if let Some(spec) = backend.catalogue.engines.engines.get(engine) {
                let _ = write!(
                    out,
                    "\n[engines.{}]\nname = {}\nsource = {}\n",
                    key(engine),
                    toml_str(&spec.name),
                    toml_str(&spec.source)
                );
            }
        }
        let _ = writeln!(out, "\n[engines.{}.on.{}]", key(engine), key(on));
        let body = toml::to_string(&profile.coefficients).unwrap_or_default();
        for line in body.lines() {
            let name = line.split('=').next().unwrap_or("").trim();
            let comment = match g.params.iter().position(|p| p.name == name) {
                Some(j) => match g.fit.status[j] {
                    ParamStatus::Unconstrained => {
                        "no measured point depends on it: catalogue value kept".to_string()
                    }
                    ParamStatus::Tied => format!(
                        "tied to memory_efficiency by the prior ratio; no point tells them apart ({})",
                        super::pinned_ids(cal, g, j)
                    ),
                    ParamStatus::Shared => format!(
                        "pooled with {}; no point of this family depends on it, pinned by {}",
                        g.pooled_with.join(", "),
                        super::pinned_ids(cal, g, j)
                    ),
                    s => {
                        let pins = super::pinned_ids(cal, g, j);
                        let bound = match s {
                            ParamStatus::AtLower => ", at its lower bound",
                            ParamStatus::AtUpper => ", at its upper bound",
                            _ => "",
                        };
                        let pooled = if g.pooled[j] { " (pooled)" } else { "" };
                        format!("fitted{pooled}{bound}; pinned by {pins}")
                    }
                },
                None => "deployment setting, not fitted".to_string(),
            };
            let _ = writeln!(out, "{line:<40} # {comment}");
        }
    }
    out
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::Backend;

    fn key(b: &CatalogueBackend, group: &str, name: &str) -> Option<String> {
        b.share(group, name)
    }

    #[test]
    fn silicon_is_shared_within_a_family_software_within_a_release() {
        let b = CatalogueBackend::new(Catalogue::embedded());
        let (b910, c910) = (
            "vllm-ascend-0.18 on ascend",
            "vllm-ascend-0.18 on ascend-910c",
        );
        // The 910C's own entry shares the 910B family's silicon and the release's software.
        for name in [
            "prefill_efficiency",
            "memory_efficiency",
            "decode_step_overhead_us",
        ] {
            assert_eq!(key(&b, b910, name), key(&b, c910, name), "{name}");
        }
        // The ring's hop latency is the link's: shared by the 910B and the 910C die, apart
        // from the release's collective launch latency.
        assert_eq!(
            key(&b, b910, "allreduce_hop_latency_us"),
            key(&b, c910, "allreduce_hop_latency_us")
        );
        assert_ne!(
            key(&b, b910, "allreduce_hop_latency_us"),
            key(&b, b910, "allreduce_latency_us")
        );
        // Two vLLM releases on the A100 share silicon, not host costs.
        let (v07, v020) = ("vllm-0.7 on ampere", "vllm-0.20 on ampere");
        assert_eq!(
            key(&b, v07, "memory_efficiency"),
            key(&b, v020, "memory_efficiency")
        );
        assert_ne!(
            key(&b, v07, "decode_step_overhead_us"),
            key(&b, v020, "decode_step_overhead_us")
        );
        // The H20 is a family of its own: its efficiencies are not the H100's, though the
        // release's host costs are.
        let (h100, h20) = ("vllm-0.7 on hopper", "vllm-0.7 on h20");
        assert_ne!(
            key(&b, h100, "memory_efficiency"),
            key(&b, h20, "memory_efficiency")
        );
        assert_eq!(
            key(&b, h100, "prefill_layer_overhead_us"),
            key(&b, h20, "prefill_layer_overhead_us")
        );
        // Different projects never share.
        assert_ne!(
            key(&b, "sglang on h20", "memory_efficiency"),
            key(&b, h20, "memory_efficiency")
        );
        assert_eq!(project("vllm-ascend-0.18"), "vllm-ascend");
        assert_eq!(project("vllm-mlu"), "vllm-mlu");
        assert_eq!(project("trtllm"), "trtllm");
    }
}
