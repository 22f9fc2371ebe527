//! The disaggregated side of a plan: the cheapest prefill/decode fleet that meets the same
//! SLO and domestic floor as the aggregated plan, so the report can say whether splitting
//! pays. The family searched is (prefill kind, count) × (decode kind, count) over the same
//! candidates, on the default KV links of `crate::fleet::links` (142 Gb/s, 0.5 ms, plus a
//! host-memory staging hop between vendors), replayed with the `disaggregated` policy.
//!
//! The search is bounded: every (prefill kind, decode kind) pair starts at one of each and
//! grows, one backend at a time, on the side that cuts the SLO deficit most per dollar
//! (all pairs' next steps go to the runner as one batch), then trims while it still
//! passes. A pair stops once its fleet costs more than [`COST_CAP`] times the aggregated
//! plan, or after [`MAX_STALLED`] steps that do not help: a split fleet that dear would
//! not be bought anyway.

use super::candidate::Candidate;
use super::report::PlannedPool;
use super::runner::{ReplayJob, ReplayRunner, Timing};
use super::search::{cost, domestic_share};
use super::PlanSettings;
use crate::engine::Role;
use crate::fleet::{PolicySpec, PoolConfig};
use crate::sim::report::round3;
use crate::sim::PolicyReport;
use crate::trace::TraceRecord;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A pair gives up once its fleet costs more than this many times the aggregated plan.
pub const COST_CAP: f64 = 2.0;
/// Steps in a row that do not cut the deficit before a pair gives up.
const MAX_STALLED: u32 = 4;
/// Least share of the deficit a step must cut to count as progress.
const STALL_CUT: f64 = 0.01;
/// Backends per role before a pair gives up.
const MAX_PER_ROLE: u32 = 256;

/// The link assumption the split fleets are replayed on, as printed.
pub const LINK_ASSUMPTION: &str = "default links: 142 Gb/s, 0.5 ms per transfer (Mooncake P/D on 200 Gb/s RoCE), plus a 200 Gb/s host-staging hop between vendors (estimate); see src/fleet/links.rs";

/// The cheapest split fleet found, or why none was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitPlan {
    /// The link assumption of its replays.
    pub links: String,
    /// `None` when no split fleet within the bound meets the SLO and floor (see `note`).
    pub prefill: Option<PlannedPool>,
    pub decode: Option<PlannedPool>,
    pub cost_per_hour_usd: Option<f64>,
    pub domestic_share: Option<f64>,
    pub slo_attainment: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub tpot_p99_ms: Option<f64>,
    /// Each pool's role as the verification replay ran it (`prefill`, `decode`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Prefills the verification replay handed off to decode backends.
    #[serde(default)]
    pub handoffs: u64,
    /// (prefill kind, decode kind) pairs searched.
    pub pairs: u32,
    pub replays: u64,
    pub note: Option<String>,
}

