//! `dujiang replay` as a user runs it: the real binary on trace excerpts shipped in
//! tests/data, checking the report's JSON contract, determinism, the HTML file and the
//! errors for bad input.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dujiang"))
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dujiang-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run dujiang");
    assert!(
        out.status.success(),
        "dujiang failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn replay_compares_policies_and_writes_the_json_contract() {
    let json = tmp("compare.json");
    let html = tmp("compare.html");
    let stdout = run_ok(
        bin()
            .args(["replay", "--trace"])
            .arg(data("azure-llm-2023-conv-head300.csv"))
            .args([
                "--policy",
                "round-robin",
                "--policy",
                "least-work",
                "--json",
            ])
            .arg(&json)
            .arg("--html")
            .arg(&html),
    );
    assert!(
        stdout.contains("round-robin") && stdout.contains("least-work"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["policies", "simulated_seconds", "wall_seconds"] {
        assert!(v.get(key).is_some(), "top-level key {key} missing");
    }
    let policies = v["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    for p in policies {
        for key in [
            "policy",
            "requests",
            "completed",
            "rejected",
            "ttft_ms",
            "tpot_ms",
            "e2e_ms",
            "queue_ms",
            "slo_attainment",
            "goodput_rps",
            "output_tokens_per_s",
            "cost_usd",
            "domestic_token_share",
            "pools",
            "preempted",
        ] {
            assert!(p.get(key).is_some(), "policy key {key} missing");
        }
        for h in ["ttft_ms", "tpot_ms", "e2e_ms", "queue_ms"] {
            for q in ["p50", "p90", "p99", "p999"] {
                assert!(p[h][q].as_f64().is_some(), "{h}.{q}");
            }
        }
        assert_eq!(p["requests"], 300);
        assert_eq!(
            p["completed"].as_u64().unwrap() + p["rejected"].as_u64().unwrap(),
            300
        );
        for pool in p["pools"].as_array().unwrap() {
            for key in [
                "pool",
                "chip",
                "requests",
                "ttft_ms",
                "busy_fraction",
                "cost_usd",
            ] {
                assert!(pool.get(key).is_some(), "pool key {key} missing");
            }
        }
        assert!(p["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("TTFT CDF") && !page.contains("<script"));
}

#[test]
fn replay_defaults_to_the_demo_fleet_and_is_byte_reproducible() {
    let (a, b) = (tmp("a.json"), tmp("b.json"));
    for out in [&a, &b] {
        run_ok(
            bin()
                .args(["replay", "--reproducible", "--seed", "9", "--trace"])
                .arg(data("mooncake-synthetic-head200.jsonl"))
                .arg("--json")
                .arg(out),
        );
    }
    let (ja, jb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ja, jb, "same inputs and seed must give byte-identical JSON");
    let v: serde_json::Value = serde_json::from_slice(&ja).unwrap();
    assert_eq!(v["fleet"], "demo");
    assert_eq!(
        v["policies"][0]["policy"], "predicted-latency",
        "the demo fleet's policy"
    );
}

#[test]
fn rate_scale_raises_load() {
    let (slow, fast) = (tmp("slow.json"), tmp("fast.json"));
    for (out, scale) in [(&slow, "1"), (&fast, "8")] {
        run_ok(
            bin()
                .args([
                    "replay",
                    "--policy",
                    "round-robin",
                    "--rate-scale",
                    scale,
                    "--trace",
                ])
                .arg(data("azure-llm-2023-conv-head300.csv"))
                .arg("--json")
                .arg(out),
        );
    }
    let read = |p: &PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (s, f) = (read(&slow), read(&fast));
    assert!(f["simulated_seconds"].as_f64().unwrap() < s["simulated_seconds"].as_f64().unwrap());
    assert!(
        f["policies"][0]["queue_ms"]["p99"].as_f64().unwrap()
            >= s["policies"][0]["queue_ms"]["p99"].as_f64().unwrap()
    );
}

#[test]
fn bad_input_is_named() {
    let out = bin()
        .args(["replay", "--trace"])
        .arg(data("azure-broken.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("azure-broken.csv:"),
        "error names the file and line: {err}"
    );

    let out = bin()
        .args(["replay", "--policy", "fastest-please", "--trace"])
        .arg(data("azure-llm-2023-conv-head300.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fastest-please") && err.contains("least-work"),
        "{err}"
    );

    let out = bin()
        .args(["replay", "--trace", "/nonexistent/trace.csv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/trace.csv"));
}

/// Replay refuses what the daemon refuses, before routing, with the same check: on the
/// demo fleet (llama-3-8b, 8,192-token context) every Mooncake excerpt request whose
/// prompt fills the context is refused, not served.
#[test]
fn replay_refuses_prompts_past_the_models_context_as_the_daemon_does() {
    let trace = data("mooncake-synthetic-head200.jsonl");
    let (mut past, mut output_past) = (0u64, 0u64);
    for line in std::fs::read_to_string(&trace).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (i, o) = (
            v["input_length"].as_u64().unwrap(),
            v["output_length"].as_u64().unwrap(),
        );
        if i >= 8192 {
            past += 1;
        } else if i + o > 8192 {
            output_past += 1;
        }
    }
    assert!(past > 50, "the excerpt has long prompts: {past}");
    let json = tmp("context.json");
    run_ok(
        bin()
            .args(["replay", "--reproducible", "--trace"])
            .arg(&trace)
            .arg("--json")
            .arg(&json),
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let p = &v["policies"][0];
    let reasons = &p["rejected_by_reason"];
    assert_eq!(
        reasons["invalid_prompt_too_long"].as_u64().unwrap_or(0),
        past
    );
    assert_eq!(
        reasons["invalid_output_too_long"].as_u64().unwrap_or(0),
        output_past
    );
    assert_eq!(p["completed"].as_u64().unwrap(), 200 - past - output_past);
}

/// A reader that closes the pipe before the report is printed (`dujiang replay … | head`)
/// ends the command quietly with 141, as SIGPIPE ends other tools, not with a panic and a
/// backtrace from `println!`.
#[test]
fn a_closed_stdout_ends_quietly_without_a_panic() {
    use std::process::Stdio;
    let mut child = bin()
        .args(["replay", "--trace"])
        .arg(data("azure-llm-2023-conv-head300.csv"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the replay has printed anything: every write to stdout fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

/// The fleet file's policy, when it cannot be built, is blamed on the fleet file's lines
/// (it was a bare "unknown policy" with no file); a `--policy` name on the flag.
#[test]
fn a_fleet_files_bad_policy_names_the_file_and_line() {
    let fleet = tmp("bad-policy.toml");
    let src = "name = \"x\"\nmodel = \"llama-3-8b\"\n[policy]\nname = \"least_work\"\n[pools.h20]\nchip = \"h20\"\ncount = 1\n";
    let trace = data("azure-llm-2023-conv-head300.csv");
    for (text, place) in [
        (
            src.to_string(),
            "bad-policy.toml:4:1: field `policy.name`: unknown policy `least_work`",
        ),
        (
            src.replace(
                "least_work\"\n",
                "least-work\"\n[policy.params]\nsampel = 2\n",
            ),
            "bad-policy.toml:6:1: field `policy.params.sampel`",
        ),
    ] {
        std::fs::write(&fleet, text).unwrap();
        let out = bin()
            .args(["replay", "--trace"])
            .arg(&trace)
            .arg("--fleet")
            .arg(&fleet)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(place), "{err}");
    }
    let out = bin()
        .args(["replay", "--policy", "least_work", "--trace"])
        .arg(&trace)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--policy: unknown policy `least_work`"),
        "{err}"
    );
}

/// What the trace held that was not replayed as written is said, not left silent: broken
/// lines skipped under --skip-bad-lines (with the first), arrivals clamped because they go
/// backwards; and a trace with no request at all is an error, not a report of zeros.
#[test]
fn skipped_and_clamped_lines_are_reported_and_an_empty_trace_is_refused() {
    let out = bin()
        .args(["replay", "--skip-bad-lines", "--trace"])
        .arg(data("azure-broken.csv"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped 1 broken line(s) (--skip-bad-lines); the first: ")
            && err.contains("azure-broken.csv:5:29: ContextTokens"),
        "{err}"
    );

    let header = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
    let backwards = tmp("backwards.csv");
    std::fs::write(
        &backwards,
        format!("{header}2023-11-16 18:15:46.0,374,44\n2023-11-16 18:15:40.0,374,44\n"),
    )
    .unwrap();
    let out = bin()
        .arg("replay")
        .arg("--trace")
        .arg(&backwards)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backwards.csv: 1 arrival(s) earlier than the line before them"),
        "{err}"
    );

    for (name, text) in [("empty.csv", ""), ("header-only.csv", header)] {
        let path = tmp(name);
        std::fs::write(&path, text).unwrap();
        let out = bin()
            .arg("replay")
            .arg("--trace")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{name}: holds no request")), "{err}");
    }
}

/// A negative number given to a flag reaches the command's own check, which names the flag
/// and the value; clap took it for a flag and said "unexpected argument '-1' found".
#[test]
fn a_negative_value_gets_the_commands_own_check() {
    let out = bin()
        .args(["replay", "--rate-scale", "-1", "--trace"])
        .arg(data("azure-llm-2023-conv-head300.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "error: --rate-scale must be a positive number, got -1\n"
    );
}
