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
        let done = u128::from(at - self.start) * u128::from(self.steps)
            / u128::from(self.end - self.start);
        done as u64
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
        let (start, steps) = (run.start, run.steps);
        let n = self.decoding.len() as u64;
        let ctx0 = self.decode_ctx_total();
        let done = self
            .perf
            .decode_steps_within(n, ctx0, now.saturating_sub(start), steps);
        debug_assert!(
            done < steps,
            "advance(now) must run before admit/abort at now"
        );
        if done == 0 {
            let run = self.run.as_mut().expect("run");
            run.steps = 1;
            run.end = start + self.perf.decode_step_ns(n, ctx0);
            return;
        }
        let new_start = start + self.perf.decode_run_ns(n, ctx0, done);
        self.apply_decode_steps(done);
        let step_ns = self.perf.decode_step_ns(n, self.decode_ctx_total());
        let run = self.run.as_mut().expect("run");
        run.start = new_start;
        run.steps = 1;
        run.end = new_start + step_ns;
    }
}
