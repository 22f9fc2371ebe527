//! `dujiang compare --max-diff PCT` as a check, through the binary: past the limit it exits
//! non-zero and names each figure (policy, printed name and `--metric` key); within it, it
//! exits 0; `--metric` limits the check; a mistyped metric is an error, not a pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn report(policy: &str, ttft_p99: f64, e2e_p50: f64) -> dujiang::sim::Report {
    let mut stats = dujiang::sim::Stats {
        requests: 50,
        completed: 50,
        slo_attainment: 1.0,
        goodput_rps: 3.0,
        ..Default::default()
    };
    stats.ttft_ms.p99 = ttft_p99;
    stats.e2e_ms.p50 = e2e_p50;
    dujiang::sim::Report {
        source: "replay".into(),
        trace: "t.csv".into(),
        fleet: "demo".into(),
        policies: vec![dujiang::sim::PolicyReport {
            policy: policy.into(),
            stats,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Fresh report files for each call: tests run in parallel threads of one process.
fn files() -> (PathBuf, PathBuf) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dujiang-compare-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    std::fs::write(&a, report("least-work", 400.0, 5000.0).to_json()).unwrap();
    std::fs::write(&b, report("least-work", 480.0, 5100.0).to_json()).unwrap();
    (a, b)
}

fn compare(extra: &[&str]) -> (Output, String, String) {
    let (a, b) = files();
    compare_files(&a, &b, extra)
}

fn compare_files(a: &Path, b: &Path, extra: &[&str]) -> (Output, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .arg("compare")
        .arg(a)
        .arg(b)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stdout, stderr)
}

#[test]
fn max_diff_fails_naming_the_figure_past_it() {
    // TTFT p99 is 20% higher in B, E2E p50 2%.
    let (out, stdout, stderr) = compare(&["--max-diff", "10"]);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("policy least-work"),
        "the table is still printed: {stdout}"
    );
    assert!(
        stderr.contains("--max-diff 10%")
            && stderr.contains("least-work TTFT p99 ms (ttft-p99): A 400.000, B 480.000, +20.0%"),
        "{stderr}"
    );
    assert!(!stderr.contains("E2E p50"), "within the limit: {stderr}");

    let (out, stdout, stderr) = compare(&["--max-diff", "25"]);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("every checked figure is within 25%"),
        "{stdout}"
    );

    // Only the chosen figures are checked.
    let (out, _, stderr) = compare(&["--max-diff", "10", "--metric", "e2e-p50"]);
    assert!(out.status.success(), "{stderr}");
    let (out, _, stderr) = compare(&["--max-diff", "1", "--metric", "e2e-p50"]);
    assert!(
        !out.status.success() && stderr.contains("(e2e-p50)"),
        "{stderr}"
    );
}

#[test]
fn a_bad_check_is_an_error_not_a_pass() {
    let (out, stdout, stderr) = compare(&["--max-diff", "10", "--metric", "ttft-p98"]);
    assert!(!out.status.success());
    assert!(
        stdout.is_empty(),
        "nothing printed before the error: {stdout}"
    );
    assert!(
        stderr.contains("unknown metric `ttft-p98`") && stderr.contains("ttft-p99"),
        "{stderr}"
    );
    let (out, _, stderr) = compare(&["--max-diff", "-5"]);
    assert!(
        !out.status.success() && stderr.contains("not -5"),
        "{stderr}"
    );
    // --metric without --max-diff would silently check nothing.
    let (out, _, stderr) = compare(&["--metric", "ttft-p99"]);
    assert!(
        !out.status.success() && stderr.contains("--max-diff"),
        "{stderr}"
    );
}

/// A load report of `report`'s figures whose client sent `late` of 200 requests late.
fn load_report(late: u64) -> String {
    dujiang::loadgen::LoadReport {
        report: report("least-work", 480.0, 5100.0),
        load: dujiang::loadgen::LoadSummary {
            target: "http://127.0.0.1:8000".into(),
            time_scale: 10.0,
            late_after_ms: 10.0,
            scheduled: 200,
            sent: 200,
            late_sent: late,
            ..Default::default()
        },
    }
    .to_json()
}

#[test]
fn a_load_client_that_fell_behind_is_named_as_a_cause() {
    let (a, b) = files();
    let run = |extra: &[&str]| {
        let (out, stdout, stderr) = compare_files(&a, &b, extra);
        (out.status.success(), stdout, stderr)
    };
    // 12 of 200 late (6%): a note under the table, and the failed check says the
    // difference may be the client's.
    std::fs::write(&b, load_report(12)).unwrap();
    let (ok, stdout, stderr) = run(&["--max-diff", "10"]);
    assert!(!ok);
    let note = "the load client fell behind: 12 of 200 requests were sent more than 10 ms late or not at all (6.0%)";
    assert!(
        stdout.contains(note) && stdout.contains("note: B ("),
        "{stdout}"
    );
    assert!(
        stderr.contains("may be the load client's, not the server's") && stderr.contains(note),
        "{stderr}"
    );
    // Within the limit the note is still printed; the check passes.
    let (ok, stdout, _) = run(&["--max-diff", "25"]);
    assert!(ok && stdout.contains(note), "{stdout}");
    // 1 of 200 (0.5%) is within what a load test normally has: no note, no blame.
    std::fs::write(&b, load_report(1)).unwrap();
    let (ok, stdout, stderr) = run(&["--max-diff", "10"]);
    assert!(!ok);
    assert!(!stdout.contains("fell behind"), "{stdout}");
    assert!(!stderr.contains("load client"), "{stderr}");
}
