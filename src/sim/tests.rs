//! Replay tests: hand-computable cases, conservation of requests, determinism, and a
//! heterogeneous fleet on which the speed-aware policies beat round-robin.

use super::*;
use crate::fleet::PoolConfig;
use crate::profile::fixtures::{h20, llama3_8b, perf as fixture_perf};
use crate::trace::{ArrivalProcess, SynthConfig, SyntheticTrace, TraceRecord};
use std::convert::Infallible;
use std::sync::Arc;

fn pool(name: &str, count: u32, speed: f64) -> PoolConfig {
    let mut chip = h20();
    chip.id = name.into();
    chip.bf16_tflops *= speed;
    chip.bandwidth_tbps *= speed;
    let perf = Arc::new(fixture_perf(&chip, &llama3_8b(), 1).unwrap());
    PoolConfig::new(name, perf, count)
}

/// These tests measure engines and policies under load, not admission: nothing is shed
/// by prediction, so overload shows as latency.
fn unshed() -> ReplayConfig {
    let mut cfg = ReplayConfig::default();
    cfg.admission.slo_shed_factor = 0.0;
    cfg
}

fn replay(pools: Vec<PoolConfig>, policy: &str, trace: Vec<TraceRecord>) -> PolicyReport {
    let policy = crate::policy::build(policy, &toml::Table::new(), 7).unwrap();
    Replay::new(pools, policy, unshed())
        .unwrap()
        .run(trace.into_iter().map(Ok::<_, Infallible>))
        .unwrap()
}

/// A synthetic trace whose requests all fit llama-3-8b's 8,192-token context, so each
/// completes (the heavy tail is cut to 7,000 prompt tokens rather than refused).
fn synthetic(rate: f64, n: usize, seed: u64) -> Vec<TraceRecord> {
    SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, rate, seed))
        .unwrap()
        .take(n)
        .map(|mut r| {
            if r.prompt_tokens + r.output_tokens > 8192 {
                r.prompt_tokens = r.prompt_tokens.min(7000);
                r.output_tokens = r.output_tokens.min(8192 - r.prompt_tokens);
                let blocks = r
                    .prompt_tokens
                    .div_ceil(crate::request::PREFIX_BLOCK_TOKENS);
                r.hash_ids.truncate(blocks as usize);
            }
            r
        })
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

#[test]
fn chip_aware_policies_beat_round_robin_on_the_demo_fleet() {
    // The daemon's own default fleet (H20, Ascend 910B, MLU590) under Azure-like chat
    // traffic: the chip-aware policies must earn their place against load-blind routing.
    let spec = crate::fleet::FleetSpec::embedded_demo();
    let pools = spec
        .resolve(&crate::profile::Catalogue::embedded())
        .unwrap();
    let trace = synthetic(7.0, 4_000, 21);
    let rr = replay(pools.clone(), "round-robin", trace.clone());
    for policy in ["predicted-latency", "least-work", "slo-cost"] {
        let smart = replay(pools.clone(), policy, trace.clone());
        assert!(
            smart.stats.ttft_ms.p99 < rr.stats.ttft_ms.p99,
            "{policy}: p99 TTFT {} vs round-robin {}",
            smart.stats.ttft_ms.p99,
            rr.stats.ttft_ms.p99
        );
        // slo-cost sends each request to the cheapest pool predicted to meet its SLO, so it
        // trades a little attainment for spend: with the chips within 1.5× of each other
        // (profiles v2) a few of its predictions miss (99.65% against round-robin's 100%
        // on this trace). The others must not lose any.
        let slack = if policy == "slo-cost" { 0.01 } else { 0.0 };
        assert!(
            smart.stats.slo_attainment >= rr.stats.slo_attainment - slack,
            "{policy}: SLO {} vs round-robin {}",
            smart.stats.slo_attainment,
            rr.stats.slo_attainment
        );
    }
}

fn replay_with_faults(
    pools: Vec<PoolConfig>,
    policy: &str,
    trace: Vec<TraceRecord>,
    plan: &str,
) -> (PolicyReport, FaultSummary) {
    let policy = crate::policy::build(policy, &toml::Table::new(), 7).unwrap();
    let plan = FaultPlan::parse(plan, "faults.toml").unwrap();
    Replay::new(pools, policy, unshed())
        .unwrap()
        .with_faults(&plan)
        .unwrap()
        .run_with_faults(trace.into_iter().map(Ok::<_, Infallible>))
        .unwrap()
}

const FAIL_A_AT_PEAK: &str = r#"
[[fault]]
at_s = 100
pool = "a"
kind = "fail"

[[fault]]
at_s = 160
pool = "a"
kind = "recover"
"#;

#[test]
fn a_pool_failure_moves_its_requests_and_loses_none() {
    let pools = vec![pool("a", 2, 1.0), pool("b", 2, 1.0)];
    let trace = synthetic(4.0, 1_200, 21);
    let healthy = replay(pools.clone(), "least-work", trace.clone());
    let (r, s) = replay_with_faults(pools, "least-work", trace.clone(), FAIL_A_AT_PEAK);
    assert_eq!(s.faults, 2);
    assert!(s.migrated > 0 && s.rerouted + s.migrated >= 2, "{s:?}");
    assert_eq!(s.failed, 0, "pool b takes everything: {s:?}");
    assert_eq!(r.stats.requests, 1_200);
    assert_eq!(r.stats.completed, 1_200);
    let tokens: u64 = trace.iter().map(|t| u64::from(t.output_tokens)).sum();
    assert_eq!(
        r.stats.output_tokens, tokens,
        "every token once, moved or not"
    );
    assert!(
        r.stats.ttft_ms.p99 > healthy.stats.ttft_ms.p99,
        "losing half the fleet for a minute hurts p99 TTFT: {} vs {}",
        r.stats.ttft_ms.p99,
        healthy.stats.ttft_ms.p99
    );
    // Nothing is routed to the failed pool while it is down.
    let routed_a_during: u64 = r
        .timeline
        .iter()
        .filter(|b| b.start_s >= 101.0 && b.start_s + r.timeline_bucket_s <= 160.0)
        .map(|b| b.routed_by_pool[0])
        .sum();
    assert_eq!(routed_a_during, 0);
}

