//! `dujiang plan --day` as a user runs it, at a tiny scale: it writes a fleet of `cells = 2`
//! that loads; its verification is exactly what `dujiang replay --day … --fleet <that file>`
//! reports for the day, and `--verify off` prints that same replay cut into `--shard I/N`
//! commands and their merge (sharded replay merging to the whole is tests/replay_shard.rs);
//! bad flags end with a message naming the flag, before anything is generated.
//!
//! The day is tiny (about 2,300 requests) but still a whole day: its generator opens one
//! random stream per minute per session bucket whatever the volume, which is most of the
//! time these tests take in a debug build.

use dujiang::fleet::FleetSpec;
use std::path::{Path, PathBuf};

mod cli_support;

use cli_support::{fails, ok, s};

fn tmp(name: &str) -> PathBuf {
    cli_support::tmp("plan-day", name)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The day's volume: about 2,400 requests over the day, 80 in cell 0's busiest hour.
const SCALE: &str = "1e-7";

/// A small sweep (two chips at tp 1, 2×2 size classes, short probes) of a tiny day.
fn plan_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "plan",
        "--day",
        "doubao",
        "--scale",
        SCALE,
        "--cells",
        "2",
        "--model",
        "qwen3-8b",
        "--chips",
        "h20,ascend-910b",
        "--max-tp",
        "1",
        "--buckets",
        "2",
        "--probe-requests",
        "50",
        "--probe-seconds",
        "20",
        "--split",
        "off",
        "--threads",
        "2",
    ];
    v.extend_from_slice(extra);
    v
}

/// The report's figures, without the wall time.
fn figures(report: &serde_json::Value) -> (serde_json::Value, serde_json::Value, String) {
    (
        report["policies"].clone(),
        report["cells"].clone(),
        report["trace"].as_str().unwrap().to_string(),
    )
}

#[test]
fn plan_day_writes_cells_and_its_verification_is_the_days_replay() {
    let (fleet, out, replayed) = (tmp("day.toml"), tmp("day.json"), tmp("replay.json"));
    let stdout = ok(&plan_args(&["--fleet-out", s(&fleet), "--json", s(&out)]));
    for says in [
        "planning cell 0 on 20-21 (auto",
        "whole fleet:",
        "tightest hours:",
    ] {
        assert!(stdout.contains(says), "no `{says}` in:\n{stdout}");
    }
    assert!(
        stdout.contains("plan HELD for the whole day") || stdout.contains("plan DID NOT HOLD"),
        "{stdout}"
    );

    // The fleet file is `cells = 2` of the planned cell, and loads.
    let spec = FleetSpec::load(&fleet).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.cells.count, 2);
    let plan = json(&out);
    assert_eq!(plan["kind"], "dujiang-day-plan/1");
    let cell_backends: u64 = plan["plan"]["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert!(cell_backends > 0);
    assert_eq!(plan["cell"]["backends"].as_u64(), Some(cell_backends));
    assert_eq!(plan["fleet"]["backends"].as_u64(), Some(2 * cell_backends));
    let cost = plan["plan"]["cost_per_hour_usd"].as_f64().unwrap();
    let fleet_cost = plan["fleet"]["cost_per_hour_usd"].as_f64().unwrap();
    assert!(
        (fleet_cost - 2.0 * cost).abs() < 1e-6,
        "{fleet_cost} vs 2 x {cost}"
    );

    // The verification is the day's replay on that file, as a separate run reports it.
    let verification = &plan["verification"];
    let report = &verification["report"];
    ok(&[
        "replay",
        "--day",
        "doubao",
        "--scale",
        SCALE,
        "--hours",
        "0-24",
        "--fleet",
        s(&fleet),
        "--json",
        s(&replayed),
    ]);
    let alone = json(&replayed);
    assert_eq!(figures(report), figures(&alone));
    let requests = report["policies"][0]["requests"].as_u64().unwrap();
    assert!(requests > 1000, "{requests} requests in the day");
    assert_eq!(verification["requests"].as_u64(), Some(requests));
    // The day's 24 hours are all judged, and the verdict is the SLO's.
    let hourly = report["policies"][0]["hourly"].as_array().unwrap();
    assert!(hourly.len() >= 24, "{} hours", hourly.len());
    let attainment = report["policies"][0]["slo_attainment"].as_f64().unwrap();
    if verification["held"].as_bool().unwrap() {
        assert!(attainment >= 0.99);
    }
    let below = verification["hours_below_target"].as_array().unwrap();
    let counted = hourly
        .iter()
        .filter(|h| h["requests"].as_u64() > Some(0))
        .filter(|h| h["slo_attainment"].as_f64().unwrap() < 0.99)
        .count();
    assert_eq!(below.len(), counted);
    assert_eq!(verification["tightest_hours"].as_array().unwrap().len(), 3);

    // The command it records (and prints) is that replay's.
    let command: Vec<&str> = plan["verify_command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        [
            "replay",
            "--day",
            "doubao",
            "--scale",
            SCALE,
            "--hours",
            "0-24",
            "--fleet",
            s(&fleet)
        ]
    );
}

