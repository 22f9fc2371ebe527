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

use super::load::LoadSnapshot;
use super::prefix::PrefixCache;
use crate::profile::{PerfModel, StepShape};
use crate::request::{Nanos, Priority, Request, RequestId};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

/// How finely the engine reports progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Every output token is an event (the daemon streams each at its own time).
    PerToken,
    /// Only scheduling, first tokens, finishes and preemptions are events; pure decode
    /// stretches are jumped over (virtual-time replay).
    PerEvent,
}

/// Engine settings, after vLLM's scheduler options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV block (vLLM's default 16).
    pub block_size: u32,
    /// Largest running set (`max_num_seqs`).
    pub max_num_seqs: u32,
    /// Token budget per step (`max_num_batched_tokens`); prefills are chunked to fit.
    pub max_batched_tokens: u32,
    /// Prompt tokens covered by one prefix hash (Mooncake's `hash_ids` cover 512).
    pub prefix_block_tokens: u32,
    pub granularity: Granularity,
}

impl EngineConfig {
    /// vLLM-like defaults for this instance: batch bounded by the chip profile.
    pub fn for_perf(perf: &PerfModel) -> Self {
        EngineConfig {
            block_size: 16,
            max_num_seqs: perf.max_batch().max(1),
            max_batched_tokens: 8192,
            prefix_block_tokens: 512,
            granularity: Granularity::PerEvent,
        }
    }

    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }
}

/// Something observable that happened inside the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// First put into a step: its queue time ends here.
    Scheduled {
        id: RequestId,
        at: Nanos,
    },
    FirstToken {
        id: RequestId,
        at: Nanos,
    },
    /// Output token `index` (1-based) is ready. Per-token granularity only.
    Token {
        id: RequestId,
        at: Nanos,
        index: u32,
    },
    Finished {
        id: RequestId,
        at: Nanos,
        output_tokens: u32,
    },
    /// KV ran out and the sequence was evicted; it will be recomputed from its prompt and
    /// the tokens already produced, which are not produced again.
    Preempted {
        id: RequestId,
        at: Nanos,
    },
}

impl EngineEvent {
    pub fn id(&self) -> RequestId {
        match *self {
            EngineEvent::Scheduled { id, .. }
            | EngineEvent::FirstToken { id, .. }
            | EngineEvent::Token { id, .. }
            | EngineEvent::Finished { id, .. }
            | EngineEvent::Preempted { id, .. } => id,
        }
    }

    pub fn at(&self) -> Nanos {
        match *self {
            EngineEvent::Scheduled { at, .. }
            | EngineEvent::FirstToken { at, .. }
            | EngineEvent::Token { at, .. }
            | EngineEvent::Finished { at, .. }
            | EngineEvent::Preempted { at, .. } => at,
        }
    }
}

/// Why an engine refused a request outright.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("request needs {needed} tokens of KV cache but the instance holds {capacity}")]
    TooLarge { needed: u64, capacity: u64 },
    #[error("prompt_tokens and max_tokens must both be at least 1")]
    Empty,
    #[error("request id {0} is already in this engine")]
    DuplicateId(RequestId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Prefilling,
    Decoding,
}

#[derive(Clone, Debug)]
struct Seq {
    id: RequestId,
    epoch: u32,
    prompt: u32,
    max_tokens: u32,
    priority: Priority,
    hashes: Vec<u64>,
    phase: Phase,
    /// Tokens generated; for a decoding sequence, as of `join_step`.
    generated: u32,
    /// Tokens the current prefill must have in KV (prompt, plus generated ones after a
    /// preemption) and how many are there already (prefix-cache hits included).
    prefill_target: u32,
    prefilled: u32,
    /// Prefix-cache entries this sequence holds a reference on.
    pinned: Vec<u64>,
    /// KV blocks owned outright (not shared through the prefix cache), while not decoding.
    private_blocks: u64,
    join_step: u64,
    scheduled_once: bool,
    /// Admission order into the running set: the latest is preempted first.
    order: u64,
    /// Index in `decoding` while decoding.
    dec_pos: usize,
}

