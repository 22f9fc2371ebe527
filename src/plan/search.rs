//! From the solver's mix to a fleet that a replay of the whole trace says passes: verify,
//! repair (add the backend that most cuts the SLO deficit per dollar, within the share
//! floor) until it passes, then trim (remove the backend whose removal saves the most and
//! still passes) until no single removal passes, then exchange one backend for one of a
//! strictly cheaper kind while a replay still passes (trimming again after each). The
//! result is near-minimal by construction: taking any one backend away, or trading one
//! for a cheaper kind, breaks the SLO or the floor.

use super::candidate::Candidate;
use super::runner::{ReplayJob, ReplayRunner, Timing};
use super::{PlanSettings, ShareBy};
use crate::fleet::PoolConfig;
use crate::sim::PolicyReport;
use crate::trace::TraceRecord;
use std::sync::Arc;

/// Repairs that do not cut the deficit, in a row, before the SLO is called unreachable.
const MAX_STALLED_REPAIRS: u32 = 6;
/// Backends in a fleet before the SLO is called unreachable.
const MAX_BACKENDS: u32 = 4096;

/// The domestic share of a mix, by chips or by spend.
pub fn domestic_share(candidates: &[Candidate], counts: &[u32], by: ShareBy) -> f64 {
    let (mut dom, mut all) = (0.0, 0.0);
    for (c, &n) in candidates.iter().zip(counts) {
        let w = f64::from(n)
            * match by {
                ShareBy::Chips => f64::from(c.tp),
                ShareBy::Spend => c.cost_per_hour_usd,
            };
        all += w;
        if c.domestic {
            dom += w;
        }
    }
    if all > 0.0 {
        dom / all
    } else {
        0.0
    }
}

/// Hourly cost of a mix.
pub fn cost(candidates: &[Candidate], counts: &[u32]) -> f64 {
    candidates
        .iter()
        .zip(counts)
        .map(|(c, &n)| c.cost_per_hour_usd * f64::from(n))
        .sum()
}

/// The pools of a mix (empty pools left out).
pub fn pools(candidates: &[Candidate], counts: &[u32]) -> Vec<PoolConfig> {
    candidates
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0)
        .map(|(c, &n)| c.pool_of(n))
        .collect()
}

/// What verification and its repairs produced.
#[derive(Clone, Debug)]
pub struct Settled {
    pub counts: Vec<u32>,
    pub report: PolicyReport,
    pub added: u32,
    pub removed: u32,
    /// Backends exchanged one for one for a cheaper kind after trimming.
    pub swapped: u32,
    pub replays: u64,
}

pub struct Verifier<'a> {
    pub candidates: &'a [Candidate],
    pub settings: &'a PlanSettings,
    pub records: Arc<[TraceRecord]>,
    pub runner: &'a dyn ReplayRunner,
    pub floor: f64,
}

