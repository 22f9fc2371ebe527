//! How much of each request-size bucket one backend of each candidate kind sustains within
//! the SLO. For every (candidate, bucket) pair the bucket's probe sub-trace is replayed on
//! a single backend: first one request at a time (what the chip achieves with no queueing
//! at all), then at a rising rate until attainment falls below the bucket's goal, then by
//! bisection on the rate to within 3%. A probe is looped to last at least `probe_seconds`
//! of simulated time: just above capacity a backlog builds slowly and shows only late. All pairs advance together, one batch of replays
//! per round, so a thread pool stays busy.
//!
//! The goal of a bucket is the plan's attainment target, lowered where even the best chip
//! cannot reach it with no queueing (very long prompts may miss a TTFT bound however idle
//! the chip): then it is that best isolated attainment, less half the allowed miss rate. A
//! pair whose isolated attainment is below its bucket's goal cannot serve the bucket.

use super::candidate::Candidate;
use super::runner::{ReplayJob, ReplayRunner, Timing};
use super::workload::Workload;
use super::PlanSettings;
use crate::request::{Nanos, NANOS_PER_SEC};
pub use crate::trace::Shard;
use serde::{Deserialize, Serialize};

/// Highest rate probed; a pair still passing there is recorded at it.
const MAX_RPS: f64 = 10_000.0;
/// Bisection stops when the passing and failing rates are this close.
const PRECISION: f64 = 1.03;
/// Most requests one probe replays, however high its rate.
const MAX_PROBE_REQUESTS: usize = 50_000;
/// Halvings below the isolated serial rate before giving up on a pair.
const MAX_HALVINGS: u32 = 12;

/// One (candidate, bucket) measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub candidate: String,
    pub bucket: usize,
    /// SLO attainment of the bucket's probe requests run one at a time.
    pub isolated_attainment: f64,
    /// Mean end-to-end latency of a request run alone, ms.
    pub isolated_e2e_ms: f64,
    /// Requests per second of this bucket one backend carries within the goal; 0 when it
    /// cannot serve the bucket; `None` when another shard measures it.
    pub sustained_rps: Option<f64>,
}

/// The goal attainment of each bucket, from the isolated attainments of all candidates.
pub fn bucket_goals(measurements: &[Measurement], buckets: usize, target: f64) -> Vec<f64> {
    (0..buckets)
        .map(|b| {
            let best = measurements
                .iter()
                .filter(|m| m.bucket == b)
                .map(|m| m.isolated_attainment)
                .fold(0.0, f64::max);
            target.min(best - (1.0 - target) / 2.0)
        })
        .collect()
}

struct Search {
    pair: usize,
    pass: Option<f64>,
    fail: Option<f64>,
    next: f64,
    halvings: u32,
    done: bool,
}

/// Measures every pair this shard owns (and the isolated attainment of all pairs, which
/// every shard needs for the bucket goals). Pairs are indexed `candidate * buckets + bucket`.
pub fn measure(
    workload: &Workload,
    candidates: &[Candidate],
    settings: &PlanSettings,
    runner: &dyn ReplayRunner,
    shard: Shard,
) -> Result<(Vec<Measurement>, u64), String> {
    let nb = workload.buckets.len();
    let slo = settings.slo.request_slo();
    let probe_policy = crate::fleet::PolicySpec {
        name: "round-robin".into(),
        params: toml::Table::new(),
    };
    let job = |pair: usize, timing: Timing| ReplayJob {
        pools: vec![candidates[pair / nb].pool_of(1)],
        policy: probe_policy.clone(),
        seed: settings.seed,
        slo,
        records: workload.buckets[pair % nb].probe.clone(),
        timing,
    };
    let pairs = candidates.len() * nb;
    let isolated_jobs: Vec<ReplayJob> = (0..pairs).map(|p| job(p, Timing::Isolated)).collect();
    let mut replays = isolated_jobs.len() as u64;
    let mut out: Vec<Measurement> = Vec::with_capacity(pairs);
    for (p, r) in runner.run_all(&isolated_jobs).into_iter().enumerate() {
        let r = r?;
        out.push(Measurement {
            candidate: candidates[p / nb].name(),
            bucket: p % nb,
            isolated_attainment: r.stats.slo_attainment,
            isolated_e2e_ms: r.stats.e2e_ms.mean,
            sustained_rps: None,
        });
    }
    // An SLO missed with no queueing at all is missed at any rate: say so before the
    // bisection spends its time probing rates that all "pass" a goal near zero.
    super::check_reachable(workload, &out, &settings.slo)?;
    let goals = bucket_goals(&out, nb, settings.slo.attainment);
    let mut searches: Vec<Search> = Vec::new();
    for (p, m) in out.iter_mut().enumerate() {
        if !shard.owns(p) {
            continue;
        }
        if m.isolated_attainment < goals[p % nb] {
            m.sustained_rps = Some(0.0);
            continue;
        }
        // One request at a time is always sustainable in isolation: start there.
        let serial = 1000.0 / m.isolated_e2e_ms.max(1e-3);
        searches.push(Search {
            pair: p,
            pass: None,
            fail: None,
            next: serial.min(MAX_RPS),
            halvings: 0,
            done: false,
        });
    }
    loop {
        let active: Vec<usize> = (0..searches.len()).filter(|&i| !searches[i].done).collect();
        if active.is_empty() {
            break;
        }
        let jobs: Vec<ReplayJob> = active
            .iter()
            .map(|&i| {
                let s = &searches[i];
                let b = &workload.buckets[s.pair % nb];
                job(
                    s.pair,
                    Timing::Looped {
                        factor: s.next / b.probe_rate_rps,
                        min_ns: (settings.probe_seconds * NANOS_PER_SEC as f64) as Nanos,
                        max_requests: MAX_PROBE_REQUESTS,
                    },
                )
            })
            .collect();
        replays += jobs.len() as u64;
        for (&i, r) in active.iter().zip(runner.run_all(&jobs)) {
            let r = r?;
            let s = &mut searches[i];
            let rate = s.next;
            if r.stats.slo_attainment >= goals[s.pair % nb] {
                s.pass = Some(rate);
            } else {
                s.fail = Some(rate);
            }
            match (s.pass, s.fail) {
                (Some(lo), None) if lo >= MAX_RPS => s.done = true,
                (Some(lo), None) => s.next = (lo * 2.0).min(MAX_RPS),
                (None, Some(hi)) => {
                    s.halvings += 1;
                    if s.halvings > MAX_HALVINGS {
                        s.done = true;
                    }
                    s.next = hi / 2.0;
                }
                (Some(lo), Some(hi)) if hi / lo <= PRECISION => s.done = true,
                (Some(lo), Some(hi)) => s.next = (lo * hi).sqrt(),
                (None, None) => unreachable!("every probe passes or fails"),
            }
        }
    }
    for s in &searches {
        out[s.pair].sustained_rps = Some(s.pass.unwrap_or(0.0));
    }
    Ok((out, replays))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for pair in 0..20 {
            assert_eq!(shards.iter().filter(|s| s.owns(pair)).count(), 1);
        }
    }

    #[test]
    fn goals_drop_only_where_no_chip_reaches_the_target() {
        let m = |bucket, a| Measurement {
            candidate: "x".into(),
            bucket,
            isolated_attainment: a,
            isolated_e2e_ms: 1.0,
            sustained_rps: None,
        };
        let goals = bucket_goals(&[m(0, 1.0), m(0, 0.5), m(1, 0.9)], 2, 0.99);
        assert!((goals[0] - 0.99).abs() < 1e-12);
        assert!((goals[1] - 0.895).abs() < 1e-12);
    }
}
