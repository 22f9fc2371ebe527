//! Prefill/decode disaggregation in replay: with a near-infinite link and equal chips a
//! split fleet does an aggregated fleet's work; a faster link never raises TTFT; a slow
//! shared link shows up as queueing in the transfer times; the report counts hand-offs,
//! transfers and roles per pool.

use super::*;
use crate::engine::Role;
use crate::fleet::{LinkTable, PoolConfig};
use crate::profile::fixtures::{h20, llama3_8b, perf as fixture_perf};
use crate::trace::{ArrivalProcess, SynthConfig, SyntheticTrace, TraceRecord};
use std::convert::Infallible;
use std::sync::Arc;

fn pool(name: &str, count: u32, role: Role) -> PoolConfig {
    let mut chip = h20();
    chip.id = name.into();
    let perf = Arc::new(fixture_perf(&chip, &llama3_8b(), 1).unwrap());
    let mut p = PoolConfig::new(name, perf, count);
    p.role = role;
    p
}

fn pd_fleet() -> Vec<PoolConfig> {
    vec![pool("pre", 1, Role::Prefill), pool("dec", 1, Role::Decode)]
}

fn replay(
    pools: Vec<PoolConfig>,
    policy: &str,
    params: &str,
    links: Option<LinkTable>,
    trace: &[TraceRecord],
) -> PolicyReport {
    let policy = crate::policy::build(policy, &toml::from_str(params).unwrap(), 7).unwrap();
    let mut cfg = ReplayConfig::default();
    cfg.admission.slo_shed_factor = 0.0;
    cfg.links = links;
    Replay::new(pools, policy, cfg)
        .unwrap()
        .run(trace.iter().cloned().map(Ok::<_, Infallible>))
        .unwrap()
}

/// Prompts of 600 to 4,000 tokens (all long enough to split), Poisson arrivals.
fn long_prompts(rate: f64, n: usize, seed: u64) -> Vec<TraceRecord> {
    SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, rate, seed))
        .unwrap()
        .take(n)
        .map(|mut r| {
            r.prompt_tokens = 600 + r.prompt_tokens % 3400;
            r.output_tokens = 2 + r.output_tokens % 400;
            r.hash_ids.clear();
            r
        })
        .collect()
}

#[test]
fn a_near_infinite_link_with_equal_chips_does_an_aggregated_fleets_work() {
    // Requests 2 s apart: each runs alone, so the split changes nothing but where the
    // decode runs. 1 Pb/s and no latency: the transfer is ~0.
    let trace: Vec<TraceRecord> = long_prompts(0.5, 200, 5)
        .into_iter()
        .enumerate()
        .map(|(i, r)| TraceRecord {
            arrival_ns: i as u64 * 2_000_000_000,
            ..r
        })
        .collect();
    let fast = LinkTable::uniform(2, LinkTable::link(1e6, 0.0));
    let pd = replay(pd_fleet(), "disaggregated", "", Some(fast), &trace);
    let agg = replay(
        vec![pool("a", 1, Role::Mixed), pool("b", 1, Role::Mixed)],
        "least-work",
        "",
        None,
        &trace,
    );
    assert_eq!((pd.stats.completed, agg.stats.completed), (200, 200));
    assert_eq!(pd.stats.output_tokens, agg.stats.output_tokens);
    assert_eq!(pd.stats.handoffs, 200);
    assert_eq!(pd.stats.kv_transfers, 200);
    for (what, a, b) in [
        ("TTFT p50", pd.stats.ttft_ms.p50, agg.stats.ttft_ms.p50),
        ("TTFT mean", pd.stats.ttft_ms.mean, agg.stats.ttft_ms.mean),
        ("E2E p50", pd.stats.e2e_ms.p50, agg.stats.e2e_ms.p50),
        ("E2E mean", pd.stats.e2e_ms.mean, agg.stats.e2e_ms.mean),
        ("TPOT p99", pd.stats.tpot_ms.p99, agg.stats.tpot_ms.p99),
    ] {
        assert!(
            (a - b).abs() / b < 0.01,
            "{what}: P/D {a} vs aggregated {b}"
        );
    }
}