impl Verifier<'_> {
    fn job(&self, counts: &[u32]) -> ReplayJob {
        ReplayJob {
            pools: pools(self.candidates, counts),
            policy: self.settings.policy.clone(),
            seed: self.settings.seed,
            slo: self.settings.slo.request_slo(),
            records: self.records.clone(),
            timing: Timing::Scaled(1.0),
        }
    }

    fn floor_ok(&self, counts: &[u32]) -> bool {
        domestic_share(self.candidates, counts, self.settings.share_by) >= self.floor - 1e-9
    }

    fn run(&self, mixes: &[Vec<u32>], replays: &mut u64) -> Result<Vec<PolicyReport>, String> {
        let jobs: Vec<ReplayJob> = mixes.iter().map(|m| self.job(m)).collect();
        *replays += jobs.len() as u64;
        self.runner.run_all(&jobs).into_iter().collect()
    }

    /// Verifies `counts`, repairs until it passes, then trims: removes backends, and
    /// exchanges one for a cheaper kind, while the replay still meets the SLO.
    pub fn settle(&self, counts: Vec<u32>) -> Result<Settled, String> {
        let slo = &self.settings.slo;
        let mut replays = 0;
        let mut counts = counts;
        if counts.iter().all(|&n| n == 0) {
            return Err("the solver proposed an empty fleet".into());
        }
        let mut report = self
            .run(std::slice::from_ref(&counts), &mut replays)?
            .remove(0);
        let (mut added, mut stalled) = (0, 0);
        let mut removed;
        while !slo.meets(&report) {
            let deficit = slo.deficit(&report);
            let total: u32 = counts.iter().sum();
            if total >= MAX_BACKENDS || stalled >= MAX_STALLED_REPAIRS {
                return Err(format!(
                    "SLO unreachable: with {total} backends the replay still misses {slo} (attainment {:.2}%, TTFT p99 {:.0} ms, TPOT p99 {:.1} ms) and adding backends no longer helps",
                    report.stats.slo_attainment * 100.0,
                    report.stats.ttft_ms.p99,
                    report.stats.tpot_ms.p99
                ));
            }
            let options: Vec<usize> = (0..counts.len())
                .filter(|&c| {
                    let mut m = counts.clone();
                    m[c] += 1;
                    self.floor_ok(&m)
                })
                .collect();
            let mixes: Vec<Vec<u32>> = options
                .iter()
                .map(|&c| {
                    let mut m = counts.clone();
                    m[c] += 1;
                    m
                })
                .collect();
            let reports = self.run(&mixes, &mut replays)?;
            // Most deficit cut per dollar; when nothing cuts it, the least deficit left.
            let (best, _) = options
                .iter()
                .zip(&reports)
                .enumerate()
                .map(|(i, (&c, r))| {
                    let cut = deficit - slo.deficit(r);
                    let score = if cut > 1e-12 {
                        cut / self.candidates[c].cost_per_hour_usd
                    } else {
                        -slo.deficit(r) * 1e6 - self.candidates[c].cost_per_hour_usd
                    };
                    (i, score)
                })
                .fold((0, f64::MIN), |acc, x| if x.1 > acc.1 { x } else { acc });
            let new_deficit = slo.deficit(&reports[best]);
            stalled = if new_deficit < deficit - 1e-12 {
                0
            } else {
                stalled + 1
            };
            counts = mixes[best].clone();
            report = reports[best].clone();
            added += 1;
        }
        (counts, report, removed) = self.trim(counts, report, &mut replays)?;
        // The solver's capacity estimates are probes, not the replay: a fleet trimmed to its
        // last backend of one kind may still pass on a cheaper kind (one 910B where the
        // solver bought a TP2 pair). Exchange one backend for one of any strictly cheaper
        // kind while a replay still passes, then trim again; each exchange lowers the cost,
        // so this ends, and a fleet of the cheapest kinds costs no replay.
        let mut swapped = 0;
        while let Some((m, r)) = self.cheaper_swap(&counts, &mut replays)? {
            (counts, report) = (m, r);
            swapped += 1;
            let (c, r, n) = self.trim(counts, report, &mut replays)?;
            (counts, report) = (c, r);
            removed += n;
        }
        Ok(Settled {
            counts,
            report,
            added,
            removed,
            swapped,
            replays,
        })
    }

    /// Removes backends one at a time, the costliest whose removal still meets the SLO
    /// first, while one does; returns the fleet, its replay and how many were removed.
    fn trim(
        &self,
        mut counts: Vec<u32>,
        mut report: PolicyReport,
        replays: &mut u64,
    ) -> Result<(Vec<u32>, PolicyReport, u32), String> {
        let slo = &self.settings.slo;
        let mut removed = 0;
        loop {
            let options: Vec<usize> = (0..counts.len())
                .filter(|&c| {
                    if counts[c] == 0 || counts.iter().sum::<u32>() <= 1 {
                        return false;
                    }
                    let mut m = counts.clone();
                    m[c] -= 1;
                    self.floor_ok(&m)
                })
                .collect();
            if options.is_empty() {
                break;
            }
            let mixes: Vec<Vec<u32>> = options
                .iter()
                .map(|&c| {
                    let mut m = counts.clone();
                    m[c] -= 1;
                    m
                })
                .collect();
            let reports = self.run(&mixes, replays)?;
            let best = options
                .iter()
                .zip(&reports)
                .enumerate()
                .filter(|(_, (_, r))| slo.meets(r))
                .max_by(|(_, (&a, ra)), (_, (&b, rb))| {
                    let (ca, cb) = (
                        self.candidates[a].cost_per_hour_usd,
                        self.candidates[b].cost_per_hour_usd,
                    );
                    ca.total_cmp(&cb)
                        .then(ra.stats.slo_attainment.total_cmp(&rb.stats.slo_attainment))
                })
                .map(|(i, _)| i);
            let Some(best) = best else {
                break;
            };
            counts = mixes[best].clone();
            report = reports[best].clone();
            removed += 1;
        }
        Ok((counts, report, removed))
    }

    /// The cheapest fleet that exchanges one backend of `counts` for one of a strictly
    /// cheaper kind, keeps the domestic floor and still meets the SLO, with its replay.
    fn cheaper_swap(
        &self,
        counts: &[u32],
        replays: &mut u64,
    ) -> Result<Option<(Vec<u32>, PolicyReport)>, String> {
        let mut mixes = Vec::new();
        for from in (0..counts.len()).filter(|&c| counts[c] > 0) {
            for to in 0..counts.len() {
                if self.candidates[to].cost_per_hour_usd
                    >= self.candidates[from].cost_per_hour_usd - 1e-9
                {
                    continue;
                }
                let mut m = counts.to_vec();
                m[from] -= 1;
                m[to] += 1;
                if self.floor_ok(&m) {
                    mixes.push(m);
                }
            }
        }
        if mixes.is_empty() {
            return Ok(None);
        }
        let reports = self.run(&mixes, replays)?;
        let slo = &self.settings.slo;
        Ok(mixes
            .into_iter()
            .zip(reports)
            .filter(|(_, r)| slo.meets(r))
            .min_by(|(a, ra), (b, rb)| {
                cost(self.candidates, a)
                    .total_cmp(&cost(self.candidates, b))
                    .then(rb.stats.slo_attainment.total_cmp(&ra.stats.slo_attainment))
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::PolicySpec;
    use crate::plan::runner::Sequential;
    use crate::plan::{candidates, SloSpec};
    use crate::profile::Catalogue;
    use crate::trace::{ArrivalProcess, SynthConfig, SyntheticTrace};

    /// The solver's capacity probes can overbuy: handed one TP2 910B for a load one TP1
    /// 910B serves, verification ends on the cheaper kind, not on what it was handed.
    #[test]
    fn a_passing_fleet_is_exchanged_for_a_cheaper_kind_that_also_passes() {
        let cands = candidates(
            &Catalogue::embedded(),
            "qwen3-8b",
            &["ascend-910b".to_string()],
            Some(2),
        )
        .unwrap();
        let tp = |t: u32| cands.iter().position(|c| c.tp == t).unwrap();
        let (one, two) = (tp(1), tp(2));
        assert!(cands[one].cost_per_hour_usd < cands[two].cost_per_hour_usd);
        let settings = PlanSettings {
            slo: SloSpec::parse("ttft_p99<=2s,tpot_p99<=100ms", 0.99).unwrap(),
            share_by: ShareBy::Chips,
            policy: PolicySpec::default(),
            seed: 1,
            probe_seconds: 40.0,
        };
        let records: Arc<[TraceRecord]> =
            SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, 0.5, 7))
                .unwrap()
                .take(200)
                .collect();
        let verifier = Verifier {
            candidates: &cands,
            settings: &settings,
            records,
            runner: &Sequential,
            floor: 0.0,
        };
        let mut handed = vec![0; cands.len()];
        handed[two] = 1;
        let settled = verifier.settle(handed).unwrap();
        let mut cheaper = vec![0; cands.len()];
        cheaper[one] = 1;
        assert_eq!(settled.counts, cheaper);
        assert_eq!((settled.swapped, settled.removed), (1, 0));
        assert!(settings.slo.meets(&settled.report));
    }
}
