//! The chip, model and engine catalogues: `config/chips.toml`, `config/models.toml` and
//! `config/engines.toml`, embedded in the binary as defaults. Chip and model files may be
//! replaced; engine files overlay the embedded engines (what `dujiang calibrate` writes).
//! Loading checks every entry for values no real chip, model or engine has, and names the
//! file, line and field of the first one.
//!
//! A pool is chip × engine × model × tp × dtype; [`Catalogue::perf`] resolves the engine
//! (the chip's default when none is named) and the dtype (the model's release format,
//! as the chip supports it) and builds the [`PerfModel`].

use super::engine::{EngineCatalogue, EngineProfile};
use super::perf::PerfModel;
use super::spec::{ChipSpec, Dtype, ModelSpec};
use crate::config::{parse_toml, ConfigError};
use std::collections::BTreeMap;
use std::path::Path;

pub const EMBEDDED_CHIPS: &str = include_str!("../../config/chips.toml");
pub const EMBEDDED_MODELS: &str = include_str!("../../config/models.toml");
pub const EMBEDDED_ENGINES: &str = include_str!("../../config/engines.toml");
/// The hand-set priors of the engine coefficients `config/engines.toml` holds fitted:
/// what `dujiang calibrate` starts from, so a refit never starts from its own answer.
pub const EMBEDDED_ENGINE_PRIORS: &str = include_str!("../../config/engine-priors.toml");

/// Every chip, model and serving engine dujiang knows, keyed by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalogue {
    pub chips: BTreeMap<String, ChipSpec>,
    pub models: BTreeMap<String, ModelSpec>,
    pub engines: EngineCatalogue,
}

impl Catalogue {
    /// The catalogue built into the binary. Its files are checked by the tests, so this
    /// cannot fail in a released build.
    pub fn embedded() -> Catalogue {
        Catalogue::parse(
            EMBEDDED_CHIPS,
            "<embedded config/chips.toml>",
            EMBEDDED_MODELS,
            "<embedded config/models.toml>",
        )
        .expect("embedded catalogue is valid (checked by tests)")
    }

    /// Parses the chip and model files, with the embedded engines; `*_file` names them in
    /// errors.
    pub fn parse(
        chips_src: &str,
        chips_file: &str,
        models_src: &str,
        models_file: &str,
    ) -> Result<Catalogue, ConfigError> {
        let mut chips: BTreeMap<String, ChipSpec> = parse_toml(chips_src, chips_file)?;
        for (id, chip) in &mut chips {
            chip.id = id.clone();
            chip.validate().map_err(|(field, message)| {
                entry_field_error(chips_file, chips_src, id, field, message)
            })?;
        }
        // A multi-die package also appears as one die (`<id>-die`), the unit its runtime
        // addresses and single-device measurements are taken on.
        let dies: Vec<ChipSpec> = chips
            .values()
            .filter(|c| c.dies > 1)
            .map(ChipSpec::one_die)
            .collect();
        for die in dies {
            chips.entry(die.id.clone()).or_insert(die);
        }
        if chips.is_empty() {
            return Err(ConfigError::new(chips_file, "no chips defined"));
        }
        let mut models: BTreeMap<String, ModelSpec> = parse_toml(models_src, models_file)?;
        for (id, model) in &mut models {
            model.id = id.clone();
            model.validate().map_err(|(field, message)| {
                entry_field_error(models_file, models_src, id, field, message)
            })?;
        }
        if models.is_empty() {
            return Err(ConfigError::new(models_file, "no models defined"));
        }
        let engines = EngineCatalogue::parse(EMBEDDED_ENGINES, "<embedded config/engines.toml>")?;
        Ok(Catalogue {
            chips,
            models,
            engines,
        })
    }

    /// Overlays an engine catalogue file (same format as `config/engines.toml`): its
    /// `[engines.E.on.KEY]` entries replace the ones loaded so far.
    pub fn with_engine_overlay(mut self, src: &str, file: &str) -> Result<Catalogue, ConfigError> {
        let overlay = EngineCatalogue::parse(src, file)?;
        self.engines.overlay(overlay);
        Ok(self)
    }

    /// This catalogue with the fitted engine entries put back to their hand-set priors
    /// (`config/engine-priors.toml`).
    pub fn with_engine_priors(self) -> Result<Catalogue, ConfigError> {
        self.with_engine_overlay(EMBEDDED_ENGINE_PRIORS, "config/engine-priors.toml")
    }

