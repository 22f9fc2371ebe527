//! `dujiang plan` as a user runs it, on the first 300 requests of the Azure conversation
//! trace (tests/data): the fleet file it writes loads with `FleetSpec` and runs under
//! `dujiang replay`; the JSON carries the plan; sharded sweeps merged with `plan merge`
//! give the same plan as one run; impossible inputs end with a clear message and exit 1.

use dujiang::fleet::FleetSpec;
use dujiang::profile::Catalogue;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TRACE: &str = "tests/data/azure-llm-2023-conv-head300.csv";

fn dujiang(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("runs the binary")
}

/// A small sweep: two chips at tp 1, 2×2 size classes, short probes, four times the rate
/// so that the fleet needs several backends.
fn plan_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "plan",
        "--trace",
        TRACE,
        "--model",
        "llama-3-8b",
        "--chips",
        "h20,ascend-910b",
        "--max-tp",
        "1",
        "--buckets",
        "2",
        "--probe-requests",
        "100",
        "--probe-seconds",
        "30",
        "--rate-scale",
        "4",
        "--min-domestic-share",
        "0.3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    dujiang(&refs)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dujiang-plan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn plan_writes_a_fleet_that_replay_loads_and_shards_merge_to_the_same_plan() {
    let (fleet, plan_json, html) = (tmp("fleet.toml"), tmp("plan.json"), tmp("plan.html"));
    let stdout = ok(&run(&plan_args(&[
        "--fleet-out",
        fleet.to_str().unwrap(),
        "--json",
        plan_json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ])));
    assert!(
        stdout.contains("cost frontier by domestic-share floor"),
        "{stdout}"
    );
    let plan = json(&plan_json);
    let cost = plan["cost_per_hour_usd"].as_f64().unwrap();
    assert!(cost > 0.0);
    assert!(plan["domestic_share"].as_f64().unwrap() >= 0.3);
    assert!(plan["predicted"]["slo_attainment"].as_f64().unwrap() >= 0.99);
    assert_eq!(plan["frontier"].as_array().unwrap().len(), 4);
    let pools = plan["pools"].as_array().unwrap();
    assert!(pools
        .iter()
        .all(|p| p["chip"].is_string() && p["tp"] == 1 && p["count"].as_u64() > Some(0)));
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));

    let spec = FleetSpec::load(&fleet).unwrap_or_else(|e| panic!("{e}"));
    let resolved = spec.resolve(&Catalogue::embedded()).unwrap();
    let fleet_cost: f64 = resolved.iter().map(|p| p.cost_per_hour_usd()).sum();
    assert!((fleet_cost - cost).abs() < 1e-6, "{fleet_cost} vs {cost}");
    let replay = ok(&dujiang(&[
        "replay",
        "--trace",
        TRACE,
        "--fleet",
        fleet.to_str().unwrap(),
        "--rate-scale",
        "4",
    ]));
    assert!(replay.contains("predicted-latency"), "{replay}");

    // The same sweep in two shards, merged.
    let parts: Vec<PathBuf> = (0..2).map(|i| tmp(&format!("part-{i}.json"))).collect();
    for (i, part) in parts.iter().enumerate() {
        let shard = format!("{i}/2");
        let out = ok(&run(&plan_args(&[
            "--shard",
            &shard,
            "--json",
            part.to_str().unwrap(),
        ])));
        assert!(out.contains(&format!("shard {i}/2")), "{out}");
    }
    let merged_json = tmp("merged.json");
    let merged_fleet = tmp("merged.toml");
    ok(&dujiang(&[
        "plan",
        "merge",
        parts[0].to_str().unwrap(),
        parts[1].to_str().unwrap(),
        "--json",
        merged_json.to_str().unwrap(),
        "--fleet-out",
        merged_fleet.to_str().unwrap(),
    ]));
    let merged = json(&merged_json);
    for key in [
        "cost_per_hour_usd",
        "pools",
        "frontier",
        "predicted",
        "capacity",
    ] {
        assert_eq!(merged[key], plan[key], "{key}");
    }
    assert_eq!(
        std::fs::read_to_string(&merged_fleet).unwrap(),
        std::fs::read_to_string(&fleet).unwrap()
    );

    // A shard missing, or the same one twice, is refused.
    let err = dujiang(&["plan", "merge", parts[0].to_str().unwrap()]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("shard 1/2 is missing"));
    let err = dujiang(&[
        "plan",
        "merge",
        parts[0].to_str().unwrap(),
        parts[0].to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("given twice"));
    // A corrupted replay count is refused naming the file and field, never a panic.
    let mut doc = json(&parts[1]);
    doc["replays"] = u64::MAX.into();
    let corrupted = tmp("part-1-corrupted.json");
    std::fs::write(&corrupted, doc.to_string()).unwrap();
    let err = dujiang(&[
        "plan",
        "merge",
        parts[0].to_str().unwrap(),
        corrupted.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert_eq!(err.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: replays: {} + ",
            corrupted.display(),
            u64::MAX
        )) && stderr.contains("overflows u64"),
        "{stderr}"
    );
}

