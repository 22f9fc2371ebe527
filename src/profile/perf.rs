//! The roofline performance model: how long one engine step takes for a given batch shape
//! on a model served by `tp` chips of one kind, and how many tokens of KV cache fit.
//!
//! A step processes some new tokens (prefill chunks and one token per decoding sequence).
//! Its time is `max(compute, memory) + all-reduce + fixed overhead`, where
//! - compute = (2·active params per token + 4·L·heads·head_dim per attended context token)
//!   / (tp · peak · compute efficiency);
//! - memory = (weights touched + KV bytes read) / (tp · bandwidth · memory efficiency);
//!   MoE models read only the experts a batch touches: with E experts and k per token, T
//!   tokens touch E·(1 − (1 − k/E)^T) of them in expectation.
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
//! nanoseconds. That makes a run of pure decode steps (context growing by the batch size
//! each step) an arithmetic progression whose rounded sum has a closed form
//! ([`floor_sum`]): virtual time can jump over thousands of steps and still land on the
//! same nanosecond as stepping one at a time.

use super::spec::{ChipSpec, ModelSpec};
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
}

impl StepShape {
    /// `seqs` decoding sequences holding `ctx_total` tokens of context between them.
    pub fn decode(seqs: u64, ctx_total: u64) -> Self {
        StepShape {
            tokens: seqs,
            attn_pairs: ctx_total,
            kv_read_tokens: ctx_total,
        }
    }

    /// A prefill chunk of `n` tokens following `cached` tokens already in KV.
    pub fn prefill(n: u64, cached: u64) -> Self {
        StepShape {
            tokens: n,
            attn_pairs: n * cached + n * (n + 1) / 2,
            kv_read_tokens: cached + n,
        }
    }

    pub fn add(&mut self, other: StepShape) {
        self.tokens += other.tokens;
        self.attn_pairs += other.attn_pairs;
        self.kv_read_tokens += other.kv_read_tokens;
    }
}

/// Why a model cannot be served on a given chip set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("{model} needs {need_gb:.1} GB of weights per chip but {chip} x{tp} leaves {have_gb:.1} GB per chip for them (memory × utilisation − reserve); use more chips (larger tp)")]
    WeightsDoNotFit {
        model: String,
        chip: String,
        tp: u32,
        need_gb: f64,
        have_gb: f64,
    },
    #[error("{model} on {chip} x{tp}: no room for KV cache after the weights ({free_gb:.2} GB free per chip)")]
    NoKvRoom {
        model: String,
        chip: String,
        tp: u32,
        free_gb: f64,
    },
    #[error("tensor parallelism must be at least 1")]
    ZeroTp,
    #[error("measured table `{table}` is for {table_for}, not {serving}")]
    TableMismatch {
        table: String,
        table_for: String,
        serving: String,
    },
}

/// MoE weight traffic: the shared part is always read, routed experts as touched.
#[derive(Clone, Debug, PartialEq)]
struct MoeWeights {
    shared_ps: f64,
    per_expert_ps: f64,
    experts: f64,
    per_token: f64,
}

/// Step-time and capacity model for one serving instance (a model on `tp` chips).
#[derive(Clone, Debug, PartialEq)]
pub struct PerfModel {
    pub chip: ChipSpec,
    pub model: ModelSpec,
    pub tp: u32,
    dense_ps_per_token: u64,
    attn_ps_per_pair: u64,
    kv_read_ps_per_token: u64,
    weight_read_ps: u64,
    moe: Option<MoeWeights>,
    comm_fixed_ps: u64,
    comm_ps_per_token: u64,
    overhead_ps: u64,
    kv_capacity_tokens: u64,
    table: Option<Box<MeasuredTable>>,
}

fn to_ps(seconds: f64) -> u64 {
    (seconds * PS_PER_S).round().max(0.0) as u64
}

