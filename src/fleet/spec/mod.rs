//! Fleet files (`config/fleets/*.toml`): the pools a fleet is made of and the routing
//! policy it starts with. Parsing checks the schema (unknown keys are errors); resolving
//! against the catalogue checks the meaning (chip and model ids exist, weights fit) and
//! names the file, line and field of any problem.
//!
//! ```toml
//! name = "demo"
//! model = "llama-3-8b"          # default model for pools that do not name one
//! cells = 1                     # identical cells of these pools (see `fleet::cells`)
//! cell_key = "session"          # what traffic is split between cells by
//!
//! [policy]
//! name = "predicted-latency"
//! [policy.params]               # parameters of that policy (see `dujiang policies`)
//!
//! [pools.h20]
//! chip = "h20"
//! engine = "sglang"             # default: the chip's default engine (config/engines.toml)
//! dtype = "fp8"                 # default: the model's release format, as the chip runs it
//! tp = 1                        # default 1
//! count = 2
//! max_num_seqs = 128            # optional engine settings
//! max_batched_tokens = 8192
//! role = "mixed"                # or "prefill" / "decode" (disaggregation); default mixed
//!
//! [links.ascend-to-h20]         # KV links from prefill pools (see `fleet::links`)
//! from = "ascend"
//! to = "h20"
//!
//! [pools.vllm-ascend]            # real engines: one backend per OpenAI-compatible endpoint
//! kind = "openai"
//! endpoints = ["http://10.0.0.7:8000", "http://10.0.0.8:8000"]
//! model = "Qwen/Qwen3-8B"        # the name the endpoints serve the fleet's model under
//! chip = "ascend-910b"           # the performance model is the router's prior for them
//! engine = "vllm-ascend-0.18"
//! tp = 1
//! metrics = "vllm"               # default: the engine's dialect; "none": no scraping
//! ```

use super::cells::CellSpec;
use super::links::{check_roles, LinkSpec, LinkTable};
use super::membership::{PoolConfig, MAX_FLEET_BACKENDS, MAX_POOLS, MAX_POOL_BACKENDS};
use super::upstream::{api_base, UpstreamSpec, METRICS_DIALECTS};
use crate::config::{locate_key, parse_toml, ConfigError};
use crate::engine::Role;
use crate::profile::{Catalogue, Dtype, PerfModel, ProfileError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The demo fleet, built into the binary: the daemon's and replay's default.
pub const EMBEDDED_DEMO: &str = include_str!("../../../config/fleets/demo.toml");

/// The routing policy a fleet starts with.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    #[serde(default)]
    pub params: toml::Table,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            name: "predicted-latency".into(),
            params: toml::Table::new(),
        }
    }
}

/// What a pool's backends are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Engines simulated by the daemon (and by replay) from the performance model.
    #[default]
    Simulated,
    /// Real engines behind OpenAI-compatible endpoints; the performance model is the
    /// router's prior for them.
    Openai,
}

/// One pool as written in a fleet file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default)]
    pub kind: PoolKind,
    /// `kind = "openai"`: the endpoints' base URLs, one backend each.
    pub endpoints: Option<Vec<String>>,
    /// `kind = "openai"`: the endpoints' `/metrics` dialect (see
    /// [`super::upstream::METRICS_DIALECTS`]).
    pub metrics: Option<String>,
    /// `kind = "openai"`: the catalogue model clients ask for and the prior is built for;
    /// the fleet's `model` when absent (`model` is then the name served upstream).
    pub client_model: Option<String>,
    pub chip: String,
    /// Serving engine id (`config/engines.toml`); the chip's default engine when absent.
    pub engine: Option<String>,
    /// Weight and matmul format; the model's release format (as the chip supports it) when
    /// absent.
    pub dtype: Option<Dtype>,
    /// Model id; the fleet's `model` when absent. For `kind = "openai"`, the model name
    /// the endpoints serve (required).
    pub model: Option<String>,
    #[serde(default = "one")]
    pub tp: u32,
    /// Backends in the pool; for `kind = "openai"`, the number of endpoints.
    #[serde(default)]
    pub count: u32,
    pub max_num_seqs: Option<u32>,
    pub max_batched_tokens: Option<u32>,
    pub block_size: Option<u32>,
    /// Phases the pool runs; mixed (both) when absent.
    #[serde(default)]
    pub role: Role,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    name: String,
    model: String,
    #[serde(default)]
    policy: PolicySpec,
    pools: BTreeMap<String, PoolSpec>,
    #[serde(default)]
    links: BTreeMap<String, LinkSpec>,
    /// Identical cells the pools are deployed as (see `fleet::cells`).
    cells: Option<i64>,
    cell_key: Option<String>,
}