impl SplitPlan {
    /// The split fleet as a fleet file (`config/fleets/*.toml` layout: roles, the
    /// `disaggregated` policy, and the link restating the defaults it was replayed on),
    /// or `None` when no split fleet met the SLO.
    pub fn fleet_toml(&self, inputs: &super::PlanInputs) -> Option<String> {
        use std::fmt::Write;
        let (p, d) = (self.prefill.as_ref()?, self.decode.as_ref()?);
        let q = |v: &str| toml::Value::String(v.to_string()).to_string();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Prefill/decode split planned by `dujiang plan` for {}: {} at {}% attainment.",
            inputs.trace,
            inputs.slo,
            inputs.attainment * 100.0
        );
        let _ = writeln!(
            s,
            "# ${:.2}/h; domestic share {:.1}%. Replay predicts attainment {:.2}%, TTFT p99 {:.0} ms, TPOT p99 {:.1} ms.",
            self.cost_per_hour_usd.unwrap_or(0.0),
            self.domestic_share.unwrap_or(0.0) * 100.0,
            self.slo_attainment.unwrap_or(0.0) * 100.0,
            self.ttft_p99_ms.unwrap_or(0.0),
            self.tpot_p99_ms.unwrap_or(0.0)
        );
        let _ = writeln!(s, "name = {}", q(&format!("plan-split-{}", inputs.model)));
        let _ = writeln!(s, "model = {}\n", q(&inputs.model));
        let _ = writeln!(s, "[policy]\nname = \"disaggregated\"");
        for (role, pool) in [("prefill", p), ("decode", d)] {
            let _ = writeln!(s, "\n[pools.{role}]\nchip = {}", q(&pool.chip));
            if !pool.engine.is_empty() {
                let _ = writeln!(s, "engine = {}", q(&pool.engine));
            }
            let _ = writeln!(
                s,
                "tp = {}\ncount = {}\nrole = \"{role}\"",
                pool.tp, pool.count
            );
        }
        // The defaults it was replayed on (a staging hop between vendors stays the
        // default's, so it is not restated).
        let _ = writeln!(s, "\n# {}", self.links);
        let _ = writeln!(
            s,
            "[links.prefill-to-decode]\nfrom = \"prefill\"\nto = \"decode\"\nbandwidth_gbps = {}\nlatency_us = {}",
            crate::fleet::DEFAULT_BANDWIDTH_GBPS,
            crate::fleet::DEFAULT_LATENCY_US
        );
        Some(s)
    }
}

/// One pair's search state.
struct Pair {
    p: usize,
    d: usize,
    counts: [u32; 2],
    report: Option<PolicyReport>,
    stalled: u32,
    /// `Some(true)`: passing and trimmed; `Some(false)`: gave up.
    done: Option<bool>,
}

struct Ctx<'a> {
    candidates: &'a [Candidate],
    settings: &'a PlanSettings,
    records: Arc<[TraceRecord]>,
    floor: f64,
}

impl Ctx<'_> {
    fn kinds(&self, pair: &Pair) -> [Candidate; 2] {
        [
            self.candidates[pair.p].clone(),
            self.candidates[pair.d].clone(),
        ]
    }

    fn pools(&self, pair: &Pair, counts: [u32; 2]) -> Vec<PoolConfig> {
        let [p, d] = self.kinds(pair);
        let mut pre = p.pool_of(counts[0]);
        pre.name = format!("{}-prefill", p.name());
        pre.role = Role::Prefill;
        let mut dec = d.pool_of(counts[1]);
        dec.name = format!("{}-decode", d.name());
        dec.role = Role::Decode;
        vec![pre, dec]
    }

    fn job(&self, pair: &Pair, counts: [u32; 2]) -> ReplayJob {
        ReplayJob {
            pools: self.pools(pair, counts),
            policy: PolicySpec {
                name: "disaggregated".into(),
                params: toml::Table::new(),
            },
            seed: self.settings.seed,
            slo: self.settings.slo.request_slo(),
            records: self.records.clone(),
            timing: Timing::Scaled(1.0),
        }
    }

    fn cost(&self, pair: &Pair, counts: [u32; 2]) -> f64 {
        cost(&self.kinds(pair), &counts)
    }

    fn floor_ok(&self, pair: &Pair, counts: [u32; 2]) -> bool {
        domestic_share(&self.kinds(pair), &counts, self.settings.share_by) >= self.floor - 1e-9
    }

    fn passes(&self, pair: &Pair, counts: [u32; 2], r: &PolicyReport) -> bool {
        self.settings.slo.meets(r) && self.floor_ok(pair, counts)
    }
}

fn grown(counts: [u32; 2], side: usize, by: i32) -> [u32; 2] {
    let mut c = counts;
    c[side] = (c[side] as i32 + by) as u32;
    c
}

