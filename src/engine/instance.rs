//! The engine proper: one serving instance stepping a continuous batch.
//!
//! Time advances in *runs*. A run is either one step (any step that prefills, and every
//! step at per-token granularity) or, at per-event granularity, a stretch of pure decode
//! steps in which nothing observable happens: no sequence finishes, nothing waiting can be
//! admitted and KV does not run out. Inside such a stretch each decode step only grows
//! every sequence's context by one token, so its length, its duration
//! ([`PerfModel::decode_run_ns`]) and the KV blocks it allocates (by residue counting, see
//! `kv_growth`) have closed forms. Schedules are made only at step boundaries, and a
//! stretch is split at the first boundary after an arrival or abort, so both granularities
//! make the same decisions at the same nanoseconds.
//!
//! Decoding sequences are not touched per step. A global step counter `step` advances
//! once per step; a sequence that joined decoding at step `j` with `g` tokens generated has
//! `g + (step − j)` tokens now, and finishes at step `j + max_tokens − g`, which sits in a
//! min-heap. Aggregates (total context, remaining tokens, blocks) are kept as sums that
//! are affine in `step`.

use super::config::{EngineConfig, EngineEvent, Granularity};
use super::load::LoadSnapshot;
use super::prefix::PrefixCache;
use super::seq::{Phase, Seq, SlotRef};
use super::stretch::{DecodeStretch, Run};
use crate::profile::PerfModel;
use crate::request::{Nanos, RequestId};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

/// A finish-heap entry: the step a decoding sequence finishes at, then its slot and
/// epoch, packed into one integer (step in the high 64 bits) so that the heap's sifts,
/// which run on every finish, compare one `u128` instead of a tuple field by field; the
/// order is the tuple's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct FinishKey(u128);

impl FinishKey {
    pub(super) fn new(finish: u64, slot: u32, epoch: u32) -> FinishKey {
        FinishKey((u128::from(finish) << 64) | (u128::from(slot) << 32) | u128::from(epoch))
    }

    pub(super) fn finish(self) -> u64 {
        (self.0 >> 64) as u64
    }

    pub(super) fn parts(self) -> (u64, u32, u32) {
        (self.finish(), (self.0 >> 32) as u32, self.0 as u32)
    }
}

/// One simulated serving instance.
pub struct Engine {
    pub(super) perf: Arc<PerfModel>,
    pub(super) cfg: EngineConfig,
    pub(super) kv_total_blocks: u64,
    pub(super) slots: Vec<Option<Seq>>,
    pub(super) epochs: Vec<u32>,
    pub(super) free_slots: Vec<u32>,
    pub(super) by_id: FxHashMap<RequestId, u32>,
    pub(super) waiting: [VecDeque<SlotRef>; 2],
    pub(super) waiting_live: u32,
    /// Handed-off sequences whose KV has arrived, waiting for room to decode (FIFO).
    pub(super) arrived: VecDeque<SlotRef>,
    pub(super) prefilling: VecDeque<SlotRef>,
    pub(super) prefilling_live: u32,
    pub(super) next_order: u64,
    pub(super) decoding: Vec<u32>,
    /// Decoding sequences by finishing step: [`FinishKey`]s, earliest first.
    pub(super) finish_heap: BinaryHeap<Reverse<FinishKey>>,
    pub(super) step: u64,
    /// Σ over decoding sequences of (context at join − join step): context total is
    /// `dec_ctx_base + n·step`.
    pub(super) dec_ctx_base: i128,
    /// Σ over decoding sequences of (max_tokens − generated at join + join step).
    pub(super) dec_remaining_base: i128,
    /// Decoding sequences by (context at join − join step) mod block size.
    pub(super) residue: Vec<u64>,
    /// Private KV blocks of decoding sequences.
    pub(super) dec_blocks: u64,
    /// Private KV blocks of all other sequences.
    pub(super) other_blocks: u64,
    pub(super) cache: PrefixCache,
    pub(super) queued_prefill_tokens: u64,
    pub(super) other_remaining_tokens: u64,
    pub(super) run: Option<Run>,
    pub(super) kick_at: Option<Nanos>,
    pub(super) spare_run: Run,
    pub(super) prefill_ns_per_token: f64,
}