/// A parsed fleet file. Pools keep the order they are written in.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetSpec {
    pub name: String,
    pub model: String,
    pub policy: PolicySpec,
    pub pools: Vec<(String, PoolSpec)>,
    /// KV links between pools, by link name.
    pub links: Vec<(String, LinkSpec)>,
    /// The pools are one cell of this many, traffic split by this key (`cells = 1`: the
    /// pools are the whole fleet).
    pub cells: CellSpec,
    /// File name for errors.
    pub file: String,
    /// Source text, kept so later (semantic) errors can point at a line.
    pub source: String,
}

/// How a fleet's hourly spend divides between domestic and other chips.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpendSplit {
    pub domestic_usd_per_hour: f64,
    pub total_usd_per_hour: f64,
}

impl SpendSplit {
    pub fn of(pools: &[PoolConfig]) -> SpendSplit {
        let total = pools.iter().map(PoolConfig::cost_per_hour_usd).sum();
        let domestic = pools
            .iter()
            .filter(|p| p.domestic())
            .map(PoolConfig::cost_per_hour_usd)
            .sum();
        SpendSplit {
            domestic_usd_per_hour: domestic,
            total_usd_per_hour: total,
        }
    }

    /// Domestic share of spend in [0, 1].
    pub fn domestic_share(&self) -> f64 {
        if self.total_usd_per_hour > 0.0 {
            self.domestic_usd_per_hour / self.total_usd_per_hour
        } else {
            0.0
        }
    }
}

/// Upper bounds of a pool's engine settings. They drive allocations (a running set, a KV
/// block table, a step's token budget) and products in the performance model, so a typo
/// like `max_num_seqs = 1000000000` is refused at load instead of exhausting memory. Each is
/// far above what serving engines use (vLLM's defaults: 256 sequences, 16-token blocks).
pub const MAX_NUM_SEQS: u32 = 16_384;
pub const MAX_BLOCK_SIZE: u32 = 1_024;
pub const MAX_BATCHED_TOKENS: u32 = 1 << 20;
pub const MAX_TP: u32 = 64;

