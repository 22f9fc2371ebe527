//! `weighted`: a fixed split of requests by pool (`weights = { h20 = 2, ascend = 3 }`),
//! the best of two random backends inside the chosen pool. For operators who want a known
//! proportion (a contract, a canary) rather than a load-driven one. Pools without a weight
//! get none; with no weights at all, pools are weighted by their serving backends.

use super::candidates::PickRng;
use super::power_of_two::best_of_random;
use super::{bad, params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView, MaskedView, PoolMask};
use crate::request::{Nanos, Request};
use std::collections::BTreeMap;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    weights: BTreeMap<String, f64>,
    choices: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            weights: BTreeMap::new(),
            choices: 2,
        }
    }
}

/// Fixed split by pool name.
#[derive(Debug)]
pub struct Weighted {
    weights: BTreeMap<String, f64>,
    choices: usize,
    seed: u64,
}

impl Weighted {
    pub fn new(weights: BTreeMap<String, f64>, choices: usize, seed: u64) -> Self {
        Weighted {
            weights,
            choices: choices.max(1),
            seed,
        }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let p: Params = params("weighted", table)?;
        if let Some((name, w)) = p
            .weights
            .iter()
            .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
        {
            return Err(bad(
                "weighted",
                format!("weight of pool `{name}` is {w}; weights must be finite and non-negative"),
            ));
        }
        if p.choices == 0 || p.choices > 64 {
            return Err(bad("weighted", "choices must be between 1 and 64"));
        }
        Ok(Weighted::new(p.weights, p.choices, seed))
    }

    fn weight(&self, view: &dyn LoadView, pool: &crate::fleet::PoolInfo) -> f64 {
        if self.weights.is_empty() {
            view.membership().serving(pool.id).len() as f64
        } else {
            self.weights.get(pool.name()).copied().unwrap_or(0.0)
        }
    }
}

impl Policy for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        let total: f64 = view.eligible_pools().map(|p| self.weight(view, p)).sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = rng.unit() * total;
        let mut chosen = None;
        for p in view.eligible_pools() {
            let w = self.weight(view, p);
            if w > 0.0 {
                chosen = Some(p.id);
                if x < w {
                    break;
                }
                x -= w;
            }
        }
        let only = MaskedView {
            inner: view,
            mask: PoolMask::NONE.with(chosen?),
        };
        best_of_random(&only, &mut rng, self.choices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{test_fleets::fast_and_slow, PlainLoadView, PoolId};
    use crate::policy::testing::req;

    #[test]
    fn splits_by_the_configured_weights() {
        let mut view = PlainLoadView::new(fast_and_slow(3));
        let p = Weighted::new(
            [("fast".to_string(), 1.0), ("slow".to_string(), 3.0)].into(),
            2,
            5,
        );
        let slow = (0..4000)
            .filter(|&i| p.pick(&req(i, 10, 10), &view, 0).unwrap().0 >= 3)
            .count();
        assert!((2850..3150).contains(&slow), "{slow}");
        // A pool with no serving backend drops out and the rest take everything.
        for b in 3..6 {
            view.fail(BackendId(b)).unwrap();
        }
        assert!((0..100).all(|i| p.pick(&req(i, 10, 10), &view, 0).unwrap().0 < 3));
        let only_fast = Weighted::new([("fast".to_string(), 1.0)].into(), 2, 5);
        view.remove_pool(PoolId(0)).unwrap();
        assert_eq!(only_fast.pick(&req(0, 10, 10), &view, 0), None);
    }
}
