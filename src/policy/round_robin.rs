//! `round-robin`: each serving backend of the allowed pools in turn. The baseline every
//! router ships; it ignores load and speed, so a slow chip gets as much as a fast one.
//!
//! One turn counter is shared by every thread that routes. Per-thread counters would not
//! bounce a cache line (two threads picking at once cost 2.5× one thread in the routing
//! bench, about 110 ns against 45 ns), but the daemon would then no longer route in exactly
//! the order a replay does, and that agreement is what makes replay trustworthy.

use super::candidates::Eligible;
use super::{params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView};
use crate::request::{Nanos, Request};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

/// Round robin over the serving backends.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicU64,
}

impl RoundRobin {
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }

    pub fn from_params(table: &toml::Table) -> Result<Self, PolicyError> {
        let Params {} = params("round-robin", table)?;
        Ok(RoundRobin::new())
    }
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn reads_load(&self) -> bool {
        false
    }

    fn pick(&self, _req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let eligible = Eligible::of(view);
        let n = eligible.total();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Relaxed);
        eligible.nth((turn % n as u64) as usize).map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{test_fleets::fast_and_slow, MaskedView, PlainLoadView, PoolId, PoolMask};
    use crate::policy::testing::req;

    #[test]
    fn visits_every_backend_in_turn() {
        let view = PlainLoadView::new(fast_and_slow(3));
        let rr = RoundRobin::new();
        let picks: Vec<u32> = (0..12)
            .map(|i| rr.pick(&req(i, 10, 10), &view, 0).unwrap().0)
            .collect();
        assert_eq!(picks, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]);
        let only_slow = MaskedView {
            inner: &view,
            mask: PoolMask::NONE.with(PoolId(1)),
        };
        for i in 0..6 {
            assert!(rr.pick(&req(i, 10, 10), &only_slow, 0).unwrap().0 >= 3);
        }
        let none = MaskedView {
            inner: &view,
            mask: PoolMask::NONE,
        };
        assert_eq!(rr.pick(&req(0, 10, 10), &none, 0), None);
    }
}