fn fails_with(args: &[String], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

#[test]
fn impossible_inputs_exit_with_a_clear_message() {
    let mut unknown = plan_args(&[]);
    let chips = unknown.iter().position(|a| a == "--chips").unwrap() + 1;
    unknown[chips] = "h20,ascend-9100".into();
    fails_with(&unknown, "unknown chip `ascend-9100`");

    let mut too_big = plan_args(&[]);
    let model = too_big.iter().position(|a| a == "--model").unwrap() + 1;
    too_big[model] = "deepseek-v3".into();
    fails_with(&too_big, "fits on none of the chips");

    fails_with(&plan_args(&["--slo", "ttft_p99<=5ms"]), "SLO unreachable");
    fails_with(
        &plan_args(&["--slo", "ttft_p95<=1s"]),
        "unknown percentile `p95`",
    );

    let mut foreign = plan_args(&[]);
    foreign[chips] = "h20".into();
    fails_with(&foreign, "none of the chips is domestic");
}

/// The plan also searches prefill/decode splits (on by default) and prints the cheapest
/// aggregated and the cheapest split fleet side by side; the split one really runs a
/// prefill and a decode pool (the replay hands prefills off), and `--split-fleet-out`
/// writes it as a fleet file that replays within the SLO; `--split off` drops it.
#[test]
fn plan_puts_the_cheapest_split_fleet_beside_the_aggregated_one() {
    let (plan_json, split_fleet) = (tmp("split.json"), tmp("split.toml"));
    let stdout = ok(&run(&plan_args(&[
        "--json",
        plan_json.to_str().unwrap(),
        "--split-fleet-out",
        split_fleet.to_str().unwrap(),
    ])));
    assert!(
        stdout.contains("aggregated vs prefill/decode split"),
        "{stdout}"
    );
    let agg_row = stdout.lines().find(|l| l.starts_with("aggregated "));
    let split_row = stdout.lines().find(|l| l.starts_with("split "));
    assert!(agg_row.is_some() && split_row.is_some(), "{stdout}");
    assert!(
        stdout.contains("142 Gb/s"),
        "link assumption named: {stdout}"
    );
    assert!(stdout.contains("splitting"), "a verdict: {stdout}");
    let plan = json(&plan_json);
    let d = &plan["disaggregated"];
    assert!(d["cost_per_hour_usd"].as_f64().unwrap() > 0.0, "{d}");
    assert_eq!(d["roles"], serde_json::json!(["prefill", "decode"]), "{d}");
    assert!(d["handoffs"].as_u64().unwrap() > 0, "{d}");
    assert!(d["slo_attainment"].as_f64().unwrap() >= 0.99, "{d}");
    assert!(d["domestic_share"].as_f64().unwrap() >= 0.3 - 1e-9, "{d}");
    assert!(d["prefill"]["count"].as_u64().unwrap() >= 1);
    assert!(d["decode"]["count"].as_u64().unwrap() >= 1);
    assert!(split_row.unwrap().contains("P:D"), "{stdout}");

    // `--split-fleet-out` writes that fleet: it loads with its roles and link, costs what
    // the plan says, and replayed on the same trace, rate and SLO it meets the SLO.
    let spec = FleetSpec::load(&split_fleet).unwrap_or_else(|e| panic!("{e}"));
    let resolved = spec.resolve(&Catalogue::embedded()).unwrap();
    let roles: Vec<&str> = resolved.iter().map(|p| p.role.as_str()).collect();
    assert_eq!(roles, ["prefill", "decode"]);
    assert_eq!(spec.policy.name, "disaggregated");
    spec.link_table(&resolved).unwrap();
    let fleet_cost: f64 = resolved.iter().map(|p| p.cost_per_hour_usd()).sum();
    let split_cost = d["cost_per_hour_usd"].as_f64().unwrap();
    assert!(
        (fleet_cost - split_cost).abs() < 0.01,
        "{fleet_cost} vs {split_cost}"
    );
    let replay_json = tmp("split-replay.json");
    ok(&dujiang(&[
        "replay",
        "--trace",
        TRACE,
        "--fleet",
        split_fleet.to_str().unwrap(),
        "--rate-scale",
        "4",
        "--slo-ttft-ms",
        "2000",
        "--slo-tpot-ms",
        "100",
        "--json",
        replay_json.to_str().unwrap(),
    ]));
    let replayed = &json(&replay_json)["policies"][0];
    assert_eq!(replayed["policy"], "disaggregated", "{replayed}");
    assert!(replayed["handoffs"].as_u64().unwrap() > 0, "{replayed}");
    let attained = replayed["slo_attainment"].as_f64().unwrap();
    assert!(
        attained >= 0.99,
        "the written split fleet attains {attained}"
    );

    // Off: no split row, and so no split fleet to write (a clear error, no file).
    let none = tmp("none.toml");
    let off = run(&plan_args(&[
        "--split",
        "off",
        "--split-fleet-out",
        none.to_str().unwrap(),
    ]));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&off.stdout),
        String::from_utf8_lossy(&off.stderr),
    );
    assert!(!stdout.contains("prefill/decode split"), "{stdout}");
    assert!(
        !off.status.success() && stderr.contains("--split-fleet-out"),
        "{stderr}"
    );
    assert!(!none.exists());
    let bad = run(&plan_args(&["--split", "maybe"]));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("expected on or off"),
        "{stderr}"
    );
}

/// An output the plan cannot write is refused before planning, not after it: a plan of
/// minutes ended in "writing …: No such file or directory".
#[test]
fn an_output_that_cannot_be_written_is_refused_before_planning() {
    let args = plan_args(&["--fleet-out", "/nonexistent-dujiang-dir/f.toml"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = dujiang(&args);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --fleet-out /nonexistent-dujiang-dir/f.toml: there is no directory /nonexistent-dujiang-dir to write it in\n"
    );
    assert!(out.stdout.is_empty(), "nothing planned");
    assert!(started.elapsed().as_secs() < 30);
}

/// `--max-tp 0` is refused as a value, not reported as a model that fits on none of the
/// chips "at tensor parallelism up to 0".
#[test]
fn max_tp_zero_is_a_bad_value() {
    let out = dujiang(&[
        "plan",
        "--trace",
        TRACE,
        "--model",
        "llama-3-8b",
        "--chips",
        "h20",
        "--max-tp",
        "0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: invalid value '0' for '--max-tp <MAX_TP>': 0 is not in 1.."),
        "{err}"
    );
}
