//! The dashboard and the Prometheus rules query only what the daemon emits: the real
//! `dujiang serve` binary is started, given traffic (some of it shed), and scraped; every
//! `dujiang_*` name in `deploy/grafana/dujiang.json` and `deploy/prometheus/*.rules.yml`
//! must be a series in that scrape (histograms only through `_bucket`/`_sum`/`_count`), and
//! every recorded `level:metric:operation` name they use must be defined by a rule.
//! Dashboards that query metrics the code never emits are the failure this prevents.
//!
//! Also checked here: the rules hold no copies of catalogue facts (which chips are
//! domestic, what a chip-hour costs); they read them from the daemon.

mod deploy_support;

use deploy_support::*;
use std::collections::BTreeSet;

/// Low admission limits so a burst of requests sheds some, making the shed counter appear.
const SERVE_TOML: &str =
    "time_scale = 20.0\ngrace_period_ms = 2000\n\n[admission]\nmax_in_flight = 4\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_use_is_emitted() {
    let d = start_daemon(SERVE_TOML, &[]).await;
    let shed = burst(d.grpc, 12).await;
    assert!(
        shed > 0,
        "a burst of 12 over a limit of 4 in flight sheds some"
    );
    let (code, text) = http_get(d.http, "/metrics").await;
    assert_eq!(code, 200);
    let scrape = Scrape::parse(&text);

    let q = deploy_queries();
    assert!(
        q.raw.len() >= 15,
        "the extractor found too few metric names to be working: {:?}",
        q.raw
    );
    let mut problems = Vec::new();
    for (name, file) in &q.raw {
        if let Err(why) = scrape.check(name) {
            problems.push(format!("{file}: {why}"));
        }
    }
    for (name, file) in &q.recorded_used {
        if !q.recorded_defined.contains(name) {
            problems.push(format!(
                "{file}: `{name}` is not defined by any recording rule"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nscrape:\n{text}",
        problems.join("\n")
    );

    // The dashboard covers what issue 8 asks it to show.
    let dash_names: BTreeSet<&str> = q
        .raw
        .iter()
        .filter(|(_, f)| f.ends_with(".json"))
        .map(|(n, _)| n.as_str())
        .collect();
    for wanted in [
        "dujiang_requests_total",
        "dujiang_ttft_seconds_bucket",
        "dujiang_inter_token_seconds_bucket",
        "dujiang_e2e_seconds_bucket",
        "dujiang_queue_seconds_bucket",
        "dujiang_router_decision_seconds_bucket",
        "dujiang_backend_kv_usage_ratio",
        "dujiang_backend_running_requests",
        "dujiang_backend_waiting_requests",
        "dujiang_requests_shed_total",
        "dujiang_slo_violations_total",
    ] {
        assert!(dash_names.contains(wanted), "dashboard lacks {wanted}");
    }
}

#[test]
fn the_name_checker_rejects_what_prometheus_would_not_find() {
    let scrape = Scrape::parse(
        "# TYPE dujiang_ttft_seconds histogram\n\
         dujiang_ttft_seconds_bucket{le=\"1\"} 1\n\
         dujiang_ttft_seconds_sum 0.5\n\
         dujiang_ttft_seconds_count 1\n\
         # TYPE dujiang_requests_total counter\n\
         dujiang_requests_total{outcome=\"ok\",frontend=\"grpc\"} 1\n",
    );
    assert!(scrape.check("dujiang_ttft_seconds_bucket").is_ok());
    assert!(scrape.check("dujiang_ttft_seconds_count").is_ok());
    assert!(scrape.check("dujiang_requests_total").is_ok());
    let bare = scrape.check("dujiang_ttft_seconds").unwrap_err();
    assert!(bare.contains("is a histogram"), "{bare}");
    assert!(scrape.check("dujiang_requests_total_count").is_err());
    assert!(scrape.check("dujiang_ttft_seconds_bucket_bucket").is_err());

    let expr = r#"sum by (pool) (rate(dujiang_e2e_seconds_count{chip=~"h20"}[5m])) / pool:dujiang_tokens:rate5m"#;
    assert_eq!(
        raw_metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["dujiang_e2e_seconds_count"]
    );
    assert_eq!(
        recorded_names(&format!("- record: {expr}"))
            .into_iter()
            .collect::<Vec<_>>(),
        ["pool:dujiang_tokens:rate5m"]
    );
}

/// The rules copy no catalogue facts: which chips are domestic and what a chip-hour costs
/// come from the daemon's `dujiang_pool_info` and `dujiang_pool_cost_usd_per_hour` (whose
/// values `tests/serve_metrics.rs` checks against the catalogue), so a catalogue change
/// or a pool on a new chip needs no rule edit and idle pools are not priced at $0.
#[test]
fn rules_read_chips_and_prices_from_the_daemon() {
    let catalogue = dujiang::profile::Catalogue::embedded();
    for file in rule_files() {
        let body = without_comments(&std::fs::read_to_string(&file).unwrap());
        for chip in catalogue.chips.keys() {
            assert!(
                !body.contains(&format!("\"{chip}\"")) && !body.contains(&format!("{chip}|")),
                "{}: names chip {chip}; read dujiang_pool_info instead",
                file.display()
            );
        }
        assert!(
            !body.contains("label_replace(vector("),
            "{}: hard-coded prices",
            file.display()
        );
    }
    let rules = read("deploy/prometheus/dujiang.rules.yml");
    for used in ["dujiang_pool_info", "dujiang_pool_cost_usd_per_hour"] {
        assert!(
            rules.contains(used),
            "dujiang.rules.yml does not read {used}"
        );
    }
}
