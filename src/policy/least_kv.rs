//! `least-kv`: the backend with the lowest KV-cache usage, ties by fewer waiting requests.
//! Avoids preemption (which recomputes whole prompts) when prompts are long; like
//! least-outstanding it knows nothing of speed.

use super::candidates::{min_by_key, PickRng, Reach};
use super::{params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView};
use crate::request::{Nanos, Request};

/// Lowest KV-cache usage.
#[derive(Debug, Default)]
pub struct LeastKv {
    reach: Reach,
    seed: u64,
}

impl LeastKv {
    pub fn new(reach: Reach, seed: u64) -> Self {
        LeastKv { reach, seed }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        Ok(LeastKv::new(params("least-kv", table)?, seed))
    }
}

impl Policy for LeastKv {
    fn name(&self) -> &'static str {
        "least-kv"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        min_by_key(view, &mut rng, self.reach, |_, _, l| {
            // Usage in parts per million keeps the key integral (and totally ordered).
            let usage = if l.kv_total_blocks == 0 {
                0
            } else {
                u64::from(l.kv_used_blocks) * 1_000_000 / u64::from(l.kv_total_blocks)
            };
            (usage, l.waiting, l.outstanding())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::{test_fleets::fast_and_slow, PlainLoadView};
    use crate::policy::testing::req;

    #[test]
    fn picks_the_lowest_usage_not_the_fewest_blocks() {
        let mut view = PlainLoadView::new(fast_and_slow(2));
        let kv = |used, total| LoadSnapshot {
            kv_used_blocks: used,
            kv_total_blocks: total,
            running: 1,
            ..Default::default()
        };
        view.set_load(BackendId(0), kv(100, 200));
        view.set_load(BackendId(1), kv(900, 1000));
        view.set_load(BackendId(2), kv(300, 1000));
        view.set_load(BackendId(3), kv(50, 80));
        assert_eq!(
            LeastKv::new(Reach::default(), 0).pick(&req(1, 1, 1), &view, 0),
            Some(BackendId(2))
        );
    }
}
