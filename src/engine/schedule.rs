//! Step formation at a boundary, after vLLM's scheduler: preempt while the decoding
//! sequences cannot grow, continue running prefills first, then start waiting sequences
//! (interactive first, head of line) with prefix-cache reuse, within the token budget and
//! the running-set bound; a step with no prefill becomes the longest decode stretch that
//! ends before the next finish and fits in KV.

use super::config::{EngineEvent, Granularity};
use super::instance::Engine;
use super::seq::{Phase, SlotRef};
use super::stretch::Run;
use crate::profile::StepShape;
use crate::request::Nanos;
use std::cmp::Reverse;

/// A step being put together at a boundary.
pub(super) struct StepDraft {
    /// Tokens of the step's budget still free.
    budget: u64,
    shape: StepShape,
    /// Blocks held back for the decoding sequences' growth in this step.
    reserved_blocks: u64,
}

impl Engine {
    pub(super) fn front_waiting(&mut self) -> Option<(usize, SlotRef)> {
        for class in 0..2 {
            while let Some(&r) = self.waiting[class].front() {
                if self.seq(r).is_some_and(|s| s.phase == Phase::Waiting) {
                    return Some((class, r));
                }
                self.waiting[class].pop_front();
            }
        }
        None
    }

    /// Forms the next step at boundary `t` and puts it in flight, or goes idle.
    pub(super) fn schedule(&mut self, t: Nanos, out: &mut Vec<EngineEvent>) {
        let mut run = std::mem::take(&mut self.spare_run);
        run.prefill.clear();
        loop {
            // Decoding sequences each need room for one more token.
            let mut decode_need = self.kv_growth(1);
            while decode_need > self.available_blocks() {
                if !self.preempt_one(t, out) {
                    break;
                }
                decode_need = self.kv_growth(1);
            }
            // Handed-off sequences whose KV has arrived join before new prefills start.
            if !self.arrived.is_empty() {
                self.join_arrived(t, out);
                decode_need = self.kv_growth(1);
            }
            // Blocks the decoding sequences will take at the end of this step are held
            // back from the prefills scheduled beside them.
            let mut draft = StepDraft {
                budget: u64::from(self.cfg.max_batched_tokens) - self.decoding.len() as u64,
                shape: StepShape::decode(self.decoding.len() as u64, self.decode_ctx_total()),
                reserved_blocks: decode_need,
            };
            let mut blocked = false;
            // Running prefills continue first, in arrival order.
            let mut i = 0;
            while i < self.prefilling.len() && draft.budget > 0 {
                let r = self.prefilling[i];
                let Some(s) = self.seq(r).filter(|s| s.phase == Phase::Prefilling) else {
                    // Finished prefills leave from the front (the oldest ends first), where
                    // a pop is cheaper than `remove`'s general shift.
                    if i == 0 {
                        self.prefilling.pop_front();
                    } else {
                        self.prefilling.remove(i);
                    }
                    continue;
                };
                let chunk = (s.prefill_target - s.prefilled).min(draft.budget as u32);
                let need = self.chunk_blocks(s, chunk);
                if need + decode_need > self.available_blocks() {
                    blocked = true;
                    break;
                }
                draft
                    .shape
                    .add(StepShape::prefill(u64::from(chunk), u64::from(s.prefilled)));
                self.make_room(need);
                self.other_blocks += need;
                self.seq_mut(r.slot).private_blocks += need;
                run.prefill.push((r, chunk));
                draft.budget -= u64::from(chunk);
                i += 1;
            }
            // Then new work from the waiting queues, interactive first, head of line.
            while !blocked && draft.budget > 0 {
                let running = self.prefilling_live + self.decoding.len() as u32;
                if running >= self.cfg.max_num_seqs {
                    break;
                }
                let Some((class, r)) = self.front_waiting() else {
                    break;
                };
                if !self.try_start(r, t, &mut draft, &mut run, out) {
                    break;
                }
                self.waiting[class].pop_front();
            }
            if !run.prefill.is_empty() {
                run.start = t;
                run.steps = 1;
                run.end = t + self.perf.step_ns(&draft.shape);
                self.run = Some(run);
                return;
            }
            if !self.decoding.is_empty() {
                let mut steps = match self.finish_heap.peek() {
                    Some(&Reverse(key)) => key.finish().saturating_sub(self.step).max(1),
                    None => 1,
                };
                if self.cfg.granularity == Granularity::PerToken {
                    steps = 1;
                }
                steps = self.kv_horizon(steps).max(1);
                let n = self.decoding.len() as u64;
                run.start = t;
                run.steps = steps;
                run.end = t + self.perf.decode_run_ns(n, self.decode_ctx_total(), steps);
                self.run = Some(run);
                return;
            }
            // Nothing decodes and no prefill fits: a partly prefilled sequence holds the
            // KV another needs. Preempt the latest and try again; with nothing running,
            // every request fits (checked at admission).
            if self.prefilling_live > 0 && self.preempt_one(t, out) {
                continue;
            }
            // Unless handed-off sequences still hold KV the link is sending: it is freed
            // by `release_handed_off`, which kicks the scheduler again.
            debug_assert!(
                self.waiting_live == 0 || self.other_blocks > 0,
                "waiting work that can never start"
            );
            self.spare_run = run;
            return;
        }
    }

