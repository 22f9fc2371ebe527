//! Whole-program tests of `dujiang profile`: the built binary is run as a user would run it,
//! and its output is checked against the library's own performance model.

use dujiang::profile::{Catalogue, PerfModel};
use std::path::PathBuf;
use std::process::{Command, Output};

fn dujiang(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(args)
        .output()
        .expect("run dujiang")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory unique to this test process and name.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dujiang-profile-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sweep_lists_prefill_decode_and_capacity() {
    let out = dujiang(&["profile", "--chip", "h20", "--model", "llama-3-8b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let perf: PerfModel = Catalogue::embedded()
        .perf("h20", None, "llama-3-8b", 1, None)
        .unwrap();
    assert!(
        text.contains(&format!(
            "KV capacity: {} tokens",
            perf.kv_capacity_tokens()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} blocks of 16", perf.kv_capacity_blocks(16))),
        "{text}"
    );
    assert!(
        text.contains("largest batch at 1024 tokens of context"),
        "{text}"
    );
    // Prefill rows 128 … 32768 and decode rows 1 … 256, each with its model time.
    for n in [128u64, 1024, 32768] {
        let row = format!("{n:>8}  {:>10.2}", perf.prefill_ns(n, 0) as f64 / 1e6);
        assert!(text.contains(&row), "missing `{row}` in\n{text}");
    }
    for b in [1u64, 16, 256] {
        let row = format!(
            "{b:>8}  {:>10.2}",
            perf.decode_step_ns(b, b * 1024) as f64 / 1e6
        );
        assert!(text.contains(&row), "missing `{row}` in\n{text}");
    }
}

#[test]
fn json_point_matches_the_library_model() {
    let out = dujiang(&[
        "profile",
        "--chip",
        "ascend-910b",
        "--model",
        "qwen3-8b",
        "--prompt",
        "2048",
        "--batch",
        "8",
        "--context",
        "1500",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(v["chip"], "ascend-910b");
    assert_eq!(v["model"], "qwen3-8b");
    assert_eq!(v["tp"], 1);
    for key in [
        "prefill_ms",
        "decode_step_ms",
        "decode_tokens_per_s",
        "kv_capacity_tokens",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!(x > 0.0, "{key} = {x}");
    }

    let cat = Catalogue::embedded();
    let perf = cat.perf("ascend-910b", None, "qwen3-8b", 1, None).unwrap();
    let step_ns = perf.decode_step_ns(8, 8 * 1500);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(
        v["prefill_ms"].as_f64().unwrap(),
        perf.prefill_ns(2048, 0) as f64 / 1e6
    ));
    assert!(close(
        v["decode_step_ms"].as_f64().unwrap(),
        step_ns as f64 / 1e6
    ));
    assert!(close(
        v["decode_tokens_per_s"].as_f64().unwrap(),
        8.0 * 1e9 / step_ns as f64
    ));
    assert_eq!(
        v["kv_capacity_tokens"].as_u64(),
        Some(perf.kv_capacity_tokens())
    );
    assert_eq!(v["kv_fits"], true);
}

#[test]
fn tensor_parallel_json_reports_the_whole_instance() {
    let out = dujiang(&[
        "profile",
        "--chip",
        "h20",
        "--model",
        "deepseek-r1",
        "--tp",
        "16",
        "--batch",
        "512",
        "--context",
        "4608",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let whole = v["decode_tokens_per_s"].as_f64().unwrap();
    let per_chip = v["decode_tokens_per_s_per_chip"].as_f64().unwrap();
    assert!((whole / 16.0 - per_chip).abs() < 1e-6);
    let tpot = v["decode_step_ms"].as_f64().unwrap();
    assert!((512.0 * 1000.0 / tpot - whole).abs() < 1e-6 * whole);
}

#[test]
fn unknown_chip_lists_the_known_ids() {
    let out = dujiang(&["profile", "--chip", "tpu-v9", "--model", "llama-3-8b"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown chip `tpu-v9`"), "{err}");
    for id in ["ascend-910b", "h20", "mlu370-x8"] {
        assert!(err.contains(id), "{err}");
    }
}

#[test]
fn unknown_model_lists_the_known_ids() {
    let out = dujiang(&["profile", "--chip", "h20", "--model", "gpt-5"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown model `gpt-5`"), "{err}");
    assert!(
        err.contains("deepseek-v3") && err.contains("qwen2.5-72b"),
        "{err}"
    );
}

#[test]
fn weights_that_do_not_fit_fail_with_the_reason() {
    let out = dujiang(&["profile", "--chip", "mlu370-x8", "--model", "llama-3-70b"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("llama-3-70b") && err.contains("mlu370-x8"),
        "{err}"
    );
    assert!(err.contains("GB of weights per chip"), "{err}");
    assert!(err.contains("larger tp"), "{err}");
    // Four cards hold it.
    let out = dujiang(&[
        "profile",
        "--chip",
        "mlu370-x8",
        "--model",
        "llama-3-70b",
        "--tp",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_bad_catalogue_file_is_named_with_line_and_field() {
    let dir = scratch("bad-chips");
    let path = dir.join("chips.toml");
    let text = dujiang::profile::EMBEDDED_CHIPS.replace(
        "bandwidth_tbps = 4.0         # NVIDIA H20 datasheet",
        "bandwidth_tbps = -4.0        # NVIDIA H20 datasheet",
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("bandwidth_tbps = -4.0"))
        .unwrap()
        + 1;
    std::fs::write(&path, text).unwrap();
    let out = dujiang(&[
        "profile",
        "--chip",
        "h20",
        "--model",
        "llama-3-8b",
        "--chips",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "{err}"
    );
    assert!(err.contains("h20.bandwidth_tbps"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn measured_table_replaces_the_roofline() {
    let dir = scratch("measured");
    let path = dir.join("measured.toml");
    std::fs::write(
        &path,
        r#"
[lab-910b]
chip = "ascend-910b"
model = "qwen3-8b"
tp = 1
source = "test fixture, not a real measurement"
prefill_tokens = [128, 4096]
prefill_ms = [50.0, 400.0]
decode_batches = [1, 16]
decode_contexts = [512, 4096]
decode_step_ms = [[40.0, 42.0], [44.0, 60.0]]
"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let args = [
        "profile",
        "--chip",
        "ascend-910b",
        "--model",
        "qwen3-8b",
        "--measured",
        p,
        "--prompt",
        "128",
        "--batch",
        "16",
        "--context",
        "4096",
        "--json",
    ];
    let out = dujiang(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["measured_table"], "lab-910b");
    assert_eq!(v["prefill_ms"].as_f64(), Some(50.0));
    assert_eq!(v["decode_step_ms"].as_f64(), Some(60.0));

    let sweep = dujiang(&[
        "profile",
        "--chip",
        "ascend-910b",
        "--model",
        "qwen3-8b",
        "--measured",
        p,
    ]);
    assert!(
        stdout(&sweep).contains("measured table `lab-910b`"),
        "{}",
        stdout(&sweep)
    );

    // A table for another pair is reported, not silently ignored.
    let out = dujiang(&[
        "profile",
        "--chip",
        "h20",
        "--model",
        "qwen3-8b",
        "--measured",
        p,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no table for qwen3-8b on h20 x1"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--engine` and `--dtype` pick the software half of the model; an overlay file (what
/// `dujiang calibrate` writes) replaces an engine's coefficients for one chip family.
#[test]
fn engine_dtype_and_engine_overlays_change_the_model() {
    let cat = Catalogue::embedded();
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["profile", "--json", "--prompt", "512", "--batch", "4"];
        all.extend_from_slice(args);
        let out = dujiang(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let ms = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();

    let old = json(&["--chip", "a100", "--model", "llama-3-8b"]);
    let new = json(&[
        "--chip",
        "a100",
        "--model",
        "llama-3-8b",
        "--engine",
        "vllm-0.20",
    ]);
    assert_eq!(old["engine"], "vllm-0.7");
    assert_eq!(new["engine"], "vllm-0.20");
    let lib = cat
        .perf("a100", Some("vllm-0.20"), "llama-3-8b", 1, None)
        .unwrap();
    assert_eq!(ms(&new, "prefill_ms"), lib.prefill_ns(512, 0) as f64 / 1e6);
    assert!(ms(&new, "decode_step_ms") < ms(&old, "decode_step_ms"));

    let fp8 = json(&["--chip", "h100", "--model", "llama-3-8b", "--dtype", "fp8"]);
    assert_eq!(fp8["dtype"], "fp8");
    let out = dujiang(&[
        "profile",
        "--chip",
        "a100",
        "--model",
        "llama-3-8b",
        "--dtype",
        "fp8",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("a100 has no fp8"), "{}", stderr(&out));
    let out = dujiang(&[
        "profile",
        "--chip",
        "h20",
        "--model",
        "llama-3-8b",
        "--engine",
        "mindie",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not run on `h20`"),
        "{}",
        stderr(&out)
    );

    // An overlay that only makes the decode step's host time 100 ms longer.
    let dir = scratch("overlay");
    let path = dir.join("fit.toml");
    let mut engines = cat.engines.clone();
    engines.engines.retain(|id, _| id == "vllm-0.20");
    let e = engines.engines.get_mut("vllm-0.20").unwrap();
    e.on.retain(|k, _| k == "ampere");
    let c = e.on.get_mut("ampere").unwrap();
    c.decode_step_overhead_us += 100_000.0;
    engines.default_engine.clear();
    std::fs::write(&path, toml::to_string(&engines).unwrap()).unwrap();
    let fitted = json(&[
        "--chip",
        "a100",
        "--model",
        "llama-3-8b",
        "--engine",
        "vllm-0.20",
        "--engines",
        path.to_str().unwrap(),
    ]);
    let added = ms(&fitted, "decode_step_ms") - ms(&new, "decode_step_ms");
    assert!((added - 100.0).abs() < 1e-3, "{added}");
    assert_eq!(ms(&fitted, "prefill_ms"), ms(&new, "prefill_ms"));

    std::fs::write(
        &path,
        "[engines.x]\nname = \"x\"\nsource = \"y\"\non = {}\n",
    )
    .unwrap();
    let out = dujiang(&[
        "profile",
        "--chip",
        "a100",
        "--model",
        "llama-3-8b",
        "--engines",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:", path.display())), "{err}");
    assert!(err.contains("engines.x.on"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