#[test]
fn failing_the_only_pool_loses_its_work_and_refuses_until_recovery() {
    let pools = vec![pool("a", 1, 1.0)];
    let trace = synthetic(2.0, 400, 4);
    let (r, s) = replay_with_faults(pools, "round-robin", trace, FAIL_A_AT_PEAK);
    assert!(s.failed > 0, "{s:?}");
    assert_eq!(s.migrated + s.rerouted, 0, "nowhere to go");
    let by_reason = &r.stats.rejected_by_reason;
    assert_eq!(by_reason["backend_failed"], s.failed);
    assert!(by_reason["no_healthy_backend"] > 0, "{by_reason:?}");
    assert_eq!(r.stats.completed + r.stats.rejected, 400);
    let after: u64 = r
        .timeline
        .iter()
        .filter(|b| b.start_s >= 161.0)
        .map(|b| b.completed)
        .sum();
    assert!(after > 0, "service resumes after recovery");
}

#[test]
fn a_slowdown_stretches_steps_by_its_factor() {
    let rec = TraceRecord {
        arrival_ns: 10_000_000_000,
        prompt_tokens: 1000,
        output_tokens: 50,
        ..Default::default()
    };
    let plan = "[[fault]]\nat_s = 1\nbackend = \"a-0\"\nkind = \"slowdown\"\nfactor = 3.0\n";
    let base = replay(vec![pool("a", 1, 1.0)], "round-robin", vec![rec.clone()]);
    let (slow, _) = replay_with_faults(vec![pool("a", 1, 1.0)], "round-robin", vec![rec], plan);
    let ratio = slow.stats.e2e_ms.p50 / base.stats.e2e_ms.p50;
    assert!((ratio - 3.0).abs() < 0.01, "{ratio}");
}

#[test]
fn fault_replays_are_deterministic_and_a_plan_at_factor_one_changes_nothing() {
    let pools = vec![pool("a", 2, 1.0), pool("b", 2, 0.5)];
    let trace = synthetic(5.0, 800, 8);
    let run = || {
        serde_json::to_string(
            &replay_with_faults(pools.clone(), "power-of-two", trace.clone(), FAIL_A_AT_PEAK).0,
        )
        .unwrap()
    };
    assert_eq!(run(), run());
    let noop = "[[fault]]\nat_s = 50\npool = \"b\"\nkind = \"slowdown\"\nfactor = 1.0\n";
    let plain = serde_json::to_string(&replay(pools.clone(), "least-work", trace.clone())).unwrap();
    let with = serde_json::to_string(
        &replay_with_faults(pools.clone(), "least-work", trace.clone(), noop).0,
    )
    .unwrap();
    assert_eq!(plain, with);
}

#[test]
fn unknown_fault_targets_are_named() {
    let policy = crate::policy::build("round-robin", &toml::Table::new(), 7).unwrap();
    let plan = FaultPlan::parse(
        "[[fault]]\nat_s = 1\nbackend = \"a-9\"\nkind = \"fail\"\n",
        "f.toml",
    )
    .unwrap();
    let err = Replay::new(vec![pool("a", 2, 1.0)], policy, ReplayConfig::default())
        .unwrap()
        .with_faults(&plan)
        .err()
        .unwrap();
    assert!(err.contains("a-9") && err.contains("a-0, a-1"), "{err}");
    // Named by the entry in the file (events are kept in time order), and a pool by the
    // fleet's pool names.
    let plan = FaultPlan::parse(
        "[[fault]]\nat_s = 9\npool = \"a\"\nkind = \"fail\"\n[[fault]]\nat_s = 1\npool = \"z\"\nkind = \"fail\"\n",
        "f.toml",
    )
    .unwrap();
    let policy = crate::policy::build("round-robin", &toml::Table::new(), 7).unwrap();
    let err = Replay::new(
        vec![pool("a", 2, 1.0), pool("b", 1, 1.0)],
        policy,
        ReplayConfig::default(),
    )
    .unwrap()
    .with_faults(&plan)
    .err()
    .unwrap();
    assert_eq!(
        err,
        "field `fault[1].pool`: no pool `z` in this fleet (pools: a, b)"
    );
}

#[test]
fn moved_requests_are_counted_in_the_pool_that_completes_them() {
    let pools = vec![pool("a", 2, 1.0), pool("b", 2, 1.0)];
    let (r, s) = replay_with_faults(
        pools,
        "least-work",
        synthetic(4.0, 1_200, 21),
        FAIL_A_AT_PEAK,
    );
    assert!(s.migrated + s.rerouted > 0);
    for p in &r.pools {
        assert_eq!(
            p.stats.requests,
            p.stats.completed + p.stats.rejected,
            "{}",
            p.pool
        );
    }
}
