//! Routing policies: given a request and a [`LoadView`] of the fleet, pick the backend that
//! serves it. One file per policy behind one trait, built by name from TOML parameters.
//!
//! Every policy is `Send + Sync` and picks through `&self`: the daemon calls one policy
//! from many threads at once, so any state a policy keeps (a round-robin counter, a
//! domestic-share window) is atomics, never a lock. Randomised policies draw from a
//! generator seeded by the policy seed and the request ([`PickRng`]), so replays are
//! byte-reproducible. No policy scans every backend: each looks at a bounded number of
//! candidates (a few per pool, or a sample), so a decision costs about the same at 4096
//! backends as at 8.

mod candidates;
mod disaggregated;
mod domestic_share;
mod least_kv;
mod least_outstanding;
mod least_work;
mod power_of_two;
mod predict;
mod predicted_latency;
mod prefix_affinity;
mod prefix_record;
mod random;
mod round_robin;
mod slo_cost;
mod weighted;

pub use candidates::{PickRng, Reach};
pub use disaggregated::{pick_decode, Disaggregated};
pub use domestic_share::DomesticShare;
pub use least_kv::LeastKv;
pub use least_outstanding::LeastOutstanding;
pub use least_work::LeastWork;
pub use power_of_two::PowerOfTwo;
pub use predict::{predict, work_ns, Prediction};
pub use predicted_latency::PredictedLatency;
pub use prefix_affinity::PrefixAffinity;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use slo_cost::SloCost;
pub use weighted::Weighted;

use crate::config::ConfigError;
use crate::fleet::{BackendId, FleetSpec, LinkTable, LoadView};
use crate::request::{Nanos, Request};
use serde::de::DeserializeOwned;

/// Where a request goes: `first` serves it (whole, or its prefill when `first` is a
/// prefill-role backend), and `decode` is where its KV moves after a prefill, when the
/// policy chose the pair (otherwise the driver chooses at hand-off, by [`pick_decode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub first: BackendId,
    pub decode: Option<BackendId>,
}

impl Route {
    pub fn whole(first: BackendId) -> Route {
        Route {
            first,
            decode: None,
        }
    }

    /// The backend that produces the output tokens: the decode side of a split route.
    pub fn output_side(&self) -> BackendId {
        self.decode.unwrap_or(self.first)
    }
}

/// A routing policy.
pub trait Policy: Send + Sync {
    /// The registry name (`least-work`, …).
    fn name(&self) -> &'static str;

    /// Picks a serving backend of an allowed pool for `req`, or `None` when there is none.
    /// Must not block, allocate per backend, or scan the whole fleet.
    fn pick(&self, req: &Request, view: &dyn LoadView, now: Nanos) -> Option<BackendId>;

    /// Picks a route for `req`, knowing the KV links between pools (prefill/decode
    /// disaggregation). Policies that do not pair prefill with decode pick as [`Self::pick`].
    fn pick_route(
        &self,
        req: &Request,
        view: &dyn LoadView,
        _links: &LinkTable,
        now: Nanos,
    ) -> Option<Route> {
        self.pick(req, view, now).map(Route::whole)
    }

    /// Whether picks depend on backends' load. A router running decisions in parallel
    /// re-decides a pick that raced another one only when this is true; a policy that
    /// ignores load (or counts its own turns, like round robin) is never asked twice.
    fn reads_load(&self) -> bool {
        true
    }

    /// Called once the request has been handed to `route` (after admission): `route.first`
    /// serves it whole or prefills it, and a split route's `decode` side produces its
    /// output. Policies that steer by what they have routed (the domestic-share window,
    /// the disaggregated policy's prefix record) learn here.
    fn on_routed(&self, _req: &Request, _route: Route, _view: &dyn LoadView, _now: Nanos) {}

    /// Called when a routed request reaches its terminal outcome, with the output tokens it
    /// actually produced. Both drivers call it: the daemon on every outcome (completed,
    /// cancelled, deadline exceeded, failed), replay on completion and on loss.
    fn on_finished(&self, _req: &Request, _backend: BackendId, _output_tokens: u32, _now: Nanos) {}

