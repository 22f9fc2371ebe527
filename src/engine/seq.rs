//! Sequences: one admitted request's state inside the engine (waiting, prefilling,
//! decoding, or sending its KV after a hand-off), its slot and epoch, and its life cycle — admission, the end of its prefill,
//! publishing its prompt's prefix blocks, preemption by recompute, abort and removal. Each
//! change keeps the engine's running aggregates (queued prefill tokens, remaining decode
//! tokens, the affine decode sums, KV block counts) in step with the sequence.

use super::config::{AdmitError, EngineEvent, Granularity, Role};
use super::instance::{Engine, FinishKey};
use crate::request::{Nanos, Priority, Request, RequestId};
use std::cmp::Reverse;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Waiting,
    Prefilling,
    Decoding,
    /// Prefill role: handed off, its KV still held while the link sends it; out of the
    /// running set until the driver releases it ([`Engine::release_handed_off`]).
    Sending,
}

#[derive(Clone, Debug)]
pub(super) struct Seq {
    pub(super) id: RequestId,
    pub(super) epoch: u32,
    pub(super) prompt: u32,
    pub(super) max_tokens: u32,
    /// On a prefill instance, the request's real output length (`max_tokens` is then 1:
    /// the first token is all this instance makes); 0 elsewhere.
    pub(super) handoff_max: u32,
    pub(super) priority: Priority,
    pub(super) hashes: Vec<u64>,
    pub(super) phase: Phase,
    /// Tokens generated; for a decoding sequence, as of `join_step`.
    pub(super) generated: u32,
    /// Tokens the current prefill must have in KV (prompt, plus generated ones after a
    /// preemption) and how many are there already (prefix-cache hits included).
    pub(super) prefill_target: u32,
    pub(super) prefilled: u32,
    /// Prefix-cache entries this sequence holds a reference on.
    pub(super) pinned: Vec<u64>,
    /// KV blocks owned outright (not shared through the prefix cache), while not decoding.
    pub(super) private_blocks: u64,
    pub(super) join_step: u64,
    pub(super) scheduled_once: bool,
    /// Admission order into the running set: the latest is preempted first.
    pub(super) order: u64,
    /// Index in `decoding` while decoding.
    pub(super) dec_pos: usize,
}

