//! The Prometheus files under `deploy/prometheus/` as Prometheus itself sees them:
//! `promtool check config`, `promtool check rules` (and that it finds every rule written),
//! `promtool test rules` on the unit-test file, and a real Prometheus server that scrapes a
//! running daemon under a small bounded load, evaluates the recording rules every second,
//! and answers with values: p99 TTFT per pool, the domestic share, and a fleet cost rate
//! equal to the one the fleet code computes.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, which CI installs.

mod deploy_support;

use deploy_support::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo(""))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_config() {
    let out = promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    assert!(out.contains("is valid prometheus config file"), "{out}");
    // The config loads both rule files.
    for file in rule_files() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            out.contains(&format!("Checking deploy/prometheus/{name}")),
            "{out}"
        );
    }
}

#[test]
fn promtool_finds_every_rule_written() {
    for file in rule_files() {
        let path = file.strip_prefix(repo("")).unwrap().display().to_string();
        let out = promtool(&["check", "rules", &path]);
        let written = rule_names(&std::fs::read_to_string(&file).unwrap()).len();
        assert!(written > 0, "{path} has no rules");
        assert!(
            out.contains(&format!("SUCCESS: {written} rules found")),
            "{path}: expected {written} rules; promtool said:\n{out}"
        );
    }
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let out = promtool(&["test", "rules", "deploy/prometheus/tests/dujiang.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// One Prometheus query; the first sample's value, if any.
async fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={}", url_encode(q))).await;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let sample = v["data"]["result"].as_array()?.first()?;
    sample["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_the_rules_against_a_daemon_under_load() {
    let prometheus = tool("prometheus");
    // Round robin sends work to every pool, so every pool gets latency series.
    let d = start_daemon(
        "time_scale = 20.0\ngrace_period_ms = 2000\n",
        &["--policy", "round-robin"],
    )
    .await;

    // Bounded load: bursts of six short streams until the test stops it or a minute passes.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let grpc = d.grpc;
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(60);
            let mut sent = 0u32;
            while !stop.load(Relaxed) && Instant::now() < end {
                burst(grpc, 6).await;
                sent += 6;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sent
        })
    };

    let dir = TempDir::new("prometheus");
    let rules: Vec<String> = rule_files()
        .iter()
        .map(|f| format!("  - {}\n", f.display()))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n{}\
         scrape_configs:\n  - job_name: dujiang\n    static_configs:\n      - targets: ['{}']\n",
        rules.concat(),
        d.http
    );
    std::fs::write(dir.0.join("prometheus.yml"), config).unwrap();
    // Prometheus picks its own port and logs it (at info level, so no --log.level=warn).
    let (child, prom, _log) = spawn_prometheus(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .stdout(Stdio::null()),
    )
    .await;
    let _server = Process(child);

    let ready = eventually(Duration::from_secs(30), async || {
        tokio::net::TcpStream::connect(prom).await.is_ok()
            && http_get(prom, "/-/ready").await.0 == 200
    })
    .await;
    assert!(ready, "prometheus did not become ready on {prom}");

    let limit = Duration::from_secs(60);
    let mut p99 = None;
    let got = eventually(limit, async || {
        p99 = query(prom, "max(pool:dujiang_ttft_seconds:p99_5m)")
            .await
            .filter(|v| v.is_finite());
        p99.is_some()
    })
    .await;
    assert!(
        got,
        "pool:dujiang_ttft_seconds:p99_5m yielded no value within {limit:?}"
    );
    let p99 = p99.unwrap();
    assert!(p99 > 0.0 && p99 < 300.0, "p99 TTFT {p99} s");

    // The demo fleet has Ascend and Cambricon pools besides H20, and round robin spreads
    // tokens over all of them.
    let mut share = None;
    assert!(
        eventually(limit, async || {
            share = query(prom, "dujiang:domestic_token_share:ratio_rate5m")
                .await
                .filter(|v| v.is_finite());
            share.is_some()
        })
        .await,
        "domestic share yielded no value"
    );
    let share = share.unwrap();
    assert!(share > 0.0 && share < 1.0, "domestic share {share}");

    // The cost rate the rules derive equals the fleet's own figure (from the daemon's
    // per-pool cost gauges, served or idle).
    let pools = dujiang::fleet::FleetSpec::embedded_demo()
        .resolve(&dujiang::profile::Catalogue::embedded())
        .expect("demo fleet resolves");
    let expected = dujiang::fleet::SpendSplit::of(&pools).total_usd_per_hour;
    let mut cost = None;
    let matched = eventually(limit, async || {
        cost = query(prom, "dujiang:cost_usd_per_hour").await;
        cost.is_some_and(|c| (c - expected).abs() < 1e-9)
    })
    .await;
    assert!(matched, "cost rate {cost:?}, fleet says {expected} USD/h");

    // Every rule loaded and evaluated without error (bad vector matching, for one, only
    // shows up at evaluation time).
    let written: usize = rule_files()
        .iter()
        .map(|f| rule_names(&std::fs::read_to_string(f).unwrap()).len())
        .sum();
    let mut report = String::new();
    let healthy = eventually(Duration::from_secs(20), async || {
        let (_, body) = http_get(prom, "/api/v1/rules").await;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        report = format!("{} rules loaded; not ok: {bad:?}", rules.len());
        rules.len() == written && bad.is_empty()
    })
    .await;
    assert!(healthy, "expected {written} healthy rules: {report}");

    stop.store(true, Relaxed);
    let sent = load.await.unwrap();
    assert!(sent > 0);
    eprintln!(
        "recorded: max p99 TTFT {p99:.4} s, domestic share {share:.3}, cost {expected} USD/h, \
         {written} rules ok, {sent} requests sent"
    );
}
