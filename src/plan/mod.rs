//! The capacity planner behind `dujiang plan`: the cheapest heterogeneous fleet that
//! serves a trace within a latency SLO, with a floor on the domestic share of chips (or of
//! spend).
//!
//! The method follows Mélange (Griggs et al., 2024): cut the trace into request-size
//! buckets ([`workload`]); measure by fast single-backend replay how much of each bucket
//! one backend of each candidate kind sustains within the SLO ([`capacity`]); solve the
//! integer program for the cheapest mix that covers every bucket's load within the floor
//! ([`mix`], an exact mixed-integer program solved by `good_lp`); then replay the whole trace on that
//! fleet and repair or trim it until it passes and no single backend can go ([`search`]).
//! The same steps across several floors give the cost frontier.
//!
//! Everything here is pure: replays are handed to a [`ReplayRunner`] in batches, so the
//! CLI decides how many threads run them, and the measurement sweep can be split across
//! machines ([`Shard`]) and merged.

pub mod candidate;
pub mod capacity;
pub mod mix;
pub mod report;
pub mod runner;
pub mod search;
pub mod slo;
pub mod split;
pub mod workload;

pub use candidate::{candidates, Candidate};
pub use capacity::{measure, Measurement, Shard};
pub use report::{FrontierPoint, PlanReport, PlannedPool, Predicted, ShardReport};
pub use runner::{ReplayJob, ReplayRunner, Sequential, Timing};
pub use slo::{SloSpec, DEFAULT_SLO};
pub use split::{add_split, plan_split, SplitPlan};
pub use workload::{Bucket, Workload};

use crate::fleet::PolicySpec;
pub use mix::MixProblem;
use search::Verifier;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// What the domestic-share floor counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareBy {
    /// Domestic chips over all chips (a tp-4 backend is four chips).
    #[default]
    Chips,
    /// Domestic spend over all spend.
    Spend,
}

impl FromStr for ShareBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chips" => Ok(ShareBy::Chips),
            "spend" => Ok(ShareBy::Spend),
            other => Err(format!(
                "unknown share basis `{other}` (expected chips or spend)"
            )),
        }
    }
}

/// The domestic-share floors the cost frontier is drawn at.
pub const FRONTIER_FLOORS: [f64; 4] = [0.0, 0.3, 0.6, 1.0];

/// How plans are judged and verified.
#[derive(Clone, Debug)]
pub struct PlanSettings {
    pub slo: SloSpec,
    pub share_by: ShareBy,
    /// The routing policy of verification replays and of the fleet file.
    pub policy: PolicySpec,
    pub seed: u64,
    /// Least simulated time of one capacity probe, seconds.
    pub probe_seconds: f64,
}

/// Everything a plan was asked, as given: recorded in every output so that shards can be
/// checked against each other and a plan can be rerun.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInputs {
    pub trace: String,
    pub format: String,
    pub model: String,
    pub chips: Vec<String>,
    pub slo: String,
    pub attainment: f64,
    pub min_domestic_share: f64,
    pub share_by: ShareBy,
    pub policy: String,
    pub rate_scale: f64,
    pub max_tp: Option<u32>,
    /// Size classes per dimension (prompt, output): `buckets²` buckets at most.
    pub buckets: usize,
    /// Requests of each bucket replayed when measuring capacity (looped to last at least
    /// `probe_seconds`).
    pub probe_requests: usize,
    pub probe_seconds: f64,
    pub seed: u64,
    pub chip_catalogue: Option<String>,
    pub model_catalogue: Option<String>,
    /// Engine catalogue overlays, applied in order.
    #[serde(default)]
    pub engine_catalogues: Vec<String>,
}

/// The cheapest integer mix the measurements predict for `floor`.
pub fn solve_mix(
    workload: &Workload,
    candidates: &[Candidate],
    measurements: &[Measurement],
    share_by: ShareBy,
    floor: f64,
) -> Result<Vec<u32>, String> {
    let problem = mix_problem(workload, candidates, measurements, share_by, floor)?;
    problem.solve()?.ok_or_else(|| {
        if floor > 0.0 && !candidates.iter().any(|c| c.domestic) {
            format!(
                "a {:.0}% domestic floor cannot be met: none of the chips is domestic",
                floor * 100.0
            )
        } else {
            format!(
                "no mix of the chips carries every request size within the SLO at a {:.0}% domestic floor",
                floor * 100.0
            )
        }
    })
}

