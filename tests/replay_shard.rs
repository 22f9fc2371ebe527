//! Fleets of cells and sharded replay, as a user runs them: a fleet file with `cells = N`
//! replays each cell on its own slice of the traffic and reports the whole fleet; the same
//! replay cut into 2, 3 or 4 processes (`--shard I/N --partial-out`) and added up by
//! `dujiang replay merge` writes byte for byte the JSON of the single process; a file
//! trace split by the partition hash and the generated day's own cells are the same cells;
//! bad cells, shards and partials end with a clear message.

use std::path::{Path, PathBuf};

const TRACE: &str = "tests/data/azure-llm-2023-conv-head300.csv";

mod cli_support;

use cli_support::{fails, ok, s};

fn tmp(name: &str) -> PathBuf {
    cli_support::tmp("replay-shard", name)
}

/// A two-pool fleet cut into `cells` cells.
fn fleet(name: &str, cells: u32) -> PathBuf {
    let path = tmp(name);
    std::fs::write(
        &path,
        format!(
            "name = \"cells\"\nmodel = \"llama-3-8b\"\ncells = {cells}\ncell_key = \"session\"\n\n\
             [pools.h20]\nchip = \"h20\"\ncount = 1\n\n[pools.ascend]\nchip = \"ascend-910b\"\ncount = 1\n"
        ),
    )
    .unwrap();
    path
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes shard `shard` of a replay of [`TRACE`] on `fleet` to the partial file `out`.
fn write_partial(fleet: &Path, shard: &str, out: &Path) {
    ok(&[
        "replay",
        "--trace",
        TRACE,
        "--fleet",
        s(fleet),
        "--shard",
        shard,
        "--partial-out",
        s(out),
    ]);
}

/// Replays `source` in one process and in `n` shards merged; returns both JSON texts.
fn one_and_merged(source: &[&str], fleet: &Path, n: u32, tag: &str) -> (String, String) {
    let one = tmp(&format!("{tag}-one.json"));
    let mut args: Vec<&str> = vec!["replay"];
    args.extend(source);
    args.extend(["--fleet", s(fleet), "--reproducible"]);
    let mut whole = args.clone();
    whole.extend(["--json", s(&one)]);
    ok(&whole);
    let parts: Vec<PathBuf> = (0..n)
        .map(|i| tmp(&format!("{tag}-part-{i}-of-{n}.json")))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let shard = format!("{i}/{n}");
        let mut a = args.clone();
        a.extend(["--shard", &shard, "--partial-out", s(part)]);
        let out = ok(&a);
        assert!(out.contains(&format!("shard {i}/{n}")), "{out}");
    }
    let merged = tmp(&format!("{tag}-merged-{n}.json"));
    let mut m = vec!["replay", "merge", "--reproducible", "--json", s(&merged)];
    // Any order.
    m.extend(parts.iter().rev().map(|p| s(p)));
    let out = ok(&m);
    assert!(out.contains(&format!("merged {n} shard(s)")), "{out}");
    (
        std::fs::read_to_string(&one).unwrap(),
        std::fs::read_to_string(&merged).unwrap(),
    )
}