impl FleetSpec {
    /// Parses a fleet file; `file` names it in errors.
    pub fn parse(src: &str, file: &str) -> Result<FleetSpec, ConfigError> {
        let raw: FleetFile = parse_toml(src, file)?;
        if raw.name.trim().is_empty() {
            // Required so that reports say which fleet they are about; "" says nothing.
            return Err(ConfigError::at_field(
                file,
                src,
                "name",
                "must not be empty: it names the fleet in reports",
            ));
        }
        let cells = CellSpec::from_file(file, src, raw.cells, raw.cell_key.as_deref())?;
        if raw.pools.is_empty() {
            return Err(ConfigError::at_field(
                file,
                src,
                "pools",
                "a fleet needs at least one pool",
            ));
        }
        if raw.pools.len() > MAX_POOLS {
            return Err(ConfigError::at_field(
                file,
                src,
                "pools",
                format!(
                    "{} pools; a fleet holds at most {MAX_POOLS}",
                    raw.pools.len()
                ),
            ));
        }
        let mut pools: Vec<(String, PoolSpec)> = raw.pools.into_iter().collect();
        // Written order, so pool ids follow the file (BTreeMap sorted them by name).
        pools.sort_by_key(|(name, _)| {
            locate_key(src, &format!("pools.{name}.chip")).map_or(usize::MAX, |(line, _)| line)
        });
        let mut spec = FleetSpec {
            name: raw.name,
            model: raw.model,
            policy: raw.policy,
            pools,
            links: raw.links.into_iter().collect(),
            cells,
            file: file.to_string(),
            source: src.to_string(),
        };
        for (name, pool) in &mut spec.pools {
            if let Err(why) = super::check_pool_name(name) {
                // The name is the table's key: placed on its `[pools.NAME]` header (else
                // on its chip line), and the field is the pool, not one of its keys.
                let header = format!("[pools.{name}]");
                let line = src
                    .lines()
                    .position(|l| l.trim() == header)
                    .map(|i| (i + 1, 1))
                    .or_else(|| locate_key(src, &format!("pools.{name}.chip")));
                return Err(ConfigError {
                    file: file.to_string(),
                    line: line.map(|(l, _)| l),
                    column: line.map(|(_, c)| c),
                    field: Some(format!("pools.{name}")),
                    message: format!("pool name {name:?} {why} (pool names are [a-z0-9-]{{1,63}})"),
                });
            }
            check_kind(file, src, name, pool)?;
        }
        for (name, pool) in &spec.pools {
            for (field, value) in [
                ("count", Some(pool.count)),
                ("tp", Some(pool.tp)),
                ("max_num_seqs", pool.max_num_seqs),
                ("max_batched_tokens", pool.max_batched_tokens),
                ("block_size", pool.block_size),
            ] {
                let max = match field {
                    "count" => MAX_POOL_BACKENDS,
                    "tp" => MAX_TP,
                    "max_num_seqs" => MAX_NUM_SEQS,
                    "max_batched_tokens" => MAX_BATCHED_TOKENS,
                    _ => MAX_BLOCK_SIZE,
                };
                match value {
                    Some(0) => {
                        return Err(spec.error(
                            &format!("pools.{name}.{field}"),
                            if field == "count" {
                                "must be at least 1 (a simulated pool needs its `count`)"
                            } else {
                                "must be at least 1"
                            },
                        ))
                    }
                    Some(v) if v > max => {
                        return Err(spec.error(
                            &format!("pools.{name}.{field}"),
                            format!("{v} is above the limit of {max}"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        // u64: 64 pools of u32 counts cannot overflow it.
        let total: u64 = spec.pools.iter().map(|(_, p)| u64::from(p.count)).sum();
        if total > u64::from(MAX_FLEET_BACKENDS) {
            let (last, _) = spec.pools.last().expect("at least one pool");
            return Err(spec.error(
                &format!("pools.{last}.count"),
                format!("{total} backends in the fleet; at most {MAX_FLEET_BACKENDS}"),
            ));
        }
        Ok(spec)
    }

    /// Reads and parses a fleet file.
    pub fn load(path: &Path) -> Result<FleetSpec, ConfigError> {
        let name = path.display().to_string();
        let src = crate::config::read_text(path, &name)?;
        FleetSpec::parse(&src, &name)
    }

    /// The built-in demo fleet.
    pub fn embedded_demo() -> FleetSpec {
        FleetSpec::parse(EMBEDDED_DEMO, "<embedded config/fleets/demo.toml>")
            .expect("embedded demo fleet is valid (checked by tests)")
    }

    /// An error about `field`, placed at its line in this file.
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at_field(&self.file, &self.source, field, message)
    }

    /// Builds each pool's performance model from the catalogue, and checks the roles: a
    /// prefill pool needs a decode or mixed pool to hand off to.
    pub fn resolve(&self, catalogue: &Catalogue) -> Result<Vec<PoolConfig>, ConfigError> {
        let pools = self
            .pools
            .iter()
            .map(|(name, pool)| self.resolve_pool(catalogue, name, pool))
            .collect::<Result<Vec<_>, _>>()?;
        check_roles(&pools)
            .map_err(|(pool, why)| self.error(&format!("pools.{pool}.role"), why))?;
        // Links name pools, so they are checked once the pools are known.
        self.link_table(&pools)?;
        Ok(pools)
    }

    /// The KV links between `pools` (this file's, resolved): the `[links]` tables, and
    /// defaults for every other pair.
    pub fn link_table(&self, pools: &[PoolConfig]) -> Result<LinkTable, ConfigError> {
        LinkTable::resolve(pools, &self.links).map_err(|(field, why)| self.error(&field, why))
    }

    fn resolve_pool(
        &self,
        catalogue: &Catalogue,
        name: &str,
        pool: &PoolSpec,
    ) -> Result<PoolConfig, ConfigError> {
        let chip = catalogue.chip(&pool.chip).ok_or_else(|| {
            self.error(
                &format!("pools.{name}.chip"),
                format!(
                    "unknown chip `{}`; known chips: {}",
                    pool.chip,
                    known(catalogue.chips.keys())
                ),
            )
        })?;
        let catalogue_model = match pool.kind {
            PoolKind::Simulated => &pool.model,
            PoolKind::Openai => &pool.client_model,
        };
        let (model_id, model_field) = match catalogue_model {
            Some(m) if pool.kind == PoolKind::Openai => {
                (m.as_str(), format!("pools.{name}.client_model"))
            }
            Some(m) => (m.as_str(), format!("pools.{name}.model")),
            None => (self.model.as_str(), "model".to_string()),
        };
        let model = catalogue.model(model_id).ok_or_else(|| {
            self.error(
                &model_field,
                format!(
                    "unknown model `{model_id}`; known models: {}",
                    known(catalogue.models.keys())
                ),
            )
        })?;
        // An engine named in the file is blamed on its line; a missing default on the chip's.
        let engine_field = if pool.engine.is_some() {
            format!("pools.{name}.engine")
        } else {
            format!("pools.{name}.chip")
        };
        let engine = catalogue
            .engines
            .profile_for(chip, pool.engine.as_deref())
            .map_err(|e| self.error(&engine_field, e))?;
        let dtype = pool
            .dtype
            .unwrap_or_else(|| Catalogue::default_dtype(chip, model));
        let perf = PerfModel::new(chip, &engine, model, pool.tp, dtype).map_err(|e| {
            let field = match (&e, pool.dtype) {
                (ProfileError::UnsupportedDtype { .. }, Some(_)) => "dtype",
                (ProfileError::UnsupportedDtype { .. }, None) => "chip",
                _ => "tp",
            };
            self.error(&format!("pools.{name}.{field}"), e.to_string())
        })?;
        let mut config = PoolConfig::new(name, Arc::new(perf), pool.count);
        if let Some(n) = pool.max_num_seqs {
            config.max_num_seqs = n;
        }
        if let Some(n) = pool.max_batched_tokens {
            config.max_batched_tokens = n;
        }
        if let Some(n) = pool.block_size {
            config.block_size = n;
        }
        config.role = pool.role;
        if pool.kind == PoolKind::Openai {
            config.upstream = Some(Arc::new(UpstreamSpec {
                endpoints: pool.endpoints.clone().unwrap_or_default(),
                served_model: pool.model.clone().unwrap_or_default(),
                metrics: pool.metrics.clone(),
            }));
        }
        Ok(config)
    }
}

/// Checks the keys that depend on a pool's kind, and normalises an `openai` pool's
/// endpoints to API bases (its `count` becomes their number).
fn check_kind(file: &str, src: &str, name: &str, pool: &mut PoolSpec) -> Result<(), ConfigError> {
    let err = |field: &str, message: String| {
        ConfigError::at_field(file, src, &format!("pools.{name}.{field}"), message)
    };
    match pool.kind {
        PoolKind::Simulated => {
            for (field, set) in [
                ("endpoints", pool.endpoints.is_some()),
                ("metrics", pool.metrics.is_some()),
                ("client_model", pool.client_model.is_some()),
            ] {
                if set {
                    return Err(err(
                        field,
                        format!("`{field}` belongs to a pool of real engines (kind = \"openai\")"),
                    ));
                }
            }
        }
        PoolKind::Openai => {
            let endpoints = match &pool.endpoints {
                None => {
                    return Err(err(
                        "endpoints",
                        "missing: a pool of kind = \"openai\" lists its endpoints' base URLs"
                            .into(),
                    ))
                }
                Some(e) if e.is_empty() => {
                    return Err(err(
                        "endpoints",
                        "is empty: list at least one base URL".into(),
                    ))
                }
                Some(e) => e,
            };
            let mut bases = Vec::with_capacity(endpoints.len());
            for (i, url) in endpoints.iter().enumerate() {
                let base = api_base(url)
                    .map_err(|why| err("endpoints", format!("endpoints[{i}]: {why}")))?;
                if bases.contains(&base) {
                    return Err(err(
                        "endpoints",
                        format!("endpoints[{i}]: `{url}` is listed twice"),
                    ));
                }
                bases.push(base);
            }
            if pool.model.as_deref().is_none_or(str::is_empty) {
                return Err(err(
                    "kind",
                    "a pool of kind = \"openai\" needs `model`, the model name its endpoints serve"
                        .into(),
                ));
            }
            if let Some(m) = &pool.metrics {
                if !METRICS_DIALECTS.contains(&m.as_str()) {
                    return Err(err(
                        "metrics",
                        format!(
                            "unknown dialect `{m}`; known: {}",
                            METRICS_DIALECTS.join(", ")
                        ),
                    ));
                }
            }
            if pool.count != 0 && pool.count as usize != bases.len() {
                return Err(err(
                    "count",
                    format!("{} but {} endpoints: a pool of real engines has one backend per endpoint (leave count out)", pool.count, bases.len()),
                ));
            }
            pool.count = u32::try_from(bases.len()).unwrap_or(u32::MAX);
            pool.endpoints = Some(bases);
        }
    }
    Ok(())
}

fn known<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    ids.map(String::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
