//! The raw sums of a replay, before they become a report: counters, HDR histograms, busy
//! time and the timeline of one policy over one or more cells. Everything here is an
//! integer or a histogram of integer counts, so [`RunTotals::merge`] is exact, associative
//! and commutative, and a report rendered from the merge of cells replayed apart (threads,
//! processes, pods) is the report of all of them replayed in one process, bit for bit.
//! That is why a sharded day splits by cell, not by time: cells share nothing, while a time
//! window would start with empty queues that the whole run would not have.

use super::cells::CellsReport;
use super::replay::Timeline;
use super::report::{add, round3, HourSlo, PolicyReport, PoolReport, SloReport, Tally};
use crate::fleet::PoolConfig;
use crate::request::{Nanos, Slo};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What a report says about a pool beyond its tally (one cell's pool).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolFacts {
    pub name: String,
    pub chip: String,
    pub count: u32,
    pub domestic: bool,
    pub role: String,
    /// Spend of the pool's backends per hour, written as Rust prints the `f64` (the
    /// shortest text that reads back to the same bits), so a merge far away prices
    /// exactly as the replay did.
    #[serde(with = "exact_f64")]
    pub cost_per_hour_usd: f64,
}

impl PoolFacts {
    pub fn of(pools: &[PoolConfig]) -> Vec<PoolFacts> {
        pools
            .iter()
            .map(|pc| PoolFacts {
                name: pc.name.clone(),
                chip: pc.perf.chip.id.clone(),
                count: pc.count,
                domestic: pc.domestic(),
                role: pc.role.as_str().to_string(),
                cost_per_hour_usd: pc.cost_per_hour_usd(),
            })
            .collect()
    }
}

mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("not a number: {text:?}")))
    }
}

const HOUR_NS: Nanos = 3_600_000_000_000;

/// Requests and requests within their SLO by hour of arrival (from the run's time 0): where
/// in a day the SLO is tightest. One pair of counters per hour, so memory stays flat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HourlySlo {
    pub requests: Vec<u64>,
    pub met: Vec<u64>,
}

impl HourlySlo {
    fn slot(v: &mut Vec<u64>, t: Nanos) -> &mut u64 {
        let h = (t / HOUR_NS) as usize;
        if v.len() <= h {
            v.resize(h + 1, 0);
        }
        &mut v[h]
    }

    /// A request arrived at `t`.
    pub fn arrived(&mut self, t: Nanos) {
        *Self::slot(&mut self.requests, t) += 1;
    }

    /// The request that arrived at `arrival` met its SLO.
    pub fn met(&mut self, arrival: Nanos) {
        *Self::slot(&mut self.met, arrival) += 1;
    }

    pub fn merge(&mut self, o: &HourlySlo) {
        for (mine, theirs) in [(&mut self.requests, &o.requests), (&mut self.met, &o.met)] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }

    /// [`merge`](Self::merge) with checked sums, for counts read back from files.
    pub fn try_merge(&mut self, o: &HourlySlo) -> Result<(), String> {
        for (name, mine, theirs) in [
            ("requests", &mut self.requests, &o.requests),
            ("met", &mut self.met, &o.met),
        ] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (h, (a, b)) in mine.iter_mut().zip(theirs).enumerate() {
                add(format_args!("{name}[{h}]"), a, *b)?;
            }
        }
        Ok(())
    }

    pub fn report(&self) -> Vec<HourSlo> {
        self.requests
            .iter()
            .enumerate()
            .map(|(h, &requests)| {
                let met = self.met.get(h).copied().unwrap_or(0);
                HourSlo {
                    hour: h as u32,
                    requests,
                    slo_attainment: if requests > 0 {
                        (met as f64 / requests as f64 * 1e6).round() / 1e6
                    } else {
                        0.0
                    },
                }
            })
            .collect()
    }
}

/// One policy's replay over `cells` cells of the same fleet, as raw sums.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunTotals {
    /// The policy's name, as it reports it.
    pub policy: String,
    pub slo: Slo,
    /// One cell's pools.
    pub pools: Vec<PoolFacts>,
    /// Cells summed here.
    pub cells: u32,
    /// The latest event over those cells: the run's span starts at 0 and ends here.
    pub end_ns: Nanos,
    /// Arrivals and rejections over the fleet (those that never reached a pool too).
    pub requests: u64,
    pub rejected: BTreeMap<Cow<'static, str>, u64>,
    /// Per pool, summed over cells.
    pub tallies: Vec<Tally>,
    /// Time each pool's backends held work, summed over backends and cells.
    pub busy_ns: Vec<u128>,
    pub hourly: HourlySlo,
    pub(crate) timeline: Timeline,
}