    /// [`Self::pick`] followed by [`Self::on_routed`], for drivers with no admission step
    /// between the two.
    fn route(&self, req: &Request, view: &dyn LoadView, now: Nanos) -> Option<BackendId> {
        let b = self.pick(req, view, now)?;
        self.on_routed(req, Route::whole(b), view, now);
        Some(b)
    }
}

/// One entry of the policy registry.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// Parameters with their defaults, as TOML.
    pub params: &'static str,
}

/// Every policy, in the order `dujiang policies` lists them.
pub const POLICIES: &[PolicyInfo] = &[
    PolicyInfo {
        name: "round-robin",
        summary: "each serving backend in turn, ignoring load",
        params: "",
    },
    PolicyInfo {
        name: "random",
        summary: "a uniformly random serving backend",
        params: "",
    },
    PolicyInfo {
        name: "least-outstanding",
        summary: "fewest waiting + running requests (every chip counted alike)",
        params: "scan_limit = 32, sample = 8",
    },
    PolicyInfo {
        name: "power-of-two",
        summary: "best of d random backends by outstanding tokens",
        params: "choices = 2",
    },
    PolicyInfo {
        name: "least-kv",
        summary: "lowest KV-cache usage",
        params: "scan_limit = 32, sample = 8",
    },
    PolicyInfo {
        name: "least-work",
        summary: "least outstanding prefill + decode work divided by the backend's speed",
        params: "scan_limit = 32, sample = 8",
    },
    PolicyInfo {
        name: "predicted-latency",
        summary: "lowest predicted TTFT per pool (queue state + PerfModel) among pools that keep TPOT within the SLO; ties by cost",
        params: "per_pool = 2, tie_tolerance = 0.05",
    },
    PolicyInfo {
        name: "slo-cost",
        summary: "cheapest pool predicted to meet the request's SLO, else the fastest",
        params: "per_pool = 2, headroom = 0.8, ttft_ms = 2000, tpot_ms = 100",
    },
    PolicyInfo {
        name: "prefix-affinity",
        summary: "the backend owning the prompt's first prefix block on a hash ring, spilling when loaded",
        params: "bound = 1.25, slack = 2, max_walk = 16, probes = 4",
    },
    PolicyInfo {
        name: "weighted",
        summary: "fixed split by pool, best of two inside the pool",
        params: "weights = { pool = weight, ... }, choices = 2",
    },
    PolicyInfo {
        name: "disaggregated",
        summary: "prefill/decode pairs: decode by predicted TPOT and free KV, prefill by predicted TTFT with the KV transfer; prompts with few uncached tokens (by a record of prefixes routed) whole",
        params: "threshold = 512, per_pool = 2, tie_tolerance = 0.05, cache_entries = 65536",
    },
    PolicyInfo {
        name: "domestic-share",
        summary: "wraps a policy; keeps domestic chips' share of tokens ≥ target over a sliding window",
        params: "inner = \"least-work\", inner_params = {}, target = 0.6, window_s = 60",
    },
];

/// A policy that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy `{name}`; known policies: {known}")]
    Unknown { name: String, known: String },
    #[error("policy `{policy}`: {message}")]
    BadParams { policy: String, message: String },
}

impl PolicyError {
    /// Whether the error is about the parameters (rather than the name).
    pub fn is_params(&self) -> bool {
        matches!(self, PolicyError::BadParams { .. })
    }
}

/// Deserialises a policy's parameter table (unknown keys are errors).
pub(crate) fn params<P: DeserializeOwned>(
    policy: &str,
    table: &toml::Table,
) -> Result<P, PolicyError> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| PolicyError::BadParams {
            policy: policy.to_string(),
            message: e.message().trim().to_string(),
        })
}

pub(crate) fn bad(policy: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::BadParams {
        policy: policy.to_string(),
        message: message.into(),
    }
}

