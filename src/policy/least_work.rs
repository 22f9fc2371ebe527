//! `least-work`: the backend that would finish soonest what it holds plus this request,
//! in its own time: queued prefill tokens at the pool's prefill speed and remaining decode
//! tokens at its decode speed (from the PerfModel). The first heterogeneity-aware policy:
//! a queue of 10 000 prompt tokens is a short wait on a 910B and a long one on an H20.

use super::candidates::{min_by_key, PickRng, Reach};
use super::predict::work_ns;
use super::{params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView};
use crate::request::{Nanos, Request};

/// Least outstanding work divided by speed.
#[derive(Debug, Default)]
pub struct LeastWork {
    reach: Reach,
    seed: u64,
}

impl LeastWork {
    pub fn new(reach: Reach, seed: u64) -> Self {
        LeastWork { reach, seed }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        Ok(LeastWork::new(params("least-work", table)?, seed))
    }
}

impl Policy for LeastWork {
    fn name(&self) -> &'static str {
        "least-work"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        min_by_key(view, &mut rng, self.reach, |pool, _, load| {
            work_ns(pool, load, req)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::test_fleets::fast_and_slow;
    use crate::policy::testing::run_fluid;
    use crate::policy::LeastOutstanding;

    #[test]
    fn sends_more_to_the_fast_pool_than_speed_blind_policies() {
        let n = 2000;
        let aware = run_fluid(
            &LeastWork::new(Reach::default(), 1),
            fast_and_slow(4),
            n,
            20_000_000,
        );
        let blind = run_fluid(
            &LeastOutstanding::new(Reach::default(), 1),
            fast_and_slow(4),
            n,
            20_000_000,
        );
        let share = |v: &[u64]| v[0] as f64 / n as f64;
        // The fast pool is four times faster: it should carry most of the work.
        assert!(
            share(&aware) > 0.7,
            "least-work fast share {}",
            share(&aware)
        );
        assert!(
            share(&aware) > share(&blind) + 0.05,
            "{} vs {}",
            share(&aware),
            share(&blind)
        );
    }
}