    /// Reads the catalogue from the given files, falling back to the embedded file for
    /// whichever path is `None`.
    pub fn load(
        chips_path: Option<&Path>,
        models_path: Option<&Path>,
    ) -> Result<Catalogue, ConfigError> {
        let (chips_src, chips_file) = read_or_embedded(chips_path, EMBEDDED_CHIPS, "chips")?;
        let (models_src, models_file) = read_or_embedded(models_path, EMBEDDED_MODELS, "models")?;
        Catalogue::parse(&chips_src, &chips_file, &models_src, &models_file)
    }

    /// [`Catalogue::load`], then each engine overlay file in order.
    pub fn load_with_engines(
        chips_path: Option<&Path>,
        models_path: Option<&Path>,
        engine_overlays: &[impl AsRef<Path>],
    ) -> Result<Catalogue, ConfigError> {
        let mut cat = Catalogue::load(chips_path, models_path)?;
        for path in engine_overlays {
            let (src, file) = read_or_embedded(Some(path.as_ref()), "", "engines")?;
            cat = cat.with_engine_overlay(&src, &file)?;
        }
        Ok(cat)
    }

    /// The coefficients `engine` (default: the chip's default engine) runs `chip` with.
    pub fn engine_for(&self, chip: &str, engine: Option<&str>) -> Result<EngineProfile, String> {
        let spec = self.chip(chip).ok_or_else(|| self.unknown_chip(chip))?;
        self.engines.profile_for(spec, engine)
    }

    /// The dtype a pool runs when it names none: the model's release format where the chip
    /// has that tensor-core path; an 8-bit release runs INT8 (W8A8) on chips without FP8.
    pub fn default_dtype(chip: &ChipSpec, model: &ModelSpec) -> Dtype {
        match model.native_dtype() {
            Dtype::Bf16 => Dtype::Bf16,
            eight => [eight, Dtype::Fp8, Dtype::Int8]
                .into_iter()
                .find(|d| chip.peak_tflops(*d).is_some())
                .unwrap_or(Dtype::Bf16),
        }
    }

    /// The performance model of one pool kind: `model` on `tp` packages of `chip` under
    /// `engine` (default: the chip's) in `dtype` (default: [`Catalogue::default_dtype`]).
    pub fn perf(
        &self,
        chip: &str,
        engine: Option<&str>,
        model: &str,
        tp: u32,
        dtype: Option<Dtype>,
    ) -> Result<PerfModel, String> {
        let chip_spec = self.chip(chip).ok_or_else(|| self.unknown_chip(chip))?;
        let model_spec = self.model(model).ok_or_else(|| {
            format!(
                "unknown model `{model}`; known models: {}",
                self.model_ids()
            )
        })?;
        let profile = self.engines.profile_for(chip_spec, engine)?;
        let dtype = dtype.unwrap_or_else(|| Catalogue::default_dtype(chip_spec, model_spec));
        PerfModel::new(chip_spec, &profile, model_spec, tp, dtype).map_err(|e| e.to_string())
    }

    fn unknown_chip(&self, chip: &str) -> String {
        format!("unknown chip `{chip}`; known chips: {}", self.chip_ids())
    }

    /// Chip ids, comma-separated, for "unknown chip" messages.
    pub fn chip_ids(&self) -> String {
        self.chips.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Model ids, comma-separated, for "unknown model" messages.
    pub fn model_ids(&self) -> String {
        self.models.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    pub fn chip(&self, id: &str) -> Option<&ChipSpec> {
        self.chips.get(id)
    }

    pub fn model(&self, id: &str) -> Option<&ModelSpec> {
        self.models.get(id)
    }
}

/// An error about `key` of the top-level table `id`, placed at the line that assigns it.
/// Ids may contain dots (`["qwen2.5-72b"]`), which a dotted-path search would split, so the
/// table header is matched bare or quoted.
pub(crate) fn entry_field_error(
    file: &str,
    src: &str,
    id: &str,
    key: &str,
    message: impl Into<String>,
) -> ConfigError {
    let field = format!("{id}.{key}");
    if !id.contains('.') {
        return ConfigError::at_field(file, src, &field, message);
    }
    let headers = [
        format!("[{id}]"),
        format!("[\"{id}\"]"),
        format!("['{id}']"),
    ];
    let mut err = ConfigError::at_field(file, "", &field, message);
    place_in_table(&mut err, src, |line| headers.iter().any(|h| h == line), key);
    err
}

/// Points `err` at the line of the table (a header line `is_header` accepts) that assigns
/// `key`, or at the header when the table does not assign it.
pub(crate) fn place_in_table(
    err: &mut ConfigError,
    src: &str,
    is_header: impl Fn(&str) -> bool,
    key: &str,
) {
    let mut in_table = false;
    for (i, raw) in src.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            in_table = is_header(line);
            if in_table {
                err.line = Some(i + 1);
                err.column = Some(1);
            }
            continue;
        }
        if in_table {
            if let Some(rest) = line.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    err.line = Some(i + 1);
                    err.column = Some(raw.len() - raw.trim_start().len() + 1);
                    return;
                }
            }
        }
    }
}

