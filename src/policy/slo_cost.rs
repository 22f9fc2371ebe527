//! `slo-cost`: the cheapest pool whose predicted TTFT and TPOT meet the request's SLO
//! with some headroom; if none does, the pool with the lowest predicted latency. Fills
//! cheap capacity first and pays for fast chips only when the SLO needs them.
//!
//! "Cheapest" is the price of serving *this* request on the pool: its prefill time plus
//! its share of a full decode batch, times the pool's price per hour. A pool's price per
//! output token alone would call a chip that decodes fast but prefills slowly (H20)
//! cheap for every request, when for a long prompt it is the expensive choice.

use super::candidates::PickRng;
use super::predicted_latency::best_per_pool;
use super::{bad, params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView, PoolInfo};
use crate::request::{Nanos, Request, Slo, NANOS_PER_MS};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    per_pool: usize,
    headroom: f64,
    /// SLO for requests that carry none.
    ttft_ms: u64,
    tpot_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        let slo = Slo::default();
        Params {
            per_pool: 2,
            headroom: 0.8,
            ttft_ms: slo.ttft_ns / NANOS_PER_MS,
            tpot_ms: slo.tpot_ns / NANOS_PER_MS,
        }
    }
}

/// Cheapest pool that meets the SLO, else fastest.
/// The largest `ttft_ms` / `tpot_ms` accepted: one day.
pub const MAX_SLO_MS: u64 = 86_400_000;

#[derive(Debug)]
pub struct SloCost {
    per_pool: usize,
    headroom: f64,
    default_slo: Slo,
    seed: u64,
}

impl SloCost {
    pub fn new(per_pool: usize, headroom: f64, default_slo: Slo, seed: u64) -> Self {
        SloCost {
            per_pool: per_pool.max(1),
            headroom,
            default_slo,
            seed,
        }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let p: Params = params("slo-cost", table)?;
        if p.per_pool == 0 || p.per_pool > 64 {
            return Err(bad("slo-cost", "per_pool must be between 1 and 64"));
        }
        if !(p.headroom > 0.0 && p.headroom <= 1.0) {
            return Err(bad("slo-cost", "headroom must be in (0, 1]"));
        }
        // Checked: a huge millisecond count used to overflow its nanoseconds (a panic in a
        // debug build, a wrap to a tiny SLO in release). A day bounds any latency objective.
        let ns = |name: &str, ms: u64| {
            ms.checked_mul(NANOS_PER_MS)
                .filter(|_| ms <= MAX_SLO_MS)
                .ok_or_else(|| {
                    bad(
                        "slo-cost",
                        format!("{name} {ms} is above {MAX_SLO_MS} (a day)"),
                    )
                })
        };
        let slo = Slo {
            ttft_ns: ns("ttft_ms", p.ttft_ms)?,
            tpot_ns: ns("tpot_ms", p.tpot_ms)?,
        };
        Ok(SloCost::new(p.per_pool, p.headroom, slo, seed))
    }
}

impl Policy for SloCost {
    fn name(&self) -> &'static str {
        "slo-cost"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        let slo = req.slo.unwrap_or(self.default_slo);
        let mut cheapest_ok: Option<(f64, u64, BackendId)> = None;
        let mut fastest: Option<(u64, BackendId)> = None;
        best_per_pool(view, req, &mut rng, self.per_pool, |pool, b, p| {
            if p.meets(&slo, self.headroom) {
                let key = (request_cost(pool, req), p.e2e_ns);
                if cheapest_ok.is_none_or(|(c, e, _)| key.0 < c || (key.0 == c && key.1 < e)) {
                    cheapest_ok = Some((key.0, key.1, b));
                }
            }
            if fastest.is_none_or(|(e, _)| p.e2e_ns < e) {
                fastest = Some((p.e2e_ns, b));
            }
        });
        cheapest_ok.map(|c| c.2).or(fastest.map(|f| f.1))
    }
}

/// Dollars (scaled: price per hour × nanoseconds) one backend of `pool` spends on `req`:
/// its prefill, plus its output tokens at the pool's full-batch decode rate.
fn request_cost(pool: &PoolInfo, req: &Request) -> f64 {
    let batch = pool.config.max_num_seqs.max(1);
    let decode_ns =
        u64::from(req.max_tokens) as f64 * pool.decode_step_ns(batch) as f64 / f64::from(batch);
    let busy_ns = pool.prefill_ns(u64::from(req.prompt_tokens)) as f64 + decode_ns;
    busy_ns * pool.price_per_hour_usd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::{test_fleets::*, PlainLoadView};
    use crate::policy::testing::req;

    #[test]
    fn cheap_while_it_meets_the_slo_then_fast_then_fastest() {
        // Half the speed at 15% of the price: the slow pool is the cheaper one per token.
        let m = crate::fleet::Membership::from_pools([
            pool("fast", 1, 1.0, 2.0, false),
            pool("slow", 1, 0.5, 0.3, true),
        ])
        .unwrap();
        let mut view = PlainLoadView::new(m);
        let p = SloCost::new(1, 0.8, Slo::default(), 0);
        let (fast, slow) = (
            view.membership()
                .pool(crate::fleet::PoolId(0))
                .unwrap()
                .clone(),
            view.membership()
                .pool(crate::fleet::PoolId(1))
                .unwrap()
                .clone(),
        );
        assert!(slow.usd_per_mtok < fast.usd_per_mtok);
        let r = req(0, 1000, 100);
        assert_eq!(
            p.pick(&r, &view, 0),
            Some(BackendId(1)),
            "idle cheap pool meets the SLO"
        );
        // Bury the cheap pool in prefill: its TTFT blows the SLO, so the fast one wins.
        view.set_load(
            BackendId(1),
            LoadSnapshot {
                waiting: 20,
                queued_prefill_tokens: 200_000,
                ..Default::default()
            },
        );
        assert_eq!(p.pick(&r, &view, 0), Some(BackendId(0)));
        // Both hopeless: the faster prediction wins.
        view.set_load(
            BackendId(0),
            LoadSnapshot {
                waiting: 20,
                queued_prefill_tokens: 300_000,
                ..Default::default()
            },
        );
        let tight = Request {
            slo: Some(Slo {
                ttft_ns: 1,
                tpot_ns: 1,
            }),
            ..r
        };
        let pf = crate::policy::predict(&fast, &view.load(BackendId(0)), &tight);
        let ps = crate::policy::predict(&slow, &view.load(BackendId(1)), &tight);
        let want = if pf.e2e_ns <= ps.e2e_ns {
            BackendId(0)
        } else {
            BackendId(1)
        };
        assert_eq!(p.pick(&tight, &view, 0), Some(want));
    }

    #[test]
    fn slo_params_are_overflow_checked() {
        let t = |s: &str| -> toml::Table { toml::from_str(s).unwrap() };
        assert!(SloCost::from_params(&t("ttft_ms = 2000"), 1).is_ok());
        for bad in ["ttft_ms = 18446744073710", "tpot_ms = 86400001"] {
            let e = SloCost::from_params(&t(bad), 1).expect_err(bad).to_string();
            assert!(e.contains("above 86400000"), "{bad}: {e}");
        }
    }
}