impl RunTotals {
    /// Adds another run of the same policy on other cells of the same fleet.
    pub fn merge(&mut self, other: &RunTotals) -> Result<(), String> {
        if other.policy != self.policy {
            return Err(format!(
                "policy `{}` against `{}`",
                other.policy, self.policy
            ));
        }
        if other.slo != self.slo {
            return Err(format!(
                "policy `{}`: judged against another SLO",
                self.policy
            ));
        }
        if other.pools != self.pools {
            return Err(format!("policy `{}`: another fleet's pools", self.policy));
        }
        // Checked sums throughout: `other` may come from a file (a shard's partial report),
        // and a corrupted counter must be an error naming it, not a panic (debug build)
        // or a silently wrapped sum (release). The error names the field by its JSON path.
        self.timeline
            .merge(&other.timeline)
            .map_err(|e| format!("timeline: {e}"))?;
        self.hourly
            .try_merge(&other.hourly)
            .map_err(|e| format!("hourly.{e}"))?;
        add("cells", &mut self.cells, other.cells)?;
        self.end_ns = self.end_ns.max(other.end_ns);
        add("requests", &mut self.requests, other.requests)?;
        for (k, v) in &other.rejected {
            let mine = self.rejected.entry(k.clone()).or_default();
            add(format_args!("rejected.{k}"), mine, *v)?;
        }
        if other.tallies.len() != self.tallies.len() || other.busy_ns.len() != self.busy_ns.len() {
            return Err(format!(
                "policy `{}`: {} tallies and {} busy times against {} and {}",
                self.policy,
                other.tallies.len(),
                other.busy_ns.len(),
                self.tallies.len(),
                self.busy_ns.len()
            ));
        }
        for (p, (a, b)) in self.tallies.iter_mut().zip(&other.tallies).enumerate() {
            a.try_merge(b).map_err(|e| format!("tallies[{p}].{e}"))?;
        }
        for (p, (a, b)) in self.busy_ns.iter_mut().zip(&other.busy_ns).enumerate() {
            add(format_args!("busy_ns[{p}]"), a, *b)?;
        }
        Ok(())
    }

    /// Checks what [`report`](Self::report) assumes of totals read back from a file: one
    /// tally and one busy time per pool, a timeline of those pools, and sums that fit
    /// (each pool's backends over the cells, the pools added up fleet-wide, the rejection
    /// reasons added up). The error names the field by its JSON path.
    pub fn check(&self) -> Result<(), String> {
        let n = self.pools.len();
        if self.tallies.len() != n {
            return Err(format!("tallies: {} for {n} pools", self.tallies.len()));
        }
        if self.busy_ns.len() != n {
            return Err(format!("busy_ns: {} for {n} pools", self.busy_ns.len()));
        }
        self.timeline
            .check(n)
            .map_err(|e| format!("timeline.{e}"))?;
        for (p, pf) in self.pools.iter().enumerate() {
            if pf.count.checked_mul(self.cells).is_none() {
                return Err(format!(
                    "pools[{p}].count: {} backends × {} cells overflows u32",
                    pf.count, self.cells
                ));
            }
        }
        let mut overall = Tally::default();
        for (p, t) in self.tallies.iter().enumerate() {
            t.try_rejected_total()
                .map_err(|e| format!("tallies[{p}].{e}"))?;
            overall
                .try_merge(t)
                .map_err(|e| format!("tallies[{p}].{e} (adding up the pools)"))?;
        }
        let mut rejected = 0u64;
        for (k, v) in &self.rejected {
            add(format_args!("rejected.{k}"), &mut rejected, *v)?;
        }
        Ok(())
    }