#[test]
fn a_faster_link_never_raises_ttft() {
    let trace = long_prompts(6.0, 600, 9);
    let mut last: Option<(f64, f64, f64)> = None;
    for gbps in [5.0, 20.0, 100.0, 400.0, 1e5] {
        let links = LinkTable::uniform(3, LinkTable::link(gbps, 500.0));
        let pools = vec![
            pool("pre", 2, Role::Prefill),
            pool("dec", 1, Role::Decode),
            pool("dec2", 1, Role::Decode),
        ];
        let r = replay(pools, "disaggregated", "", Some(links), &trace);
        assert_eq!(r.stats.completed, 600, "{gbps} Gb/s");
        let now = (
            r.stats.ttft_ms.mean,
            r.stats.ttft_ms.p50,
            r.stats.ttft_ms.p99,
        );
        if let Some(before) = last {
            assert!(
                now.0 <= before.0 && now.1 <= before.1 && now.2 <= before.2,
                "{gbps} Gb/s: TTFT (mean, p50, p99) {now:?} after {before:?}"
            );
        }
        last = Some(now);
    }
}

#[test]
fn a_slow_shared_link_queues_transfers() {
    // 2,000-token prompts of llama-3-8b: 262 MB of KV each. At 10 Gb/s one takes
    // 210 ms alone; arriving 10 a second from one prefill backend they overlap.
    let trace: Vec<TraceRecord> = (0..100)
        .map(|i| TraceRecord {
            arrival_ns: i * 100_000_000,
            prompt_tokens: 2000,
            output_tokens: 50,
            ..Default::default()
        })
        .collect();
    let link = LinkTable::link(10.0, 0.0);
    let alone_ms = link.alone_ns(2000.0 * 131_072.0) as f64 / 1e6;
    let r = replay(
        pd_fleet(),
        "disaggregated",
        "",
        Some(LinkTable::uniform(2, link)),
        &trace,
    );
    assert_eq!(r.stats.completed, 100);
    assert!(
        (r.stats.transfer_ms.p50 - alone_ms) / alone_ms > 0.2,
        "{:?} vs {alone_ms}",
        r.stats.transfer_ms
    );
    // Roles and hand-offs per pool.
    let (pre, dec) = (&r.pools[0], &r.pools[1]);
    assert_eq!(
        (pre.role.as_str(), dec.role.as_str()),
        ("prefill", "decode")
    );
    assert_eq!((pre.stats.handoffs, pre.stats.completed), (100, 0));
    assert_eq!((dec.stats.kv_transfers, dec.stats.completed), (100, 100));
    let table = Report {
        policies: vec![r],
        ..Default::default()
    }
    .to_table();
    assert!(table.contains("KV transfers: 100"), "{table}");
    assert!(table.contains("  pre prefill (pre)"), "{table}");
}

#[test]
fn short_prompts_stay_whole_and_a_prefill_only_fleet_is_refused() {
    let trace: Vec<TraceRecord> = (0..50)
        .map(|i| TraceRecord {
            arrival_ns: i * 50_000_000,
            prompt_tokens: 100 + i as u32 * 40,
            output_tokens: 20,
            ..Default::default()
        })
        .collect();
    // Threshold 1,000: prompts of 100 to 2,060 tokens; those from 1,000 up (i ≥ 23: 27
    // of them) split, the rest run whole on the decode pool.
    let r = replay(
        pd_fleet(),
        "disaggregated",
        "threshold = 1000",
        None,
        &trace,
    );
    assert_eq!(r.stats.completed, 50);
    assert_eq!(r.stats.handoffs, 27);
    assert_eq!(r.pools[1].stats.completed, 50);
    let policy = crate::policy::build("round-robin", &toml::Table::new(), 1).unwrap();
    let err = Replay::new(
        vec![pool("pre", 1, Role::Prefill)],
        policy,
        ReplayConfig::default(),
    )
    .err()
    .unwrap();
    assert!(err.contains("nowhere to hand its KV off"), "{err}");
}

#[test]
fn turns_whose_prefix_the_decode_side_holds_stay_whole() {
    // 10 conversations of 6 turns, 10 s apart; each turn's prompt is 100 tokens longer and
    // shares the previous turn's blocks.
    let trace: Vec<TraceRecord> = (0..6u64)
        .flat_map(|turn| {
            (0..10u64).map(move |conv| {
                let prompt = 2048 + 100 * turn as u32;
                TraceRecord {
                    arrival_ns: turn * 10_000_000_000 + conv * 100_000_000,
                    prompt_tokens: prompt,
                    output_tokens: 50,
                    hash_ids: (0..u64::from(prompt.div_ceil(512)))
                        .map(|b| conv * 1000 + b)
                        .collect(),
                    ..Default::default()
                }
            })
        })
        .collect();
    let bare: Vec<TraceRecord> = trace
        .iter()
        .map(|r| TraceRecord {
            hash_ids: Vec::new(),
            ..r.clone()
        })
        .collect();
    // Without hashes every prompt counts as uncached and splits.
    let counted_whole = replay(pd_fleet(), "disaggregated", "", None, &bare);
    assert_eq!(counted_whole.stats.completed, 60);
    assert_eq!(counted_whole.stats.handoffs, 60);
    // With them, the decode backend holds each conversation's first turn once it has
    // ended (its KV arrived with the hashes), so the later turns, 100 to 500 tokens
    // uncached, run whole there.
    let r = replay(pd_fleet(), "disaggregated", "", None, &trace);
    assert_eq!(r.stats.completed, 60);
    assert_eq!(r.stats.handoffs, 10, "one split per conversation");
    assert_eq!(r.pools[1].stats.completed, 60);
}

