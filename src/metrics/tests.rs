//! Unit tests of the metrics catalogue: buckets, series present from the start, per-pool
//! recorders and their removal, exact summaries.

use super::*;

#[test]
fn histograms_render_with_explicit_buckets() {
    let m = Metrics::new();
    let h = m.pool(&"a".into(), &"h20".into(), &"least-load".into());
    h.ttft.record(0.2);
    h.ttft.record(3.0);
    let text = m.render();
    assert!(text.contains("dujiang_ttft_seconds_bucket{pool=\"a\",chip=\"h20\",policy=\"least-load\",le=\"0.25\"} 1"), "{text}");
    assert!(
        text.contains(
            "dujiang_ttft_seconds_count{pool=\"a\",chip=\"h20\",policy=\"least-load\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE dujiang_ttft_seconds histogram"),
        "{text}"
    );
    assert!(!text.contains("quantile="), "no summaries: {text}");
}

#[test]
fn outcomes_add_up_and_are_present_from_the_start() {
    let m = Metrics::new();
    let text = m.render();
    for o in Outcome::ALL {
        assert!(
            text.contains(&format!(
                "dujiang_requests_total{{outcome=\"{}\",frontend=\"grpc\"}} 0",
                o.as_str()
            )),
            "{text}"
        );
    }
    m.accepted(Frontend::Grpc);
    m.accepted(Frontend::Openai);
    m.ended(Outcome::Ok, Frontend::Grpc);
    m.ended(Outcome::Cancelled, Frontend::Openai);
    let text = m.render();
    assert!(
        text.contains("dujiang_requests_accepted_total{frontend=\"grpc\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dujiang_requests_accepted_total{frontend=\"openai\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dujiang_requests_total{outcome=\"ok\",frontend=\"grpc\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dujiang_requests_total{outcome=\"cancelled\",frontend=\"openai\"} 1"),
        "{text}"
    );
    assert!(text.contains("dujiang_in_flight_requests 0"), "{text}");
}

#[test]
fn router_retries_count_per_policy() {
    let m = Metrics::new();
    let lw: Arc<str> = "least-work".into();
    m.router_retry(&lw);
    m.router_retry(&lw);
    m.router_retry(&"power-of-two".into());
    let text = m.render();
    assert!(
        text.contains("dujiang_router_retries_total{policy=\"least-work\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("dujiang_router_retries_total{policy=\"power-of-two\"} 1"),
        "{text}"
    );
}

#[test]
fn two_daemons_do_not_share_counters() {
    let a = Metrics::new();
    let b = Metrics::new();
    a.shed("queue_full", Frontend::Openai);
    assert!(a
        .render()
        .contains("dujiang_requests_shed_total{reason=\"queue_full\",frontend=\"openai\"} 1"));
    assert!(b
        .render()
        .contains("dujiang_requests_shed_total{reason=\"queue_full\",frontend=\"openai\"} 0"));
}

#[test]
fn a_removed_pool_leaves_no_series_behind() {
    let m = Metrics::new();
    let d = PoolDescription {
        chip: "h20".into(),
        vendor: "NVIDIA".into(),
        model: "qwen3-8b".into(),
        engine: "vllm-0.7".into(),
        dtype: "bf16".into(),
        tp: 1,
        domestic: false,
        role: "mixed".into(),
        backends: 2,
        cost_usd_per_hour: 2.6,
    };
    let lw: Arc<str> = "least-work".into();
    let keep = m.add_pool("keep", &d, &lw);
    let gone = m.add_pool("gone", &d, &lw);
    keep.backend("keep-0");
    gone.backend("gone-0").running.set(3.0);
    gone.histograms(&lw).ttft.record(0.1);
    let text = m.render();
    assert!(
        text.contains("dujiang_backend_running_requests{backend=\"gone-0\",pool=\"gone\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("dujiang_pool_cost_usd_per_hour{pool=\"gone\"} 2.6"),
        "{text}"
    );
    // One header per family, however many pools hold it.
    assert_eq!(
        text.matches("# TYPE dujiang_ttft_seconds histogram")
            .count(),
        1,
        "{text}"
    );
    m.remove_pool("gone");
    let text = m.render();
    assert!(!text.contains("gone"), "{text}");
    assert!(text.contains("pool=\"keep\""), "{text}");
}

#[test]
fn summary_percentiles_are_exact_to_three_digits() {
    let s = LatencySummary::default();
    for i in 1..=1000u64 {
        s.record(&FinishedLatencies {
            ttft_ns: i * 1_000_000,
            e2e_ns: i * 2_000_000,
            ..Default::default()
        });
    }
    let snap = s.snapshot();
    assert_eq!(snap.completed, 1000);
    assert!((snap.ttft.p50 - 0.5).abs() < 0.001, "{:?}", snap.ttft);
    assert!((snap.ttft.p99 - 0.99).abs() < 0.001, "{:?}", snap.ttft);
    assert!((snap.ttft.p999 - 0.999).abs() < 0.001, "{:?}", snap.ttft);
    assert!((snap.e2e.max - 2.0).abs() < 0.002, "{:?}", snap.e2e);
}
