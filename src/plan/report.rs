//! What a plan reports: the fleet (pools, cost, domestic share), the latency its
//! verification replay predicts, the solver's estimate before verification, the cost
//! frontier across domestic-share floors, and the measurements behind it. Rendered as
//! JSON (the contract), a table for people, an HTML page with the frontier plot, and a
//! fleet file that `dujiang replay --fleet` and `dujiang serve` load as is.

use super::candidate::Candidate;
use super::capacity::{Measurement, Shard};
use super::search::{self, Settled};
use super::split::SplitPlan;
use super::workload::{Bucket, Workload};
use super::{PlanInputs, PlanSettings, ShareBy};
use crate::sim::html::{line_chart, Series};
use crate::sim::report::{round3, Percentiles};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One pool of a planned fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedPool {
    pub name: String,
    pub chip: String,
    /// Serving engine id (reports written before engines existed read as empty).
    #[serde(default)]
    pub engine: String,
    pub tp: u32,
    pub count: u32,
    pub domestic: bool,
    pub cost_per_hour_usd: f64,
}

/// What the verification replay of the whole trace measured on the planned fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    pub slo_attainment: f64,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub queue_ms: Percentiles,
    pub output_tokens_per_s: f64,
    pub domestic_token_share: f64,
}

/// The cheapest fleet found at one domestic-share floor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrontierPoint {
    pub min_domestic_share: f64,
    /// `None` when no fleet meets the SLO at this floor (see `note`).
    pub cost_per_hour_usd: Option<f64>,
    pub domestic_share: Option<f64>,
    pub pools: Vec<PlannedPool>,
    pub slo_attainment: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub tpot_p99_ms: Option<f64>,
    pub note: Option<String>,
}

/// The solver's mix before verification.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SolverEstimate {
    pub cost_per_hour_usd: f64,
    pub pools: Vec<PlannedPool>,
}

/// A whole plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    pub inputs: PlanInputs,
    pub requests: u64,
    pub trace_seconds: f64,
    pub cost_per_hour_usd: f64,
    pub domestic_share: f64,
    pub share_by: ShareBy,
    pub min_domestic_share: f64,
    pub policy: String,
    pub pools: Vec<PlannedPool>,
    pub predicted: Predicted,
    pub solver: SolverEstimate,
    /// Backends the repair step added and the trim step removed after the solver.
    pub repaired_added: u32,
    pub trimmed_removed: u32,
    /// Backends exchanged one for one for a cheaper kind after trimming.
    #[serde(default)]
    pub swapped_cheaper: u32,
    pub frontier: Vec<FrontierPoint>,
    pub buckets: Vec<Bucket>,
    pub capacity: Vec<Measurement>,
    pub replays: u64,
    /// The cheapest prefill/decode split at the requested floor, beside the aggregated
    /// plan (absent when the split search was turned off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disaggregated: Option<SplitPlan>,
}

/// One shard's part of a distributed measurement sweep (`dujiang plan --shard I/N`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// Always `dujiang-plan-shard`: what `plan merge` checks it was given.
    pub kind: String,
    pub shard: Shard,
    pub inputs: PlanInputs,
    pub measurements: Vec<Measurement>,
    pub replays: u64,
}

pub const SHARD_KIND: &str = "dujiang-plan-shard";

