//! `dujiang trace gen` and `trace stats` end to end: rates and shapes asked for, refusals
//! naming the flag, determinism by seed, generated days that shard, merge and replay: a
//! part of `trace_cli.rs`, whose helpers it shares.

use super::*;

fn stats_json(path: &str) -> serde_json::Value {
    serde_json::from_str(&stdout(&dujiang(&["trace", "stats", path, "--json"]))).unwrap()
}

#[test]
fn gen_gamma_has_the_rate_and_cv_asked_for() {
    let out = tmp("gamma.jsonl");
    let o = out.to_str().unwrap();
    stdout(&dujiang(&[
        "trace",
        "gen",
        "--process",
        "gamma",
        "--cv",
        "3",
        "--requests",
        "40000",
        "--rate",
        "50",
        "--seed",
        "7",
        "--out",
        o,
    ]));
    let s = stats_json(o);
    assert_eq!(s["requests"], 40_000);
    assert_eq!(s["format"], "jsonl");
    let rate = s["mean_rate_rps"].as_f64().unwrap();
    let cv = s["interarrival_cv"].as_f64().unwrap();
    assert!((rate / 50.0 - 1.0).abs() < 0.05, "rate {rate}");
    assert!((cv / 3.0 - 1.0).abs() < 0.08, "cv {cv}");
    // Lognormal medians from the Azure conversation fit: e^6.6333 ≈ 760, e^5.019 ≈ 151.
    let p50_in = s["input_tokens"]["p50"].as_f64().unwrap();
    let p50_out = s["output_tokens"]["p50"].as_f64().unwrap();
    assert!((p50_in / 760.0 - 1.0).abs() < 0.05, "input p50 {p50_in}");
    assert!((p50_out / 151.0 - 1.0).abs() < 0.05, "output p50 {p50_out}");
}

/// `trace gen` never writes a trace that replay refuses: none with no request, none with
/// an arrival past the readers' clock (a rate so low the generator saturated at 2^64 ns).
#[test]
fn gen_refuses_traces_the_readers_refuse() {
    let out = dujiang(&["trace", "gen", "--requests", "0", "--rate", "1"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --requests must be at least 1\n"
    );
    // Bad values are named by their flags (the generator's own messages cannot).
    for (args, want) in [
        (
            &["--rate", "0"][..],
            "error: --rate must be positive (requests per second), got 0\n",
        ),
        (
            &["--rate", "1", "--batch-fraction", "2"][..],
            "error: --batch-fraction must be in [0, 1], got 2\n",
        ),
        (
            &["--rate", "1", "--process", "gamma", "--cv", "0"][..],
            "error: --cv must be a positive number, got 0\n",
        ),
        // Flags that would do nothing are refused, not silently ignored.
        (
            &["--rate", "1", "--cv", "3"][..],
            "error: --cv applies to --process gamma only (the arrivals here are poisson): add --process gamma\n",
        ),
        (
            &["--rate", "1", "--process", "diurnal", "--cv", "3"][..],
            "error: --cv applies to --process gamma only (the arrivals here are diurnal): add --process gamma\n",
        ),
    ] {
        let mut all = vec!["trace", "gen", "--requests", "3"];
        all.extend_from_slice(args);
        let out = dujiang(&all);
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), want);
    }
    for (flag, value) in [("--cv", "3"), ("--process", "gamma")] {
        let out = dujiang(&["trace", "gen", "--day", "doubao", flag, value]);
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "error: {flag} does not apply to --day, whose arrivals follow its own day curve\n"
            )
        );
    }
    let out = dujiang(&["trace", "gen", "--requests", "3", "--rate", "1e-300"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: request 2: its arrival is past the 292 years of simulated time"),
        "{err}"
    );
}

