//! `predicted-latency`: predicts this request's time to first token and time per output
//! token on every allowed pool (from the queue state of a few sampled backends and the
//! pool's PerfModel) and sends it where it will see its first token soonest, as long as
//! the decode pace there keeps within its TPOT objective. Predictions within
//! `tie_tolerance` of the best count as ties, settled by the pool's cost per token, so
//! equal-speed capacity is used cheapest first.
//!
//! Why TTFT first and TPOT as a bound, rather than lowest end-to-end time: on a mixed
//! fleet the chips that decode fastest (H20: 4 TB/s) are often the slowest to prefill
//! (148 TFLOPS). Chasing end-to-end time herds long-answer requests onto them, their
//! prefill queues grow, and every sequence decoding there stalls behind the prefills
//! (chunked prefill shares each step). Scoring TTFT plus only the part of the decode time
//! that breaks the TPOT objective spreads prefill work by prefill speed and still keeps
//! requests off backends too slow to stream within their SLO.

use super::candidates::{for_each_load, PerPoolDraws, PickRng};
use super::predict::{predict, Prediction};
use super::{bad, params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView, PoolInfo, PoolMask};
use crate::request::{Nanos, Request};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    per_pool: usize,
    tie_tolerance: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            per_pool: 2,
            tie_tolerance: 0.05,
        }
    }
}

/// Calls `visit` with each allowed pool's best sampled backend (lowest predicted
/// end-to-end latency among `per_pool` draws) and its prediction.
pub(crate) fn best_per_pool<'v>(
    view: &'v dyn LoadView,
    req: &Request,
    rng: &mut PickRng,
    per_pool: usize,
    visit: impl FnMut(&'v PoolInfo, BackendId, Prediction),
) {
    best_per_pool_by(view, req, rng, per_pool, |p| p.e2e_ns, visit)
}

/// As [`best_per_pool`], ranking a pool's sampled backends by `key` (lower is better).
pub(crate) fn best_per_pool_by<'v>(
    view: &'v dyn LoadView,
    req: &Request,
    rng: &mut PickRng,
    per_pool: usize,
    key: impl Fn(&Prediction) -> u64,
    mut visit: impl FnMut(&'v PoolInfo, BackendId, Prediction),
) {
    let draws = PerPoolDraws::new(view, PoolMask::ALL, rng, per_pool);
    let mut best: Option<(&'v PoolInfo, Prediction, BackendId)> = None;
    for_each_load(view, draws, |pool, b, load| {
        let p = predict(pool, load, req);
        match &mut best {
            Some((bp, bpred, bb)) if bp.id == pool.id => {
                if key(&p) < key(bpred) {
                    (*bpred, *bb) = (p, b);
                }
            }
            _ => {
                if let Some((bp, bpred, bb)) = best.replace((pool, p, b)) {
                    visit(bp, bb, bpred);
                }
            }
        }
    });
    if let Some((bp, bpred, bb)) = best {
        visit(bp, bb, bpred);
    }
}

/// Lowest predicted latency, ties by cost.
#[derive(Debug)]
pub struct PredictedLatency {
    per_pool: usize,
    tie_tolerance: f64,
    seed: u64,
}

impl PredictedLatency {
    pub fn new(per_pool: usize, tie_tolerance: f64, seed: u64) -> Self {
        PredictedLatency {
            per_pool: per_pool.max(1),
            tie_tolerance,
            seed,
        }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let p: Params = params("predicted-latency", table)?;
        if p.per_pool == 0 || p.per_pool > 64 {
            return Err(bad(
                "predicted-latency",
                "per_pool must be between 1 and 64",
            ));
        }
        if !(0.0..1.0).contains(&p.tie_tolerance) {
            return Err(bad("predicted-latency", "tie_tolerance must be in [0, 1)"));
        }
        Ok(PredictedLatency::new(p.per_pool, p.tie_tolerance, seed))
    }
}

impl Policy for PredictedLatency {
    fn name(&self) -> &'static str {
        "predicted-latency"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        // At most MAX_POOLS candidates; kept on the stack.
        let mut cands: [(u64, f64, BackendId); crate::fleet::MAX_POOLS] =
            [(0, 0.0, BackendId(0)); crate::fleet::MAX_POOLS];
        let mut n = 0;
        let mut fastest = u64::MAX;
        let slo = req.slo.unwrap_or_default();
        // The bound is the same for every candidate: worked out once, not per comparison.
        let bound = tpot_bound(&slo);
        let score = |p: &Prediction| slo_score(p, bound, req.max_tokens);
        best_per_pool_by(view, req, &mut rng, self.per_pool, score, |pool, b, p| {
            let s = score(&p);
            cands[n] = (s, pool.usd_per_mtok, b);
            n += 1;
            fastest = fastest.min(s);
        });
        let limit = fastest as f64 * (1.0 + self.tie_tolerance);
        cands[..n]
            .iter()
            .filter(|(e2e, _, _)| (*e2e as f64) <= limit)
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|c| c.2)
    }
}

/// Fraction of the TPOT objective a prediction may use before it counts against a pool:
/// predictions are estimates, and interference from later prefills comes on top.
const TPOT_HEADROOM: f64 = 0.8;

/// The part of the TPOT objective a prediction may use, ns.
fn tpot_bound(slo: &crate::request::Slo) -> u64 {
    (slo.tpot_ns as f64 * TPOT_HEADROOM) as u64
}

/// Predicted TTFT plus the decode time this request would spend beyond its TPOT bound.
#[inline]
fn slo_score(p: &Prediction, bound: u64, max_tokens: u32) -> u64 {
    let excess = p.tpot_ns.saturating_sub(bound);
    p.ttft_ns
        .saturating_add(excess.saturating_mul(u64::from(max_tokens.saturating_sub(1))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::{test_fleets::*, Membership, PlainLoadView};
    use crate::policy::testing::{req, run_fluid};

    #[test]
    fn idle_fleet_goes_fast_then_spills_as_the_fast_pool_queues() {
        let mut view = PlainLoadView::new(fast_and_slow(1));
        let p = PredictedLatency::new(2, 0.05, 0);
        assert_eq!(p.pick(&req(0, 1000, 100), &view, 0), Some(BackendId(0)));
        view.set_load(
            BackendId(0),
            LoadSnapshot {
                waiting: 40,
                running: 64,
                queued_prefill_tokens: 400_000,
                remaining_decode_tokens: 30_000,
                ..Default::default()
            },
        );
        assert_eq!(p.pick(&req(1, 1000, 100), &view, 0), Some(BackendId(1)));
    }

    #[test]
    fn equal_speed_ties_go_to_the_cheaper_pool() {
        let m = Membership::from_pools([
            pool("dear", 2, 1.0, 3.0, false),
            pool("cheap", 2, 1.0, 1.0, true),
        ])
        .unwrap();
        let view = PlainLoadView::new(m);
        let p = PredictedLatency::new(2, 0.05, 0);
        for i in 0..20 {
            let b = p.pick(&req(i, 500, 50), &view, 0).unwrap();
            assert!(b.0 >= 2, "{b}");
        }
    }

    #[test]
    fn sends_proportionally_more_to_the_fast_pool() {
        let n = 2000;
        let per_pool = run_fluid(
            &PredictedLatency::new(2, 0.05, 1),
            fast_and_slow(4),
            n,
            20_000_000,
        );
        let fast = per_pool[0] as f64 / n as f64;
        assert!(fast > 0.7, "fast share {fast}");
    }
}