    /// The report of these cells: pools `cells` times their size, over the span from 0 to
    /// the last event of any of them. With one cell, what a replay has always reported.
    pub fn report(&self) -> PolicyReport {
        let end = self.end_ns;
        let seconds = end as f64 / 1e9;
        let hours = seconds / 3600.0;
        let cells = self.cells.max(1);
        let mut pools = Vec::new();
        let mut total_cost = 0.0;
        for (p, pf) in self.pools.iter().enumerate() {
            let cost = pf.cost_per_hour_usd * f64::from(cells) * hours;
            total_cost += cost;
            let backends = pf.count * cells;
            let capacity = f64::from(backends) * end as f64;
            pools.push(PoolReport {
                pool: pf.name.clone(),
                chip: pf.chip.clone(),
                backends,
                domestic: pf.domestic,
                role: pf.role.clone(),
                busy_fraction: if capacity > 0.0 {
                    round3(self.busy_ns[p] as f64 / capacity)
                } else {
                    0.0
                },
                stats: self.tallies[p].stats(seconds, cost),
            });
        }
        // Completions are recorded per pool only (half the histogram work on the hot
        // path); the fleet-wide figures are their merge, plus what never reached a pool.
        let mut overall = Tally::default();
        for t in &self.tallies {
            overall.merge(t);
        }
        overall.requests = self.requests;
        overall.rejected = self.rejected.clone();
        PolicyReport {
            policy: self.policy.clone(),
            simulated_seconds: round3(seconds),
            stats: overall.stats(seconds, total_cost),
            slo: SloReport::from(self.slo),
            pools,
            ttft_cdf: overall.ttft.cdf_ms(),
            e2e_cdf: overall.e2e.cdf_ms(),
            timeline_bucket_s: self.timeline.bucket_ns as f64 / 1e9,
            timeline: self.timeline.report(),
            hourly: self.hourly.report(),
        }
    }
}

/// Merges per-cell (or per-shard) runs of several policies, in policy order: each piece
/// is its label (a file name) and its list of policies. Every piece is checked
/// ([`RunTotals::check`]) before it is added and the sum after, so a corrupted piece ends
/// in an error naming the piece, the policy (`runs[j]`) and the field, never a panic.
pub fn merge_runs<L: std::fmt::Display>(
    pieces: &[(L, Vec<RunTotals>)],
) -> Result<Vec<RunTotals>, String> {
    let Some(((first_label, first), rest)) = pieces.split_first() else {
        return Err("nothing to merge".into());
    };
    let at = |j: usize, r: &RunTotals| format!("runs[{j}] (policy `{}`)", r.policy);
    for (label, piece) in pieces {
        for (j, r) in piece.iter().enumerate() {
            r.check()
                .map_err(|e| format!("{label}: {}: {e}", at(j, r)))?;
        }
    }
    let mut acc = first.clone();
    let mut summed = first_label.to_string();
    for (n, (label, piece)) in rest.iter().enumerate() {
        if piece.len() != acc.len() {
            return Err(format!(
                "{label} has {} policies, {first_label} {}",
                piece.len(),
                acc.len()
            ));
        }
        for (j, (a, b)) in acc.iter_mut().zip(piece).enumerate() {
            a.merge(b)
                .map_err(|e| format!("adding {label} to {summed}: {}: {e}", at(j, b)))?;
        }
        // Names every piece summed so far, up to a few: `a + b`, `a + … + e (5 pieces)`.
        summed = match n {
            0 => format!("{first_label} + {label}"),
            _ => format!("{first_label} + … + {label} ({} pieces)", n + 2),
        };
    }
    for (j, r) in acc.iter().enumerate() {
        r.check()
            .map_err(|e| format!("the sum of {summed}: {}: {e}", at(j, r)))?;
    }
    Ok(acc)
}