#[test]
fn gen_is_deterministic_by_seed_and_writes_stdout() {
    let args = |seed: &'static str| {
        [
            "trace",
            "gen",
            "--requests",
            "300",
            "--rate",
            "10",
            "--seed",
            seed,
            "--prefix-share",
            "0.5",
            "--batch-fraction",
            "0.2",
        ]
    };
    let a = stdout(&dujiang(&args("3")));
    let b = stdout(&dujiang(&args("3")));
    let c = stdout(&dujiang(&args("4")));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.lines().count(), 300);
    assert!(a.starts_with("{\"arrival_ms\":0,"), "{}", &a[..80]);
    assert!(a.contains("\"priority\":\"batch\""));
    assert!(a.lines().all(|l| l.contains("\"hash_ids\":[")));
}

#[test]
fn gen_diurnal_over_a_day_averages_the_rate() {
    let out = tmp("diurnal.jsonl");
    let o = out.to_str().unwrap();
    // One day at 1 req/s on average.
    stdout(&dujiang(&[
        "trace",
        "gen",
        "--process",
        "diurnal",
        "--requests",
        "86400",
        "--rate",
        "1",
        "--seed",
        "2",
        "--out",
        o,
    ]));
    let s = stats_json(o);
    let hours = s["duration_s"].as_f64().unwrap() / 3600.0;
    assert!((hours / 24.0 - 1.0).abs() < 0.03, "{hours} h");
    // The daily cycle shows as burstiness: a modulated Poisson process has CV above 1.
    assert!(s["interarrival_cv"].as_f64().unwrap() > 1.05);
}

#[test]
fn stats_prints_a_table_for_people() {
    let text = stdout(&dujiang(&[
        "trace",
        "stats",
        data("burstgpt-handmade-v1.csv").to_str().unwrap(),
    ]));
    assert!(text.contains("format            burstgpt"), "{text}");
    assert!(text.contains("requests          37"), "{text}");
    assert!(text.contains("3 failed"), "{text}");
    assert!(text.contains("inter-arrival CV"), "{text}");
}

#[test]
fn stats_json_has_the_documented_keys() {
    let s = stats_json(data("mooncake-synthetic-head200.jsonl").to_str().unwrap());
    for key in [
        "file",
        "format",
        "requests",
        "duration_s",
        "mean_rate_rps",
        "interarrival_cv",
        "input_tokens",
        "output_tokens",
        "skipped_failed",
        "skipped_malformed",
        "out_of_order",
    ] {
        assert!(s.get(key).is_some(), "missing {key}: {s}");
    }
    assert_eq!(s["requests"], 200);
    assert_eq!(s["input_tokens"]["max"].as_u64().unwrap(), {
        let recs = read("mooncake-synthetic-head200.jsonl", Format::Auto).unwrap();
        u64::from(recs.iter().map(|r| r.prompt_tokens).max().unwrap())
    });
}

