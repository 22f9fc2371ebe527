//! Chip and model catalogues and the roofline [`PerfModel`] built from them: everything the
//! rest of dujiang knows about how fast a given accelerator serves a given model.

mod catalogue;
mod perf;
mod spec;

pub use catalogue::Catalogue;
pub use perf::{floor_sum, PerfModel, ProfileError, StepShape};
pub use spec::{ChipSpec, ModelSpec};

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small hand-written specs for unit tests that must not depend on the catalogue files.
    use super::*;

    pub fn h20() -> ChipSpec {
        ChipSpec {
            id: "h20".into(),
            name: "NVIDIA H20".into(),
            vendor: "NVIDIA".into(),
            domestic: false,
            bf16_tflops: 148.0,
            int8_tops: 296.0,
            memory_gb: 96.0,
            bandwidth_tbps: 4.0,
            link_gbps: 450.0,
            watts: 400.0,
            price_per_hour_usd: 1.5,
            compute_efficiency: 0.5,
            memory_efficiency: 0.6,
            step_overhead_us: 1000.0,
            allreduce_latency_us: 10.0,
            memory_utilization: 0.9,
            reserve_gb: 2.0,
            max_batch: 256,
        }
    }

    pub fn llama3_8b() -> ModelSpec {
        ModelSpec {
            id: "llama-3-8b".into(),
            name: "Llama 3 8B".into(),
            layers: 32,
            hidden_size: 4096,
            attention_heads: 32,
            kv_heads: 8,
            head_dim: 128,
            params_total_b: 8.03,
            params_active_b: 8.03,
            experts: 0,
            experts_per_token: 0,
            weight_bytes: 2.0,
            kv_bytes: 2.0,
            mla_kv_lora_rank: 0,
            mla_rope_head_dim: 0,
            max_context: 8192,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn floor_sum_matches_brute_force() {
        for n in 0..20u128 {
            for m in 1..12u128 {
                for a in 0..15u128 {
                    for b in 0..15u128 {
                        let brute: u128 = (0..n).map(|i| (a * i + b) / m).sum();
                        assert_eq!(floor_sum(n, m, a, b), brute, "n={n} m={m} a={a} b={b}");
                    }
                }
            }
        }
    }

    #[test]
    fn kv_bytes_per_token_for_llama3_8b_is_128_kib() {
        assert_eq!(llama3_8b().kv_bytes_per_token(), 128.0 * 1024.0);
    }

    #[test]
    fn hand_computed_decode_step_on_h20() {
        let p = PerfModel::new(&h20(), &llama3_8b(), 1).unwrap();
        // batch 1 at 1024 context is memory bound:
        // weights 8.03e9·2 B + KV 1024·131072 B over 4 TB/s · 0.6, plus 1 ms overhead.
        let bytes = 8.03e9 * 2.0 + 1024.0 * 131072.0;
        let expect_ns = bytes / (4.0e12 * 0.6) * 1e9 + 1e6;
        let got = p.decode_step_ns(1, 1024) as f64;
        assert!(
            (got - expect_ns).abs() / expect_ns < 1e-6,
            "{got} vs {expect_ns}"
        );
    }

    #[test]
    fn hand_computed_prefill_on_h20_is_compute_bound() {
        let p = PerfModel::new(&h20(), &llama3_8b(), 1).unwrap();
        let n = 2048.0;
        let flops = n * 2.0 * 8.03e9 + 4.0 * 32.0 * 32.0 * 128.0 * (n * (n + 1.0) / 2.0);
        let expect_ns = flops / (148e12 * 0.5) * 1e9 + 1e6;
        let got = p.prefill_ns(2048, 0) as f64;
        assert!(
            (got - expect_ns).abs() / expect_ns < 1e-6,
            "{got} vs {expect_ns}"
        );
    }

    #[test]
    fn decode_run_equals_stepwise_sum() {
        let mut chip = h20();
        for tp in [1, 2, 4] {
            for eff in [0.05, 0.5] {
                // A low compute efficiency makes compute overtake memory mid-run.
                chip.compute_efficiency = eff;
                let p = PerfModel::new(&chip, &llama3_8b(), tp).unwrap();
                for (seqs, ctx0) in [(1, 10), (7, 3000), (64, 100_000), (256, 1_000_000)] {
                    let mut total = 0;
                    for k in 0..300u64 {
                        assert_eq!(
                            p.decode_run_ns(seqs, ctx0, k),
                            total,
                            "tp={tp} seqs={seqs} k={k}"
                        );
                        total += p.decode_step_ns(seqs, ctx0 + k * seqs);
                    }
                }
            }
        }
    }

    #[test]
    fn steps_within_budget_is_the_largest_fitting_count() {
        let p = PerfModel::new(&h20(), &llama3_8b(), 1).unwrap();
        for budget in [0u64, 1, 5_000_000, 123_456_789, 2_000_000_000] {
            let k = p.decode_steps_within(32, 5000, budget, 10_000);
            assert!(p.decode_run_ns(32, 5000, k) <= budget);
            if k < 10_000 {
                assert!(p.decode_run_ns(32, 5000, k + 1) > budget);
            }
        }
    }

    #[test]
    fn weights_that_do_not_fit_are_an_error() {
        let mut big = llama3_8b();
        big.params_total_b = 70.0;
        big.params_active_b = 70.0;
        let err = PerfModel::new(&h20(), &big, 1).unwrap_err();
        assert!(matches!(err, ProfileError::WeightsDoNotFit { .. }), "{err}");
        assert!(PerfModel::new(&h20(), &big, 2).is_ok());
    }
}
