//! Latency and work predictions from a backend's load and its pool's speed tables. This is
//! what makes routing heterogeneity-aware: the same queue means a different wait on an
//! H20 (slow prefill, fast decode) than on a 910B (the reverse).
//!
//! The model is deliberately coarse, because it runs inside every routing decision:
//! - time to first token = one in-flight step + prefill of everything queued ahead and of
//!   this prompt + a wait for a free batch slot when the running set is full;
//! - time per output token = one decode step at the batch size this request would join;
//! - work = time to drain what the backend holds + this request's share of the backend,
//!   both from the pool's measured speeds.

use crate::engine::LoadSnapshot;
use crate::fleet::PoolInfo;
use crate::request::{Nanos, Request};

/// What sending one request to one backend is expected to cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prediction {
    pub ttft_ns: Nanos,
    pub tpot_ns: Nanos,
    /// `ttft + tpot · (max_tokens − 1)`.
    pub e2e_ns: Nanos,
}

impl Prediction {
    /// Whether this prediction meets `slo`, with `headroom` in (0, 1] of each bound kept in
    /// reserve for prediction error.
    pub fn meets(&self, slo: &crate::request::Slo, headroom: f64) -> bool {
        (self.ttft_ns as f64) <= slo.ttft_ns as f64 * headroom
            && (self.tpot_ns as f64) <= slo.tpot_ns as f64 * headroom
    }
}

/// Predicted latency of `req` if sent now to a backend of `pool` with load `load`.
#[inline]
pub fn predict(pool: &PoolInfo, load: &LoadSnapshot, req: &Request) -> Prediction {
    let max_seqs = pool.config.max_num_seqs.max(1);
    let outstanding = load.outstanding();
    let running = load.running.min(max_seqs);
    let in_flight_step = if running > 0 {
        pool.decode_step_ns(running)
    } else {
        0
    };
    let prefill = pool.prefill_ns(load.queued_prefill_tokens + u64::from(req.prompt_tokens));
    // A full running set frees a slot each time a sequence finishes; sequences finish after
    // their remaining decode tokens, so the k-th free slot comes after about k/running of
    // the average remaining decode time.
    let slot_wait = if outstanding >= max_seqs {
        let excess = u64::from(outstanding - max_seqs + 1);
        let per_seq_tokens = load.remaining_decode_tokens / u64::from(running.max(1));
        let step = pool.decode_step_ns(max_seqs);
        per_seq_tokens.saturating_mul(step).saturating_mul(excess) / u64::from(max_seqs)
    } else {
        0
    };
    let ttft_ns = in_flight_step + prefill + slot_wait;
    // Chunked prefill shares steps with decoding, so prefill work queued ahead of this
    // request stretches its decode steps too: spread that prefill time over the tokens it
    // will generate. (Prefills that arrive later add more; this is the part known now.)
    let interference = prefill / u64::from(req.max_tokens.max(1));
    let tpot_ns = pool.decode_step_ns((outstanding + 1).min(max_seqs)) + interference;
    let e2e_ns = ttft_ns + tpot_ns * u64::from(req.max_tokens.saturating_sub(1));
    Prediction {
        ttft_ns,
        tpot_ns,
        e2e_ns,
    }
}

/// Outstanding work after adding `req`, in nanoseconds of the backend's time: every
/// prompt token it holds (and this request's) at its prefill speed, plus every output token
/// still to generate at its full-batch decode throughput. Speeds, not single-request
/// latencies: a chip with a large fixed step cost (eager-mode Ascend) decodes slowly for
/// one sequence but shares each step across a whole batch, and judging it by one
/// sequence's pace would herd every request onto the chip with the fastest single stream.
pub fn work_ns(pool: &PoolInfo, load: &LoadSnapshot, req: &Request) -> Nanos {
    let prefill = pool.prefill_ns(load.queued_prefill_tokens + u64::from(req.prompt_tokens));
    let decode_tokens = (load.remaining_decode_tokens + u64::from(req.max_tokens)) as f64;
    let decode = decode_tokens / pool.decode_tokens_per_s.max(1e-9) * 1e9;
    prefill.saturating_add(decode as Nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{test_fleets::fast_and_slow, PoolId};

    fn req(prompt: u32, out: u32) -> Request {
        Request {
            prompt_tokens: prompt,
            max_tokens: out,
            ..Default::default()
        }
    }

    #[test]
    fn load_and_speed_both_raise_predictions() {
        let m = fast_and_slow(1);
        let fast = m.pool(PoolId(0)).unwrap();
        let slow = m.pool(PoolId(1)).unwrap();
        let r = req(1000, 200);
        let idle = LoadSnapshot::default();
        let busy = LoadSnapshot {
            waiting: 4,
            running: 30,
            queued_prefill_tokens: 8000,
            remaining_decode_tokens: 6000,
            ..Default::default()
        };
        let (fi, fb) = (predict(fast, &idle, &r), predict(fast, &busy, &r));
        let si = predict(slow, &idle, &r);
        assert!(fi.ttft_ns < fb.ttft_ns && fi.tpot_ns < fb.tpot_ns);
        assert!(fi.ttft_ns * 3 < si.ttft_ns && fi.e2e_ns * 3 < si.e2e_ns);
        assert_eq!(fi.e2e_ns, fi.ttft_ns + 199 * fi.tpot_ns);
        assert!(work_ns(fast, &idle, &r) < work_ns(fast, &busy, &r));
        assert!(work_ns(fast, &busy, &r) < work_ns(slow, &busy, &r));
        assert_eq!(
            work_ns(fast, &idle, &req(0, 0)),
            0,
            "an idle backend holds no work"
        );
    }

    #[test]
    fn a_full_batch_adds_a_slot_wait() {
        let m = fast_and_slow(1);
        let fast = m.pool(PoolId(0)).unwrap();
        let max = fast.config.max_num_seqs;
        let full = LoadSnapshot {
            running: max,
            waiting: 10,
            remaining_decode_tokens: u64::from(max) * 300,
            ..Default::default()
        };
        let below = LoadSnapshot {
            running: max - 11,
            remaining_decode_tokens: u64::from(max - 11) * 300,
            ..Default::default()
        };
        let r = req(100, 10);
        // 11 sequences must finish first, each with ~300 tokens left: about 11/64 of 300
        // full-batch steps.
        assert!(
            predict(fast, &full, &r).ttft_ns
                > predict(fast, &below, &r).ttft_ns + 40 * fast.decode_step_ns(max)
        );
    }
}
