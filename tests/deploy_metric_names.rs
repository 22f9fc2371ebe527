//! The dashboard and the Prometheus rules query only what the daemon emits: the real
//! `dujiang serve` binary is started, given traffic (some of it shed), and scraped; every
//! `dujiang_*` name in `deploy/grafana/dujiang.json` and `deploy/prometheus/*.rules.yml`
//! must be a series in that scrape (histograms only through `_bucket`/`_sum`/`_count`), and
//! every recorded `level:metric:operation` name they use must be defined by a rule.
//! Dashboards that query metrics the code never emits are the failure this prevents.
//!
//! Also checked here: the rules' copies of catalogue facts (which chips are domestic, what
//! a chip-hour costs) agree with the embedded chip catalogue.

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
         dujiang_requests_total{outcome=\"ok\"} 1\n",
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

/// The text between `marker` and the end of its rule's `expr` block.
fn rule_expr<'a>(rules: &'a str, record: &str) -> &'a str {
    let start = rules
        .find(&format!("- record: {record}\n"))
        .unwrap_or_else(|| panic!("no recording rule {record}"));
    let rest = &rules[start + 1..];
    let end = rest.find("\n      - ").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn rule_copies_of_the_chip_catalogue_match_it() {
    let rules = read("deploy/prometheus/dujiang.rules.yml");
    let catalogue = dujiang::profile::Catalogue::embedded();

    let share = rule_expr(&rules, "dujiang:domestic_token_share:ratio_rate5m");
    let regex = share
        .split("chip=~\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("domestic share selects chips by a regex");
    let in_rule: BTreeSet<&str> = regex.split('|').collect();
    let domestic: BTreeSet<&str> = catalogue
        .chips
        .values()
        .filter(|c| c.domestic)
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(
        in_rule, domestic,
        "the domestic chip list in dujiang.rules.yml must equal `domestic = true` in config/chips.toml"
    );

    let prices = rule_expr(&rules, "dujiang:chip_price_usd_per_hour");
    let mut seen = BTreeSet::new();
    for part in prices.split("label_replace(vector(").skip(1) {
        let price: f64 = part.split(')').next().unwrap().parse().unwrap();
        let chip = part.split('"').nth(3).expect("chip name");
        let spec = catalogue
            .chip(chip)
            .unwrap_or_else(|| panic!("rule prices unknown chip {chip}"));
        assert_eq!(
            price, spec.price_per_hour_usd,
            "price of {chip} in dujiang.rules.yml"
        );
        seen.insert(chip.to_string());
    }
    let all: BTreeSet<String> = catalogue.chips.keys().cloned().collect();
    assert_eq!(seen, all, "every catalogue chip has a price in the rules");
}