impl Seq {
    pub(super) fn cached_tokens(&self, prefix_block_tokens: u32) -> u64 {
        self.pinned.len() as u64 * u64::from(prefix_block_tokens)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlotRef {
    pub(super) slot: u32,
    pub(super) epoch: u32,
}

impl Engine {
    pub(super) fn seq(&self, r: SlotRef) -> Option<&Seq> {
        self.slots[r.slot as usize]
            .as_ref()
            .filter(|s| s.epoch == r.epoch)
    }

    pub(super) fn seq_mut(&mut self, slot: u32) -> &mut Seq {
        self.slots[slot as usize].as_mut().expect("live slot")
    }

    /// Refuses a request whose prompt and `max_tokens` outputs could never fit the KV, or
    /// whose id is already here: the checks every admission shares.
    pub(super) fn check_room_and_id(
        &self,
        req: &Request,
        max_tokens: u32,
    ) -> Result<(), AdmitError> {
        let needed = u64::from(req.prompt_tokens) + u64::from(max_tokens);
        if needed > self.capacity_tokens() {
            return Err(AdmitError::TooLarge {
                needed,
                capacity: self.capacity_tokens(),
            });
        }
        if self.by_id.contains_key(&req.id) {
            return Err(AdmitError::DuplicateId(req.id));
        }
        Ok(())
    }

    /// Takes a request into the waiting queue. Call [`Engine::advance`] up to `now`
    /// first; the request joins the batch at the next step boundary after `now`.
    pub fn admit(&mut self, req: Request, now: Nanos) -> Result<(), AdmitError> {
        if req.prompt_tokens == 0 || req.max_tokens == 0 {
            return Err(AdmitError::Empty);
        }
        // A prefill instance keeps only the prompt and the first token.
        let (max_tokens, handoff_max) = match self.cfg.role {
            Role::Prefill if req.max_tokens > 1 => (1, req.max_tokens),
            _ => (req.max_tokens, 0),
        };
        self.check_room_and_id(&req, max_tokens)?;
        self.split_run_at(now);
        let slot = self.take_slot();
        let epoch = self.epochs[slot as usize];
        self.slots[slot as usize] = Some(Seq {
            id: req.id,
            epoch,
            prompt: req.prompt_tokens,
            max_tokens,
            handoff_max,
            priority: req.priority,
            hashes: req.prefix_hashes,
            phase: Phase::Waiting,
            generated: 0,
            prefill_target: req.prompt_tokens,
            prefilled: 0,
            pinned: Vec::new(),
            private_blocks: 0,
            join_step: 0,
            scheduled_once: false,
            order: 0,
            dec_pos: 0,
        });
        self.by_id.insert(req.id, slot);
        self.waiting[req.priority.index()].push_back(SlotRef { slot, epoch });
        self.waiting_live += 1;
        self.queued_prefill_tokens += u64::from(req.prompt_tokens);
        self.other_remaining_tokens += u64::from(max_tokens);
        if self.run.is_none() && self.kick_at.is_none() {
            self.kick_at = Some(now);
        }
        Ok(())
    }

    /// Output tokens request `id` has produced by `now` (not before the last `advance`),
    /// or `None` if the engine does not hold it. Exact inside a decode stretch too: the
    /// steps ended by `now` are applied first, as `abort` does, so a driver moving a
    /// request off this engine knows what the client already has.
    pub fn tokens_produced(&mut self, id: RequestId, now: Nanos) -> Option<u32> {
        let &slot = self.by_id.get(&id)?;
        self.split_run_at(now);
        let s = self.slots[slot as usize].as_ref()?;
        Some(match s.phase {
            Phase::Decoding => s.generated + (self.step - s.join_step) as u32,
            Phase::Waiting | Phase::Prefilling | Phase::Sending => s.generated,
        })
    }

    /// Drops a request wherever it is and frees its KV at once. The step in flight keeps
    /// its duration. Returns whether the engine held it.
    pub fn abort(&mut self, id: RequestId, now: Nanos) -> bool {
        let Some(&slot) = self.by_id.get(&id) else {
            return false;
        };
        self.split_run_at(now);
        self.remove(slot);
        true
    }

    /// The last prefill chunk produced the next token: emit it and start decoding.
    pub(super) fn finish_prefill(&mut self, slot: u32, at: Nanos, out: &mut Vec<EngineEvent>) {
        let per_token = self.cfg.granularity == Granularity::PerToken;
        let prefix_tokens = self.cfg.prefix_block_tokens;
        let step = self.step;
        let (id, generated, max_tokens) = {
            let s = self.seq_mut(slot);
            s.generated += 1;
            (s.id, s.generated, s.max_tokens)
        };
        self.other_remaining_tokens -= 1;
        if generated == 1 {
            out.push(EngineEvent::FirstToken { id, at });
        }
        if per_token {
            out.push(EngineEvent::Token {
                id,
                at,
                index: generated,
            });
        }
        self.publish_prefix(slot);
        if generated == max_tokens {
            let s = self.slots[slot as usize].as_ref().expect("slot");
            if s.handoff_max > max_tokens {
                out.push(EngineEvent::Handoff {
                    id,
                    at,
                    kv_tokens: s.prefill_target,
                    generated,
                });
                // Its KV stays until the bytes have left (the driver releases it).
                self.prefilling_live -= 1;
                self.seq_mut(slot).phase = Phase::Sending;
                return;
            }
            out.push(EngineEvent::Finished {
                id,
                at,
                output_tokens: max_tokens,
            });
            self.remove(slot);
            return;
        }
        let s = self.slots[slot as usize].as_ref().expect("slot");
        debug_assert_eq!(
            s.private_blocks,
            (u64::from(s.prompt) + u64::from(s.generated) - s.cached_tokens(prefix_tokens))
                .div_ceil(u64::from(self.cfg.block_size)),
            "private blocks of a sequence entering decode"
        );
        self.prefilling_live -= 1;
        self.join_decode(slot, step);
    }

    /// Puts sequence `slot` (prefilled, or with its KV handed over) into the decoding set
    /// at step `step`, moving its private blocks and remaining tokens into the affine sums.
    pub(super) fn join_decode(&mut self, slot: u32, step: u64) {
        let b = u64::from(self.cfg.block_size);
        let s = self.slots[slot as usize].as_mut().expect("slot");
        s.phase = Phase::Decoding;
        s.join_step = step;
        let ctx = u64::from(s.prompt) + u64::from(s.generated);
        let private = s.private_blocks;
        s.private_blocks = 0;
        let remaining = u64::from(s.max_tokens - s.generated);
        s.dec_pos = self.decoding.len();
        let epoch = s.epoch;
        self.other_blocks -= private;
        self.dec_blocks += private;
        self.other_remaining_tokens -= remaining;
        self.dec_ctx_base += i128::from(ctx) - i128::from(step);
        self.dec_remaining_base += i128::from(remaining) + i128::from(step);
        self.residue[Self::residue_key(ctx, step, b)] += 1;
        self.decoding.push(slot);
        self.finish_heap
            .push(Reverse(FinishKey::new(step + remaining, slot, epoch)));
    }

    /// After a prefill, the prompt's full hash blocks not yet cached become cache entries
    /// owned by this sequence's reference, moving their blocks out of its private ones.
    pub(super) fn publish_prefix(&mut self, slot: u32) {
        let prefix_tokens = self.cfg.prefix_block_tokens;
        let per_entry = u64::from(self.cache.blocks_per_entry);
        let s = self.slots[slot as usize].as_mut().expect("slot");
        if s.hashes.is_empty() {
            return;
        }
        let full = (s.prompt / prefix_tokens) as usize;
        let start = s.pinned.len();
        for i in start..full.min(s.hashes.len()) {
            let h = s.hashes[i];
            if self.cache.contains(h) {
                continue;
            }
            self.cache.insert_pinned(h);
            s.pinned.push(h);
            s.private_blocks -= per_entry;
            self.other_blocks -= per_entry;
        }
    }

    /// Forgets a sequence entirely, freeing its KV and its prefix references.
    pub(super) fn remove(&mut self, slot: u32) {
        let s = self.slots[slot as usize].take().expect("live slot");
        self.by_id.remove(&s.id);
        self.free_slots.push(slot);
        let b = u64::from(self.cfg.block_size);
        match s.phase {
            Phase::Waiting => {
                self.waiting_live -= 1;
                self.queued_prefill_tokens -= u64::from(s.prefill_target - s.prefilled);
                self.other_remaining_tokens -= u64::from(s.max_tokens - s.generated);
            }
            Phase::Prefilling => {
                self.prefilling_live -= 1;
                self.queued_prefill_tokens -= u64::from(s.prefill_target - s.prefilled);
                self.other_remaining_tokens -= u64::from(s.max_tokens - s.generated);
                self.other_blocks -= s.private_blocks;
            }
            Phase::Sending => self.other_blocks -= s.private_blocks,
            Phase::Decoding => {
                let ctx_join = u64::from(s.prompt) + u64::from(s.generated);
                let ctx_now = ctx_join + (self.step - s.join_step);
                let remaining = u64::from(s.max_tokens - s.generated);
                self.dec_ctx_base -= i128::from(ctx_join) - i128::from(s.join_step);
                self.dec_remaining_base -= i128::from(remaining) + i128::from(s.join_step);
                self.residue[Self::residue_key(ctx_join, s.join_step, b)] -= 1;
                let cached = s.cached_tokens(self.cfg.prefix_block_tokens);
                self.dec_blocks -= (ctx_now - cached).div_ceil(b);
                let last = self.decoding.pop().expect("decoding non-empty");
                if last != slot {
                    self.decoding[s.dec_pos] = last;
                    self.seq_mut(last).dec_pos = s.dec_pos;
                }
            }
        }
        for h in &s.pinned {
            self.cache.unpin(*h);
        }
    }

    /// Evicts the latest-admitted, lowest-priority running sequence back to the front of
    /// its waiting queue, to be recomputed (vLLM's preemption by recompute).
    pub(super) fn preempt_one(&mut self, at: Nanos, out: &mut Vec<EngineEvent>) -> bool {
        // Preemption is rare, so the victim is found by a scan rather than kept in an
        // ordered index that every admission and finish would pay for.
        let prefilling = self.prefilling.iter().filter_map(|&r| {
            self.seq(r)
                .filter(|s| s.phase == Phase::Prefilling)
                .map(|_| r.slot)
        });
        let victim = self
            .decoding
            .iter()
            .copied()
            .chain(prefilling)
            .max_by_key(|&slot| {
                let s = self.slots[slot as usize].as_ref().expect("running slot");
                (s.priority, s.order)
            });
        let Some(slot) = victim else {
            return false;
        };
        let mut s = self.slots[slot as usize]
            .as_ref()
            .expect("running slot")
            .clone();
        // Take it out as if it ended, then put it back as waiting.
        self.remove(slot);
        if s.phase == Phase::Decoding {
            s.generated += (self.step - s.join_step) as u32;
        }
        let target = s.prompt + s.generated;
        // A new epoch invalidates the heap and queue entries of its running life.
        let epoch = s.epoch.wrapping_add(1);
        self.epochs[slot as usize] = epoch;
        self.slots[slot as usize] = Some(Seq {
            epoch,
            phase: Phase::Waiting,
            prefill_target: target,
            prefilled: 0,
            pinned: Vec::new(),
            private_blocks: 0,
            ..s
        });
        self.free_slots.pop();
        self.by_id.insert(s.id, slot);
        self.waiting[s.priority.index()].push_front(SlotRef { slot, epoch });
        self.waiting_live += 1;
        self.queued_prefill_tokens += u64::from(target);
        self.other_remaining_tokens += u64::from(s.max_tokens - s.generated);
        out.push(EngineEvent::Preempted { id: s.id, at });
        true
    }
}