impl Engine {
    pub fn new(perf: Arc<PerfModel>, cfg: EngineConfig) -> Engine {
        let block = cfg.block_size.max(1);
        let cfg = EngineConfig {
            block_size: block,
            max_num_seqs: cfg.max_num_seqs.max(1),
            // Every decoding sequence takes one token of the budget each step.
            max_batched_tokens: cfg.max_batched_tokens.max(cfg.max_num_seqs).max(1),
            prefix_block_tokens: (cfg.prefix_block_tokens / block).max(1) * block,
            chunked_prefill: cfg.chunked_prefill,
            granularity: cfg.granularity,
            role: cfg.role,
        };
        let kv_total_blocks = perf.kv_capacity_blocks(block);
        let prefill_ns_per_token = perf.prefill_ns(512, 0) as f64 / 512.0;
        Engine {
            kv_total_blocks,
            slots: Vec::new(),
            epochs: Vec::new(),
            free_slots: Vec::new(),
            by_id: FxHashMap::default(),
            waiting: [VecDeque::new(), VecDeque::new()],
            waiting_live: 0,
            arrived: VecDeque::new(),
            prefilling: VecDeque::new(),
            prefilling_live: 0,
            next_order: 0,
            decoding: Vec::new(),
            finish_heap: BinaryHeap::new(),
            step: 0,
            dec_ctx_base: 0,
            dec_remaining_base: 0,
            residue: vec![0; block as usize],
            dec_blocks: 0,
            other_blocks: 0,
            cache: PrefixCache::new(cfg.prefix_block_tokens / block),
            queued_prefill_tokens: 0,
            other_remaining_tokens: 0,
            run: None,
            kick_at: None,
            spare_run: Run::default(),
            prefill_ns_per_token,
            perf,
            cfg,
        }
    }