fn planned(candidates: &[Candidate], counts: &[u32]) -> Vec<PlannedPool> {
    candidates
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0)
        .map(|(c, &n)| PlannedPool {
            name: c.name(),
            chip: c.chip.clone(),
            engine: c.engine.clone(),
            tp: c.tp,
            count: n,
            domestic: c.domestic,
            cost_per_hour_usd: round3(c.cost_per_hour_usd * f64::from(n)),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    inputs: &PlanInputs,
    workload: &Workload,
    candidates: &[Candidate],
    settings: &PlanSettings,
    solver: &[u32],
    settled: &Settled,
    frontier: Vec<(f64, Result<Settled, String>)>,
    capacity: Vec<Measurement>,
    replays: u64,
) -> PlanReport {
    let r = &settled.report;
    PlanReport {
        inputs: inputs.clone(),
        requests: workload.records.len() as u64,
        trace_seconds: round3(workload.duration_s),
        cost_per_hour_usd: round3(search::cost(candidates, &settled.counts)),
        domestic_share: round3(search::domestic_share(
            candidates,
            &settled.counts,
            settings.share_by,
        )),
        share_by: settings.share_by,
        min_domestic_share: inputs.min_domestic_share,
        policy: settings.policy.name.clone(),
        pools: planned(candidates, &settled.counts),
        predicted: Predicted {
            slo_attainment: r.stats.slo_attainment,
            ttft_ms: r.stats.ttft_ms,
            tpot_ms: r.stats.tpot_ms,
            e2e_ms: r.stats.e2e_ms,
            queue_ms: r.stats.queue_ms,
            output_tokens_per_s: r.stats.output_tokens_per_s,
            domestic_token_share: r.stats.domestic_token_share,
        },
        solver: SolverEstimate {
            cost_per_hour_usd: round3(search::cost(candidates, solver)),
            pools: planned(candidates, solver),
        },
        repaired_added: settled.added,
        trimmed_removed: settled.removed,
        swapped_cheaper: settled.swapped,
        frontier: frontier
            .into_iter()
            .map(|(floor, s)| match s {
                Ok(s) => FrontierPoint {
                    min_domestic_share: floor,
                    cost_per_hour_usd: Some(round3(search::cost(candidates, &s.counts))),
                    domestic_share: Some(round3(search::domestic_share(
                        candidates,
                        &s.counts,
                        settings.share_by,
                    ))),
                    pools: planned(candidates, &s.counts),
                    slo_attainment: Some(s.report.stats.slo_attainment),
                    ttft_p99_ms: Some(s.report.stats.ttft_ms.p99),
                    tpot_p99_ms: Some(s.report.stats.tpot_ms.p99),
                    note: None,
                },
                Err(e) => FrontierPoint {
                    min_domestic_share: floor,
                    cost_per_hour_usd: None,
                    domestic_share: None,
                    pools: Vec::new(),
                    slo_attainment: None,
                    ttft_p99_ms: None,
                    tpot_p99_ms: None,
                    note: Some(e),
                },
            })
            .collect(),
        buckets: workload.buckets.clone(),
        capacity,
        replays,
        disaggregated: None,
    }
}

fn pools_line(pools: &[PlannedPool]) -> String {
    if pools.is_empty() {
        return "-".into();
    }
    pools
        .iter()
        .map(|p| format!("{}×{}", p.count, p.name))
        .collect::<Vec<_>>()
        .join(" + ")
}

impl PlanReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plan serialises")
    }

    /// The plan and the frontier, for people.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let i = &self.inputs;
        let _ = writeln!(
            s,
            "plan for {} ({} requests over {:.0} s, rate ×{}) serving {}: {} at {}% attainment, policy {}",
            i.trace, self.requests, self.trace_seconds, i.rate_scale, i.model, i.slo,
            i.attainment * 100.0, self.policy
        );
        let _ = writeln!(
            s,
            "{:<18} {:>4} {:>6} {:>9} {:>10}",
            "pool", "tp", "count", "domestic", "$/h"
        );
        for p in &self.pools {
            let _ = writeln!(
                s,
                "{:<18} {:>4} {:>6} {:>9} {:>10.2}",
                p.name,
                p.tp,
                p.count,
                if p.domestic { "yes" } else { "no" },
                p.cost_per_hour_usd
            );
        }
        let basis = match self.share_by {
            ShareBy::Chips => "chips",
            ShareBy::Spend => "spend",
        };
        let _ = writeln!(
            s,
            "total ${:.2}/h; domestic share {:.1}% of {basis} (floor {:.0}%); solver estimate ${:.2}/h ({}), then +{} / -{} backends and {} exchanged for a cheaper kind by replay",
            self.cost_per_hour_usd,
            self.domestic_share * 100.0,
            self.min_domestic_share * 100.0,
            self.solver.cost_per_hour_usd,
            pools_line(&self.solver.pools),
            self.repaired_added,
            self.trimmed_removed,
            self.swapped_cheaper
        );
        let p = &self.predicted;
        let _ = writeln!(
            s,
            "predicted: SLO attainment {:.2}%; TTFT p50/p99/p99.9 {:.0}/{:.0}/{:.0} ms; TPOT p50/p99 {:.1}/{:.1} ms; E2E p99 {:.0} ms; {:.0} output tokens/s",
            p.slo_attainment * 100.0,
            p.ttft_ms.p50,
            p.ttft_ms.p99,
            p.ttft_ms.p999,
            p.tpot_ms.p50,
            p.tpot_ms.p99,
            p.e2e_ms.p99,
            p.output_tokens_per_s
        );
        let _ = writeln!(s, "\ncost frontier by domestic-share floor ({basis}):");
        let _ = writeln!(
            s,
            "{:>6} {:>9} {:>9} {:>8} {:>9} {:>9}  fleet",
            "floor", "$/h", "domestic", "SLO", "TTFT p99", "TPOT p99"
        );
        for f in &self.frontier {
            match f.cost_per_hour_usd {
                Some(cost) => {
                    let _ = writeln!(
                        s,
                        "{:>5.0}% {:>9.2} {:>8.1}% {:>7.2}% {:>9.0} {:>9.1}  {}",
                        f.min_domestic_share * 100.0,
                        cost,
                        f.domestic_share.unwrap_or(0.0) * 100.0,
                        f.slo_attainment.unwrap_or(0.0) * 100.0,
                        f.ttft_p99_ms.unwrap_or(0.0),
                        f.tpot_p99_ms.unwrap_or(0.0),
                        pools_line(&f.pools)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "{:>5.0}% {:>9}  {}",
                        f.min_domestic_share * 100.0,
                        "-",
                        f.note.as_deref().unwrap_or("infeasible")
                    );
                }
            }
        }
        if let Some(d) = &self.disaggregated {
            self.split_table(&mut s, d, basis);
        }
        let _ = writeln!(s, "{} replays", self.replays);
        s
    }

    /// The cheapest aggregated and the cheapest split fleet at the requested floor, side
    /// by side, and which pays.
    fn split_table(&self, s: &mut String, d: &SplitPlan, basis: &str) {
        let _ = writeln!(
            s,
            "\naggregated vs prefill/decode split at the {:.0}% floor (split replayed with policy disaggregated on {}):",
            self.min_domestic_share * 100.0,
            d.links
        );
        let _ = writeln!(
            s,
            "{:<11} {:>9} {:>9} {:>8} {:>9} {:>9}  fleet",
            "kind", "$/h", "domestic", "SLO", "TTFT p99", "TPOT p99"
        );
        let _ = writeln!(
            s,
            "{:<11} {:>9.2} {:>8.1}% {:>7.2}% {:>9.0} {:>9.1}  {} (mixed)",
            "aggregated",
            self.cost_per_hour_usd,
            self.domestic_share * 100.0,
            self.predicted.slo_attainment * 100.0,
            self.predicted.ttft_ms.p99,
            self.predicted.tpot_ms.p99,
            pools_line(&self.pools)
        );
        match (&d.prefill, &d.decode, d.cost_per_hour_usd) {
            (Some(p), Some(dec), Some(cost)) => {
                let _ = writeln!(
                    s,
                    "{:<11} {:>9.2} {:>8.1}% {:>7.2}% {:>9.0} {:>9.1}  prefill {}×{} + decode {}×{} (P:D {}:{})",
                    "split",
                    cost,
                    d.domestic_share.unwrap_or(0.0) * 100.0,
                    d.slo_attainment.unwrap_or(0.0) * 100.0,
                    d.ttft_p99_ms.unwrap_or(0.0),
                    d.tpot_p99_ms.unwrap_or(0.0),
                    p.count,
                    p.name,
                    dec.count,
                    dec.name,
                    p.count,
                    dec.count
                );
                let verdict = if cost < self.cost_per_hour_usd - 1e-9 {
                    format!(
                        "splitting pays: {:.1}% cheaper than the aggregated fleet",
                        (1.0 - cost / self.cost_per_hour_usd) * 100.0
                    )
                } else {
                    format!(
                        "splitting does not pay: the cheapest split costs ${:.2}/h more",
                        cost - self.cost_per_hour_usd
                    )
                };
                let _ = writeln!(s, "{verdict} (domestic share by {basis}; {} (prefill, decode) pairs searched, {} replays)", d.pairs, d.replays);
            }
            _ => {
                let _ = writeln!(
                    s,
                    "{:<11} {:>9}  splitting does not pay: {}",
                    "split",
                    "-",
                    d.note.as_deref().unwrap_or("no split fleet found")
                );
            }
        }
    }

    /// The planned fleet as a fleet file (`config/fleets/*.toml` layout).
    pub fn fleet_toml(&self) -> String {
        self.fleet_toml_cells(1)
    }

    /// The planned fleet as one cell of `cells` identical cells (`cells = N`, partitioned
    /// by session; see `fleet::cells`): the whole fleet is `cells` times the pools below.
    pub fn fleet_toml_cells(&self, cells: u32) -> String {
        let i = &self.inputs;
        let p = &self.predicted;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Planned by `dujiang plan` for {}: {} at {}% attainment.",
            i.trace,
            i.slo,
            i.attainment * 100.0
        );
        let _ = writeln!(
            s,
            "# ${:.2}/h; domestic share {:.1}% (floor {:.0}%). Replay predicts attainment {:.2}%, TTFT p99 {:.0} ms, TPOT p99 {:.1} ms.",
            self.cost_per_hour_usd,
            self.domestic_share * 100.0,
            self.min_domestic_share * 100.0,
            p.slo_attainment * 100.0,
            p.ttft_ms.p99,
            p.tpot_ms.p99
        );
        let _ = writeln!(s, "name = {}", toml_str(&format!("plan-{}", i.model)));
        let _ = writeln!(s, "model = {}", toml_str(&i.model));
        if cells > 1 {
            let _ = writeln!(
                s,
                "# {cells} identical cells, traffic split by session hash: the whole fleet is {cells} x the pools below."
            );
            let _ = writeln!(s, "cells = {cells}\ncell_key = \"session\"");
        }
        s.push('\n');
        let _ = writeln!(s, "[policy]\nname = {}", toml_str(&self.policy));
        for pool in &self.pools {
            let _ = writeln!(
                s,
                "\n[pools.{}]\nchip = {}",
                pool.name,
                toml_str(&pool.chip)
            );
            if !pool.engine.is_empty() {
                let _ = writeln!(s, "engine = {}", toml_str(&pool.engine));
            }
            let _ = writeln!(s, "tp = {}\ncount = {}", pool.tp, pool.count);
        }
        s
    }

    /// A self-contained page: the plan table and the cost frontier plot.
    pub fn to_html(&self) -> String {
        let points: Vec<(f64, f64)> = self
            .frontier
            .iter()
            .filter_map(|f| Some((f.min_domestic_share * 100.0, f.cost_per_hour_usd?)))
            .collect();
        let achieved: Vec<(f64, f64)> = self
            .frontier
            .iter()
            .filter_map(|f| Some((f.min_domestic_share * 100.0, f.domestic_share? * 100.0)))
            .collect();
        let cost_chart = line_chart(
            "Cheapest fleet meeting the SLO",
            "domestic-share floor (%)",
            "$ per hour",
            &[Series {
                name: "cost $/h".into(),
                points,
            }],
            false,
        );
        let share_chart = line_chart(
            "Domestic share achieved",
            "domestic-share floor (%)",
            "domestic share (%)",
            &[Series {
                name: "achieved".into(),
                points: achieved,
            }],
            false,
        );
        let table = self
            .to_table()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>dujiang plan</title></head>\n<body style=\"font-family:sans-serif\">\n<h1>dujiang plan: {}</h1>\n<pre>{table}</pre>\n{cost_chart}\n{share_chart}\n</body></html>\n",
            self.inputs.model.replace('<', "&lt;")
        )
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
