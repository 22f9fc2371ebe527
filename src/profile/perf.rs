//! The roofline performance model: how long one engine step takes for a given batch shape
//! on a model served by `tp` chips of one kind under one serving engine in one dtype, and
//! how many tokens of KV cache fit. The chip gives peaks and bandwidth; the engine
//! ([`EngineCoefficients`]) says how much of them software reaches and what it costs on
//! the host.
//!
//! A step processes some new tokens (prefill chunks and one token per decoding sequence).
//! Its time is `max(compute, memory) + collectives + host overhead`, where
//! - compute = dense GEMMs + attention. Prefill tokens cost `2·active params` FLOPs at an
//!   efficiency that grows with the tokens in the step, `e·n/(n + n½)`, which makes their
//!   time `2·P·(n + n½) / (peak·e)`: linear in `n` with a fixed part, small chunks wasting
//!   the tensor cores. Decode tokens cost the same FLOPs at the decode (small-M) efficiency.
//!   Attention costs `4·L·heads·head_dim` FLOPs per (token, context token) pair at the
//!   attention efficiency of the BF16 peak;
//! - memory = weights touched / (bandwidth · memory efficiency) + KV bytes read /
//!   (bandwidth · KV-read efficiency): the weights stream as large contiguous reads, the
//!   paged KV cache is gathered by the attention kernels, each at its own fraction of the
//!   bandwidth, so a long context costs what it measures without slowing short-context
//!   decode. KV reads reach their efficiency only with enough parallel work: at `n` new
//!   tokens in the step it is scaled by `n/(n + n½)` (one decoding sequence gives a kernel
//!   that does not split the context only its KV heads to spread over the cores). MoE models read only the experts a batch touches: with E experts and k per
//!   token, T tokens touch E·(1 − (1 − k/E)^T) of them in expectation;
//! - collectives: two all-reduces per layer over `tp · dies` ranks `r`, each a launch
//!   latency of its own in steps carrying prompt tokens (launched eagerly, every rank a
//!   barrier for the others' host) and in pure decode steps (replayed from a captured
//!   graph), plus a ring's `2·(r − 1)` hops of link latency and its `2·(r − 1)/r` of the
//!   message over the link: the hops are what grows with the rank count;
//! - host overhead: per step and per layer, one pair for steps carrying prompt tokens
//!   (typically eager) and one for pure decode steps (typically graph replay), plus a
//!   cost per decoding sequence (scheduling, sampling), plus a cost per step for each rank
//!   beyond the first (an executor handing every step's inputs to each worker rank).
//!
//! Every figure is computed per rank (one die): a multi-die package is `dies` ranks.
//!
//! Multi-head latent attention (DeepSeek-V2/V3) is modelled as served in practice: decode
//! attention runs in the absorbed form, each head scoring the 512-wide latent plus the
//! 64-wide RoPE key and mixing the latent values, and with tp > 1 the attention is data
//! parallel (SGLang `--enable-dp-attention`, DeepSeek's own deployment), so each chip holds
//! and reads the latent cache of its own sequences only.
//!
//! A [`MeasuredTable`] replaces the roofline for the chip × model × tp it was measured on
//! ([`PerfModel::with_table`]).
//!
//! Coefficients are kept as integer picoseconds and a step is rounded up to whole
//! nanoseconds. In a run of pure decode steps the batch is fixed and the context grows by
//! the batch size each step, so compute and memory are each an arithmetic progression and
//! the rounded sum has a closed form ([`floor_sum`]): virtual time can jump over thousands
//! of steps and still land on the same nanosecond as stepping one at a time.

use super::engine::{EngineCoefficients, EngineProfile};
use super::error::ProfileError;
use super::floor_sum::{floor_sum, floor_sum_u64, short_ceil_sum, SHORT_SUM};
use super::spec::{ChipSpec, Dtype, ModelSpec};
use super::table::MeasuredTable;
use crate::request::Nanos;

const PS_PER_NS: u64 = 1_000;

const PS_PER_S: f64 = 1e12;

