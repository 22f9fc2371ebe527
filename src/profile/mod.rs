//! Chip, model and serving-engine catalogues and the roofline [`PerfModel`] built from
//! them: everything the rest of dujiang knows about how fast a given accelerator, driven by
//! a given serving engine, serves a given model.

mod catalogue;
mod engine;
mod error;
mod floor_sum;
mod perf;
mod spec;
mod table;

pub use catalogue::{Catalogue, EMBEDDED_CHIPS, EMBEDDED_ENGINES, EMBEDDED_MODELS};
pub use engine::{EngineCatalogue, EngineCoefficients, EngineProfile, EngineSpec, FieldBounds};
pub use error::ProfileError;
pub use floor_sum::floor_sum;
pub use perf::{PerfModel, StepShape};
pub use spec::{ChipSpec, Dtype, ModelSpec, SpecViolation};
pub use table::{interpolate, MeasuredTable, MeasuredTables};

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
            family: "h20".into(),
            dies: 1,
            bf16_tflops: 148.0,
            fp8_tflops: Some(296.0),
            int8_tops: Some(296.0),
            memory_gb: 96.0,
            bandwidth_tbps: 4.0,
            link_gbps: 450.0,
            watts: 400.0,
            price_per_hour_usd: 1.5,
        }
    }

    /// Round-number coefficients: one efficiency for everything, 1 ms per step.
    pub fn engine_coefficients() -> EngineCoefficients {
        EngineCoefficients {
            prefill_efficiency: 0.5,
            prefill_half_tokens: 0.0,
            decode_compute_efficiency: 0.5,
            memory_efficiency: 0.6,
            kv_read_efficiency: 0.6,
            kv_read_half_tokens: 0.0,
            attention_efficiency: 0.5,
            prefill_step_overhead_us: 1000.0,
            prefill_layer_overhead_us: 0.0,
            decode_step_overhead_us: 1000.0,
            decode_layer_overhead_us: 0.0,
            decode_seq_overhead_us: 0.0,
            allreduce_latency_us: 10.0,
            prefill_allreduce_latency_us: 10.0,
            allreduce_hop_latency_us: 0.0,
            rank_step_overhead_us: 0.0,
            link_efficiency: 1.0,
            memory_utilization: 0.9,
            reserve_gb: 2.0,
            max_batch: 256,
            chunked_prefill: true,
        }
    }

    pub fn engine() -> EngineProfile {
        EngineProfile {
            engine: "test-engine".into(),
            on: "h20".into(),
            coefficients: engine_coefficients(),
        }
    }

    /// The model of `model` on `tp` of `chip` under [`engine`], in BF16.
    pub fn perf(chip: &ChipSpec, model: &ModelSpec, tp: u32) -> Result<PerfModel, ProfileError> {
        PerfModel::new(chip, &engine(), model, tp, Dtype::Bf16)
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
            intermediate_size: 14336,
            vocab_size: 128256,
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
        let p = perf(&h20(), &llama3_8b(), 1).unwrap();
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
        let p = perf(&h20(), &llama3_8b(), 1).unwrap();
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
        for dies in [1, 2] {
            let mut chip = h20();
            chip.dies = dies;
            for tp in [1, 2, 4] {
                for eff in [0.05, 0.5] {
                    let mut engine = engine();
                    // A low compute efficiency makes compute overtake memory mid-run; the
                    // per-sequence overhead and the prefill half point must not disturb the
                    // closed form.
                    engine.coefficients.decode_compute_efficiency = eff;
                    engine.coefficients.attention_efficiency = eff;
                    engine.coefficients.decode_seq_overhead_us = 37.5;
                    engine.coefficients.prefill_half_tokens = 200.0;
                    engine.coefficients.decode_layer_overhead_us = 13.0;
                    // KV read apart from the weights, slower still for few sequences.
                    engine.coefficients.kv_read_efficiency = 0.3;
                    engine.coefficients.kv_read_half_tokens = 2.5;
                    let p = PerfModel::new(&chip, &engine, &llama3_8b(), tp, Dtype::Bf16).unwrap();
                    for (seqs, ctx0) in [(1, 10), (7, 3000), (64, 100_000), (256, 1_000_000)] {
                        let mut total = 0;
                        for k in 0..300u64 {
                            assert_eq!(
                                p.decode_run_ns(seqs, ctx0, k),
                                total,
                                "dies={dies} tp={tp} seqs={seqs} k={k}"
                            );
                            total += p.decode_step_ns(seqs, ctx0 + k * seqs);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn small_prefill_chunks_waste_compute_and_decode_pays_its_own_efficiency() {
        let mut e = engine();
        e.coefficients.prefill_half_tokens = 256.0;
        e.coefficients.decode_compute_efficiency = 0.25;
        let p = PerfModel::new(&h20(), &e, &llama3_8b(), 1, Dtype::Bf16).unwrap();
        let plain = perf(&h20(), &llama3_8b(), 1).unwrap();
        // Compute time of n tokens is a·(n + n½): at 256 tokens twice the ideal, at 8192
        // tokens only 1/32 more.
        let compute = |p: &PerfModel, n: u64| {
            let (c, _, _) = p.step_parts_ps(&StepShape {
                tokens: n,
                prefill_tokens: n,
                ..StepShape::default()
            });
            c as f64
        };
        assert!((compute(&p, 256) / compute(&plain, 256) - 2.0).abs() < 1e-6);
        assert!((compute(&p, 8192) / compute(&plain, 8192) - 33.0 / 32.0).abs() < 1e-6);
        // Decode tokens are charged at the decode efficiency, whatever prefill reaches.
        let (c, _, _) = p.step_parts_ps(&StepShape {
            tokens: 64,
            ..StepShape::default()
        });
        let (c0, _, _) = plain.step_parts_ps(&StepShape {
            tokens: 64,
            ..StepShape::default()
        });
        assert!((c as f64 / c0 as f64 - 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_package_of_dies_is_tensor_parallel_over_its_dies() {
        let cat = Catalogue::embedded();
        let pkg = cat
            .perf("ascend-910c", None, "llama-3-70b", 8, None)
            .unwrap();
        let dies = cat
            .perf("ascend-910c-die", None, "llama-3-70b", 16, None)
            .unwrap();
        for shape in [StepShape::decode(8, 8000), StepShape::prefill(2048, 0)] {
            assert_eq!(pkg.step_ns(&shape), dies.step_ns(&shape));
        }
        assert_eq!(pkg.kv_capacity_tokens(), dies.kv_capacity_tokens());
        let die = cat.chip("ascend-910c-die").unwrap();
        assert_eq!(die.memory_gb, 64.0);
        assert_eq!(die.bf16_tflops, 354.0);
        assert!((pkg.price_per_hour_usd() - dies.price_per_hour_usd()).abs() < 1e-9);
    }

    #[test]
    fn fp8_on_a_chip_without_fp8_is_refused_and_defaults_follow_the_chip() {
        let cat = Catalogue::embedded();
        let err = cat
            .perf("ascend-910b", None, "llama-3-8b", 1, Some(Dtype::Fp8))
            .unwrap_err();
        assert!(
            err.contains("no fp8") && err.contains("bf16 or int8"),
            "{err}"
        );
        let r1 = cat.model("deepseek-r1").unwrap();
        assert_eq!(
            Catalogue::default_dtype(cat.chip("h20").unwrap(), r1),
            Dtype::Fp8
        );
        assert_eq!(
            Catalogue::default_dtype(cat.chip("ascend-910b").unwrap(), r1),
            Dtype::Int8
        );
        // FP8 weights halve the bytes a decode step reads.
        let bf16 = cat.perf("h100", None, "llama-3-8b", 1, None).unwrap();
        let fp8 = cat
            .perf("h100", None, "llama-3-8b", 1, Some(Dtype::Fp8))
            .unwrap();
        assert_eq!(fp8.model.weight_bytes, 1.0);
        assert!(fp8.decode_step_ns(1, 100) < bf16.decode_step_ns(1, 100));
        assert!(fp8.kv_capacity_tokens() > bf16.kv_capacity_tokens());
    }

    #[test]
    fn every_chip_has_a_default_engine_and_every_engine_id_is_present() {
        let cat = Catalogue::embedded();
        for id in [
            "vllm-0.7",
            "vllm-0.20",
            "sglang",
            "vllm-ascend-0.18",
            "mindie",
            "vllm-mlu",
        ] {
            assert!(cat.engines.engines.contains_key(id), "{id}");
        }
        for chip in cat.chips.values() {
            let e = cat.engine_for(&chip.id, None).unwrap();
            assert!(
                cat.perf(&chip.id, None, "llama-3-8b", 1, None).is_ok(),
                "{}",
                chip.id
            );
            assert!(!e.engine.is_empty());
        }
        let err = cat.engine_for("h20", Some("mindie")).unwrap_err();
        assert!(err.contains("does not run on `h20`"), "{err}");
        let err = cat.engine_for("h20", Some("vllm-9")).unwrap_err();
        assert!(err.contains("unknown engine `vllm-9`"), "{err}");
    }

    #[test]
    fn steps_within_budget_is_the_largest_fitting_count() {
        let p = perf(&h20(), &llama3_8b(), 1).unwrap();
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
        let err = perf(&h20(), &big, 1).unwrap_err();
        assert!(matches!(err, ProfileError::WeightsDoNotFit { .. }), "{err}");
        assert!(perf(&h20(), &big, 2).is_ok());
    }

    #[test]
    fn tp_must_split_the_heads_evenly() {
        // Llama 3 8B: 32 attention heads, 8 KV heads.
        for tp in [3, 5, 6, 12, 64] {
            let err = perf(&h20(), &llama3_8b(), tp).unwrap_err();
            assert!(
                matches!(err, ProfileError::HeadsDoNotSplit { .. })
                    && err.to_string().ends_with("tp 1, 2, 4, 8, 16, 32 would"),
                "tp {tp}: {err}"
            );
        }
        // Fewer KV heads than ranks replicates them, as vLLM does.
        for tp in [1, 2, 4, 8, 16, 32] {
            assert!(perf(&h20(), &llama3_8b(), tp).is_ok(), "tp {tp}");
        }
        // A two-die package runs twice the ranks.
        let mut two_dies = h20();
        two_dies.dies = 2;
        assert!(perf(&two_dies, &llama3_8b(), 16).is_ok());
        let err = perf(&two_dies, &llama3_8b(), 32).unwrap_err();
        assert!(err.to_string().contains("(64 ranks)"), "{err}");
    }

    #[test]
    fn eager_stacks_pay_overhead_per_layer() {
        let cat = Catalogue::embedded();
        let eager = Some("vllm-ascend-0.9");
        let small = cat.perf("ascend-910b", eager, "qwen3-8b", 1, None).unwrap();
        let big = cat
            .perf("ascend-910b", eager, "llama-3-70b", 4, None)
            .unwrap();
        let e = &small.engine.coefficients;
        let ascend = &small.chip;
        // Memory time scales with weights per chip; what is left at batch 1 is overhead.
        let fixed = |p: &PerfModel| {
            let bytes = p.model.weight_bytes_total() / f64::from(p.tp);
            p.decode_step_ns(1, 1) as f64
                - bytes / (ascend.bandwidth_tbps * 1e12 * e.memory_efficiency) * 1e9
        };
        let per_layer = e.decode_layer_overhead_us * 1e3;
        assert!(fixed(&big) - fixed(&small) > (80.0 - 36.0) * per_layer * 0.99);
    }

    #[test]
    fn prompt_steps_pay_the_eager_collective_latency_and_decode_steps_the_graph_one() {
        let model = llama3_8b();
        let at = |prefill_us: f64, tp: u32| {
            let mut e = engine();
            e.coefficients.prefill_allreduce_latency_us = prefill_us;
            PerfModel::new(&h20(), &e, &model, tp, Dtype::Bf16).unwrap()
        };
        let (base, eager) = (at(10.0, 8), at(510.0, 8));
        // 32 layers, two collectives each, 500 µs more per collective: 32 ms per prompt step.
        let extra = eager.prefill_ns(256, 0) - base.prefill_ns(256, 0);
        assert!((extra as i64 - 32_000_000).abs() <= 1, "{extra}");
        assert_eq!(
            eager.decode_step_ns(16, 16 * 1024),
            base.decode_step_ns(16, 16 * 1024)
        );
        assert_eq!(
            eager.decode_run_ns(16, 16 * 1024, 500),
            base.decode_run_ns(16, 16 * 1024, 500)
        );
        // One rank has nothing to reduce.
        assert_eq!(
            at(510.0, 1).prefill_ns(256, 0),
            at(10.0, 1).prefill_ns(256, 0)
        );
    }

    #[test]
    fn a_collective_pays_a_ring_of_hops_that_grows_with_the_ranks() {
        let model = llama3_8b();
        let at = |hop_us: f64, tp: u32| {
            let mut e = engine();
            e.coefficients.allreduce_hop_latency_us = hop_us;
            PerfModel::new(&h20(), &e, &model, tp, Dtype::Bf16).unwrap()
        };
        // 32 layers, two collectives each, 2·(r − 1) hops of 1 µs per collective: 64 · 6 µs
        // at TP4, 64 · 14 µs at TP8, in decode and prompt steps alike.
        for (tp, hops) in [(4u32, 6i64), (8, 14)] {
            let (base, ring) = (at(0.0, tp), at(1.0, tp));
            let want = 64 * hops * 1_000;
            let decode = ring.decode_step_ns(4, 4 * 512) - base.decode_step_ns(4, 4 * 512);
            let prompt = ring.prefill_ns(256, 0) - base.prefill_ns(256, 0);
            assert!((decode as i64 - want).abs() <= 1, "tp{tp}: {decode}");
            assert!((prompt as i64 - want).abs() <= 1, "tp{tp}: {prompt}");
        }
        assert_eq!(
            at(1.0, 1).decode_step_ns(4, 2048),
            at(0.0, 1).decode_step_ns(4, 2048)
        );
    }

    #[test]
    fn every_extra_rank_costs_a_step_its_own_hand_off() {
        let model = llama3_8b();
        let at = |rank_us: f64, tp: u32| {
            let mut e = engine();
            e.coefficients.rank_step_overhead_us = rank_us;
            PerfModel::new(&h20(), &e, &model, tp, Dtype::Bf16).unwrap()
        };
        // (r − 1) · 100 µs a step, whatever the layers or the batch, in decode and prompt
        // steps alike; nothing at one rank.
        for (tp, extra) in [(1u32, 0u64), (2, 1), (8, 7)] {
            let (base, cost) = (at(0.0, tp), at(100.0, tp));
            let want = extra * 100_000;
            for seqs in [1u64, 64] {
                let d =
                    cost.decode_step_ns(seqs, seqs * 512) - base.decode_step_ns(seqs, seqs * 512);
                assert_eq!(d, want, "tp{tp}, {seqs} sequences");
            }
            assert_eq!(
                cost.prefill_ns(256, 0) - base.prefill_ns(256, 0),
                want,
                "tp{tp}"
            );
            // A decode run keeps its closed form: the step-by-step sum, exactly.
            let stepwise: u64 = (0..300)
                .map(|i| cost.decode_step_ns(16, 16 * (700 + i)))
                .sum();
            assert_eq!(cost.decode_run_ns(16, 16 * 700, 300), stepwise, "tp{tp}");
        }
    }

    #[test]
    fn mla_cache_is_spread_over_data_parallel_ranks() {
        let cat = Catalogue::embedded();
        let h20 = cat.chip("h20").unwrap();
        let r1 = cat.model("deepseek-r1").unwrap();
        let p8 = cat
            .perf("h20", Some("sglang"), "deepseek-r1", 8, None)
            .unwrap();
        let p16 = cat
            .perf("h20", Some("sglang"), "deepseek-r1", 16, None)
            .unwrap();
        let e = &p16.engine.coefficients;
        // Doubling the ranks halves weights per chip, so free memory per chip grows and the
        // total cache more than doubles.
        assert!(p16.kv_capacity_tokens() > 2 * p8.kv_capacity_tokens());
        let free16 = h20.memory_gb * 1e9 * e.memory_utilization
            - e.reserve_gb * 1e9
            - r1.weight_bytes_total() / 16.0;
        let expect = (16.0 * free16 / r1.kv_bytes_per_token()).floor() as u64;
        assert!(p16.kv_capacity_tokens().abs_diff(expect) <= 16);
    }

    fn h20_llama_table() -> MeasuredTable {
        let src = r#"
[lab]
chip = "h20"
model = "llama-3-8b"
tp = 1
source = "unit test"
prefill_tokens = [128, 1024]
prefill_ms = [20.0, 60.0]
decode_batches = [1, 16]
decode_contexts = [1000, 5000]
decode_step_ms = [[9.0, 10.0], [12.0, 20.0]]
"#;
        MeasuredTables::parse(src, "lab.toml").unwrap().tables["lab"].clone()
    }

    #[test]
    fn measured_table_overrides_the_roofline() {
        let p = perf(&h20(), &llama3_8b(), 1)
            .unwrap()
            .with_table(h20_llama_table())
            .unwrap();
        assert_eq!(p.decode_step_ns(1, 1000), 9_000_000);
        assert_eq!(p.decode_step_ns(16, 16 * 5000), 20_000_000);
        // Context 3000 is halfway: rows give 9.5 and 16 ms; batch 8 is 7/15 of the way from
        // 1 to 16: 9.5 + 6.5·7/15 = 12.5333… ms, rounded up to the nanosecond.
        assert_eq!(p.decode_step_ns(8, 8 * 3000), 12_533_334);
        assert_eq!(p.prefill_ns(128, 0), 20_000_000);
        assert_eq!(p.prefill_ns(576, 0), 40_000_000);
        // Cached context adds the roofline's extra attention and KV reads.
        let extra = p.roofline_step_ns(&StepShape::prefill(576, 4000))
            - p.roofline_step_ns(&StepShape::prefill(576, 0));
        assert_eq!(p.prefill_ns(576, 4000), 40_000_000 + extra);
        assert!(p.roofline_step_ns(&StepShape::decode(1, 1000)) != 9_000_000);
    }

    #[test]
    fn measured_decode_runs_equal_stepwise_sums() {
        let p = perf(&h20(), &llama3_8b(), 1)
            .unwrap()
            .with_table(h20_llama_table())
            .unwrap();
        for (seqs, ctx0) in [(1, 10), (7, 3000), (40, 100_000)] {
            let mut total = 0;
            for k in 0..200u64 {
                assert_eq!(p.decode_run_ns(seqs, ctx0, k), total, "seqs={seqs} k={k}");
                total += p.decode_step_ns(seqs, ctx0 + k * seqs);
            }
            for budget in [0, 9_000_000, 500_000_000] {
                let k = p.decode_steps_within(seqs, ctx0, budget, 1000);
                assert!(p.decode_run_ns(seqs, ctx0, k) <= budget);
                if k < 1000 {
                    assert!(p.decode_run_ns(seqs, ctx0, k + 1) > budget);
                }
            }
        }
    }

    #[test]
    fn a_table_for_another_pair_is_refused() {
        let err = perf(&h20(), &llama3_8b(), 2)
            .unwrap()
            .with_table(h20_llama_table())
            .unwrap_err();
        assert!(matches!(err, ProfileError::TableMismatch { .. }), "{err}");
    }
}