fn read_or_embedded(
    path: Option<&Path>,
    embedded: &str,
    what: &str,
) -> Result<(String, String), ConfigError> {
    match path {
        Some(p) => {
            let name = p.display().to_string();
            let src = crate::config::read_text(p, &name)?;
            Ok((src, name))
        }
        None => Ok((
            embedded.to_string(),
            format!("<embedded config/{what}.toml>"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Dtype;

    /// Replaces `key = …` inside `[table]` of `src` with `key = value`.
    fn with_value(src: &str, table: &str, key: &str, value: &str) -> String {
        let mut out = Vec::new();
        let mut in_table = false;
        let mut replaced = false;
        for line in src.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_table = t == format!("[{table}]") || t == format!("[\"{table}\"]");
            }
            if in_table && !replaced && t.starts_with(&format!("{key} ")) {
                out.push(format!("{key} = {value}"));
                replaced = true;
            } else {
                out.push(line.to_string());
            }
        }
        assert!(replaced, "{table}.{key} not in source");
        out.join("\n")
    }

    fn line_of(src: &str, table: &str, key: &str) -> usize {
        let needle = format!("{key} = ");
        let header = src
            .lines()
            .position(|l| l == format!("[{table}]") || l == format!("[\"{table}\"]"))
            .expect("table header");
        header
            + 1
            + src
                .lines()
                .skip(header)
                .position(|l| l.starts_with(&needle))
                .expect("key in table")
    }

    fn chip_error(table: &str, key: &str, value: &str) -> ConfigError {
        let src = with_value(EMBEDDED_CHIPS, table, key, value);
        let err = Catalogue::parse(&src, "chips.toml", EMBEDDED_MODELS, "models.toml")
            .expect_err("invalid chip accepted");
        assert_eq!(err.file, "chips.toml");
        assert_eq!(err.line, Some(line_of(&src, table, key)), "{err}");
        assert_eq!(
            err.field.as_deref(),
            Some(&*format!("{table}.{key}")),
            "{err}"
        );
        err
    }

    fn model_error(table: &str, key: &str, value: &str) -> ConfigError {
        let src = with_value(EMBEDDED_MODELS, table, key, value);
        let err = Catalogue::parse(EMBEDDED_CHIPS, "chips.toml", &src, "models.toml")
            .expect_err("invalid model accepted");
        assert_eq!(err.file, "models.toml");
        assert_eq!(err.line, Some(line_of(&src, table, key)), "{err}");
        assert_eq!(
            err.field.as_deref(),
            Some(&*format!("{table}.{key}")),
            "{err}"
        );
        err
    }

    #[test]
    fn embedded_catalogue_has_the_required_ids() {
        let cat = Catalogue::embedded();
        for id in [
            "h20",
            "h20-3e",
            "a100",
            "ascend-910b",
            "ascend-910c",
            "ascend-910c-die",
            "mlu370-x8",
            "mlu590",
            "h100",
        ] {
            assert_eq!(cat.chip(id).map(|c| c.id.as_str()), Some(id));
        }
        for id in [
            "llama-3-8b",
            "llama-3-70b",
            "qwen2.5-72b",
            "qwen3-8b",
            "qwen3-32b",
            "llama-3.1-8b",
            "llama-3.3-70b",
            "deepseek-v3",
            "deepseek-r1",
        ] {
            assert_eq!(cat.model(id).map(|m| m.id.as_str()), Some(id));
        }
        assert!(cat.chip("ascend-910b").unwrap().domestic);
        assert!(!cat.chip("h20").unwrap().domestic);
    }

    #[test]
    fn derived_kv_bytes_per_token_match_published_figures() {
        let cat = Catalogue::embedded();
        let kib = |id: &str| cat.model(id).unwrap().kv_bytes_per_token() / 1024.0;
        assert_eq!(kib("llama-3-8b"), 128.0);
        assert_eq!(kib("llama-3-70b"), 320.0);
        assert_eq!(kib("qwen2.5-72b"), 320.0);
        // MLA: (512 + 64) · 61 layers · 2 bytes = 70,272 bytes.
        assert!(
            (kib("deepseek-v3") - 68.625).abs() < 1e-9,
            "{}",
            kib("deepseek-v3")
        );
        let v3 = cat.model("deepseek-v3").unwrap();
        assert!(v3.is_moe());
        assert_eq!((v3.experts, v3.experts_per_token), (256, 8));
    }

    #[test]
    fn negative_and_zero_physical_values_are_rejected() {
        let err = chip_error("h20", "memory_gb", "-96.0");
        assert!(err.to_string().contains("positive"), "{err}");
        chip_error("ascend-910b", "bandwidth_tbps", "0.0");
        chip_error("mlu590", "bf16_tflops", "nan");
        chip_error("h100", "fp8_tflops", "-1.0");
        chip_error("ascend-910c", "dies", "0");
        chip_error("a100", "family", "\"\"");
    }

    /// Replaces `key = …` inside the engine table `[header]` of the engine catalogue and
    /// returns the error and the line the key is on.
    fn engine_error(header: &str, key: &str, value: &str) -> (ConfigError, usize) {
        let mut out = Vec::new();
        let mut in_table = false;
        let mut line_no = 0;
        for (i, line) in EMBEDDED_ENGINES.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                in_table = t == header;
            }
            if in_table && line_no == 0 && t.starts_with(&format!("{key} ")) {
                out.push(format!("{key} = {value}"));
                line_no = i + 1;
            } else {
                out.push(line.to_string());
            }
        }
        assert!(line_no > 0, "{header} {key} not in engines.toml");
        let src = out.join("\n");
        let err =
            EngineCatalogue::parse(&src, "engines.toml").expect_err("invalid engine accepted");
        (err, line_no)
    }

    #[test]
    fn engine_coefficients_outside_physical_bounds_are_placed() {
        for (header, key, value, field) in [
            (
                "[engines.\"vllm-0.7\".on.h20]",
                "prefill_efficiency",
                "1.2",
                "engines.vllm-0.7.on.h20.prefill_efficiency",
            ),
            (
                "[engines.mindie.on.ascend]",
                "decode_step_overhead_us",
                "-1.0",
                "engines.mindie.on.ascend.decode_step_overhead_us",
            ),
            (
                "[engines.vllm-mlu.on.mlu370-x8]",
                "memory_efficiency",
                "0.0",
                "engines.vllm-mlu.on.mlu370-x8.memory_efficiency",
            ),
            (
                "[engines.sglang.on.hopper]",
                "max_batch",
                "0",
                "engines.sglang.on.hopper.max_batch",
            ),
            (
                "[engines.sglang.on.hopper]",
                "memory_utilization",
                "1.5",
                "engines.sglang.on.hopper.memory_utilization",
            ),
        ] {
            let (err, line) = engine_error(header, key, value);
            assert_eq!(err.file, "engines.toml");
            assert_eq!(err.line, Some(line), "{err}");
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
        let src =
            EMBEDDED_ENGINES.replacen("\ndecode_seq_overhead_us =", "\ndecode_seq_overhead =", 1);
        let err = EngineCatalogue::parse(&src, "engines.toml").unwrap_err();
        assert!(err.to_string().contains("decode_seq_overhead"), "{err}");
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn reserve_larger_than_usable_memory_is_a_clear_error() {
        let cat = Catalogue::embedded();
        let mut engine = cat.engine_for("mlu370-x8", None).unwrap();
        engine.coefficients.reserve_gb = 60.0;
        let chip = cat.chip("mlu370-x8").unwrap();
        let err = PerfModel::new(
            chip,
            &engine,
            cat.model("llama-3-8b").unwrap(),
            1,
            Dtype::Bf16,
        )
        .unwrap_err();
        assert!(err.to_string().contains("larger tp"), "{err}");
    }

    #[test]
    fn an_overlay_replaces_whole_entries_and_adds_engines() {
        let overlay = r#"
[default_engine]
ascend = "mindie"

[engines.mindie]
name = "MindIE 2.0"
source = "our lab"

[engines.mindie.on.ascend]
prefill_efficiency = 0.5
prefill_half_tokens = 0.0
decode_compute_efficiency = 0.5
memory_efficiency = 0.5
attention_efficiency = 0.5
prefill_step_overhead_us = 0.0
prefill_layer_overhead_us = 0.0
decode_step_overhead_us = 0.0
decode_layer_overhead_us = 0.0
decode_seq_overhead_us = 0.0
allreduce_latency_us = 0.0
link_efficiency = 1.0
memory_utilization = 0.9
reserve_gb = 2.0
max_batch = 64
"#;
        let cat = Catalogue::embedded()
            .with_engine_overlay(overlay, "lab.toml")
            .unwrap();
        let e = cat.engine_for("ascend-910b", None).unwrap();
        assert_eq!(e.engine, "mindie");
        assert_eq!(e.coefficients.max_batch, 64);
        // An overlay written before prompt steps had a collective latency of their own
        // gets the decode figure.
        assert_eq!(e.coefficients.prefill_allreduce_latency_us, 0.0);
        assert_eq!(cat.engines.engines["mindie"].name, "MindIE 2.0");
        // Other engines are untouched.
        assert_eq!(
            cat.engines.engines["vllm-0.7"],
            Catalogue::embedded().engines.engines["vllm-0.7"]
        );
        let err = Catalogue::embedded()
            .with_engine_overlay("[default_engine]\nascend = \"nope\"\n", "lab.toml")
            .unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.to_string().contains("unknown engine `nope`"), "{err}");
    }

    #[test]
    fn impossible_attention_shapes_are_rejected() {
        let err = model_error("llama-3-8b", "kv_heads", "64");
        assert!(err.to_string().contains("divide"), "{err}");
        model_error("llama-3-70b", "kv_heads", "7");
        model_error("qwen3-8b", "layers", "0");
        // A dotted id, quoted in the file, is still placed at its line.
        model_error("qwen2.5-72b", "head_dim", "0");
        model_error("deepseek-v3", "mla_rope_head_dim", "0");
    }

    #[test]
    fn impossible_parameter_counts_are_rejected() {
        let err = model_error("deepseek-v3", "params_active_b", "700.0");
        assert!(err.to_string().contains("exceeds"), "{err}");
        model_error("llama-3-8b", "params_active_b", "4.0");
        model_error("deepseek-v3", "experts_per_token", "300");
        model_error("deepseek-r1", "experts_per_token", "0");
        model_error("qwen3-8b", "weight_bytes", "0.0");
        model_error("qwen3-8b", "kv_bytes", "-2.0");
    }

    #[test]
    fn unknown_and_missing_keys_are_placed() {
        let src = EMBEDDED_CHIPS.replace("watts = 250.0", "wats = 250.0");
        let err = Catalogue::parse(&src, "chips.toml", EMBEDDED_MODELS, "models.toml").unwrap_err();
        assert!(err.to_string().contains("wats"), "{err}");
        assert_eq!(err.line, Some(line_of(&src, "mlu370-x8", "wats")), "{err}");

        let src = with_value(EMBEDDED_MODELS, "qwen3-8b", "max_context", "1")
            .replace("\nmax_context = 1\n", "\n");
        let err = Catalogue::parse(EMBEDDED_CHIPS, "chips.toml", &src, "models.toml").unwrap_err();
        assert!(err.to_string().contains("max_context"), "{err}");
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn load_uses_files_when_given_and_embedded_otherwise() {
        let dir = std::env::temp_dir().join(format!("dujiang-cat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chips = dir.join("chips.toml");
        let only_h20 = &EMBEDDED_CHIPS[..EMBEDDED_CHIPS.find("[ascend-910b]").unwrap()];
        let only_h20 = only_h20.replace("[h100]", "[h100-copy]");
        std::fs::write(&chips, &only_h20).unwrap();
        let cat = Catalogue::load(Some(&chips), None).unwrap();
        assert_eq!(cat.chip_ids(), "a100, h100-copy, h20, h20-3e");
        assert_eq!(cat.models, Catalogue::embedded().models);

        std::fs::write(&chips, "[h20]\nname = \"x\"\n").unwrap();
        let err = Catalogue::load(Some(&chips), None).unwrap_err();
        assert_eq!(err.file, chips.display().to_string());
        let missing = Catalogue::load(Some(&dir.join("nope.toml")), None).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