#[test]
fn shards_of_a_trace_merge_to_the_single_process_report_byte_for_byte() {
    let f = fleet("six.toml", 6);
    let source = [
        "--trace",
        TRACE,
        "--rate-scale",
        "6",
        "--policy",
        "least-work",
        "--policy",
        "predicted-latency",
    ];
    let mut first = None;
    // 2 and 3 divide the 6 cells; 4 does not (shards of 2, 2, 1 and 1 cells): all exact.
    for n in [2, 3, 4] {
        let (one, merged) = one_and_merged(&source, &f, n, "trace");
        assert_eq!(one, merged, "{n} shards");
        first.get_or_insert(one);
    }
    let v: serde_json::Value = serde_json::from_str(first.as_ref().unwrap()).unwrap();
    // The whole fleet is 6 cells of one H20 and one 910B, all 300 requests served.
    assert_eq!(v["cells"]["count"], 6);
    assert_eq!(v["cells"]["key"], "session");
    assert!(v["cells"]["assumption"]
        .as_str()
        .unwrap()
        .contains("never crosses cells"));
    assert_eq!(v["cells"]["fleet"]["backends"], 12);
    assert_eq!(v["cells"]["fleet"]["chips"]["h20"], 6);
    assert_eq!(v["cells"]["cell"]["chips"]["ascend-910b"], 1);
    let cell_cost = v["cells"]["cell"]["cost_per_hour_usd"].as_f64().unwrap();
    let fleet_cost = v["cells"]["fleet"]["cost_per_hour_usd"].as_f64().unwrap();
    assert!(
        (fleet_cost - 6.0 * cell_cost).abs() < 1e-6,
        "{fleet_cost} vs {cell_cost}"
    );
    assert_eq!(
        v["cells"]["cell"]["domestic_spend_share"],
        v["cells"]["fleet"]["domestic_spend_share"]
    );
    for p in v["policies"].as_array().unwrap() {
        assert_eq!(p["requests"], 300, "{p}");
        assert_eq!(p["completed"], 300);
        let backends: u64 = p["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pool| pool["backends"].as_u64().unwrap())
            .sum();
        assert_eq!(backends, 12);
        let routed: u64 = p["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["arrivals"].as_u64().unwrap())
            .sum();
        assert_eq!(routed, 300);
    }
}

#[test]
fn a_generated_day_shards_exactly_and_its_cells_are_the_hash_cells_of_its_file() {
    let f = fleet("four.toml", 4);
    let day = [
        "--day",
        "doubao",
        "--scale",
        "2e-7",
        "--hours",
        "0-2",
        "--day-seed",
        "5",
    ];
    let (one, merged) = one_and_merged(&day, &f, 2, "day");
    assert_eq!(one, merged);
    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    let requests = v["policies"][0]["requests"].as_u64().unwrap();
    assert!(requests > 50, "{requests} requests");
    assert!(
        v["trace"].as_str().unwrap().starts_with("doubao day"),
        "{}",
        v["trace"]
    );
    // SLO attainment by hour of arrival, over all cells.
    let hourly = v["policies"][0]["hourly"].as_array().unwrap();
    assert_eq!(hourly.len(), 2, "{hourly:?}");
    let by_hour: u64 = hourly.iter().map(|h| h["requests"].as_u64().unwrap()).sum();
    assert_eq!(by_hour, requests);
    assert_eq!(v["day_start_hour"], 0.0);
    let mut a: Vec<&str> = vec!["replay"];
    a.extend(day);
    a.extend(["--fleet", s(&f)]);
    let table = ok(&a);
    assert!(
        table.contains("SLO tightest (by hour of arrival): 0"),
        "{table}"
    );

    // The same hours written to a file and replayed on the same cells: the file is split by
    // the partition hash, the generator made each cell alone; the reports agree.
    let file = tmp("day-h0.jsonl");
    ok(&[
        "trace",
        "gen",
        "--day",
        "doubao",
        "--scale",
        "2e-7",
        "--hours",
        "0-2",
        "--seed",
        "5",
        "--out",
        s(&file),
    ]);
    let from_file = tmp("day-h0-file.json");
    ok(&[
        "replay",
        "--trace",
        s(&file),
        "--fleet",
        s(&f),
        "--reproducible",
        "--json",
        s(&from_file),
    ]);
    let mut w = json(&from_file);
    w["trace"] = v["trace"].clone();
    w["day_start_hour"] = v["day_start_hour"].clone();
    assert_eq!(w, v);

    // One cell alone is the traffic of that cell only: the shard's partial counts exactly
    // the file's records whose session hashes into cell 1 of 4.
    let part = tmp("day-cell1.json");
    ok(&[
        "replay",
        "--trace",
        s(&file),
        "--fleet",
        s(&f),
        "--shard",
        "1/4",
        "--partial-out",
        s(&part),
    ]);
    let p = json(&part);
    assert_eq!(p["cells"], serde_json::json!([1]));
    let text = std::fs::read_to_string(&file).unwrap();
    let in_cell = text
        .lines()
        .filter(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            dujiang::trace::cell_of(r["session"].as_u64().unwrap(), 4) == 1
        })
        .count() as u64;
    assert_eq!(p["runs"][0]["requests"].as_u64().unwrap(), in_cell);
    assert!(in_cell > 0 && in_cell < requests);
}

#[test]
fn bad_cells_shards_and_partials_are_refused_clearly() {
    let f = fleet("two.toml", 2);
    let bad = tmp("bad-cells.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("cells = 2", "cells = 0"),
    )
    .unwrap();
    fails(
        &["replay", "--trace", TRACE, "--fleet", s(&bad)],
        &format!(
            "{}:3:1: field `cells`: 0: a fleet has at least 1 cell",
            s(&bad)
        ),
    );
    let user = tmp("user-cells.toml");
    std::fs::write(
        &user,
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("\"session\"", "\"user\""),
    )
    .unwrap();
    fails(
        &["replay", "--trace", TRACE, "--fleet", s(&user)],
        &format!("{}:4:1: field `cell_key`", s(&user)),
    );
    fails(
        &[
            "replay",
            "--trace",
            TRACE,
            "--fleet",
            s(&f),
            "--shard",
            "0/4",
            "--partial-out",
            s(&tmp("x.json")),
        ],
        "the fleet has 2 cell(s)",
    );
    fails(
        &[
            "replay",
            "--trace",
            TRACE,
            "--shard",
            "2/2",
            "--partial-out",
            "x.json",
        ],
        "bad shard `2/2`",
    );
    fails(
        &["replay", "--trace", TRACE, "--shard", "0/1"],
        "--partial-out",
    );
    // A day's parameters with a trace file are refused, not quietly ignored.
    for flag in [
        ["--scale", "1"],
        ["--hours", "1-2"],
        ["--tokens-per-day", "1e9"],
        ["--day-seed", "3"],
    ] {
        fails(
            &["replay", "--trace", TRACE, flag[0], flag[1]],
            &format!("{} applies to a generated day: add --day doubao", flag[0]),
        );
    }
    fails(
        &[
            "replay",
            "--trace",
            TRACE,
            "--fleet",
            s(&f),
            "--faults",
            "tests/data/faults-h20-at-peak.toml",
        ],
        "does not go with `cells` > 1",
    );

    let (p0, p1) = (tmp("m-0.json"), tmp("m-1.json"));
    write_partial(&f, "0/2", &p0);
    write_partial(&f, "1/2", &p1);
    fails(&["replay", "merge", s(&p0)], "shard 1/2 is missing");
    fails(
        &["replay", "merge", s(&p0), s(&p0)],
        "shard 0/2 given twice",
    );
    let other = tmp("m-other.json");
    ok(&[
        "replay",
        "--trace",
        TRACE,
        "--fleet",
        s(&f),
        "--seed",
        "9",
        "--shard",
        "1/2",
        "--partial-out",
        s(&other),
    ]);
    fails(&["replay", "merge", s(&p0), s(&other)], "other inputs");
    let garbage = tmp("m-garbage.json");
    std::fs::write(&garbage, "{\"kind\": 3}").unwrap();
    fails(
        &["replay", "merge", s(&garbage)],
        "not a `dujiang replay --shard` partial report",
    );
    ok(&["replay", "merge", s(&p1), s(&p0)]);
}

/// Every integer in `v`, as a JSON pointer.
fn integer_pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Number(n) if n.is_u64() => out.push(at),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                integer_pointers(x, format!("{at}/{i}"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                integer_pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        _ => {}
    }
}

#[test]
fn a_corrupted_counter_in_a_partial_is_refused_naming_file_and_field_never_a_panic() {
    let f = fleet("fuzz.toml", 2);
    let parts: Vec<PathBuf> = (0..2).map(|i| tmp(&format!("fuzz-{i}.json"))).collect();
    for (i, part) in parts.iter().enumerate() {
        write_partial(&f, &format!("{i}/2"), part);
    }
    let originals: Vec<serde_json::Value> = parts.iter().map(|p| json(p)).collect();
    let bad: Vec<PathBuf> = (0..2).map(|i| tmp(&format!("fuzz-bad-{i}.json"))).collect();
    let write = |docs: &[serde_json::Value]| {
        for (doc, path) in docs.iter().zip(&bad) {
            std::fs::write(path, doc.to_string()).unwrap();
        }
    };

    // The reported case: one shard's request count set to 2^64 - 1.
    let mut docs = originals.clone();
    docs[0]["runs"][0]["requests"] = u64::MAX.into();
    write(&docs);
    let policy = docs[0]["runs"][0]["policy"].as_str().unwrap().to_string();
    let arrivals = docs[1]["runs"][0]["requests"].as_u64().unwrap();
    fails(
        &["replay", "merge", s(&bad[0]), s(&bad[1])],
        &format!(
            "merging the shards: adding {} to {}: runs[0] (policy `{policy}`): requests: {} + {arrivals} overflows u64",
            s(&bad[1]),
            s(&bad[0]),
            u64::MAX
        ),
    );
    // A histogram whose counts sum past u64 when added up across the shards.
    let mut docs = originals.clone();
    for doc in &mut docs {
        doc["runs"][0]["tallies"][0]["ttft"] = serde_json::json!([[1000, u64::MAX / 2 + 1]]);
    }
    write(&docs);
    fails(
        &["replay", "merge", s(&bad[0]), s(&bad[1])],
        "runs[0] (policy",
    );
    fails(
        &["replay", "merge", s(&bad[0]), s(&bad[1])],
        "tallies[0].ttft: 9223372036854775808 + 9223372036854775808 samples overflow u64",
    );

    // Fuzz-ish, bounded: set integers picked by a fixed LCG (in one shard or in both) to
    // values near the limits; the merge may succeed or refuse, but never panic.
    let mut pointers = Vec::new();
    integer_pointers(&originals[0], String::new(), &mut pointers);
    assert!(pointers.len() > 100, "{}", pointers.len());
    let values = [u64::MAX, u64::MAX / 2 + 1, u64::from(u32::MAX), 1 << 32, 0];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut refused = 0;
    for round in 0..60 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let ptr = &pointers[(x >> 33) as usize % pointers.len()];
        let value = values[(x >> 20) as usize % values.len()];
        let mut docs = originals.clone();
        for doc in docs.iter_mut().take(if round % 2 == 0 { 1 } else { 2 }) {
            if let Some(slot) = doc.pointer_mut(ptr) {
                *slot = value.into();
            }
        }
        write(&docs);
        let out = cli_support::dujiang(&["replay", "merge", s(&bad[0]), s(&bad[1])]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c <= 1) && !stderr.contains("panicked"),
            "{ptr} = {value}: exit {:?}\n{stderr}",
            out.status
        );
        refused += usize::from(!out.status.success());
    }
    assert!(
        refused > 0,
        "no mutation was refused: the fuzzing tests nothing"
    );
}