impl Seq {
    fn cached_tokens(&self, prefix_block_tokens: u32) -> u64 {
        self.pinned.len() as u64 * u64::from(prefix_block_tokens)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotRef {
    slot: u32,
    epoch: u32,
}

/// A step being put together at a boundary.
struct StepDraft {
    /// Tokens of the step's budget still free.
    budget: u64,
    shape: StepShape,
    /// Blocks held back for the decoding sequences' growth in this step.
    reserved_blocks: u64,
}

#[derive(Clone, Debug, Default)]
struct Run {
    start: Nanos,
    end: Nanos,
    /// Steps in this run (1 unless it is a pure-decode stretch).
    steps: u64,
    /// Prefill chunks computed by this run's single step: sequence, tokens.
    prefill: Vec<(SlotRef, u32)>,
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

/// One simulated serving instance.
pub struct Engine {
    perf: Arc<PerfModel>,
    cfg: EngineConfig,
    kv_total_blocks: u64,
    slots: Vec<Option<Seq>>,
    epochs: Vec<u32>,
    free_slots: Vec<u32>,
    by_id: FxHashMap<RequestId, u32>,
    waiting: [VecDeque<SlotRef>; 2],
    waiting_live: u32,
    prefilling: VecDeque<SlotRef>,
    prefilling_live: u32,
    next_order: u64,
    decoding: Vec<u32>,
    finish_heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    step: u64,
    /// Σ over decoding sequences of (context at join − join step): context total is
    /// `dec_ctx_base + n·step`.
    dec_ctx_base: i128,
    /// Σ over decoding sequences of (max_tokens − generated at join + join step).
    dec_remaining_base: i128,
    /// Decoding sequences by (context at join − join step) mod block size.
    residue: Vec<u64>,
    /// Private KV blocks of decoding sequences.
    dec_blocks: u64,
    /// Private KV blocks of all other sequences.
    other_blocks: u64,
    cache: PrefixCache,
    queued_prefill_tokens: u64,
    other_remaining_tokens: u64,
    run: Option<Run>,
    kick_at: Option<Nanos>,
    spare_run: Run,
    prefill_ns_per_token: f64,
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
            granularity: cfg.granularity,
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

    pub fn load(&self) -> LoadSnapshot {
        let (total, used) = self.kv_blocks();
        let remaining = self.remaining_decode_tokens();
        let running = self.prefilling_live + self.decoding.len() as u32;
        let batch = u64::from((running + self.waiting_live).min(self.cfg.max_num_seqs)).max(1);
        let ctx = self.decode_ctx_total().max(batch);
        let decode_ns = (remaining / batch) as f64 * self.perf.decode_step_ns(batch, ctx) as f64;
        LoadSnapshot {
            waiting: self.waiting_live,
            running,
            queued_prefill_tokens: self.queued_prefill_tokens,
            remaining_decode_tokens: remaining,
            kv_used_blocks: used.min(u64::from(u32::MAX)) as u32,
            kv_total_blocks: total.min(u64::from(u32::MAX)) as u32,
            predicted_drain_ns: (self.queued_prefill_tokens as f64 * self.prefill_ns_per_token
                + decode_ns) as Nanos,
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

    fn decode_ctx_total(&self) -> u64 {
        (self.dec_ctx_base + self.decoding.len() as i128 * i128::from(self.step)) as u64
    }

    fn remaining_decode_tokens(&self) -> u64 {
        let dec = self.dec_remaining_base - self.decoding.len() as i128 * i128::from(self.step);
        self.other_remaining_tokens + dec as u64
    }

    fn block_of(&self, tokens: u64) -> u64 {
        tokens.div_ceil(u64::from(self.cfg.block_size))
    }

    fn seq(&self, r: SlotRef) -> Option<&Seq> {
        self.slots[r.slot as usize]
            .as_ref()
            .filter(|s| s.epoch == r.epoch)
    }

    fn seq_mut(&mut self, slot: u32) -> &mut Seq {
        self.slots[slot as usize].as_mut().expect("live slot")
    }

    /// Blocks free now, and free after evicting every unpinned prefix entry.
    fn free_blocks(&self) -> u64 {
        self.kv_total_blocks - self.dec_blocks - self.other_blocks - self.cache.blocks()
    }

    fn available_blocks(&self) -> u64 {
        self.free_blocks() + self.cache.evictable_blocks()
    }

    /// Makes `n` blocks free, evicting prefix entries least recently used first.
    fn make_room(&mut self, n: u64) {
        while self.free_blocks() < n {
            if self.cache.evict_one() == 0 {
                break;
            }
        }
        debug_assert!(self.free_blocks() >= n, "KV over capacity");
    }

    /// Takes a request into the waiting queue. Call [`Engine::advance`] up to `now`
    /// first; the request joins the batch at the next step boundary after `now`.
    pub fn admit(&mut self, req: Request, now: Nanos) -> Result<(), AdmitError> {
        if req.prompt_tokens == 0 || req.max_tokens == 0 {
            return Err(AdmitError::Empty);
        }
        let needed = u64::from(req.prompt_tokens) + u64::from(req.max_tokens);
        if needed > self.capacity_tokens() {
            return Err(AdmitError::TooLarge {
                needed,
                capacity: self.capacity_tokens(),
            });
        }
        if self.by_id.contains_key(&req.id) {
            return Err(AdmitError::DuplicateId(req.id));
        }
        self.split_run_at(now);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.epochs.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.epochs[slot as usize] = self.epochs[slot as usize].wrapping_add(1);
        let epoch = self.epochs[slot as usize];
        self.slots[slot as usize] = Some(Seq {
            id: req.id,
            epoch,
            prompt: req.prompt_tokens,
            max_tokens: req.max_tokens,
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
        self.other_remaining_tokens += u64::from(req.max_tokens);
        if self.run.is_none() && self.kick_at.is_none() {
            self.kick_at = Some(now);
        }
        Ok(())
    }

    /// Engine steps completed so far (prefill, mixed and decode), for drivers that sample
    /// step times in bulk.
    pub fn steps_taken(&self) -> u64 {
        self.step
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
            Phase::Waiting | Phase::Prefilling => s.generated,
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

    /// If a multi-step decode stretch is in flight, applies the steps that have ended by
    /// `now` and leaves only the step in progress, exactly as stepping one by one would.
    fn split_run_at(&mut self, now: Nanos) {
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

    /// New KV blocks decoding sequences need to grow by `k` tokens each.
    fn kv_growth(&self, k: u64) -> u64 {
        let b = u64::from(self.cfg.block_size);
        let shift = self.step % b;
        if k == 1 {
            // Only sequences whose context fills its last block exactly need a new one.
            return self.residue[((b - shift) % b) as usize];
        }
        // A sequence with context ≡ r (mod b) crosses ⌈(r+k)/b⌉ − [r>0] block boundaries
        // in k steps; with k = q·b + rem and r + rem < 2b that is q plus two comparisons,
        // which keeps divisions out of this loop.
        let (q, rem) = (k / b, k % b);
        let mut total = 0;
        for (key, &count) in self.residue.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let mut r = key as u64 + shift;
            if r >= b {
                r -= b;
            }
            let x = r + rem;
            let crossings = q + u64::from(x > 0) + u64::from(x > b) - u64::from(r > 0);
            total += count * crossings;
        }
        total
    }

    /// Largest number of decode steps whose KV growth fits in what is available.
    fn kv_horizon(&self, max: u64) -> u64 {
        let avail = self.available_blocks();
        // Each sequence crosses at most ⌈k/b⌉ + 1 boundaries: usually KV is plentiful and
        // this settles it without the exact count.
        let bound = self.decoding.len() as u64 * (max.div_ceil(u64::from(self.cfg.block_size)) + 1);
        if bound <= avail || self.kv_growth(max) <= avail {
            return max;
        }
        let (mut lo, mut hi) = (0, max);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.kv_growth(mid) <= avail {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Advances the step counter by `k` pure decode steps, allocating their KV.
    fn apply_decode_steps(&mut self, k: u64) {
        let growth = self.kv_growth(k);
        self.make_room(growth);
        self.dec_blocks += growth;
        self.step += k;
    }

    fn complete_run(&mut self, out: &mut Vec<EngineEvent>) {
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
        while let Some(&Reverse((finish, slot, epoch))) = self.finish_heap.peek() {
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

    /// The last prefill chunk produced the next token: emit it and start decoding.
    fn finish_prefill(&mut self, slot: u32, at: Nanos, out: &mut Vec<EngineEvent>) {
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
            out.push(EngineEvent::Finished {
                id,
                at,
                output_tokens: max_tokens,
            });
            self.remove(slot);
            return;
        }
        let b = u64::from(self.cfg.block_size);
        let s = self.slots[slot as usize].as_mut().expect("slot");
        s.phase = Phase::Decoding;
        s.join_step = step;
        let ctx = u64::from(s.prompt) + u64::from(s.generated);
        let private = s.private_blocks;
        s.private_blocks = 0;
        debug_assert_eq!(
            private,
            (ctx - s.cached_tokens(prefix_tokens)).div_ceil(b),
            "private blocks of a sequence entering decode"
        );
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
        self.prefilling_live -= 1;
        self.finish_heap
            .push(Reverse((step + remaining, slot, epoch)));
    }

    fn residue_key(ctx: u64, join_step: u64, b: u64) -> usize {
        ((ctx % b + b - join_step % b) % b) as usize
    }

    /// After a prefill, the prompt's full hash blocks not yet cached become cache entries
    /// owned by this sequence's reference, moving their blocks out of its private ones.
    fn publish_prefix(&mut self, slot: u32) {
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
    fn remove(&mut self, slot: u32) {
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
    fn preempt_one(&mut self, at: Nanos, out: &mut Vec<EngineEvent>) -> bool {
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

    /// Blocks needed to prefill `chunk` more tokens of `s` (plus room for the token the
    /// last chunk produces).
    fn chunk_blocks(&self, s: &Seq, chunk: u32) -> u64 {
        let cached = s.cached_tokens(self.cfg.prefix_block_tokens);
        self.blocks_after(s.prefilled + chunk, s.prefill_target, cached)
            .saturating_sub(s.private_blocks)
    }

    /// Private blocks a sequence holds once `after` of its `target` prefill tokens are in
    /// KV (the last chunk also makes room for the token it produces).
    fn blocks_after(&self, after: u32, target: u32, cached_tokens: u64) -> u64 {
        let tokens = u64::from(after) + u64::from(after == target);
        self.block_of(tokens - cached_tokens)
    }

    fn front_waiting(&mut self) -> Option<(usize, SlotRef)> {
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
    fn schedule(&mut self, t: Nanos, out: &mut Vec<EngineEvent>) {
        let mut run = std::mem::take(&mut self.spare_run);
        run.prefill.clear();
        loop {
            // Decoding sequences each need room for one more token.
            while self.kv_growth(1) > self.available_blocks() {
                if !self.preempt_one(t, out) {
                    break;
                }
            }
            // Blocks the decoding sequences will take at the end of this step are held
            // back from the prefills scheduled beside them.
            let decode_need = self.kv_growth(1);
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
                    self.prefilling.remove(i);
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
                    Some(&Reverse((finish, _, _))) => finish.saturating_sub(self.step).max(1),
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
            debug_assert!(self.waiting_live == 0, "waiting work that can never start");
            self.spare_run = run;
            return;
        }
    }

    /// Moves the waiting sequence `r` into the running set with a first prefill chunk, if
    /// its KV fits.
    fn try_start(
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
        let chunk = (s.prefill_target - cached).min(draft.budget as u32);
        // A waiting sequence holds no private blocks, so everything is new.
        let need = self.blocks_after(cached + chunk, s.prefill_target, u64::from(cached));
        if need + draft.reserved_blocks > self.available_blocks() {
            for h in &matched {
                self.cache.unpin(*h);
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
        draft.budget -= u64::from(chunk);
        true
    }
}