    /// Moves the waiting sequence `r` into the running set with a first prefill chunk, if
    /// its KV fits.
    pub(super) fn try_start(
        &mut self,
        r: SlotRef,
        t: Nanos,
        draft: &mut StepDraft,
        run: &mut Run,
        out: &mut Vec<EngineEvent>,
    ) -> bool {
        let prefix_tokens = self.cfg.prefix_block_tokens;
        // Reuse the longest cached run of leading prefix blocks, leaving at least one
        // token to compute so the step produces the next token.
        let matched = {
            let s = self.seq(r).expect("waiting slot");
            let full = ((s.prefill_target - 1) / prefix_tokens) as usize;
            let mut m = 0;
            while m < full.min(s.hashes.len()) && self.cache.contains(s.hashes[m]) {
                m += 1;
            }
            let hashes: Vec<u64> = s.hashes[..m].to_vec();
            for h in &hashes {
                self.cache.pin(*h);
            }
            hashes
        };
        let cached = matched.len() as u32 * prefix_tokens;
        let s = self.seq(r).expect("waiting slot");
        let rest = s.prefill_target - cached;
        let whole = !self.cfg.chunked_prefill;
        // Unchunked, a prompt waits for a step with room for all of it; the first prompt
        // of a step always starts (over the budget if it must), so none waits for ever.
        let too_big = whole && u64::from(rest) > draft.budget && !run.prefill.is_empty();
        let chunk = if whole {
            rest
        } else {
            rest.min(draft.budget as u32)
        };
        // A waiting sequence holds no private blocks, so everything is new.
        let need = self.blocks_after(cached + chunk, s.prefill_target, u64::from(cached));
        if too_big || need + draft.reserved_blocks > self.available_blocks() {
            // Not a use: the entries keep their places in the eviction order.
            for h in &matched {
                self.cache.unpin_unused(*h);
            }
            return false;
        }
        let first_time = !s.scheduled_once;
        self.make_room(need);
        self.other_blocks += need;
        let order = self.next_order;
        self.next_order += 1;
        let s = self.seq_mut(r.slot);
        s.pinned = matched;
        s.prefilled = cached;
        s.private_blocks = need;
        s.phase = Phase::Prefilling;
        s.order = order;
        s.scheduled_once = true;
        let (id, prefilled_before) = (s.id, s.prefilled);
        self.waiting_live -= 1;
        self.prefilling_live += 1;
        self.queued_prefill_tokens -= u64::from(cached);
        self.prefilling.push_back(r);
        if first_time {
            out.push(EngineEvent::Scheduled { id, at: t });
        }
        draft.shape.add(StepShape::prefill(
            u64::from(chunk),
            u64::from(prefilled_before),
        ));
        run.prefill.push((r, chunk));
        draft.budget = draft.budget.saturating_sub(u64::from(chunk));
        true
    }
}
