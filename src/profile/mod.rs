//! Chip and model catalogues and the roofline [`PerfModel`] built from them: everything the
//! rest of dujiang knows about how fast a given accelerator serves a given model.

mod catalogue;
mod perf;
mod spec;
mod table;

pub use catalogue::{Catalogue, EMBEDDED_CHIPS, EMBEDDED_MODELS};
pub use perf::{floor_sum, PerfModel, ProfileError, StepShape};
pub use spec::{ChipSpec, ModelSpec, SpecViolation};
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
            layer_overhead_us: 0.0,
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

    /// One row of the calibration table in `docs/calibration.md`.
    struct CalibrationPoint {
        name: String,
        chip: String,
        model: String,
        tp: u32,
        batch: u64,
        context: u64,
        metric: String,
        measured: f64,
        documented: f64,
        tolerance: f64,
    }

    fn calibration_points() -> Vec<CalibrationPoint> {
        let doc = include_str!("../../docs/calibration.md");
        let start = doc
            .find("<!-- calibration:begin -->")
            .expect("begin marker");
        let end = doc.find("<!-- calibration:end -->").expect("end marker");
        let number = |cell: &str| -> f64 {
            cell.trim_end_matches('%')
                .parse()
                .unwrap_or_else(|e| panic!("`{cell}` in docs/calibration.md: {e}"))
        };
        doc[start..end]
            .lines()
            .filter(|l| l.starts_with('|') && !l.starts_with("| point") && !l.starts_with("|---"))
            .map(|l| {
                let c: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                CalibrationPoint {
                    name: c[0].into(),
                    chip: c[1].into(),
                    model: c[2].into(),
                    tp: c[3].parse().unwrap(),
                    batch: c[4].parse().unwrap(),
                    context: c[5].parse().unwrap(),
                    metric: c[6].into(),
                    measured: number(c[7]),
                    documented: number(c[8]),
                    tolerance: number(c[10]) / 100.0,
                }
            })
            .collect()
    }

    #[test]
    fn calibration_points_stay_within_documented_error() {
        let cat = Catalogue::embedded();
        let points = calibration_points();
        assert!(points.len() >= 3, "calibration table lost rows");
        for p in points {
            let perf = PerfModel::new(
                cat.chip(&p.chip).unwrap(),
                cat.model(&p.model).unwrap(),
                p.tp,
            )
            .unwrap();
            let step_ns = perf.decode_step_ns(p.batch, p.batch * p.context) as f64;
            let predicted = match p.metric.as_str() {
                "tpot_ms" => step_ns / 1e6,
                "tokens_per_s_per_chip" => p.batch as f64 * 1e9 / step_ns / f64::from(p.tp),
                other => panic!("unknown metric {other}"),
            };
            let error = (predicted - p.measured) / p.measured;
            assert!(
                error.abs() <= p.tolerance,
                "{}: predicted {predicted:.2} vs measured {} ({:+.1}%, tolerance {}%)",
                p.name,
                p.measured,
                error * 100.0,
                p.tolerance * 100.0
            );
            let drift = (predicted - p.documented) / p.documented;
            assert!(
                drift.abs() <= 0.02,
                "{}: docs/calibration.md says {} but the model now predicts {predicted:.2}; update the doc",
                p.name,
                p.documented
            );
        }
    }

    #[test]
    fn eager_stacks_pay_overhead_per_layer() {
        let cat = Catalogue::embedded();
        let ascend = cat.chip("ascend-910b").unwrap();
        let small = PerfModel::new(ascend, cat.model("qwen3-8b").unwrap(), 1).unwrap();
        let big = PerfModel::new(ascend, cat.model("llama-3-70b").unwrap(), 4).unwrap();
        // Memory time scales with weights per chip; what is left at batch 1 is overhead.
        let fixed = |p: &PerfModel| {
            let bytes = p.model.weight_bytes_total() / f64::from(p.tp);
            p.decode_step_ns(1, 1) as f64
                - bytes / (ascend.bandwidth_tbps * 1e12 * ascend.memory_efficiency) * 1e9
        };
        let per_layer = ascend.layer_overhead_us * 1e3;
        assert!(fixed(&big) - fixed(&small) > (80.0 - 36.0) * per_layer * 0.99);
    }

    #[test]
    fn mla_cache_is_spread_over_data_parallel_ranks() {
        let cat = Catalogue::embedded();
        let h20 = cat.chip("h20").unwrap();
        let r1 = cat.model("deepseek-r1").unwrap();
        let p8 = PerfModel::new(h20, r1, 8).unwrap();
        let p16 = PerfModel::new(h20, r1, 16).unwrap();
        // Doubling the ranks halves weights per chip, so free memory per chip grows and the
        // total cache more than doubles.
        assert!(p16.kv_capacity_tokens() > 2 * p8.kv_capacity_tokens());
        let free16 = h20.memory_gb * 1e9 * h20.memory_utilization
            - h20.reserve_gb * 1e9
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
        let p = PerfModel::new(&h20(), &llama3_8b(), 1)
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
        let p = PerfModel::new(&h20(), &llama3_8b(), 1)
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
        let err = PerfModel::new(&h20(), &llama3_8b(), 2)
            .unwrap()
            .with_table(h20_llama_table())
            .unwrap_err();
        assert!(matches!(err, ProfileError::TableMismatch { .. }), "{err}");
    }
}