/// What one engine step processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepShape {
    /// New tokens whose activations are computed: prefill chunk tokens plus one per decoding
    /// sequence.
    pub tokens: u64,
    /// Σ over new tokens of the context each attends to (including itself).
    pub attn_pairs: u64,
    /// Cached KV tokens read from memory.
    pub kv_read_tokens: u64,
    /// Of `tokens`, those that are prompt (prefill) tokens; the rest decode one token each.
    pub prefill_tokens: u64,
}

impl StepShape {
    /// `seqs` decoding sequences holding `ctx_total` tokens of context between them.
    pub fn decode(seqs: u64, ctx_total: u64) -> Self {
        StepShape {
            tokens: seqs,
            attn_pairs: ctx_total,
            kv_read_tokens: ctx_total,
            prefill_tokens: 0,
        }
    }

    /// A prefill chunk of `n` tokens following `cached` tokens already in KV.
    pub fn prefill(n: u64, cached: u64) -> Self {
        StepShape {
            tokens: n,
            attn_pairs: n * cached + n * (n + 1) / 2,
            kv_read_tokens: cached + n,
            prefill_tokens: n,
        }
    }

    pub fn add(&mut self, other: StepShape) {
        self.tokens += other.tokens;
        self.attn_pairs += other.attn_pairs;
        self.kv_read_tokens += other.kv_read_tokens;
        self.prefill_tokens += other.prefill_tokens;
    }
}

/// MoE weight traffic: the shared part is always read, routed experts as touched.
#[derive(Clone, Debug, PartialEq)]
struct MoeWeights {
    shared_ps: f64,
    per_expert_ps: f64,
    experts: f64,
    per_token: f64,
}

/// Step-time and capacity model for one serving instance (a model on `tp` chips under one
/// engine, in one dtype).
#[derive(Clone, Debug, PartialEq)]
pub struct PerfModel {
    pub chip: ChipSpec,
    pub engine: EngineProfile,
    /// The model as served: `weight_bytes` is the dtype's, whatever the release format.
    pub model: ModelSpec,
    pub tp: u32,
    pub dtype: Dtype,
    prefill_ps_per_token: u64,
    prefill_fixed_ps: u64,
    decode_ps_per_token: u64,
    attn_ps_per_pair: u64,
    kv_read_ps_per_token: u64,
    /// `kv_read_ps_per_token · kv_read_half_tokens`: a step of `n` new tokens reads each
    /// KV token in `kv_read_ps_per_token + kv_half_ps / n` (see [`Self::kv_ps`]).
    kv_half_ps: u64,
    weight_read_ps: u64,
    moe: Option<MoeWeights>,
    /// Collective latency of a pure decode step and of a step carrying prompt tokens.
    decode_comm_fixed_ps: u64,
    prefill_comm_fixed_ps: u64,
    comm_ps_per_token: u64,
    seq_overhead_ps: u64,
    prefill_overhead_ps: u64,
    decode_overhead_ps: u64,
    kv_capacity_tokens: u64,
    table: Option<Box<MeasuredTable>>,
}

fn to_ps(seconds: f64) -> u64 {
    (seconds * PS_PER_S).round().max(0.0) as u64
}