/// Searches the split fleets; `aggregated_cost` bounds the search (see [`COST_CAP`]).
pub fn plan_split(
    candidates: &[Candidate],
    settings: &PlanSettings,
    records: Arc<[TraceRecord]>,
    floor: f64,
    aggregated_cost: f64,
    runner: &dyn ReplayRunner,
) -> SplitPlan {
    let ctx = Ctx {
        candidates,
        settings,
        records,
        floor,
    };
    let cap = COST_CAP * aggregated_cost;
    let mut pairs: Vec<Pair> = Vec::new();
    for p in 0..candidates.len() {
        for d in 0..candidates.len() {
            let mut pair = Pair {
                p,
                d,
                counts: [1, 1],
                report: None,
                stalled: 0,
                done: None,
            };
            // Grow the domestic side until the floor holds (no replay needed for that).
            while !ctx.floor_ok(&pair, pair.counts) && pair.done.is_none() {
                let side = if candidates[p].domestic {
                    0
                } else if candidates[d].domestic {
                    1
                } else {
                    pair.done = Some(false);
                    break;
                };
                pair.counts = grown(pair.counts, side, 1);
                if ctx.cost(&pair, pair.counts) > cap {
                    pair.done = Some(false);
                }
            }
            pairs.push(pair);
        }
    }
    let mut replays = 0u64;
    // First replay of every pair's starting fleet.
    let start: Vec<usize> = (0..pairs.len())
        .filter(|&i| pairs[i].done.is_none())
        .collect();
    let jobs: Vec<ReplayJob> = start
        .iter()
        .map(|&i| ctx.job(&pairs[i], pairs[i].counts))
        .collect();
    replays += jobs.len() as u64;
    for (&i, r) in start.iter().zip(runner.run_all(&jobs)) {
        match r {
            Ok(r) => pairs[i].report = Some(r),
            Err(_) => pairs[i].done = Some(false),
        }
    }
    // Repair: every active pair tries one more prefill and one more decode backend.
    loop {
        let mut asks: Vec<(usize, [u32; 2])> = Vec::new();
        for (i, pair) in pairs.iter_mut().enumerate() {
            if pair.done.is_some() {
                continue;
            }
            let r = pair.report.as_ref().expect("active pairs have a report");
            if ctx.passes(pair, pair.counts, r) {
                pair.done = Some(true);
                continue;
            }
            for side in 0..2 {
                let c = grown(pair.counts, side, 1);
                if c[side] <= MAX_PER_ROLE && ctx.cost(pair, c) <= cap && ctx.floor_ok(pair, c) {
                    asks.push((i, c));
                }
            }
            if !asks.iter().any(|&(j, _)| j == i) {
                pair.done = Some(false);
            }
        }
        if asks.is_empty() {
            break;
        }
        let jobs: Vec<ReplayJob> = asks.iter().map(|&(i, c)| ctx.job(&pairs[i], c)).collect();
        replays += jobs.len() as u64;
        let results = runner.run_all(&jobs);
        for (i, pair) in pairs.iter_mut().enumerate() {
            let mine: Vec<(&[u32; 2], &Result<PolicyReport, String>)> = asks
                .iter()
                .zip(&results)
                .filter(|((j, _), _)| *j == i)
                .map(|((_, c), r)| (c, r))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let slo = &settings.slo;
            let deficit = slo.deficit(pair.report.as_ref().expect("reported"));
            let best = mine
                .iter()
                .filter_map(|(c, r)| r.as_ref().ok().map(|r| (**c, r)))
                .map(|(c, r)| {
                    let cut = deficit - slo.deficit(r);
                    let score = if cut > 1e-12 {
                        cut / ctx.cost(pair, c)
                    } else {
                        -slo.deficit(r) * 1e6 - ctx.cost(pair, c)
                    };
                    (c, r, score)
                })
                .fold(None::<([u32; 2], &PolicyReport, f64)>, |acc, x| match acc {
                    Some(a) if a.2 >= x.2 => Some(a),
                    _ => Some(x),
                });
            let Some((c, r, _)) = best else {
                pair.done = Some(false);
                continue;
            };
            // A step that cuts less than 1% of the deficit is noise in the tail, not progress.
            pair.stalled = if slo.deficit(r) < deficit * (1.0 - STALL_CUT) - 1e-12 {
                0
            } else {
                pair.stalled + 1
            };
            pair.counts = c;
            pair.report = Some(r.clone());
            if pair.stalled >= MAX_STALLED {
                pair.done = Some(false);
            }
        }
    }
    // Trim the passing pairs: drop one backend of a side while the fleet still passes.
    for pair in pairs.iter_mut().filter(|p| p.done == Some(true)) {
        loop {
            let options: Vec<[u32; 2]> = (0..2)
                .filter(|&s| pair.counts[s] > 1)
                .map(|s| grown(pair.counts, s, -1))
                .filter(|&c| ctx.floor_ok(pair, c))
                .collect();
            if options.is_empty() {
                break;
            }
            let jobs: Vec<ReplayJob> = options.iter().map(|&c| ctx.job(pair, c)).collect();
            replays += jobs.len() as u64;
            let best = options
                .iter()
                .zip(runner.run_all(&jobs))
                .filter_map(|(&c, r)| r.ok().map(|r| (c, r)))
                .filter(|(c, r)| ctx.passes(pair, *c, r))
                .min_by(|a, b| ctx.cost(pair, a.0).total_cmp(&ctx.cost(pair, b.0)));
            let Some((c, r)) = best else {
                break;
            };
            pair.counts = c;
            pair.report = Some(r);
        }
    }
    let best = pairs
        .iter()
        .filter(|p| p.done == Some(true))
        .min_by(|a, b| {
            ctx.cost(a, a.counts)
                .total_cmp(&ctx.cost(b, b.counts))
                .then_with(|| {
                    let (ra, rb) = (a.report.as_ref(), b.report.as_ref());
                    let at = |r: Option<&PolicyReport>| r.map_or(0.0, |r| r.stats.slo_attainment);
                    at(rb).total_cmp(&at(ra))
                })
        });
    let n_pairs = pairs.len() as u32;
    let Some(best) = best else {
        return SplitPlan {
            links: LINK_ASSUMPTION.into(),
            prefill: None,
            decode: None,
            cost_per_hour_usd: None,
            domestic_share: None,
            slo_attainment: None,
            ttft_p99_ms: None,
            tpot_p99_ms: None,
            roles: Vec::new(),
            handoffs: 0,
            pairs: n_pairs,
            replays,
            note: Some(format!(
                "no prefill/decode split of the chips meets {} at a {:.0}% domestic floor for up to {COST_CAP}× the aggregated cost (${:.2}/h)",
                settings.slo,
                floor * 100.0,
                cap
            )),
        };
    };
    let kinds = ctx.kinds(best);
    let r = best.report.as_ref().expect("passing pairs have a report");
    let pool = |k: &Candidate, n: u32, role: &str| PlannedPool {
        name: format!("{}-{role}", k.name()),
        chip: k.chip.clone(),
        engine: k.engine.clone(),
        tp: k.tp,
        count: n,
        domestic: k.domestic,
        cost_per_hour_usd: round3(k.cost_per_hour_usd * f64::from(n)),
    };
    SplitPlan {
        links: LINK_ASSUMPTION.into(),
        prefill: Some(pool(&kinds[0], best.counts[0], "prefill")),
        decode: Some(pool(&kinds[1], best.counts[1], "decode")),
        cost_per_hour_usd: Some(round3(ctx.cost(best, best.counts))),
        domestic_share: Some(round3(domestic_share(
            &kinds,
            &best.counts,
            settings.share_by,
        ))),
        slo_attainment: Some(r.stats.slo_attainment),
        ttft_p99_ms: Some(r.stats.ttft_ms.p99),
        tpot_p99_ms: Some(r.stats.tpot_ms.p99),
        roles: r.pools.iter().map(|p| p.role.clone()).collect(),
        handoffs: r.stats.handoffs,
        pairs: n_pairs,
        replays,
        note: None,
    }
}

/// Adds the split search's answer to `report` (its replays counted in the total).
pub fn add_split(
    report: &mut super::PlanReport,
    workload: &super::Workload,
    candidates: &[Candidate],
    settings: &PlanSettings,
    runner: &dyn ReplayRunner,
) {
    let split = plan_split(
        candidates,
        settings,
        workload.records.clone(),
        report.min_domestic_share,
        report.cost_per_hour_usd,
        runner,
    );
    report.replays += split.replays;
    report.disaggregated = Some(split);
}
