//! `dujiang replay --faults`: a fault plan runs in virtual time, the run says what it moved
//! and lost, every request is still accounted for, and a bad plan is refused with its
//! file, line and field named.

use std::path::PathBuf;
use std::process::Command;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn replay(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .arg("replay")
        .arg("--trace")
        .arg(data("azure-llm-2023-conv-head300.csv"))
        .args(["--rate-scale", "3", "--reproducible"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_fault_plan_moves_requests_and_loses_none() {
    let dir = std::env::temp_dir().join(format!("dujiang-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let plan = data("faults-h20-at-peak.toml");
    let out = replay(&[
        "--faults",
        plan.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("faults ["))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("4 applied"), "{line}");
    assert!(line.contains("0 lost"), "{line}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let p = &report["policies"][0];
    assert_eq!(p["requests"], 300);
    assert_eq!(p["completed"], 300);
    for pool in p["pools"].as_array().unwrap() {
        assert_eq!(pool["requests"], pool["completed"], "{pool}");
    }
    // Deterministic: the same plan gives the same report.
    let again = replay(&[
        "--faults",
        plan.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(again.status.success());
    let second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report, second);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_plan_names_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("dujiang-badfaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        "[[fault]]\nat_s = 1\npool = \"h20\"\nkind = \"fail\"\n\n[[fault]]\nat_s = 2\npool = \"h20\"\nkind = \"slowdown\"\n",
    )
    .unwrap();
    let out = replay(&["--faults", plan.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan.toml:6: field `fault[1].factor`: a slowdown needs a `factor`"),
        "{err}"
    );
    std::fs::write(
        &plan,
        "[[fault]]\nat_s = 1\nbackend = \"h20-7\"\nkind = \"fail\"\n",
    )
    .unwrap();
    let out = replay(&["--faults", plan.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("h20-7") && err.contains("h20-0"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A slowdown by a factor that divides no step time: every wait is measured on the fleet
/// clock without wrapping, so queue and latency percentiles stay within the run (before
/// the shared clock, queue p99 came out as 1.8×10^13 ms, or the debug build panicked).
#[test]
fn a_slowdown_gives_sane_queue_times() {
    let dir = std::env::temp_dir().join(format!("dujiang-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = dir.join("slow.toml");
    std::fs::write(
        &plan,
        "[[fault]]\nat_s = 10\npool = \"h20\"\nkind = \"slowdown\"\nfactor = 3.3\n",
    )
    .unwrap();
    let json = dir.join("slow.json");
    let out = replay(&[
        "--faults",
        plan.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let p = &report["policies"][0];
    assert_eq!(p["completed"], 300);
    let run_ms = p["simulated_seconds"].as_f64().unwrap() * 1000.0;
    for key in ["queue_ms", "ttft_ms", "e2e_ms"] {
        let p99 = p[key]["p99"].as_f64().unwrap();
        assert!(
            p99 >= 0.0 && p99 <= run_ms,
            "{key} p99 {p99} ms in a {run_ms} ms run"
        );
    }
}