#[test]
fn a_policy_that_picks_single_backends_still_runs_a_split_fleet() {
    let trace = long_prompts(4.0, 300, 2);
    for policy in ["round-robin", "least-work", "power-of-two"] {
        let r = replay(pd_fleet(), policy, "", None, &trace);
        assert_eq!(r.stats.completed, 300, "{policy}");
        assert!(r.stats.handoffs > 0, "{policy}");
        assert_eq!(r.stats.handoffs, r.stats.kv_transfers, "{policy}");
    }
}

#[test]
fn domestic_share_steers_a_split_fleet_to_domestic_decode() {
    // Prefill on a domestic pool; decode on a foreign pool (fast) or a domestic one
    // (slow). Alone, the disaggregated policy decodes on the faster foreign pool; wrapped
    // in domestic-share with a 0.6 target it moves enough decode to domestic chips.
    let mk = |name: &str, speed: f64, domestic: bool, role: Role| {
        let mut p = crate::fleet::test_fleets::pool(name, 2, speed, 1.0, domestic);
        p.role = role;
        p
    };
    let pools = vec![
        mk("pre", 2.0, true, Role::Prefill),
        mk("dec-foreign", 1.5, false, Role::Decode),
        mk("dec-domestic", 1.0, true, Role::Decode),
    ];
    let trace = long_prompts(2.0, 400, 4);
    let alone = replay(pools.clone(), "disaggregated", "", None, &trace);
    let wrapped = replay(
        pools,
        "domestic-share",
        "inner = \"disaggregated\"\ntarget = 0.6",
        None,
        &trace,
    );
    assert_eq!((alone.stats.completed, wrapped.stats.completed), (400, 400));
    assert!(
        alone.stats.domestic_token_share < 0.3,
        "alone: {}",
        alone.stats.domestic_token_share
    );
    assert!(
        wrapped.stats.domestic_token_share >= 0.55,
        "wrapped: {}",
        wrapped.stats.domestic_token_share
    );
    assert!(
        wrapped.stats.handoffs >= 390,
        "still split: {}",
        wrapped.stats.handoffs
    );
}

#[test]
fn failing_prefill_and_decode_backends_loses_no_request_in_transfer() {
    use crate::sim::faults::{FaultAction, FaultEvent, FaultPlan, FaultTarget};
    let pools = vec![pool("pre", 2, Role::Prefill), pool("dec", 2, Role::Decode)];
    // A slow link keeps KV on the wire when the decode backend it was bound for fails.
    let links = LinkTable::uniform(2, LinkTable::link(5.0, 500.0));
    let trace = long_prompts(6.0, 400, 8);
    let at = |s: f64| (s * 1e9) as u64;
    let plan = FaultPlan {
        events: vec![
            FaultEvent {
                entry: 0,
                at_ns: at(10.0),
                target: FaultTarget::Backend("dec-0".into()),
                action: FaultAction::Fail,
            },
            FaultEvent {
                entry: 1,
                at_ns: at(20.0),
                target: FaultTarget::Backend("pre-1".into()),
                action: FaultAction::Fail,
            },
            FaultEvent {
                entry: 2,
                at_ns: at(30.0),
                target: FaultTarget::Backend("dec-0".into()),
                action: FaultAction::Recover,
            },
        ],
    };
    let policy = crate::policy::build("disaggregated", &toml::Table::new(), 7).unwrap();
    let mut cfg = ReplayConfig::default();
    cfg.admission.slo_shed_factor = 0.0;
    cfg.links = Some(links);
    let (r, faults) = Replay::new(pools, policy, cfg)
        .unwrap()
        .with_faults(&plan)
        .unwrap()
        .run_with_faults(trace.iter().cloned().map(Ok::<_, Infallible>))
        .unwrap();
    // Every request ends once: completed, or counted lost to the failures.
    assert_eq!(r.stats.completed + r.stats.rejected, 400, "{faults:?}");
    assert!(faults.rerouted + faults.migrated > 0, "{faults:?}");
    assert!(
        r.stats.completed >= 390,
        "{} completed; {faults:?}",
        r.stats.completed
    );
    assert_eq!(r.stats.handoffs, r.stats.kv_transfers);
}
