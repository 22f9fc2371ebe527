//! `prefix-affinity`: requests sharing a prompt prefix go to the backend already holding
//! its KV blocks, so the prefix is not prefilled again. The owner of a prefix is found by
//! consistent hashing of the prompt's first block id on the fleet's hash ring (built once
//! per membership change), so adding or draining a backend moves only its own prefixes.
//!
//! Affinity is bounded by load, after "consistent hashing with bounded loads" (Mirrokni,
//! Thorup, Zadimoghaddam 2018): walking the ring clockwise from the prefix's point, the
//! first backend whose outstanding requests are at most `bound` × the fleet's mean (plus
//! `slack`) takes the request. A hot prefix therefore fills its owner, then the next
//! backends on the ring, which then hold that prefix too, instead of herding onto one
//! backend. The mean is estimated from `probes` random backends, not a fleet scan.

use super::candidates::{for_each_load, Eligible, PickRng};
use super::power_of_two::best_of_random;
use super::{bad, params, Policy, PolicyError};
use crate::fleet::{mix64, BackendId, LoadView};
use crate::request::{Nanos, Request};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    bound: f64,
    slack: u32,
    max_walk: usize,
    probes: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            bound: 1.25,
            slack: 2,
            max_walk: 16,
            probes: 4,
        }
    }
}

/// Consistent hashing on the first prefix block, bounded by load.
#[derive(Debug)]
pub struct PrefixAffinity {
    bound: f64,
    slack: u32,
    max_walk: usize,
    probes: usize,
    seed: u64,
}

impl PrefixAffinity {
    pub fn new(bound: f64, slack: u32, max_walk: usize, probes: usize, seed: u64) -> Self {
        PrefixAffinity {
            bound,
            slack,
            max_walk: max_walk.max(1),
            probes: probes.max(1),
            seed,
        }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let p: Params = params("prefix-affinity", table)?;
        if p.bound.is_nan() || p.bound < 1.0 {
            return Err(bad("prefix-affinity", "bound must be at least 1.0"));
        }
        if p.max_walk == 0 || p.probes == 0 || p.max_walk > 1024 || p.probes > 64 {
            return Err(bad(
                "prefix-affinity",
                "max_walk must be 1..=1024 and probes 1..=64",
            ));
        }
        Ok(PrefixAffinity::new(
            p.bound, p.slack, p.max_walk, p.probes, seed,
        ))
    }
}

impl Policy for PrefixAffinity {
    fn name(&self) -> &'static str {
        "prefix-affinity"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        let Some(key) = req.prefix_hashes.first().copied().or(req.session) else {
            return best_of_random(view, &mut rng, 2);
        };
        let m = view.membership();
        let ring = m.ring();
        if ring.is_empty() {
            return None;
        }
        let mut total = 0u64;
        let mut probed = 0u64;
        let eligible = Eligible::of(view);
        let draws = (0..self.probes).filter_map(|_| eligible.random(&mut rng));
        for_each_load(view, draws, |_, _, load| {
            total += u64::from(load.outstanding());
            probed += 1;
        });
        if probed == 0 {
            return None;
        }
        let threshold = (total as f64 / probed as f64) * self.bound + f64::from(self.slack);
        let point = mix64(key);
        let start = ring.partition_point(|(p, _)| *p < point);
        let mut least: Option<(u32, BackendId)> = None;
        let mut walked = 0;
        for i in 0..ring.len() {
            let b = ring[(start + i) % ring.len()].1;
            let Some(entry) = m.backend(b) else { continue };
            if !view.pool_allowed(entry.pool) {
                continue;
            }
            let outstanding = view.load(b).outstanding();
            if f64::from(outstanding) <= threshold {
                return Some(b);
            }
            if least.is_none_or(|(o, _)| outstanding < o) {
                least = Some((outstanding, b));
            }
            walked += 1;
            if walked >= self.max_walk {
                break;
            }
        }
        // Everyone near the prefix is overloaded: fall back to plain load balancing.
        best_of_random(view, &mut rng, 2).or(least.map(|(_, b)| b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::{test_fleets::fast_and_slow, PlainLoadView};
    use crate::policy::testing::req;

    fn with_prefix(id: u64, prefix: u64) -> Request {
        Request {
            prefix_hashes: vec![prefix, id + 1_000_000],
            ..req(id, 2048, 64)
        }
    }

    #[test]
    fn same_prefix_same_backend_while_load_is_even() {
        let view = PlainLoadView::new(fast_and_slow(8));
        let p = PrefixAffinity::new(1.25, 2, 16, 4, 0);
        for prefix in [1u64, 77, 9_999] {
            let first = p.pick(&with_prefix(0, prefix), &view, 0).unwrap();
            for i in 1..20 {
                assert_eq!(p.pick(&with_prefix(i, prefix), &view, 0), Some(first));
            }
        }
        // Different prefixes spread over the fleet.
        let owners: std::collections::BTreeSet<_> = (0..200)
            .map(|k| p.pick(&with_prefix(0, k), &view, 0).unwrap())
            .collect();
        assert!(owners.len() >= 12, "{}", owners.len());
    }

    #[test]
    fn a_hot_prefix_does_not_herd_onto_one_backend() {
        let mut view = PlainLoadView::new(fast_and_slow(8));
        let p = PrefixAffinity::new(1.25, 2, 16, 4, 0);
        let mut counts = vec![0u32; 16];
        for i in 0..400 {
            let b = p.pick(&with_prefix(i, 42), &view, 0).unwrap();
            counts[b.index()] += 1;
            let l = view.load(b);
            view.set_load(
                b,
                LoadSnapshot {
                    running: l.running + 1,
                    ..l
                },
            );
        }
        let max = *counts.iter().max().unwrap();
        let used = counts.iter().filter(|&&c| c > 0).count();
        assert!(max <= 80, "one backend took {max} of 400: {counts:?}");
        assert!(used >= 8, "only {used} backends used: {counts:?}");
    }

    #[test]
    fn draining_the_owner_moves_only_its_prefixes() {
        let mut view = PlainLoadView::new(fast_and_slow(8));
        let p = PrefixAffinity::new(1.25, 2, 16, 4, 0);
        let before: Vec<_> = (0..300)
            .map(|k| p.pick(&with_prefix(0, k), &view, 0).unwrap())
            .collect();
        view.drain(BackendId(3)).unwrap();
        let after: Vec<_> = (0..300)
            .map(|k| p.pick(&with_prefix(0, k), &view, 0).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(*a, BackendId(3));
            if *b != BackendId(3) {
                assert_eq!(a, b);
            }
        }
    }
}