#[test]
fn stats_on_a_broken_file_fails_with_its_place() {
    let path = data("azure-broken.csv");
    let out = dujiang(&["trace", "stats", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("azure-broken.csv:5:29: ContextTokens"),
        "{err}"
    );

    let out = dujiang(&[
        "trace",
        "stats",
        path.to_str().unwrap(),
        "--skip-bad",
        "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["requests"], 4);
    assert_eq!(s["skipped_malformed"], 1);
}

#[test]
fn stats_with_an_explicit_format_and_bad_flags() {
    let path = data("azure-llm-2024-handmade.csv");
    let s: serde_json::Value = serde_json::from_str(&stdout(&dujiang(&[
        "trace",
        "stats",
        path.to_str().unwrap(),
        "--format",
        "azure",
        "--json",
    ])))
    .unwrap();
    assert_eq!(s["requests"], 10);
    let out = dujiang(&[
        "trace",
        "stats",
        path.to_str().unwrap(),
        "--format",
        "parquet",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown trace format"));
    let out = dujiang(&["trace", "gen", "--requests", "5", "--rate", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rate must be positive"));
}

// ---- trace gen --day ------------------------------------------------------------------

fn read_jsonl(path: &std::path::Path) -> Vec<TraceRecord> {
    open(path, Format::Jsonl, ReadOptions::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn gen_day(hours: &str, extra: &[&str], name: &str) -> Vec<TraceRecord> {
    let out = tmp(name);
    let mut args = vec![
        "trace",
        "gen",
        "--day",
        "doubao",
        "--scale",
        "1e-7",
        "--hours",
        hours,
        "--seed",
        "4",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    stdout(&dujiang(&args));
    read_jsonl(&out)
}

#[test]
fn gen_day_shards_and_hours_merge_to_the_whole_window() {
    let whole = gen_day("20-21.5", &[], "day-whole.jsonl");
    assert!(whole.len() > 100, "{} requests", whole.len());
    let h = 3_600 * NANOS_PER_SEC;
    assert!(whole
        .iter()
        .all(|r| (20 * h..21 * h + h / 2).contains(&r.arrival_ns)));
    // Multi-turn sessions: some session ids repeat, and every request has its block ids.
    let mut sessions: Vec<u64> = whole.iter().map(|r| r.session.unwrap()).collect();
    sessions.sort_unstable();
    sessions.dedup();
    assert!(sessions.len() < whole.len());
    assert!(whole
        .iter()
        .all(|r| r.hash_ids.len() as u32 == r.prompt_tokens.div_ceil(512)));

    let key = |r: &TraceRecord| (r.arrival_ns, r.session, r.prompt_tokens);
    let mut merged = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let part = gen_day(
            "20-21.5",
            &["--shard", &shard],
            &format!("day-shard-{i}.jsonl"),
        );
        assert!(!part.is_empty() && part.len() < whole.len());
        merged.extend(part);
    }
    merged.sort_by_key(key);
    assert_eq!(merged, whole);

    // Two adjacent hour windows (each with its own warm-up) give the same records.
    let mut halves = gen_day("20-21", &[], "day-h1.jsonl");
    halves.extend(gen_day("21-21.5", &[], "day-h2.jsonl"));
    assert_eq!(halves, whole);
}

#[test]
fn gen_day_output_replays() {
    let out = tmp("day-replay.jsonl");
    let o = out.to_str().unwrap();
    let args = [
        "trace", "gen", "--day", "doubao", "--scale", "1e-7", "--hours", "20-21", "--out", o,
    ];
    stdout(&dujiang(&args));
    let n = read_jsonl(&out).len();
    let json = tmp("day-replay.json");
    stdout(&dujiang(&[
        "replay",
        "--trace",
        o,
        "--json",
        json.to_str().unwrap(),
    ]));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Every generated request reaches the scheduler (a few long multi-turn contexts may be
    // refused by the demo fleet's pools, but are counted, not lost).
    let p = &v["policies"][0];
    assert_eq!(p["requests"], n as u64);
    let done = p["completed"].as_u64().unwrap() + p["rejected"].as_u64().unwrap();
    assert_eq!(done, n as u64);
    assert!(p["completed"].as_u64().unwrap() as f64 > 0.8 * n as f64);
}

#[test]
fn gen_day_errors_name_the_flag() {
    for (args, flag) in [
        (vec!["--day", "doubao", "--shard", "5/4"], "--shard"),
        (vec!["--day", "doubao", "--shard", "0/512"], "--shard"),
        (vec!["--day", "doubao", "--hours", "3-2"], "--hours"),
        (vec!["--day", "doubao", "--hours", "x"], "--hours"),
        (vec!["--day", "doubao", "--scale", "0"], "--scale"),
        (
            vec!["--day", "doubao", "--tokens-per-day", "0"],
            "--tokens-per-day",
        ),
        (vec!["--day", "doubao", "--rate", "3"], "--rate"),
        (
            vec!["--requests", "3", "--rate", "1", "--shard", "1/2"],
            "--shard",
        ),
        (vec!["--rate", "3"], "--requests"),
    ] {
        let mut all = vec!["trace", "gen"];
        all.extend(&args);
        let out = dujiang(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

/// `dujiang trace gen … | head`: a reader that closes the pipe ends the generator quietly
/// with 141, as SIGPIPE ends other tools. It used to fail with "error: writing the trace:
/// Broken pipe (os error 32)" and exit 1, as if the trace were at fault.
#[test]
fn trace_gen_into_a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(["trace", "gen", "--requests", "100000", "--rate", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}