impl PerfModel {
    /// The model of `model` served in `dtype` on `tp` packages of `chip` by `engine`.
    pub fn new(
        chip: &ChipSpec,
        engine: &EngineProfile,
        model: &ModelSpec,
        tp: u32,
        dtype: Dtype,
    ) -> Result<Self, ProfileError> {
        if tp == 0 {
            return Err(ProfileError::ZeroTp);
        }
        // Tensor parallelism gives each rank an equal share of the attention heads, and of
        // the GQA KV heads or whole copies of them; engines refuse any other split, and the
        // per-rank figures below assume one.
        let dies = chip.dies.max(1);
        let splits = |ranks: u32| {
            let kv = model.kv_heads.max(1);
            model.attention_heads.is_multiple_of(ranks)
                && (model.mla_kv_lora_rank > 0
                    || kv.is_multiple_of(ranks)
                    || ranks.is_multiple_of(kv))
        };
        let ranks = tp.saturating_mul(dies);
        if !splits(ranks) {
            return Err(ProfileError::HeadsDoNotSplit {
                model: model.id.clone(),
                chip: chip.id.clone(),
                tp,
                ranks,
                heads: model.attention_heads,
                kv_heads: model.kv_heads,
                valid: (1..=64u32)
                    .filter(|&t| splits(t * dies))
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let e: &EngineCoefficients = &engine.coefficients;
        let peak_tflops =
            chip.peak_tflops(dtype)
                .ok_or_else(|| ProfileError::UnsupportedDtype {
                    chip: chip.id.clone(),
                    model: model.id.clone(),
                    dtype,
                    supported: Dtype::ALL
                        .iter()
                        .filter(|d| chip.peak_tflops(**d).is_some())
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(" or "),
                })?;
        let mut model = model.clone();
        model.weight_bytes = dtype.bytes();
        let model = &model;

        // Everything per rank: a rank is one die; a tp-package instance has tp·dies ranks.
        let dies = f64::from(chip.dies.max(1));
        let ranks_u = tp.saturating_mul(chip.dies.max(1));
        let ranks = f64::from(ranks_u);
        let peak_flops = ranks * peak_tflops / dies * 1e12;
        let bf16_flops = ranks * chip.bf16_tflops / dies * 1e12;
        let bytes_per_s_per_rank = chip.bandwidth_tbps / dies * 1e12 * e.memory_efficiency;
        // KV is read by the attention kernels at an efficiency of its own (paged blocks,
        // parallel only over KV heads and context splits), not at the weights' rate.
        let kv_bytes_per_s_per_rank = chip.bandwidth_tbps / dies * 1e12 * e.kv_read_efficiency;

        let dense_flops = 2.0 * model.params_active_b * 1e9;
        let prefill_s_per_token = dense_flops / (peak_flops * e.prefill_efficiency);
        // Per (token, context token) pair and layer, each head computes a score and mixes a
        // value: 2 FLOPs per multiply-add over the key width plus the value width.
        let per_head_pair_flops = if model.mla_kv_lora_rank > 0 {
            2.0 * f64::from(2 * model.mla_kv_lora_rank + model.mla_rope_head_dim)
        } else {
            4.0 * f64::from(model.head_dim)
        };
        let attn_flops_per_pair =
            f64::from(model.layers) * f64::from(model.attention_heads) * per_head_pair_flops;

        // GQA KV is split across ranks by KV head; with fewer KV heads than ranks the heads
        // are replicated, so each rank holds (and reads) more than 1/ranks of it. MLA runs
        // data parallel attention: sequences, and their latent cache, are spread over the
        // ranks.
        let kv_shards = if model.mla_kv_lora_rank > 0 {
            ranks
        } else {
            f64::from(ranks_u.min(model.kv_heads.max(1)))
        };
        let kv_per_rank = model.kv_bytes_per_token() / kv_shards;

        let weights_per_rank = model.weight_bytes_total() / ranks;
        let usable_per_rank =
            chip.memory_gb / dies * 1e9 * e.memory_utilization - e.reserve_gb * 1e9;
        if weights_per_rank > usable_per_rank {
            return Err(ProfileError::WeightsDoNotFit {
                model: model.id.clone(),
                chip: chip.id.clone(),
                tp,
                need_gb: weights_per_rank * dies / 1e9,
                have_gb: usable_per_rank.max(0.0) * dies / 1e9,
            });
        }
        let free_per_rank = usable_per_rank - weights_per_rank;
        let kv_capacity_tokens = (free_per_rank / kv_per_rank).floor() as u64;
        if kv_capacity_tokens == 0 {
            return Err(ProfileError::NoKvRoom {
                model: model.id.clone(),
                chip: chip.id.clone(),
                tp,
                free_gb: free_per_rank * dies / 1e9,
            });
        }

        let moe = model.is_moe().then(|| {
            let (per_expert_b, shared_b) = model.expert_split_b();
            let secs =
                |params_b: f64| params_b * 1e9 * model.weight_bytes / ranks / bytes_per_s_per_rank;
            MoeWeights {
                shared_ps: secs(shared_b) * PS_PER_S,
                per_expert_ps: secs(per_expert_b) * PS_PER_S,
                experts: f64::from(model.experts),
                per_token: f64::from(model.experts_per_token),
            }
        });

        // Two all-reduces of the hidden state per layer (after attention and after the MLP),
        // ring algorithm: 2·(r−1) steps, each a hop's latency, in which each rank sends and
        // receives 2·(r−1)/r of the message over its share of the package's link; on top,
        // the collective's launch latency (graph-replayed in decode, eager in prompt steps).
        let (decode_comm_fixed_ps, prefill_comm_fixed_ps, comm_ps_per_token) = if ranks_u > 1 {
            let ops = 2.0 * f64::from(model.layers);
            let bytes_per_token = f64::from(model.hidden_size) * 2.0 * 2.0 * (ranks - 1.0) / ranks;
            let link = chip.link_gbps / dies * 1e9 * e.link_efficiency;
            let hops_us = 2.0 * (ranks - 1.0) * e.allreduce_hop_latency_us;
            (
                to_ps(ops * (e.allreduce_latency_us + hops_us) * 1e-6),
                to_ps(ops * (e.prefill_allreduce_latency_us + hops_us) * 1e-6),
                to_ps(ops * bytes_per_token / link),
            )
        } else {
            (0, 0, 0)
        };
        let layers = f64::from(model.layers);
        // The executor hands each step to every extra rank: paid in prompt and decode steps.
        let rank_us = (ranks - 1.0) * e.rank_step_overhead_us;
        Ok(PerfModel {
            chip: chip.clone(),
            engine: engine.clone(),
            model: model.clone(),
            tp,
            dtype,
            prefill_ps_per_token: to_ps(prefill_s_per_token),
            prefill_fixed_ps: to_ps(prefill_s_per_token * e.prefill_half_tokens),
            decode_ps_per_token: to_ps(dense_flops / (peak_flops * e.decode_compute_efficiency)),
            attn_ps_per_pair: to_ps(attn_flops_per_pair / (bf16_flops * e.attention_efficiency)),
            kv_read_ps_per_token: to_ps(kv_per_rank / kv_bytes_per_s_per_rank),
            kv_half_ps: to_ps(kv_per_rank / kv_bytes_per_s_per_rank * e.kv_read_half_tokens),
            weight_read_ps: to_ps(weights_per_rank / bytes_per_s_per_rank),
            moe,
            decode_comm_fixed_ps,
            prefill_comm_fixed_ps,
            comm_ps_per_token,
            seq_overhead_ps: to_ps(e.decode_seq_overhead_us * 1e-6),
            prefill_overhead_ps: to_ps(
                (e.prefill_step_overhead_us + e.prefill_layer_overhead_us * layers + rank_us)
                    * 1e-6,
            ),
            decode_overhead_ps: to_ps(
                (e.decode_step_overhead_us + e.decode_layer_overhead_us * layers + rank_us) * 1e-6,
            ),
            kv_capacity_tokens,
            table: None,
        })
    }

    /// Most sequences one step may hold by default (the engine's `max_num_seqs`).
    pub fn max_batch(&self) -> u32 {
        self.engine.coefficients.max_batch
    }

    /// Uses measured step times in place of the roofline wherever `table` has points. The
    /// table must be for this chip, model and tp.
    pub fn with_table(mut self, table: MeasuredTable) -> Result<Self, ProfileError> {
        if table.chip != self.chip.id || table.model != self.model.id || table.tp != self.tp {
            return Err(ProfileError::TableMismatch {
                table: table.name.clone(),
                table_for: format!("{} on {} x{}", table.model, table.chip, table.tp),
                serving: format!("{} on {} x{}", self.model.id, self.chip.id, self.tp),
            });
        }
        self.table = Some(Box::new(table));
        Ok(self)
    }

    /// The measured table overriding the roofline, if any.
    pub fn table(&self) -> Option<&MeasuredTable> {
        self.table.as_deref()
    }

    /// KV-cache capacity of the instance, in tokens.
    pub fn kv_capacity_tokens(&self) -> u64 {
        self.kv_capacity_tokens
    }

    /// KV-cache capacity in blocks of `block_size` tokens.
    pub fn kv_capacity_blocks(&self, block_size: u32) -> u64 {
        self.kv_capacity_tokens / u64::from(block_size.max(1))
    }

    /// Price of the whole instance per hour.
    pub fn price_per_hour_usd(&self) -> f64 {
        self.chip.price_per_hour_usd * f64::from(self.tp)
    }

    fn weight_ps(&self, tokens: u64) -> u64 {
        match &self.moe {
            None => self.weight_read_ps,
            Some(m) => {
                let untouched = (1.0 - m.per_token / m.experts).powf(tokens as f64);
                let touched = m.experts * (1.0 - untouched);
                (m.shared_ps + m.per_expert_ps * touched).round() as u64
            }
        }
    }

    /// Time to read one KV token in a step of `tokens` new tokens: the KV-read efficiency
    /// scaled by `n / (n + half)`. A run of decode steps keeps its batch, so this is one
    /// constant over the run and the closed form of [`Self::decode_run_ns`] holds.
    fn kv_ps(&self, tokens: u64) -> u64 {
        if self.kv_half_ps == 0 || tokens == 0 {
            return self.kv_read_ps_per_token;
        }
        self.kv_read_ps_per_token + (self.kv_half_ps + tokens / 2) / tokens
    }

    /// The parts of a step's time in picoseconds: (compute, memory, everything else).
    pub(crate) fn step_parts_ps(&self, s: &StepShape) -> (u64, u64, u64) {
        let decode_tokens = s.tokens - s.prefill_tokens.min(s.tokens);
        let (prefill, overhead) = if s.prefill_tokens > 0 {
            (
                s.prefill_tokens * self.prefill_ps_per_token + self.prefill_fixed_ps,
                self.prefill_overhead_ps + self.prefill_comm_fixed_ps,
            )
        } else {
            (0, self.decode_overhead_ps + self.decode_comm_fixed_ps)
        };
        let compute = prefill
            + decode_tokens * self.decode_ps_per_token
            + s.attn_pairs * self.attn_ps_per_pair;
        let memory = self.weight_ps(s.tokens) + s.kv_read_tokens * self.kv_ps(s.tokens);
        let rest =
            overhead + s.tokens * self.comm_ps_per_token + decode_tokens * self.seq_overhead_ps;
        (compute, memory, rest)
    }

    /// Duration of one engine step, rounded up to whole nanoseconds.
    pub fn step_ns(&self, s: &StepShape) -> Nanos {
        if s.tokens == 0 {
            return 0;
        }
        match self.table.as_deref() {
            None => self.roofline_step_ns(s),
            Some(t) => self.measured_step_ns(t, s),
        }
    }

    /// The roofline's step time, ignoring any measured table.
    pub fn roofline_step_ns(&self, s: &StepShape) -> Nanos {
        if s.tokens == 0 {
            return 0;
        }
        let (c, m, r) = self.step_parts_ps(s);
        (c.max(m) + r).div_ceil(PS_PER_NS)
    }

    /// A step priced from the measured table. Pure decode steps (every token attends to
    /// exactly its own sequence's cache) read the decode grid at the mean context. A step
    /// with prompt tokens reads the prefill curve at its token count and adds what the
    /// roofline says its cached context costs beyond a fresh prefill of that size.
    fn measured_step_ns(&self, t: &MeasuredTable, s: &StepShape) -> Nanos {
        let decode_like = s.prefill_tokens == 0;
        let ns = if decode_like && t.has_decode() {
            t.decode_step_ns(s.tokens as f64, s.kv_read_tokens as f64 / s.tokens as f64)
        } else if t.has_prefill() {
            let extra = self
                .roofline_step_ns(s)
                .saturating_sub(self.roofline_step_ns(&StepShape::prefill(s.tokens, 0)));
            t.prefill_ns(s.tokens as f64) + extra as f64
        } else {
            return self.roofline_step_ns(s);
        };
        (ns.ceil() as Nanos).max(1)
    }

    /// Time to prefill `n` new tokens after `cached` ones in a single step.
    pub fn prefill_ns(&self, n: u64, cached: u64) -> Nanos {
        self.step_ns(&StepShape::prefill(n, cached))
    }

    /// One decode step for `seqs` sequences holding `ctx_total` tokens of context.
    pub fn decode_step_ns(&self, seqs: u64, ctx_total: u64) -> Nanos {
        self.step_ns(&StepShape::decode(seqs, ctx_total))
    }

    /// Exact total of `steps` consecutive pure decode steps whose context starts at
    /// `ctx0` and grows by `seqs` each step: equal to summing [`Self::decode_step_ns`]
    /// one step at a time, in O(log) instead of O(steps).
    pub fn decode_run_ns(&self, seqs: u64, ctx0: u64, steps: u64) -> Nanos {
        if seqs == 0 || steps == 0 {
            return 0;
        }
        if self.table.is_some() {
            // Interpolated tables have no closed form; sum step by step.
            return (0..steps)
                .map(|i| self.decode_step_ns(seqs, ctx0 + i * seqs))
                .sum();
        }
        // step i: compute = pc + qc·i, memory = pm + qm·i, plus a constant rest.
        let (pc, pm, rest) = self.step_parts_ps(&StepShape::decode(seqs, ctx0));
        let qc = seqs * self.attn_ps_per_pair;
        let qm = seqs * self.kv_ps(seqs);
        // First step index at which compute ≥ memory (the lines cross at most once).
        let switch = if pc >= pm {
            if qc >= qm {
                0
            } else {
                // memory overtakes at i > (pc−pm)/(qm−qc)
                let k = (pc - pm) / (qm - qc) + 1;
                return self.line_sum(pc + rest, qc, k.min(steps))
                    + self.line_sum_from(pm + rest, qm, k.min(steps), steps);
            }
        } else if qc > qm {
            (pm - pc).div_ceil(qc - qm)
        } else {
            steps
        };
        let split = switch.min(steps);
        self.line_sum(pm + rest, qm, split) + self.line_sum_from(pc + rest, qc, split, steps)
    }

    /// Σ_{i=0}^{n-1} ceil((p + q·i) / 1000).
    fn line_sum(&self, p: u64, q: u64, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Most decode stretches end at the next finish a few steps on, and a split of
        // one at an arrival prices fewer still: such runs are summed term by term.
        if n <= SHORT_SUM {
            if let Some(total) = short_ceil_sum::<PS_PER_NS>(p, q, n) {
                return total;
            }
        }
        let b = p.saturating_add(PS_PER_NS - 1);
        if let Some(total) = floor_sum_u64(n, PS_PER_NS, q, b) {
            return total;
        }
        let total = floor_sum(
            u128::from(n),
            u128::from(PS_PER_NS),
            u128::from(q),
            u128::from(p) + u128::from(PS_PER_NS - 1),
        );
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// Σ_{i=from}^{to-1} ceil((p + q·i) / 1000).
    fn line_sum_from(&self, p: u64, q: u64, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        self.line_sum(p + q * from, q, to - from)
    }

    /// The largest `k ≤ max_steps` such that `k` decode steps (as in
    /// [`Self::decode_run_ns`]) complete within `budget` nanoseconds.
    pub fn decode_steps_within(&self, seqs: u64, ctx0: u64, budget: Nanos, max_steps: u64) -> u64 {
        if seqs == 0 || max_steps == 0 {
            return 0;
        }
        if self.table.is_some() {
            // Table step times need not grow monotonically, so count forward.
            let mut spent: Nanos = 0;
            for k in 0..max_steps {
                spent = spent.saturating_add(self.decode_step_ns(seqs, ctx0 + k * seqs));
                if spent > budget {
                    return k;
                }
            }
            return max_steps;
        }
        let first = self.decode_step_ns(seqs, ctx0).max(1);
        // Steps only get longer, so budget/first bounds k from above.
        let mut hi = (budget / first).min(max_steps);
        if hi == 0 {
            return 0;
        }
        let last = self.decode_step_ns(seqs, ctx0 + seqs * (hi - 1)).max(1);
        let mut lo = (budget / last).min(hi);
        // Invariant: run(lo) ≤ budget; find the largest such k in [lo, hi].
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.decode_run_ns(seqs, ctx0, mid) <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}