/// The whole report's cell section, for a fleet cut into more than one cell.
pub fn cells_section(spec: crate::fleet::CellSpec, pools: &[PoolConfig]) -> Option<CellsReport> {
    (spec.count > 1).then(|| CellsReport::new(spec, pools))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::PoolConfig;
    use crate::profile::fixtures::{h20, llama3_8b, perf as fixture_perf};
    use crate::sim::{Replay, ReplayConfig};
    use crate::trace::{cell_filter, ArrivalProcess, SynthConfig, SyntheticTrace, TraceRecord};
    use std::convert::Infallible;
    use std::sync::Arc;

    fn pools() -> Vec<PoolConfig> {
        let fast = {
            let mut chip = h20();
            chip.id = "fast".into();
            chip.bf16_tflops *= 2.0;
            PoolConfig::new(
                "fast",
                Arc::new(fixture_perf(&chip, &llama3_8b(), 1).unwrap()),
                1,
            )
        };
        let slow = PoolConfig::new(
            "slow",
            Arc::new(fixture_perf(&h20(), &llama3_8b(), 1).unwrap()),
            2,
        );
        vec![fast, slow]
    }

    /// Cell `c` of `cells` of a busy synthetic trace, replayed to raw sums.
    fn cell(trace: &[TraceRecord], c: u32, cells: u32) -> RunTotals {
        let policy = crate::policy::build("least-work", &toml::Table::new(), 3).unwrap();
        let records = cell_filter(trace.iter().cloned().map(Ok::<_, Infallible>), c, cells);
        let cfg = ReplayConfig {
            max_timeline_buckets: 8,
            ..ReplayConfig::default()
        };
        Replay::new(pools(), policy, cfg)
            .unwrap()
            .run_totals(records)
            .unwrap()
            .0
    }

    fn trace() -> Vec<TraceRecord> {
        SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, 30.0, 11))
            .unwrap()
            .take(600)
            .map(|mut r| {
                r.prompt_tokens = r.prompt_tokens.min(4000);
                r.output_tokens = r.output_tokens.min(1000);
                r.hash_ids.truncate(r.prompt_tokens.div_ceil(512) as usize);
                r
            })
            .collect()
    }

    #[test]
    fn one_cell_reports_as_a_plain_replay() {
        let t = trace();
        let policy = crate::policy::build("least-work", &toml::Table::new(), 3).unwrap();
        let cfg = ReplayConfig {
            max_timeline_buckets: 8,
            ..ReplayConfig::default()
        };
        let plain = Replay::new(pools(), policy, cfg)
            .unwrap()
            .run(t.iter().cloned().map(Ok::<_, Infallible>))
            .unwrap();
        assert_eq!(cell(&t, 0, 1).report(), plain);
    }

    #[test]
    fn timelines_of_different_widths_merge_as_if_recorded_together() {
        let new = || Timeline {
            bucket_ns: 1_000_000_000,
            buckets: Vec::new(),
            max: 8,
            pools: 2,
        };
        let (mut short, mut long, mut both) = (new(), new(), new());
        let record = |t: &mut Timeline, at: Nanos, pool: usize| {
            let b = t.at(at);
            b.arrivals += 1;
            b.completed += 1;
            b.ttft_sum_ns += u128::from(at);
            b.routed[pool] += 1;
        };
        for i in 0..40u64 {
            let at = i * 137_000_000; // up to 5.3 s: width 1 s
            record(&mut short, at, 0);
            record(&mut both, at, 0);
            let at = i * 770_000_000; // up to 30 s: width 4 s
            record(&mut long, at, 1);
            record(&mut both, at, 1);
        }
        assert_ne!(short.bucket_ns, long.bucket_ns);
        let mut a = short.clone();
        a.merge(&long).unwrap();
        let mut b = long.clone();
        b.merge(&short).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.report(), both.report());
    }

    #[test]
    fn merging_cells_is_exact_in_any_order_and_survives_json() {
        let t = trace();
        let cells: Vec<RunTotals> = (0..3).map(|c| cell(&t, c, 3)).collect();
        // The cells end at different times.
        assert!(
            cells
                .iter()
                .map(|c| c.end_ns)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1
        );
        let forward = merge_runs(
            &cells
                .iter()
                .map(|c| ("cell", vec![c.clone()]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let backward = merge_runs(
            &cells
                .iter()
                .rev()
                .map(|c| ("cell", vec![c.clone()]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(forward, backward);
        // Through JSON, as shards hand them over: the same report to the byte.
        let read: Vec<(&str, Vec<RunTotals>)> = cells
            .iter()
            .map(|c| {
                let back = serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
                ("cell", vec![back])
            })
            .collect();
        let merged = merge_runs(&read).unwrap();
        assert_eq!(merged, forward);
        let report = merged[0].report();
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            serde_json::to_string(&forward[0].report()).unwrap()
        );
        assert_eq!(merged[0].cells, 3);
        assert_eq!(report.stats.requests, 600);
        assert_eq!(report.pools[1].backends, 6, "3 cells of 2");
        let arrivals: u64 = report.timeline.iter().map(|b| b.arrivals).sum();
        assert_eq!(arrivals, 600);
        let by_hour: u64 = report.hourly.iter().map(|h| h.requests).sum();
        assert_eq!(by_hour, 600);
        assert_eq!(report.hourly[0].slo_attainment, report.stats.slo_attainment);
        assert!(report.timeline.len() <= 8);
        // Another fleet's run does not merge.
        let mut other = cells[0].clone();
        other.pools[0].count = 5;
        assert!(cells[1]
            .clone()
            .merge(&other)
            .unwrap_err()
            .contains("pools"));
    }
}
