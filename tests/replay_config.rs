//! One set of admission limits: the daemon's config defaults, `dujiang replay` and
//! `dujiang plan` start from the same [`AdmissionConfig::default`], and `dujiang replay
//! --config FILE` reads the daemon's own config file so a replay sheds what that daemon
//! would.

use dujiang::admission::AdmissionConfig;
use dujiang::fleet::{FleetSpec, PolicySpec};
use dujiang::plan::{ReplayJob, Timing};
use dujiang::profile::Catalogue;
use dujiang::request::Slo;
use dujiang::serve::{ServeConfig, DEFAULT_CONFIG_TOML};
use dujiang::sim::ReplayConfig;
use dujiang::trace::{self, Format, ReadOptions, TraceRecord};
use std::path::PathBuf;
use std::process::Command;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dujiang-replay-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `dujiang replay` on the Azure excerpt at `rate` times its rate; the JSON report's one
/// policy, or the failure's stderr.
fn replay(rate: &str, extra: &[&str]) -> Result<serde_json::Value, String> {
    let json = tmp(&format!(
        "r-{rate}-{}.json",
        extra.join("_").replace('/', "_")
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(["replay", "--trace"])
        .arg(data("azure-llm-2023-conv-head300.csv"))
        .args(["--rate-scale", rate, "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    Ok(v["policies"][0].clone())
}

#[test]
fn daemon_replay_and_plan_share_one_default() {
    let printed = ServeConfig::parse(DEFAULT_CONFIG_TOML, "default").unwrap();
    assert_eq!(printed.admission, AdmissionConfig::default());
    assert_eq!(ServeConfig::default().admission, AdmissionConfig::default());
    assert_eq!(
        ReplayConfig::default().admission,
        AdmissionConfig::default()
    );
    // The planner's replays admit by the same rule: at 30x the excerpt's rate they shed
    // by prediction, as the daemon would.
    let records: Vec<TraceRecord> = trace::open(
        data("azure-llm-2023-conv-head300.csv"),
        Format::Auto,
        ReadOptions::default(),
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    let job = ReplayJob {
        pools: FleetSpec::embedded_demo()
            .resolve(&Catalogue::embedded())
            .unwrap(),
        policy: PolicySpec {
            name: "predicted-latency".into(),
            params: toml::Table::new(),
        },
        seed: 1,
        slo: Slo::default(),
        records: records.into(),
        timing: Timing::Scaled(30.0),
    };
    let report = job.run().unwrap();
    assert!(
        report.stats.rejected_by_reason.get("slo_unmeetable") > Some(&0),
        "{:?}",
        report.stats
    );
}

#[test]
fn replay_takes_the_daemons_config_file() {
    // By default replay sheds as the default daemon does.
    let default = replay("30", &[]).unwrap();
    let shed = default["rejected_by_reason"]["slo_unmeetable"]
        .as_u64()
        .unwrap();
    assert!(shed > 0, "{default}");
    // The printed default config is the default.
    let printed = tmp("default.toml");
    std::fs::write(&printed, DEFAULT_CONFIG_TOML).unwrap();
    let same = replay("30", &["--config", printed.to_str().unwrap()]).unwrap();
    assert_eq!(same["rejected_by_reason"], default["rejected_by_reason"]);
    assert_eq!(same["ttft_ms"], default["ttft_ms"]);
    // A daemon that does not shed by prediction but holds few requests.
    let tight = tmp("tight.toml");
    std::fs::write(
        &tight,
        "grace_period_ms = 1000\n[admission]\nslo_shed_factor = 0.0\nmax_in_flight = 40\n\
         [reliability]\nmigration_retries = 0\n",
    )
    .unwrap();
    let r = replay("30", &["--config", tight.to_str().unwrap()]).unwrap();
    let reasons = r["rejected_by_reason"].as_object().unwrap();
    assert!(!reasons.contains_key("slo_unmeetable"), "{r}");
    assert!(reasons["queue_full"].as_u64().unwrap() > 0, "{r}");
    // Its fleet and policy apply unless the flags name others.
    let fleet = tmp("fleet.toml");
    std::fs::write(
        &fleet,
        format!(
            "fleet = {:?}\npolicy = \"round-robin\"\n",
            data("serve_four_h20.toml")
        ),
    )
    .unwrap();
    let r = replay("1", &["--config", fleet.to_str().unwrap()]).unwrap();
    assert_eq!(r["policy"], "round-robin");
    assert_eq!(r["pools"][0]["backends"], 4, "{r}");
    let r = replay(
        "1",
        &[
            "--config",
            fleet.to_str().unwrap(),
            "--policy",
            "least-work",
        ],
    )
    .unwrap();
    assert_eq!(r["policy"], "least-work");
}

#[test]
fn a_bad_config_is_named_by_file_line_and_key() {
    let bad = tmp("bad.toml");
    std::fs::write(&bad, "[admission]\nslo_shed_factor = -1.0\n").unwrap();
    let err = replay("1", &["--config", bad.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("bad.toml:2") && err.contains("admission.slo_shed_factor"),
        "{err}"
    );
    std::fs::write(&bad, "[admission]\nmax_waiting = 3\n").unwrap();
    let err = replay("1", &["--config", bad.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("bad.toml:2") && err.contains("max_waiting"),
        "{err}"
    );
}
