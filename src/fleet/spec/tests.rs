//! Tests of fleet files: parsing, resolution against the catalogue, and errors placed at
//! their file, line and field.

use super::*;
use crate::profile::fixtures::{h20, llama3_8b};

fn catalogue() -> Catalogue {
    let mut c = Catalogue::default();
    c.chips.insert("h20".into(), h20());
    c.models.insert("llama-3-8b".into(), llama3_8b());
    c.engines = Catalogue::embedded().engines;
    c
}

const SMALL: &str = r#"name = "t"
model = "llama-3-8b"

[pools.zeta]
chip = "h20"
count = 2

[pools.alpha]
chip = "h20"
tp = 2
count = 1
max_num_seqs = 32
"#;

#[test]
fn pools_keep_file_order_and_engine_settings() {
    let spec = FleetSpec::parse(SMALL, "t.toml").unwrap();
    assert_eq!(spec.policy.name, "predicted-latency");
    let names: Vec<_> = spec.pools.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha"]);
    let pools = spec.resolve(&catalogue()).unwrap();
    assert_eq!(pools[1].perf.tp, 2);
    assert_eq!(pools[1].max_num_seqs, 32);
    assert_eq!(pools[0].max_num_seqs, pools[0].perf.max_batch());
    assert_eq!(pools[0].perf.engine.engine, "vllm-0.7");
    assert_eq!(pools[0].perf.dtype, Dtype::Bf16);
    let split = SpendSplit::of(&pools);
    assert!((split.total_usd_per_hour - 4.0 * h20().price_per_hour_usd).abs() < 1e-9);
    assert_eq!(split.domestic_share(), 0.0);
}

#[test]
fn pool_names_must_be_label_safe() {
    let err =
        FleetSpec::parse(&SMALL.replace("[pools.alpha]", "[pools.Alpha_1]"), "t.toml").unwrap_err();
    // On the pool's header and named as the pool: its chip is not what is wrong.
    assert_eq!(err.line, Some(8), "{err}");
    assert!(
        err.to_string()
            .starts_with("t.toml:8:1: field `pools.Alpha_1`: pool name \"Alpha_1\""),
        "{err}"
    );
    assert!(err.to_string().contains("[a-z0-9-]{1,63}"), "{err}");
}

#[test]
fn unknown_chip_names_line_field_and_known_ids() {
    let src = SMALL
        .replace("tp = 2\n", "")
        .replace("chip = \"h20\"\ncount = 1", "chip = \"h2O\"\ncount = 1");
    let spec = FleetSpec::parse(&src, "t.toml").unwrap();
    let err = spec.resolve(&catalogue()).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("pools.alpha.chip"));
    assert_eq!(err.line, Some(9), "{err}");
    assert!(err.message.contains("known chips: h20"), "{err}");
}

#[test]
fn weights_that_do_not_fit_point_at_tp() {
    let mut cat = catalogue();
    cat.models.get_mut("llama-3-8b").unwrap().params_total_b = 80.0;
    let spec = FleetSpec::parse(SMALL, "t.toml").unwrap();
    let err = spec.resolve(&cat).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("pools.zeta.tp"));
    assert!(err.message.contains("larger tp"), "{err}");
}

#[test]
fn an_empty_name_is_refused() {
    let err =
        FleetSpec::parse(&SMALL.replace("name = \"t\"", "name = \" \""), "t.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.toml:1:1: field `name`: must not be empty: it names the fleet in reports"
    );
}

#[test]
fn tp_that_does_not_split_the_heads_points_at_tp() {
    let spec = FleetSpec::parse(&SMALL.replace("tp = 2", "tp = 3"), "t.toml").unwrap();
    let err = spec.resolve(&catalogue()).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "t.toml:10:1: field `pools.alpha.tp`: llama-3-8b's 32 attention heads (8 KV heads) do not split evenly over h20 x3 (3 ranks)"
        ),
        "{err}"
    );
}

#[test]
fn engine_and_dtype_are_per_pool_and_errors_name_them() {
    let src = SMALL.replace(
        "chip = \"h20\"\ntp = 2",
        "chip = \"h20\"\nengine = \"sglang\"\ndtype = \"fp8\"\ntp = 2",
    );
    let pools = FleetSpec::parse(&src, "t.toml")
        .unwrap()
        .resolve(&catalogue())
        .unwrap();
    assert_eq!(pools[1].perf.engine.engine, "sglang");
    assert_eq!(pools[1].perf.dtype, Dtype::Fp8);
    assert_eq!(pools[0].perf.engine.engine, "vllm-0.7");

    let bad = src.replace("engine = \"sglang\"", "engine = \"mindie\"");
    let err = FleetSpec::parse(&bad, "t.toml")
        .unwrap()
        .resolve(&catalogue())
        .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("pools.alpha.engine"));
    assert_eq!(err.line, Some(10), "{err}");
    assert!(err.message.contains("does not run on `h20`"), "{err}");

    let bad = src.replace("dtype = \"fp8\"", "dtype = \"fp4\"");
    let err = FleetSpec::parse(&bad, "t.toml").unwrap_err();
    assert_eq!(err.line, Some(11), "{err}");
    assert!(err.message.contains("fp4"), "{err}");
}

