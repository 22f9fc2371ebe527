//! `least-outstanding`: the backend holding the fewest requests (waiting + running). What
//! most gateways call "least connections". Every request counts the same on every chip, so
//! a slow pool with short queues keeps attracting work it serves slowly.
//!
//! Up to `scan_limit` eligible backends are all compared; above that a random `sample`
//! of them is, which keeps the decision O(1) in fleet size.

use super::candidates::{min_by_key, PickRng, Reach};
use super::{params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView};
use crate::request::{Nanos, Request};

/// Fewest outstanding requests, ties by fewer queued tokens.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    reach: Reach,
    seed: u64,
}

impl LeastOutstanding {
    pub fn new(reach: Reach, seed: u64) -> Self {
        LeastOutstanding { reach, seed }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        Ok(LeastOutstanding::new(
            params("least-outstanding", table)?,
            seed,
        ))
    }
}

impl Policy for LeastOutstanding {
    fn name(&self) -> &'static str {
        "least-outstanding"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        min_by_key(view, &mut rng, self.reach, |_, _, l| {
            (
                l.outstanding(),
                l.queued_prefill_tokens + l.remaining_decode_tokens,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::{test_fleets::fast_and_slow, PlainLoadView};
    use crate::policy::testing::{req, run_fluid};

    #[test]
    fn picks_the_emptiest_backend() {
        let mut view = PlainLoadView::new(fast_and_slow(3));
        for b in 0..6 {
            let l = LoadSnapshot {
                running: 10 - b,
                ..Default::default()
            };
            view.set_load(BackendId(b), l);
        }
        let p = LeastOutstanding::new(Reach::default(), 1);
        assert_eq!(p.pick(&req(0, 10, 10), &view, 0), Some(BackendId(5)));
    }

    #[test]
    fn is_blind_to_speed() {
        // Equal queues look equally good, so the slow pool still gets a large share.
        let per_pool = run_fluid(
            &LeastOutstanding::new(Reach::default(), 1),
            fast_and_slow(4),
            2000,
            20_000_000,
        );
        let fast = per_pool[0] as f64 / 2000.0;
        assert!(fast < 0.8, "fast share {fast}");
    }

    #[test]
    fn large_fleets_are_sampled_not_scanned() {
        let mut view = PlainLoadView::new(fast_and_slow(200));
        for b in 0..400 {
            view.set_load(
                BackendId(b),
                LoadSnapshot {
                    running: 50,
                    ..Default::default()
                },
            );
        }
        view.set_load(BackendId(7), LoadSnapshot::default());
        let p = LeastOutstanding::new(
            Reach {
                scan_limit: 64,
                sample: 16,
            },
            3,
        );
        let hits = (0..400)
            .filter(|&i| p.pick(&req(i, 10, 10), &view, 0) == Some(BackendId(7)))
            .count();
        // A 16-sample finds one idle backend among 400 about 4% of the time.
        assert!((2..60).contains(&hits), "{hits}");
        let scanning = LeastOutstanding::new(
            Reach {
                scan_limit: 1000,
                sample: 16,
            },
            3,
        );
        assert_eq!(scanning.pick(&req(0, 10, 10), &view, 0), Some(BackendId(7)));
    }
}
