//! Replay tests: hand-computable cases, conservation of requests, determinism, and a
//! heterogeneous fleet on which the speed-aware policies beat round-robin.

use super::*;
use crate::fleet::PoolConfig;
use crate::profile::fixtures::{h20, llama3_8b};
use crate::profile::PerfModel;
use crate::trace::{ArrivalProcess, SynthConfig, SyntheticTrace, TraceRecord};
use std::convert::Infallible;
use std::sync::Arc;

fn pool(name: &str, count: u32, speed: f64) -> PoolConfig {
    let mut chip = h20();
    chip.id = name.into();
    chip.bf16_tflops *= speed;
    chip.bandwidth_tbps *= speed;
    let perf = Arc::new(PerfModel::new(&chip, &llama3_8b(), 1).unwrap());
    PoolConfig::new(name, perf, count)
}

fn replay(pools: Vec<PoolConfig>, policy: &str, trace: Vec<TraceRecord>) -> PolicyReport {
    let policy = crate::policy::build(policy, &toml::Table::new(), 7).unwrap();
    Replay::new(pools, policy, ReplayConfig::default())
        .unwrap()
        .run(trace.into_iter().map(Ok::<_, Infallible>))
        .unwrap()
}

fn synthetic(rate: f64, n: usize, seed: u64) -> Vec<TraceRecord> {
    SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, rate, seed))
        .unwrap()
        .take(n)
        .collect()
}

#[test]
fn one_request_on_an_idle_backend_has_the_perf_models_ttft() {
    let pools = vec![pool("a", 1, 1.0)];
    let perf = pools[0].perf.clone();
    let rec = TraceRecord {
        arrival_ns: 5_000_000,
        prompt_tokens: 1500,
        output_tokens: 3,
        ..Default::default()
    };
    let r = replay(pools, "round-robin", vec![rec]);
    assert_eq!((r.stats.requests, r.stats.completed), (1, 1));
    let ttft_ms = perf.prefill_ns(1500, 0) as f64 / 1e6;
    // HdrHistogram keeps 3 significant digits.
    assert!(
        (r.stats.ttft_ms.p50 - ttft_ms).abs() / ttft_ms < 2e-3,
        "{} vs {ttft_ms}",
        r.stats.ttft_ms.p50
    );
    let e2e_ms = (perf.prefill_ns(1500, 0)
        + perf.decode_step_ns(1, 1501)
        + perf.decode_step_ns(1, 1502)) as f64
        / 1e6;
    assert!((r.stats.e2e_ms.p50 - e2e_ms).abs() / e2e_ms < 2e-3);
    assert_eq!(
        r.stats.queue_ms.p50, 0.001,
        "no queueing on an idle backend (1 µs floor)"
    );
    assert_eq!(r.stats.output_tokens, 3);
    assert_eq!(r.pools[0].stats.completed, 1);
}

#[test]
fn every_request_is_completed_or_rejected_and_counted_once() {
    let pools = vec![pool("a", 2, 1.0), pool("b", 2, 0.5)];
    let trace = synthetic(6.0, 2_000, 3);
    for policy in [
        "round-robin",
        "least-work",
        "predicted-latency",
        "prefix-affinity",
    ] {
        let r = replay(pools.clone(), policy, trace.clone());
        assert_eq!(r.stats.requests, 2_000, "{policy}");
        assert_eq!(r.stats.completed + r.stats.rejected, 2_000, "{policy}");
        let per_pool: u64 = r.pools.iter().map(|p| p.stats.completed).sum();
        assert_eq!(per_pool, r.stats.completed, "{policy}");
        let tokens: u64 = trace.iter().map(|t| u64::from(t.output_tokens)).sum();
        assert_eq!(
            r.stats.output_tokens, tokens,
            "{policy}: every output token generated"
        );
        assert!(r
            .pools
            .iter()
            .all(|p| p.busy_fraction > 0.0 && p.busy_fraction <= 1.0));
    }
}

#[test]
fn same_inputs_and_seed_give_identical_reports() {
    let pools = vec![pool("a", 3, 1.0), pool("b", 3, 0.4)];
    let trace = synthetic(8.0, 1_500, 11);
    for policy in ["random", "power-of-two", "least-work"] {
        let a = serde_json::to_string(&replay(pools.clone(), policy, trace.clone())).unwrap();
        let b = serde_json::to_string(&replay(pools.clone(), policy, trace.clone())).unwrap();
        assert_eq!(a, b, "{policy}");
    }
}

#[test]
fn speed_aware_policies_beat_round_robin_on_a_mixed_fleet() {
    // A fast pool and one at a quarter of its speed; round-robin overloads the slow one.
    let pools = vec![pool("fast", 2, 1.0), pool("slow", 2, 0.25)];
    let trace = synthetic(5.0, 3_000, 5);
    let rr = replay(pools.clone(), "round-robin", trace.clone());
    for policy in ["least-work", "predicted-latency"] {
        let smart = replay(pools.clone(), policy, trace.clone());
        assert!(
            smart.stats.ttft_ms.p99 < rr.stats.ttft_ms.p99,
            "{policy} p99 TTFT {} vs round-robin {}",
            smart.stats.ttft_ms.p99,
            rr.stats.ttft_ms.p99
        );
        let fast_share = smart.pools[0].stats.requests as f64 / smart.stats.requests as f64;
        assert!(
            fast_share > 0.5,
            "{policy} sends {fast_share:.2} to the fast pool"
        );
    }
}

#[test]
fn timeline_and_cdfs_cover_the_run() {
    let r = replay(
        vec![pool("a", 2, 1.0)],
        "least-work",
        synthetic(4.0, 800, 2),
    );
    let arrivals: u64 = r.timeline.iter().map(|b| b.arrivals).sum();
    let completed: u64 = r.timeline.iter().map(|b| b.completed).sum();
    assert_eq!((arrivals, completed), (800, 800));
    assert!(r.timeline.len() <= 240);
    assert!(r
        .ttft_cdf
        .windows(2)
        .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    let html = html::render(&Report {
        source: "replay".into(),
        policies: vec![r],
        ..Default::default()
    });
    assert!(html.contains("<svg") && html.contains("TTFT CDF"));
    assert!(!html.contains("<script"), "self-contained, no scripts");
}