impl PerfModel {
    pub fn new(chip: &ChipSpec, model: &ModelSpec, tp: u32) -> Result<Self, ProfileError> {
        if tp == 0 {
            return Err(ProfileError::ZeroTp);
        }
        let tpf = f64::from(tp);
        let peak_tflops = if model.weight_bytes <= 1.0 && chip.int8_tops > 0.0 {
            chip.int8_tops
        } else {
            chip.bf16_tflops
        };
        let flops_per_s = tpf * peak_tflops * 1e12 * chip.compute_efficiency;
        let bytes_per_s_per_chip = chip.bandwidth_tbps * 1e12 * chip.memory_efficiency;

        let dense_flops = 2.0 * model.params_active_b * 1e9;
        // Per (token, context token) pair and layer, each head computes a score and mixes a
        // value: 2 FLOPs per multiply-add over the key width plus the value width.
        let per_head_pair_flops = if model.mla_kv_lora_rank > 0 {
            2.0 * f64::from(2 * model.mla_kv_lora_rank + model.mla_rope_head_dim)
        } else {
            4.0 * f64::from(model.head_dim)
        };
        let attn_flops_per_pair =
            f64::from(model.layers) * f64::from(model.attention_heads) * per_head_pair_flops;

        // GQA KV is split across ranks by KV head; with fewer KV heads than tp the heads are
        // replicated, so each chip holds (and reads) more than 1/tp of it. MLA runs data
        // parallel attention: sequences, and their latent cache, are spread over the ranks.
        let kv_shards = if model.mla_kv_lora_rank > 0 {
            tpf
        } else {
            f64::from(tp.min(model.kv_heads.max(1)))
        };
        let kv_per_chip = model.kv_bytes_per_token() / kv_shards;

        let weights_per_chip = model.weight_bytes_total() / tpf;
        let usable_per_chip =
            chip.memory_gb * 1e9 * chip.memory_utilization - chip.reserve_gb * 1e9;
        if weights_per_chip > usable_per_chip {
            return Err(ProfileError::WeightsDoNotFit {
                model: model.id.clone(),
                chip: chip.id.clone(),
                tp,
                need_gb: weights_per_chip / 1e9,
                have_gb: usable_per_chip.max(0.0) / 1e9,
            });
        }
        let free_per_chip = usable_per_chip - weights_per_chip;
        let kv_capacity_tokens = (free_per_chip / kv_per_chip).floor() as u64;
        if kv_capacity_tokens == 0 {
            return Err(ProfileError::NoKvRoom {
                model: model.id.clone(),
                chip: chip.id.clone(),
                tp,
                free_gb: free_per_chip / 1e9,
            });
        }

        let moe = model.is_moe().then(|| {
            let (per_expert_b, shared_b) = model.expert_split_b();
            let secs =
                |params_b: f64| params_b * 1e9 * model.weight_bytes / tpf / bytes_per_s_per_chip;
            MoeWeights {
                shared_ps: secs(shared_b) * PS_PER_S,
                per_expert_ps: secs(per_expert_b) * PS_PER_S,
                experts: f64::from(model.experts),
                per_token: f64::from(model.experts_per_token),
            }
        });

        // Two all-reduces of the hidden state per layer (after attention and after the MLP),
        // ring algorithm: each chip sends and receives 2·(tp−1)/tp of the message.
        let (comm_fixed_ps, comm_ps_per_token) = if tp > 1 {
            let ops = 2.0 * f64::from(model.layers);
            let bytes_per_token = f64::from(model.hidden_size) * 2.0 * 2.0 * (tpf - 1.0) / tpf;
            (
                to_ps(ops * chip.allreduce_latency_us * 1e-6),
                to_ps(ops * bytes_per_token / (chip.link_gbps * 1e9)),
            )
        } else {
            (0, 0)
        };

        Ok(PerfModel {
            chip: chip.clone(),
            model: model.clone(),
            tp,
            dense_ps_per_token: to_ps(dense_flops / flops_per_s),
            attn_ps_per_pair: to_ps(attn_flops_per_pair / flops_per_s),
            kv_read_ps_per_token: to_ps(kv_per_chip / bytes_per_s_per_chip),
            weight_read_ps: to_ps(weights_per_chip / bytes_per_s_per_chip),
            moe,
            comm_fixed_ps,
            comm_ps_per_token,
            overhead_ps: to_ps(
                (chip.step_overhead_us + chip.layer_overhead_us * f64::from(model.layers)) * 1e-6,
            ),
            kv_capacity_tokens,
            table: None,
        })
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

    /// The parts of a step's time in picoseconds: (compute, memory, everything else).
    fn step_parts_ps(&self, s: &StepShape) -> (u64, u64, u64) {
        let compute = s.tokens * self.dense_ps_per_token + s.attn_pairs * self.attn_ps_per_pair;
        let memory = self.weight_ps(s.tokens) + s.kv_read_tokens * self.kv_read_ps_per_token;
        let rest = self.overhead_ps + self.comm_fixed_ps + s.tokens * self.comm_ps_per_token;
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
        let decode_like = s.attn_pairs == s.kv_read_tokens;
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
        let qm = seqs * self.kv_read_ps_per_token;
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

/// [`floor_sum`] in 64-bit arithmetic, `None` if anything would overflow. Replay calls
/// this on every decode stretch, and 128-bit division is several times slower.
fn floor_sum_u64(mut n: u64, mut m: u64, mut a: u64, mut b: u64) -> Option<u64> {
    let mut ans = 0u64;
    if n == 0 {
        return Some(0);
    }
    loop {
        if a >= m {
            let pairs = if n.is_multiple_of(2) {
                (n / 2).checked_mul(n - 1)?
            } else {
                n.checked_mul((n - 1) / 2)?
            };
            ans = ans.checked_add(pairs.checked_mul(a / m)?)?;
            a %= m;
        }
        if b >= m {
            ans = ans.checked_add(n.checked_mul(b / m)?)?;
            b %= m;
        }
        let y_max = a.checked_mul(n)?.checked_add(b)?;
        if y_max < m {
            return Some(ans);
        }
        n = y_max / m;
        b = y_max % m;
        std::mem::swap(&mut m, &mut a);
    }
}

/// Σ_{i=0}^{n-1} floor((a·i + b) / m), the classic Euclid-like reduction (O(log m)).
pub fn floor_sum(mut n: u128, mut m: u128, mut a: u128, mut b: u128) -> u128 {
    let mut ans = 0u128;
    if n == 0 {
        return 0;
    }
    loop {
        if a >= m {
            ans += n * (n - 1) / 2 * (a / m);
            a %= m;
        }
        if b >= m {
            ans += n * (b / m);
            b %= m;
        }
        let y_max = a * n + b;
        if y_max < m {
            break;
        }
        n = y_max / m;
        b = y_max % m;
        std::mem::swap(&mut m, &mut a);
    }
    ans
}