#[test]
fn plan_day_verify_off_prints_the_sharded_replay() {
    let fleet = tmp("off.toml");
    let stdout = ok(&plan_args(&[
        "--fleet-out",
        s(&fleet),
        "--verify",
        "off",
        "--verify-shards",
        "2",
    ]));
    assert!(!stdout.contains("verifying:"), "{stdout}");
    let want = format!(
        "dujiang replay --day doubao --scale {SCALE} --hours 0-24 --fleet {}",
        s(&fleet)
    );
    for i in 0..2 {
        let line = format!("{want} --shard {i}/2 --partial-out day-part-{i}.json");
        assert!(stdout.contains(&line), "no `{line}` in:\n{stdout}");
    }
    assert!(
        stdout.contains("dujiang replay merge day-part-0.json day-part-1.json"),
        "{stdout}"
    );
    assert_eq!(FleetSpec::load(&fleet).unwrap().cells.count, 2);
}

#[test]
fn plan_day_bad_flags_name_the_flag() {
    let fleet = tmp("never.toml");
    let base = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec![
            "plan",
            "--day",
            "doubao",
            "--model",
            "qwen3-8b",
            "--chips",
            "h20,ascend-910b",
        ];
        v.extend_from_slice(extra);
        v
    };
    let f = Box::leak(fleet.display().to_string().into_boxed_str());
    for (extra, says) in [
        (
            vec!["--scale", "1e-7", "--cells", "0", "--fleet-out", f],
            "--cells must be from 1 to 65536, got 0",
        ),
        (
            vec![
                "--scale",
                "1e-7",
                "--tokens-per-day",
                "5e6",
                "--cells",
                "2",
                "--fleet-out",
                f,
            ],
            "--scale and --tokens-per-day both given",
        ),
        (
            vec!["--cells", "2", "--fleet-out", f],
            "--day needs the day's volume: --scale S",
        ),
        (
            vec!["--scale", "0", "--cells", "2", "--fleet-out", f],
            "--scale must be a positive number",
        ),
        (
            vec!["--tokens-per-day", "0", "--cells", "2", "--fleet-out", f],
            "--tokens-per-day must be a positive number",
        ),
        (
            vec!["--scale", "1e-7", "--fleet-out", f],
            "--day needs --cells N",
        ),
        (
            vec![
                "--scale",
                "1e-7",
                "--cells",
                "2",
                "--plan-hours",
                "23-25",
                "--fleet-out",
                f,
            ],
            "--plan-hours 23-25: past the end of the day",
        ),
        (
            vec![
                "--scale",
                "1e-7",
                "--cells",
                "2",
                "--plan-hours",
                "peak",
                "--fleet-out",
                f,
            ],
            "--plan-hours must be auto or A-B",
        ),
        (
            vec!["--scale", "1e-7", "--cells", "2"],
            "--day needs --fleet-out FILE",
        ),
        (
            vec![
                "--scale",
                "1e-7",
                "--cells",
                "2",
                "--rate-scale",
                "2",
                "--fleet-out",
                f,
            ],
            "--rate-scale does not go with --day",
        ),
        (
            vec![
                "--scale",
                "1e-7",
                "--cells",
                "2",
                "--verify-shards",
                "3",
                "--fleet-out",
                f,
            ],
            "--verify-shards 3: at most --cells (2)",
        ),
        (
            vec![
                "--scale",
                "1e-7",
                "--cells",
                "2",
                "--trace",
                "tests/data/azure-llm-2023-conv-head300.csv",
                "--fleet-out",
                f,
            ],
            "--trace",
        ),
    ] {
        fails(&base(&extra), says);
    }
    assert!(!fleet.exists(), "a refused plan wrote its fleet");
    // Without --day, the day's flags are refused as such.
    fails(
        &[
            "plan",
            "--trace",
            "tests/data/azure-llm-2023-conv-head300.csv",
            "--model",
            "qwen3-8b",
            "--chips",
            "h20",
            "--cells",
            "2",
        ],
        "--cells plans a generated day: it goes with --day doubao",
    );
}
