//! The backend kinds a plan may buy: each chip the user allows (`h20`, or `h20:sglang` to
//! name the serving engine; default: the chip's default engine), at each tensor-parallel
//! degree where the model's weights fit. By default a chip is tried at its smallest
//! fitting degree and twice that (more chips per backend buys prefill speed at a higher
//! price; beyond that it rarely pays for one model replica); `max_tp` widens the search to
//! every power of two up to it.

use crate::fleet::PoolConfig;
use crate::profile::{Catalogue, PerfModel};
use std::sync::Arc;

/// Tensor-parallel degrees tried.
const TP_OPTIONS: [u32; 5] = [1, 2, 4, 8, 16];

/// One kind of backend: a model replica on `tp` chips of one kind.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub chip: String,
    /// The serving engine's id.
    pub engine: String,
    /// Whether the user named the engine (`chip:engine`): then the pool name carries it.
    pub engine_named: bool,
    pub tp: u32,
    pub domestic: bool,
    pub cost_per_hour_usd: f64,
    /// A pool of one such backend, default engine settings.
    pub pool: PoolConfig,
}

impl Candidate {
    /// The pool name used in fleet files: the chip id, then the engine if the user named
    /// one, then the degree when above one.
    pub fn name(&self) -> String {
        let mut name = self.chip.clone();
        if self.engine_named {
            name.push('-');
            name.push_str(&self.engine);
        }
        if self.tp > 1 {
            name.push_str(&format!("-tp{}", self.tp));
        }
        name
    }

    /// `count` of these as a pool.
    pub fn pool_of(&self, count: u32) -> PoolConfig {
        PoolConfig {
            name: self.name(),
            count,
            ..self.pool.clone()
        }
    }
}

/// The candidates for `model` on `chips`; errors name the unknown id or why none fits.
pub fn candidates(
    catalogue: &Catalogue,
    model: &str,
    chips: &[String],
    max_tp: Option<u32>,
) -> Result<Vec<Candidate>, String> {
    let spec = catalogue.model(model).ok_or_else(|| {
        format!(
            "unknown model `{model}`; known models: {}",
            catalogue
                .models
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if chips.is_empty() {
        return Err("no chips given (--chips h20,ascend-910b,...)".into());
    }
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for entry in chips {
        let (id, engine) = match entry.split_once(':') {
            Some((chip, engine)) => (chip.trim(), Some(engine.trim())),
            None => (entry.trim(), None),
        };
        let chip = catalogue
            .chip(id)
            .ok_or_else(|| format!("unknown chip `{id}`; known chips: {}", catalogue.chip_ids()))?;
        let profile = catalogue
            .engines
            .profile_for(chip, engine)
            .map_err(|e| format!("--chips {entry}: {e}"))?;
        let key = format!("{id}:{}", profile.engine);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let dtype = Catalogue::default_dtype(chip, spec);
        let fitting: Vec<(u32, PerfModel)> = TP_OPTIONS
            .iter()
            .filter(|&&tp| max_tp.is_none_or(|m| tp <= m))
            .filter_map(|&tp| {
                PerfModel::new(chip, &profile, spec, tp, dtype)
                    .ok()
                    .map(|p| (tp, p))
            })
            .collect();
        let Some(&(smallest, _)) = fitting.first() else {
            continue;
        };
        for (tp, perf) in fitting {
            if max_tp.is_none() && tp > 2 * smallest {
                break;
            }
            let perf = Arc::new(perf);
            out.push(Candidate {
                chip: id.to_string(),
                engine: profile.engine.clone(),
                engine_named: engine.is_some(),
                tp,
                domestic: chip.domestic,
                cost_per_hour_usd: perf.price_per_hour_usd(),
                pool: PoolConfig::new(id, perf, 1),
            });
        }
    }
    if out.is_empty() {
        return Err(format!(
            "model `{model}` fits on none of the chips {} at tensor parallelism up to {}",
            chips.join(", "),
            max_tp.unwrap_or(16)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_model_gets_two_degrees_and_errors_are_clear() {
        let cat = Catalogue::embedded();
        let c = candidates(&cat, "llama-3-8b", &["h20".into(), "h20".into()], None).unwrap();
        let tps: Vec<u32> = c.iter().map(|c| c.tp).collect();
        assert_eq!(tps, [1, 2]);
        assert_eq!(c[1].name(), "h20-tp2");
        assert!((c[1].cost_per_hour_usd - 2.0 * c[0].cost_per_hour_usd).abs() < 1e-9);
        let one = candidates(&cat, "llama-3-8b", &["h20".into()], Some(1)).unwrap();
        assert_eq!(one.len(), 1);
        let err = candidates(&cat, "llama-3-8b", &["h2O".into()], None).unwrap_err();
        assert!(err.contains("unknown chip `h2O`"), "{err}");
        let err = candidates(&cat, "nope", &["h20".into()], None).unwrap_err();
        assert!(err.contains("unknown model `nope`"), "{err}");
        let err = candidates(&cat, "deepseek-v3", &["mlu370-x8".into()], Some(2)).unwrap_err();
        assert!(err.contains("fits on none"), "{err}");
    }

    #[test]
    fn chip_colon_engine_picks_the_engine_and_names_the_pool() {
        let cat = Catalogue::embedded();
        let chips = ["h20:sglang".to_string(), "h20".into(), "ascend-910b".into()];
        let c = candidates(&cat, "llama-3-8b", &chips, Some(1)).unwrap();
        let names: Vec<String> = c.iter().map(Candidate::name).collect();
        assert_eq!(names, ["h20-sglang", "h20", "ascend-910b"]);
        assert_eq!(c[0].engine, "sglang");
        assert_eq!(c[0].pool.perf.engine.engine, "sglang");
        assert_eq!(c[1].engine, "vllm-0.7");
        assert_eq!(c[2].engine, "vllm-ascend-0.18");
        let err = candidates(&cat, "llama-3-8b", &["h20:mindie".into()], None).unwrap_err();
        assert!(
            err.contains("--chips h20:mindie") && err.contains("does not run"),
            "{err}"
        );
    }
}
