//! Both ends of a prefill/decode hand-off. The prefill side holds a handed-off sequence's
//! KV until the link has sent it ([`Engine::release_handed_off`]). The decode side takes
//! a sequence whose prompt was prefilled elsewhere and whose KV has arrived over a link,
//! and lets it join the decoding set at a step boundary once there is room for its KV and
//! a running slot.
//!
//! An arrived sequence's full prompt blocks join the decode side's prefix cache when it
//! joins (when the request carries its prefix hashes), as a local prefill's do.
//!
//! Arrived sequences wait in their own FIFO and join ahead of new prefills: they cost the
//! step one token of budget each, their KV is already computed, and holding them back would
//! hold KV the link already paid for (vLLM's and SGLang's decode workers likewise admit
//! requests whose transfer has finished before scheduling new work). Both granularities
//! call the same code at the same step boundaries, so handoffs keep them exact.

use super::config::{AdmitError, EngineEvent, Role};
use super::instance::Engine;
use super::seq::{Phase, Seq, SlotRef};
use crate::request::{Nanos, Request, RequestId};

impl Engine {
    /// Takes a handed-off sequence whose KV (the prompt, `req.prompt_tokens` tokens) has
    /// arrived by `now`: `generated` output tokens were produced by the prefill instance,
    /// and `req.max_tokens` is the request's whole output. It joins the decoding set at
    /// the next step boundary with room for it. Call [`Engine::advance`] up to `now` first.
    pub fn admit_transferred(
        &mut self,
        req: Request,
        generated: u32,
        now: Nanos,
    ) -> Result<(), AdmitError> {
        if self.cfg.role == Role::Prefill {
            return Err(AdmitError::WrongRole {
                role: Role::Prefill.as_str(),
                why: "handed-off sequences decode on a decode or mixed instance",
            });
        }
        if req.prompt_tokens == 0 || req.max_tokens == 0 {
            return Err(AdmitError::Empty);
        }
        if generated == 0 || generated >= req.max_tokens {
            return Err(AdmitError::WrongRole {
                role: self.cfg.role.as_str(),
                why: "a handed-off sequence has produced at least one token and not all",
            });
        }
        self.check_room_and_id(&req, req.max_tokens)?;
        self.split_run_at(now);
        let slot = self.take_slot();
        let epoch = self.epochs[slot as usize];
        // Context in KV: the prompt plus every generated token but the last, whose KV the
        // next decode step computes (as after a local prefill).
        let target = req.prompt_tokens + generated - 1;
        self.slots[slot as usize] = Some(Seq {
            id: req.id,
            epoch,
            prompt: req.prompt_tokens,
            max_tokens: req.max_tokens,
            handoff_max: 0,
            priority: req.priority,
            hashes: req.prefix_hashes,
            phase: Phase::Waiting,
            generated,
            prefill_target: target,
            prefilled: target,
            pinned: Vec::new(),
            private_blocks: 0,
            join_step: 0,
            scheduled_once: false,
            order: 0,
            dec_pos: 0,
        });
        self.by_id.insert(req.id, slot);
        self.arrived.push_back(SlotRef { slot, epoch });
        self.waiting_live += 1;
        self.other_remaining_tokens += u64::from(req.max_tokens - generated);
        if self.run.is_none() && self.kick_at.is_none() {
            self.kick_at = Some(now);
        }
        Ok(())
    }

    /// The link has sent request `id`'s KV (handed off at [`EngineEvent::Handoff`]): its
    /// blocks are freed now. A prefill instance holds them until then, since the bytes
    /// are read from them while they move (vLLM's NIXL connector likewise frees the
    /// prefill side's blocks only once the decode side has read them). Returns whether the
    /// engine held the sequence in that state. Call [`Engine::advance`] up to `now` first.
    pub fn release_handed_off(&mut self, id: RequestId, now: Nanos) -> bool {
        let Some(&slot) = self.by_id.get(&id) else {
            return false;
        };
        if self.slots[slot as usize]
            .as_ref()
            .is_none_or(|s| s.phase != Phase::Sending)
        {
            return false;
        }
        self.split_run_at(now);
        self.remove(slot);
        // Work held back for want of KV may fit now.
        if self.run.is_none() && self.kick_at.is_none() && self.waiting_live > 0 {
            self.kick_at = Some(now);
        }
        true
    }

    /// A free slot with a fresh epoch.
    pub(super) fn take_slot(&mut self) -> u32 {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.epochs.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.epochs[slot as usize] = self.epochs[slot as usize].wrapping_add(1);
        slot
    }

    /// At boundary `t`: arrived sequences join the decoding set, in arrival order, while a
    /// running slot is free and their KV plus every decoder's next token fits.
    pub(super) fn join_arrived(&mut self, t: Nanos, out: &mut Vec<EngineEvent>) {
        let b = u64::from(self.cfg.block_size);
        while let Some(&r) = self.arrived.front() {
            let Some(s) = self.seq(r).filter(|s| s.phase == Phase::Waiting) else {
                self.arrived.pop_front();
                continue;
            };
            let running = self.prefilling_live + self.decoding.len() as u32;
            if running >= self.cfg.max_num_seqs {
                return;
            }
            let ctx = u64::from(s.prompt) + u64::from(s.generated);
            let need = ctx.div_ceil(b);
            // A context that fills its last block needs a new one at the next step.
            let grows = u64::from(ctx % b == 0);
            if need + grows + self.kv_growth(1) > self.available_blocks() {
                return;
            }
            let id = s.id;
            self.arrived.pop_front();
            self.make_room(need);
            self.other_blocks += need;
            let order = self.next_order;
            self.next_order += 1;
            let s = self.seq_mut(r.slot);
            s.private_blocks = need;
            s.order = order;
            s.scheduled_once = true;
            self.waiting_live -= 1;
            out.push(EngineEvent::Scheduled { id, at: t });
            // The arrived KV enters the prefix cache as a local prefill's does, so a later
            // request sharing the prefix reuses it here (vLLM's scheduler caches a
            // request's blocks once its remote KV has been received:
            // `_update_waiting_for_remote_kv`, vllm/v1/core/sched/scheduler.py).
            self.publish_prefix(r.slot);
            let step = self.step;
            self.join_decode(r.slot, step);
        }
    }
}
