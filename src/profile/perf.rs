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
//! Coefficients are kept as integer picoseconds and a step is rounded up to whole
//! nanoseconds. That makes a run of pure decode steps (context growing by the batch size
//! each step) an arithmetic progression whose rounded sum has a closed form
//! ([`floor_sum`]): virtual time can jump over thousands of steps and still land on the
//! same nanosecond as stepping one at a time.

use super::spec::{ChipSpec, ModelSpec};
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
        let attn_flops_per_pair = 4.0
            * f64::from(model.layers)
            * f64::from(model.attention_heads)
            * f64::from(model.head_dim);

        // KV is split across ranks by KV head; MLA's latent cache and GQA heads fewer than
        // tp are replicated, so each chip holds (and reads) more than 1/tp of it.
        let kv_shards = if model.mla_kv_lora_rank > 0 {
            1.0
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
            overhead_ps: to_ps(chip.step_overhead_us * 1e-6),
            kv_capacity_tokens,
        })
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
        let (c, m, r) = self.step_parts_ps(s);
        (c.max(m) + r).div_ceil(PS_PER_NS)
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
