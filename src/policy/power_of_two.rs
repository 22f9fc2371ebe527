//! `power-of-two`: draw `choices` random backends and take the one with less outstanding
//! work (queued prefill plus remaining decode tokens). Mitzenmacher's "power of two
//! choices": almost the balance of a full scan at the cost of two reads.

use super::candidates::{for_each_load, Eligible, PickRng};
use super::{bad, params, Policy, PolicyError};
use crate::fleet::{BackendId, LoadView};
use crate::request::{Nanos, Request};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    choices: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params { choices: 2 }
    }
}

/// Best of `choices` random backends by outstanding tokens.
#[derive(Debug)]
pub struct PowerOfTwo {
    choices: usize,
    seed: u64,
}

impl PowerOfTwo {
    pub fn new(choices: usize, seed: u64) -> Self {
        PowerOfTwo {
            choices: choices.max(1),
            seed,
        }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let p: Params = params("power-of-two", table)?;
        if p.choices == 0 || p.choices > 64 {
            return Err(bad("power-of-two", "choices must be between 1 and 64"));
        }
        Ok(PowerOfTwo::new(p.choices, seed))
    }
}

/// The best of `choices` random eligible backends by outstanding tokens, then requests.
pub(crate) fn best_of_random(
    view: &dyn LoadView,
    rng: &mut PickRng,
    choices: usize,
) -> Option<BackendId> {
    let eligible = Eligible::of(view);
    let mut best: Option<((u64, u32), BackendId)> = None;
    let draws = (0..choices).map_while(|_| eligible.random(rng));
    for_each_load(view, draws, |_, b, l| {
        let key = (
            l.queued_prefill_tokens + l.remaining_decode_tokens,
            l.outstanding(),
        );
        if best.is_none_or(|(k, _)| key < k) {
            best = Some((key, b));
        }
    });
    best.map(|(_, b)| b)
}

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power-of-two"
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, _now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(self.seed, req);
        best_of_random(view, &mut rng, self.choices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::{test_fleets::fast_and_slow, PlainLoadView};
    use crate::policy::testing::req;

    #[test]
    fn never_picks_the_most_loaded_of_two() {
        let mut view = PlainLoadView::new(fast_and_slow(1));
        view.set_load(
            BackendId(0),
            LoadSnapshot {
                remaining_decode_tokens: 500,
                ..Default::default()
            },
        );
        let p = PowerOfTwo::new(2, 9);
        let to_idle = (0..1000)
            .filter(|&i| p.pick(&req(i, 1, 1), &view, 0) == Some(BackendId(1)))
            .count();
        // Only when both draws land on the loaded backend (1 in 4) does it get picked.
        assert!((680..820).contains(&to_idle), "{to_idle}");
    }
}