/// The integer program [`solve_mix`] solves: per candidate its cost, floor weight and the
/// backends it needs per bucket.
pub fn mix_problem(
    workload: &Workload,
    candidates: &[Candidate],
    measurements: &[Measurement],
    share_by: ShareBy,
    floor: f64,
) -> Result<MixProblem, String> {
    let nb = workload.buckets.len();
    let mut work = vec![vec![None; nb]; candidates.len()];
    for m in measurements {
        let c = candidates
            .iter()
            .position(|c| c.name() == m.candidate)
            .ok_or_else(|| format!("measurement for unknown candidate `{}`", m.candidate))?;
        let rps = m.sustained_rps.ok_or_else(|| {
            format!(
                "no capacity measured for {} on bucket {} (a shard is missing)",
                m.candidate, m.bucket
            )
        })?;
        if m.bucket >= nb {
            return Err(format!("measurement for unknown bucket {}", m.bucket));
        }
        if rps > 0.0 {
            work[c][m.bucket] = Some(workload.buckets[m.bucket].rate_rps / rps);
        }
    }
    Ok(MixProblem {
        cost: candidates.iter().map(|c| c.cost_per_hour_usd).collect(),
        floor_weight: candidates
            .iter()
            .map(|c| {
                let w = match share_by {
                    ShareBy::Chips => f64::from(c.tp),
                    ShareBy::Spend => c.cost_per_hour_usd,
                };
                (if c.domestic { 1.0 } else { 0.0 } - floor) * w
            })
            .collect(),
        work,
    })
}

/// Refuses a floor no mix of the candidates can meet (worth checking before measuring).
pub fn check_floor(candidates: &[Candidate], floor: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&floor) {
        return Err(format!(
            "the domestic-share floor must be in [0, 1], got {floor}"
        ));
    }
    if floor > 0.0 && !candidates.iter().any(|c| c.domestic) {
        return Err(format!(
            "a {:.0}% domestic floor cannot be met: none of the chips is domestic",
            floor * 100.0
        ));
    }
    Ok(())
}

/// Refuses an SLO that no chip meets even with no queueing at all.
pub(crate) fn check_reachable(
    workload: &Workload,
    measurements: &[Measurement],
    slo: &SloSpec,
) -> Result<(), String> {
    let total: u64 = workload.buckets.iter().map(|b| b.requests).sum();
    let best: f64 = workload
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let a = measurements
                .iter()
                .filter(|m| m.bucket == i)
                .map(|m| m.isolated_attainment)
                .fold(0.0, f64::max);
            a * b.requests as f64
        })
        .sum::<f64>()
        / total.max(1) as f64;
    if best < slo.attainment {
        return Err(format!(
            "SLO unreachable: even one request at a time on the fastest chip for each request size, only {:.2}% of requests meet {slo}",
            best * 100.0
        ));
    }
    Ok(())
}

/// One floor's plan: the solver's mix and the settled fleet.
struct FloorPlan {
    floor: f64,
    solver: Vec<u32>,
    settled: Result<search::Settled, String>,
}

/// Plans for the requested floor and the frontier floors from measured capacities.
pub fn plan(
    inputs: &PlanInputs,
    workload: &Workload,
    candidates: &[Candidate],
    measurements: Vec<Measurement>,
    settings: &PlanSettings,
    runner: &dyn ReplayRunner,
    measure_replays: u64,
) -> Result<PlanReport, String> {
    let floor = inputs.min_domestic_share;
    check_floor(candidates, floor)?;
    check_reachable(workload, &measurements, &settings.slo)?;
    let mut floors: Vec<f64> = FRONTIER_FLOORS.to_vec();
    if !floors.iter().any(|f| (f - floor).abs() < 1e-9) {
        floors.push(floor);
    }
    floors.sort_by(f64::total_cmp);
    let mut replays = measure_replays;
    let mut plans = Vec::new();
    for &f in &floors {
        let (solver, settled) =
            match solve_mix(workload, candidates, &measurements, settings.share_by, f) {
                Ok(mix) => {
                    let verifier = Verifier {
                        candidates,
                        settings,
                        records: workload.records.clone(),
                        runner,
                        floor: f,
                    };
                    (mix.clone(), verifier.settle(mix))
                }
                Err(e) => (Vec::new(), Err(e)),
            };
        if let Ok(s) = &settled {
            replays += s.replays;
        }
        plans.push(FloorPlan {
            floor: f,
            solver,
            settled,
        });
    }
    // A fleet that clears a higher floor clears every lower one: where it is cheaper, the
    // lower floor takes it, so the frontier never falls as the floor rises.
    for i in (0..plans.len()).rev() {
        for j in i + 1..plans.len() {
            let (Ok(lo), Ok(hi)) = (&plans[i].settled, &plans[j].settled) else {
                continue;
            };
            if search::cost(candidates, &hi.counts) < search::cost(candidates, &lo.counts) - 1e-9 {
                plans[i].settled = plans[j].settled.clone();
            }
        }
    }
    let main = plans
        .iter()
        .find(|p| (p.floor - floor).abs() < 1e-9)
        .expect("the requested floor is planned");
    let settled = main.settled.clone()?;
    Ok(report::build(
        inputs,
        workload,
        candidates,
        settings,
        &main.solver,
        &settled,
        plans.iter().map(|p| (p.floor, p.settled.clone())).collect(),
        measurements,
        replays,
    ))
}
