//! `random`: a uniformly random serving backend. Stateless, so it scales perfectly across
//! threads; like round robin it is blind to load and speed.

use super::candidates::{random_eligible, PickRng};
use super::{params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView};
use crate::request::{Nanos, Request};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

/// Uniform random choice, seeded per request.
#[derive(Debug, Default)]
pub struct Random {
    seed: u64,
}

impl Random {
    pub fn new(seed: u64) -> Random {
        Random { seed }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let Params {} = params("random", table)?;
        Ok(Random::new(seed))
    }
}

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn reads_load(&self) -> bool {
        false
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        random_eligible(view, &mut rng).map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{test_fleets::fast_and_slow, PlainLoadView};
    use crate::policy::testing::req;

    #[test]
    fn spreads_evenly_and_repeats_with_the_seed() {
        let view = PlainLoadView::new(fast_and_slow(4));
        let p = Random::new(42);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[p.pick(&req(i, 10, 10), &view, 0).unwrap().index()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        let again = Random::new(42);
        let other = Random::new(43);
        let seq = |p: &Random| {
            (0..50)
                .map(|i| p.pick(&req(i, 10, 10), &view, 0).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(seq(&p), seq(&again));
        assert_ne!(seq(&p), seq(&other));
    }
}
