//! Runs and decode stretches: the unit of time the engine advances by. A run is one
//! step, or at per-event granularity a stretch of pure decode steps jumped over in closed
//! form; [`DecodeStretch`] shows a stretch in flight to routers, and `split_run_at` cuts a
//! stretch at the first step boundary after an arrival or abort so both granularities
//! decide at the same nanoseconds.

use super::instance::Engine;
use super::seq::SlotRef;
use crate::request::Nanos;

#[derive(Clone, Debug, Default)]
pub(super) struct Run {
    pub(super) start: Nanos,
    pub(super) end: Nanos,
    /// Steps in this run (1 unless it is a pure-decode stretch).
    pub(super) steps: u64,
    /// Prefill chunks computed by this run's single step: sequence, tokens.
    pub(super) prefill: Vec<(SlotRef, u32)>,
}

/// A stretch of pure decode steps in flight: `seqs` sequences each gain a token per step,
/// `steps` steps from `start` to `end` (times on the engine's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeStretch {
    pub start: Nanos,
    pub end: Nanos,
    pub steps: u64,
    pub seqs: u64,
}

impl DecodeStretch {
    /// Steps ended by `at`, taking them as evenly spaced. Steps lengthen slightly through
    /// a stretch as contexts grow, so this can fall a step or two behind the exact count
    /// ([`crate::profile::PerfModel::decode_steps_within`]), never ahead; it is a few
    /// integer operations where the exact count is a search, and a router reads it for
    /// every backend it weighs.
    pub fn steps_by(&self, at: Nanos) -> u64 {
        if at <= self.start {
            return 0;
        }
        if at >= self.end {
            return self.steps;
        }
        let (elapsed, span) = (at - self.start, self.end - self.start);
        // 64-bit when the product fits (stretches under ~4 s of a few hundred steps: nearly
        // all); a 128-bit division is a library call several times slower, and routers
        // read this for every backend they weigh.
        match elapsed.checked_mul(self.steps) {
            Some(p) => p / span,
            None => (u128::from(elapsed) * u128::from(self.steps) / u128::from(span)) as u64,
        }
    }

    /// Decode tokens produced by `at`.
    pub fn tokens_by(&self, at: Nanos) -> u64 {
        self.steps_by(at) * self.seqs
    }
}

impl Engine {
    /// If a multi-step decode stretch is in flight, applies the steps that have ended by
    /// `now` and leaves only the step in progress, exactly as stepping one by one would.
    pub(super) fn split_run_at(&mut self, now: Nanos) {
        let Some(run) = self.run.as_ref() else { return };
        if run.steps <= 1 {
            return;
        }
        let stretch = DecodeStretch {
            start: run.start,
            end: run.end,
            steps: run.steps,
            seqs: self.decoding.len() as u64,
        };
        let (done, done_ns, next_ns) = self.steps_ended(&stretch, now);
        debug_assert!(
            done < stretch.steps,
            "advance(now) must run before admit/abort at now"
        );
        let new_start = stretch.start + done_ns;
        if done > 0 {
            self.apply_decode_steps(done);
        }
        let run = self.run.as_mut().expect("run");
        run.start = new_start;
        run.steps = 1;
        run.end = new_start + next_ns;
    }

    /// Of the stretch in flight: the steps ended by `now` (the largest `k` whose run time
    /// fits in `now − start`, as [`crate::profile::PerfModel::decode_steps_within`]
    /// counts), their total time, and the duration of the step after them.
    ///
    /// The even-spacing estimate ([`DecodeStretch::steps_by`]) is where the search
    /// starts: steps lengthen as contexts grow, so it is at or a step or two below the
    /// answer, and a couple of single steps forward settle it where a binary search over
    /// run times would price a dozen runs. Run times are exact sums of step times, so the
    /// walk finds the same count; a start past the answer (a measured table's step times
    /// need not grow) or a long walk falls back to the search.
    fn steps_ended(&self, stretch: &DecodeStretch, now: Nanos) -> (u64, Nanos, Nanos) {
        let perf = &self.perf;
        let (n, steps) = (stretch.seqs, stretch.steps);
        let ctx0 = self.decode_ctx_total();
        let budget = now.saturating_sub(stretch.start);
        let mut k = stretch.steps_by(now).min(steps - 1);
        let mut spent = perf.decode_run_ns(n, ctx0, k);
        if spent > budget {
            (k, spent) = (0, 0);
        }
        for _ in 0..4 {
            let next = perf.decode_step_ns(n, ctx0 + k * n);
            if k == steps || spent + next > budget {
                return (k, spent, next);
            }
            spent += next;
            k += 1;
        }
        let more = perf.decode_steps_within(n, ctx0 + k * n, budget - spent, steps - k);
        spent += perf.decode_run_ns(n, ctx0 + k * n, more);
        k += more;
        (k, spent, perf.decode_step_ns(n, ctx0 + k * n))
    }
}