/// Builds a policy by registry name. `seed` feeds every random choice it makes.
pub fn build(name: &str, table: &toml::Table, seed: u64) -> Result<Box<dyn Policy>, PolicyError> {
    Ok(match name {
        "round-robin" => Box::new(RoundRobin::from_params(table)?),
        "random" => Box::new(Random::from_params(table, seed)?),
        "least-outstanding" => Box::new(LeastOutstanding::from_params(table, seed)?),
        "power-of-two" => Box::new(PowerOfTwo::from_params(table, seed)?),
        "least-kv" => Box::new(LeastKv::from_params(table, seed)?),
        "least-work" => Box::new(LeastWork::from_params(table, seed)?),
        "predicted-latency" => Box::new(PredictedLatency::from_params(table, seed)?),
        "slo-cost" => Box::new(SloCost::from_params(table, seed)?),
        "prefix-affinity" => Box::new(PrefixAffinity::from_params(table, seed)?),
        "weighted" => Box::new(Weighted::from_params(table, seed)?),
        "domestic-share" => Box::new(DomesticShare::from_params(table, seed)?),
        "disaggregated" => Box::new(Disaggregated::from_params(table, seed)?),
        other => {
            return Err(PolicyError::Unknown {
                name: other.to_string(),
                known: POLICIES
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    })
}

/// Builds the policy a fleet file names, placing any error at its `policy` fields.
pub fn from_fleet(spec: &FleetSpec, seed: u64) -> Result<Box<dyn Policy>, ConfigError> {
    build(&spec.policy.name, &spec.policy.params, seed).map_err(|e| {
        let message = e.to_string();
        let field = if !e.is_params() {
            "policy.name".to_string()
        } else {
            // Point at the parameter the message names, when it names one.
            spec.policy
                .params
                .keys()
                .find(|k| message.contains(k.as_str()))
                .map_or("policy.params".to_string(), |k| {
                    format!("policy.params.{k}")
                })
        };
        spec.error(&field, message)
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! A tiny fluid model of a fleet for policy tests: backends absorb routed requests as
    //! queued tokens and burn them down at their pool's speed, so policies that read load
    //! see the consequences of their own choices.
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::{Membership, PlainLoadView};

    pub fn req(id: u64, prompt: u32, out: u32) -> Request {
        Request {
            id,
            arrival: id * 1_000_000,
            prompt_tokens: prompt,
            max_tokens: out,
            ..Default::default()
        }
    }

    /// Routes `n` requests (one every `gap_ns`) through `policy`, draining each backend at
    /// its pool's speed between arrivals. Returns requests routed per pool.
    pub fn run_fluid(policy: &dyn Policy, membership: Membership, n: u64, gap_ns: u64) -> Vec<u64> {
        run_fluid_picks(policy, membership, n, gap_ns, |_| 0).0
    }

    /// [`run_fluid`], publishing `drain(backend)` as each backend's drain estimate, and
    /// returning the backends picked in order too.
    pub fn run_fluid_picks(
        policy: &dyn Policy,
        membership: Membership,
        n: u64,
        gap_ns: u64,
        drain: impl Fn(BackendId) -> u64,
    ) -> (Vec<u64>, Vec<BackendId>) {
        let mut picks = Vec::new();
        let mut view = PlainLoadView::new(membership);
        let mut per_pool = vec![0u64; view.membership().pool_slots()];
        // Remaining (prefill tokens, decode tokens, requests) per backend.
        let bound = view.membership().backend_id_bound();
        let mut work: Vec<(u64, u64, Vec<u64>)> = vec![(0, 0, Vec::new()); bound];
        for i in 0..n {
            let now = i * gap_ns;
            let r = req(i, 800, 200);
            let b = policy.route(&r, &view, now).expect("a serving backend");
            picks.push(b);
            let pool = view.membership().backend(b).unwrap().pool;
            per_pool[pool.index()] += 1;
            let w = &mut work[b.index()];
            w.0 += u64::from(r.prompt_tokens);
            w.1 += u64::from(r.max_tokens);
            w.2.push(u64::from(r.max_tokens));
            // Drain every backend by one gap of its pool's time.
            let backends: Vec<_> = view.membership().backends().collect();
            for (id, e) in backends {
                let pool = view.membership().pool(e.pool).unwrap().clone();
                let w = &mut work[id.index()];
                let mut budget = gap_ns;
                let prefill_cost = pool.prefill_ns(w.0);
                if prefill_cost <= budget {
                    budget -= prefill_cost;
                    w.0 = 0;
                } else {
                    w.0 -= w.0 * budget / prefill_cost.max(1);
                    budget = 0;
                }
                let batch = (w.2.len() as u32).clamp(1, pool.config.max_num_seqs);
                let steps = budget / pool.decode_step_ns(batch).max(1);
                let mut produced = steps * u64::from(batch);
                while produced > 0 && !w.2.is_empty() {
                    let take = w.2[0].min(produced);
                    w.2[0] -= take;
                    produced -= take;
                    w.1 -= take;
                    if w.2[0] == 0 {
                        w.2.remove(0);
                    }
                }
                let running = (w.2.len() as u32).min(pool.config.max_num_seqs);
                view.set_load(
                    id,
                    LoadSnapshot {
                        waiting: w.2.len() as u32 - running,
                        running,
                        queued_prefill_tokens: w.0,
                        remaining_decode_tokens: w.1,
                        kv_used_blocks: (w.1 / 16) as u32,
                        kv_total_blocks: 4096,
                        predicted_drain_ns: drain(id),
                    },
                );
            }
        }
        (per_pool, picks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_policy_builds_with_defaults() {
        for info in POLICIES {
            let p = build(info.name, &toml::Table::new(), 7).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name(), info.name);
        }
    }

    /// Replay publishes loads without the drain estimate (`Engine::routing_load`); the
    /// daemon publishes it. They agree only while no policy reads it.
    #[test]
    fn no_policy_reads_the_drain_estimate() {
        use crate::fleet::test_fleets::fast_and_slow;
        for info in POLICIES {
            let run = |drain: fn(BackendId) -> u64| {
                let p = build(info.name, &toml::Table::new(), 7).unwrap();
                testing::run_fluid_picks(p.as_ref(), fast_and_slow(4), 300, 5_000_000, drain)
            };
            let without = run(|_| 0);
            let with = run(|b| 1_000_000_007u64.wrapping_mul(u64::from(b.0) + 3) % 9_000_000_000);
            assert_eq!(without, with, "{} reads predicted_drain_ns", info.name);
        }
    }

    #[test]
    fn shipped_fleets_name_policies_that_build() {
        let demo = FleetSpec::embedded_demo();
        assert_eq!(from_fleet(&demo, 1).unwrap().name(), "predicted-latency");
        let src = include_str!("../../config/fleets/doubao-2025.toml");
        let doubao = FleetSpec::parse(src, "doubao-2025.toml").unwrap();
        assert_eq!(from_fleet(&doubao, 1).unwrap().name(), "domestic-share");
    }

    #[test]
    fn unknown_names_and_params_are_errors() {
        let err = build("fastest", &toml::Table::new(), 0).err().unwrap();
        assert!(err.to_string().contains("least-work"), "{err}");
        let table: toml::Table = toml::from_str("choises = 3").unwrap();
        let err = build("power-of-two", &table, 0).err().unwrap();
        assert!(
            err.is_params() && err.to_string().contains("choises"),
            "{err}"
        );
    }

    #[test]
    fn fleet_policy_errors_point_at_the_policy_table() {
        let src = "name = \"t\"\nmodel = \"m\"\n[policy]\nname = \"domestic-share\"\n[policy.params]\ntarget = 1.5\n[pools.a]\nchip = \"c\"\ncount = 1\n";
        let spec = FleetSpec::parse(src, "f.toml").unwrap();
        let err = from_fleet(&spec, 0).err().unwrap();
        assert_eq!(err.field.as_deref(), Some("policy.params.target"));
        assert_eq!(err.line, Some(6), "{err}");
        let err = from_fleet(
            &FleetSpec::parse(&src.replace("domestic-share", "fastest"), "f.toml").unwrap(),
            0,
        )
        .err()
        .unwrap();
        assert_eq!(err.field.as_deref(), Some("policy.name"));
        assert_eq!(err.line, Some(4), "{err}");
    }
}