#[test]
fn schema_errors_are_placed() {
    let err = FleetSpec::parse(&SMALL.replace("count = 2", "cuont = 2"), "t.toml").unwrap_err();
    assert_eq!(err.line, Some(6), "{err}");
    let err = FleetSpec::parse(&SMALL.replace("count = 2", "count = 0"), "t.toml").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("pools.zeta.count"));
    assert_eq!(err.line, Some(6), "{err}");
}

#[test]
fn cells_are_read_and_bad_ones_are_placed() {
    assert_eq!(FleetSpec::parse(SMALL, "t.toml").unwrap().cells.count, 1);
    let with = |extra: &str| {
        FleetSpec::parse(
            &SMALL.replace(
                "model = \"llama-3-8b\"\n",
                &format!("model = \"llama-3-8b\"\n{extra}"),
            ),
            "t.toml",
        )
    };
    let spec = with("cells = 64\ncell_key = \"session\"\n").unwrap();
    assert_eq!(spec.cells.count, 64);
    // The shipped cellular fleet is doubao-2025's pools, four times.
    let cells = FleetSpec::parse(
        include_str!("../../../config/fleets/doubao-2025-cells.toml"),
        "doubao-2025-cells.toml",
    )
    .unwrap();
    let one = FleetSpec::parse(
        include_str!("../../../config/fleets/doubao-2025.toml"),
        "doubao-2025.toml",
    )
    .unwrap();
    assert_eq!(cells.cells.count, 4);
    assert_eq!((&cells.pools, &cells.policy), (&one.pools, &one.policy));
    for (extra, line, says) in [
        (
            "cells = 0\n",
            3,
            "field `cells`: 0: a fleet has at least 1 cell",
        ),
        (
            "cells = 70000\n",
            3,
            "field `cells`: 70000 is above the limit",
        ),
        (
            "cells = 2\ncell_key = \"user\"\n",
            4,
            "field `cell_key`: `user` needs user ids",
        ),
        ("cells = \"many\"\n", 3, "expected i64"),
    ] {
        let err = with(extra).unwrap_err().to_string();
        assert!(err.starts_with(&format!("t.toml:{line}")), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn shipped_fleets_resolve_against_the_catalogue() {
    let cat = Catalogue::embedded();
    let demo = FleetSpec::embedded_demo();
    let pools = demo.resolve(&cat).unwrap();
    assert!(pools.iter().any(|p| p.domestic()) && pools.iter().any(|p| !p.domestic()));

    let src = include_str!("../../../config/fleets/doubao-2025.toml");
    let doubao = FleetSpec::parse(src, "doubao-2025.toml").unwrap();
    let pools = doubao.resolve(&cat).unwrap();
    let share = SpendSplit::of(&pools).domestic_share();
    assert!(
        (0.55..=0.65).contains(&share),
        "domestic spend share {share:.3}"
    );
    let h20_spend: f64 = pools
        .iter()
        .filter(|p| p.perf.chip.id == "h20")
        .map(PoolConfig::cost_per_hour_usd)
        .sum::<f64>()
        / SpendSplit::of(&pools).total_usd_per_hour;
    assert!(
        (0.35..=0.45).contains(&h20_spend),
        "H20 spend share {h20_spend:.3}"
    );
}

const MIXED: &str = r#"name = "t"
model = "llama-3-8b"

[pools.sim]
chip = "h20"
count = 2

[pools.real]
kind = "openai"
endpoints = ["http://10.0.0.7:8000", "http://10.0.0.8:8000/v1/"]
model = "meta-llama/Llama-3.1-8B-Instruct"
chip = "h20"
engine = "sglang"
tp = 2
metrics = "sglang"
"#;

#[test]
fn simulated_and_real_pools_sit_in_one_fleet() {
    let spec = FleetSpec::parse(MIXED, "t.toml").unwrap();
    let pools = spec.resolve(&catalogue()).unwrap();
    assert!(pools[0].upstream.is_none());
    let real = &pools[1];
    assert_eq!(real.count, 2, "one backend per endpoint");
    assert_eq!(
        real.perf.model.id, "llama-3-8b",
        "the prior is the fleet's model"
    );
    assert_eq!(real.perf.engine.engine, "sglang");
    assert_eq!(real.perf.tp, 2);
    let up = real.upstream.as_deref().unwrap();
    assert_eq!(
        up.endpoints,
        ["http://10.0.0.7:8000/v1", "http://10.0.0.8:8000/v1"]
    );
    assert_eq!(up.served_model, "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(up.metrics.as_deref(), Some("sglang"));
}

#[test]
fn bad_real_pools_name_file_line_and_field() {
    let cases = [
        (
            MIXED.replace("\"http://10.0.0.7:8000\"", "\"10.0.0.7:8000\""),
            10,
            "pools.real.endpoints",
            "http://",
        ),
        (
            MIXED.replace(
                "endpoints = [\"http://10.0.0.7:8000\", \"http://10.0.0.8:8000/v1/\"]",
                "endpoints = []",
            ),
            10,
            "pools.real.endpoints",
            "empty",
        ),
        (
            MIXED.replace(
                "endpoints = [\"http://10.0.0.7:8000\", \"http://10.0.0.8:8000/v1/\"]\n",
                "",
            ),
            8,
            "pools.real.endpoints",
            "missing",
        ),
        (
            MIXED.replace("10.0.0.8", "10.0.0.7"),
            10,
            "pools.real.endpoints",
            "twice",
        ),
        (
            MIXED.replace(":8000\"", ":80000\""),
            10,
            "pools.real.endpoints",
            "port",
        ),
        (
            MIXED.replace("metrics = \"sglang\"", "metrics = \"vlm\""),
            15,
            "pools.real.metrics",
            "known: vllm",
        ),
        (
            MIXED.replace("model = \"meta-llama/Llama-3.1-8B-Instruct\"\n", ""),
            9,
            "pools.real.kind",
            "needs `model`",
        ),
        (
            MIXED.replace(
                "chip = \"h20\"\ncount = 2",
                "chip = \"h20\"\ncount = 2\nendpoints = [\"http://h:1\"]",
            ),
            7,
            "pools.sim.endpoints",
            "kind = \"openai\"",
        ),
        (
            MIXED.replace("kind = \"openai\"", "kind = \"vllm\""),
            9,
            "",
            "unknown variant",
        ),
    ];
    for (src, line, field, says) in cases {
        let err = FleetSpec::parse(&src, "f.toml").unwrap_err();
        assert_eq!(err.line, Some(line), "{err}");
        if !field.is_empty() {
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
        assert!(
            err.to_string().starts_with(&format!("f.toml:{line}")),
            "{err}"
        );
        assert!(err.message.contains(says), "{err}");
    }
    // Meaning errors too: an unknown chip for a real pool.
    let spec = FleetSpec::parse(
        &MIXED.replace("chip = \"h20\"\nengine", "chip = \"h2O\"\nengine"),
        "f.toml",
    )
    .unwrap();
    let err = spec.resolve(&catalogue()).unwrap_err();
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(12), Some("pools.real.chip")),
        "{err}"
    );
}

#[test]
fn engine_settings_and_counts_are_bounded_with_file_and_line() {
    let with = |key: &str, value: &str| {
        let src = SMALL.replace("count = 2", &format!("count = 2\n{key} = {value}"));
        FleetSpec::parse(&src, "t.toml")
    };
    for (key, limit) in [
        ("max_num_seqs", MAX_NUM_SEQS),
        ("block_size", MAX_BLOCK_SIZE),
        ("max_batched_tokens", MAX_BATCHED_TOKENS),
        ("tp", MAX_TP),
    ] {
        assert!(with(key, &limit.to_string()).is_ok(), "{key} = {limit}");
        let err = with(key, &(u64::from(limit) + 1).to_string()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some(&*format!("pools.zeta.{key}")));
        assert_eq!(err.line, Some(7), "{err}");
        assert!(err.to_string().starts_with("t.toml:7:"), "{err}");
        assert!(err.to_string().contains("above the limit"), "{err}");
    }
    let count = format!("count = {}", MAX_POOL_BACKENDS + 1);
    let err = FleetSpec::parse(&SMALL.replace("count = 2", &count), "t.toml").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("pools.zeta.count"));
    assert_eq!(err.line, Some(6), "{err}");
    // Beyond u32 is a type error from the TOML reader, also placed.
    let err = with("max_num_seqs", "99999999999").unwrap_err();
    assert!(err.to_string().starts_with("t.toml:7"), "{err}");
}