    pub fn perf(&self) -> &PerfModel {
        &self.perf
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// When the engine next has something to do, `None` when idle.
    pub fn next_event_at(&self) -> Option<Nanos> {
        match &self.run {
            Some(run) => Some(run.end),
            None => self.kick_at,
        }
    }

    /// Requests held (waiting or running).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: RequestId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// KV blocks the instance has, and blocks in use (private plus pinned prefix entries).
    pub fn kv_blocks(&self) -> (u64, u64) {
        let pinned = self.cache.blocks() - self.cache.evictable_blocks();
        (
            self.kv_total_blocks,
            self.dec_blocks + self.other_blocks + pinned,
        )
    }

    /// Largest request (prompt + output tokens) that can ever fit.
    pub fn capacity_tokens(&self) -> u64 {
        self.kv_total_blocks * u64::from(self.cfg.block_size)
    }

    /// What a policy reads, plus the engine's own drain estimate for the Admin plane.
    pub fn load(&self) -> LoadSnapshot {
        let remaining = self.remaining_decode_tokens();
        let running = self.prefilling_live + self.decoding.len() as u32;
        let batch = u64::from((running + self.waiting_live).min(self.cfg.max_num_seqs)).max(1);
        let ctx = self.decode_ctx_total().max(batch);
        let decode_ns = (remaining / batch) as f64 * self.perf.decode_step_ns(batch, ctx) as f64;
        LoadSnapshot {
            predicted_drain_ns: (self.queued_prefill_tokens as f64 * self.prefill_ns_per_token
                + decode_ns) as Nanos,
            ..self.routing_load()
        }
    }

    /// [`Self::load`] without `predicted_drain_ns` (left 0). Pricing a decode step for it
    /// was about a tenth of replay's instructions per request, and no policy reads it
    /// (`policy::tests::no_policy_reads_the_drain_estimate`): only the daemon's Admin
    /// stats show it, so replay's routing view takes this one.
    pub fn routing_load(&self) -> LoadSnapshot {
        let (total, used) = self.kv_blocks();
        LoadSnapshot {
            waiting: self.waiting_live,
            running: self.prefilling_live + self.decoding.len() as u32,
            queued_prefill_tokens: self.queued_prefill_tokens,
            remaining_decode_tokens: self.remaining_decode_tokens(),
            kv_used_blocks: used.min(u64::from(u32::MAX)) as u32,
            kv_total_blocks: total.min(u64::from(u32::MAX)) as u32,
            predicted_drain_ns: 0,
        }
    }

    /// The multi-step decode stretch in flight, if any. [`Self::load`] counts it as not
    /// yet begun until it ends (a per-event engine settles it only then), so a router
    /// reading load between events should take off the steps done since its start.
    pub fn decode_stretch(&self) -> Option<DecodeStretch> {
        match &self.run {
            Some(run) if run.steps > 1 => Some(DecodeStretch {
                start: run.start,
                end: run.end,
                steps: run.steps,
                seqs: self.decoding.len() as u64,
            }),
            _ => None,
        }
    }

    pub(super) fn decode_ctx_total(&self) -> u64 {
        (self.dec_ctx_base + self.decoding.len() as i128 * i128::from(self.step)) as u64
    }

    pub(super) fn remaining_decode_tokens(&self) -> u64 {
        let dec = self.dec_remaining_base - self.decoding.len() as i128 * i128::from(self.step);
        self.other_remaining_tokens + dec as u64
    }

    /// Engine steps completed so far (prefill, mixed and decode), for drivers that sample
    /// step times in bulk.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Processes everything that happens up to and including `now`, appending events.
    pub fn advance(&mut self, now: Nanos, out: &mut Vec<EngineEvent>) {
        loop {
            if let Some(end) = self.run.as_ref().map(|r| r.end) {
                if end > now {
                    return;
                }
                self.complete_run(out);
                self.schedule(end, out);
            } else {
                match self.kick_at {
                    Some(t) if t <= now => {
                        self.kick_at = None;
                        self.schedule(t, out);
                    }
                    _ => return,
                }
            }
        }
    }

    pub(super) fn complete_run(&mut self, out: &mut Vec<EngineEvent>) {
        let mut run = self.run.take().expect("run in flight");
        let at = run.end;
        self.apply_decode_steps(run.steps);
        if self.cfg.granularity == Granularity::PerToken {
            for &slot in &self.decoding {
                let s = self.slots[slot as usize].as_ref().expect("decoding slot");
                let index = s.generated + (self.step - s.join_step) as u32;
                out.push(EngineEvent::Token {
                    id: s.id,
                    at,
                    index,
                });
            }
        }
        while let Some(&Reverse(key)) = self.finish_heap.peek() {
            let (finish, slot, epoch) = key.parts();
            if finish > self.step {
                break;
            }
            self.finish_heap.pop();
            if self
                .seq(SlotRef { slot, epoch })
                .is_some_and(|s| s.phase == Phase::Decoding)
            {
                let s = self.slots[slot as usize].as_ref().expect("slot");
                out.push(EngineEvent::Finished {
                    id: s.id,
                    at,
                    output_tokens: s.max_tokens,
                });
                self.remove(slot);
            }
        }
        for (r, chunk) in run.prefill.drain(..) {
            if self.seq(r).is_none_or(|s| s.phase != Phase::Prefilling) {
                continue;
            }
            self.queued_prefill_tokens -= u64::from(chunk);
            let s = self.seq_mut(r.slot);
            s.prefilled += chunk;
            if s.prefilled == s.prefill_target {
                self.finish_prefill(r.slot, at, out);
            }
        }
        self.spare_run = run;
    }
}

#[cfg(test)]
mod finish_key_tests {
    use super::FinishKey;
    use proptest::prelude::*;

    proptest! {
        /// The packed key sorts as the (step, slot, epoch) tuple it replaced, so the heap
        /// pops finishes in the same order, and unpacks to the same fields.
        #[test]
        fn orders_and_unpacks_as_the_tuple(a in any::<(u64, u32, u32)>(), b in any::<(u64, u32, u32)>()) {
            let (ka, kb) = (FinishKey::new(a.0, a.1, a.2), FinishKey::new(b.0, b.1, b.2));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka.parts(), a);
            prop_assert_eq!(ka.finish(), a.0);
        }
    }
}
