//! Replay speed and memory: 1 million synthetic requests streamed through a 1,024-backend
//! fleet (8 pools of 128) in virtual time on one core. Goal: at least 500,000 simulated
//! requests per second of wall time (issue 12; issue 17 asks for 2 million), and resident
//! memory that does not grow with the trace (it is streamed, and only requests in flight
//! are held).
//!
//! The `disaggregated` case runs a prefill/decode fleet instead (four prefill pools of
//! Ascend and MLU chips, four decode pools of NVIDIA chips, 128 backends each), whose
//! requests of 512 prompt tokens or more prefill on one backend, move their KV over a
//! shared link and decode on another.
//!
//! criterion measures each policy (throughput in elements = simulated requests, trace
//! generation included) after printing the peak resident set after 250k, 500k and 1M
//! requests; then it prints each policy's median against the goal and fails if one falls
//! short. `cargo bench --bench replay`; DUJIANG_REPLAY_REQUESTS changes the size,
//! DUJIANG_REPLAY_GOAL the goal in requests/s (0: report only, for a loaded machine).
//! DUJIANG_REPLAY_ONCE=POLICY runs one replay of that policy and exits, nothing else: the
//! run to put under `valgrind --tool=callgrind`, whose instruction counts per request stay
//! steady on a busy machine where wall times do not.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dujiang::engine::Role;
use dujiang::fleet::PoolConfig;
use dujiang::profile::Catalogue;
use dujiang::sim::{Replay, ReplayConfig};
use dujiang::trace::{ArrivalProcess, SynthConfig, SyntheticTrace};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Simulated requests per second of wall time the bench must reach (issue 12).
const GOAL_PER_S: f64 = 500_000.0;
/// About 60% of what this fleet sustains with Azure-conversation lengths.
const RATE: f64 = 1_500.0;
const POLICIES: [&str; 4] = [
    "least-work",
    "round-robin",
    "predicted-latency",
    "disaggregated",
];

fn fleet() -> Vec<PoolConfig> {
    let cat = Catalogue::embedded();
    // Llama 3.1's 128k context: the synthetic trace's longest prompts (its lognormal tail)
    // pass validation, so the run measures serving, not refusals.
    let model = cat.model("llama-3.1-8b").expect("model");
    let chips = [
        "h20",
        "ascend-910b",
        "ascend-910c",
        "mlu590",
        "h20",
        "ascend-910b",
        "mlu590",
        "h100",
    ];
    chips
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let perf = cat.perf(c, None, &model.id, 1, None).expect("fits");
            PoolConfig::new(format!("{c}-{i}"), Arc::new(perf), 128)
        })
        .collect()
}

/// The prefill/decode fleet of the `disaggregated` case: the same 1,024 backends' worth of
/// pools, prefill on the compute-rich chips, decode on the bandwidth-rich ones.
fn pd_fleet() -> Vec<PoolConfig> {
    let cat = Catalogue::embedded();
    let model = cat.model("llama-3.1-8b").expect("model");
    let pools = [
        ("ascend-910b", Role::Prefill),
        ("ascend-910c", Role::Prefill),
        ("ascend-910b", Role::Prefill),
        ("mlu590", Role::Prefill),
        ("h20", Role::Decode),
        ("h20", Role::Decode),
        ("h100", Role::Decode),
        ("h20", Role::Decode),
    ];
    pools
        .iter()
        .enumerate()
        .map(|(i, (c, role))| {
            let perf = cat.perf(c, None, &model.id, 1, None).expect("fits");
            let mut p = PoolConfig::new(format!("{c}-{i}"), Arc::new(perf), 128);
            p.role = *role;
            p
        })
        .collect()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One replay of `requests` requests under `policy`: its wall time. Every request must
/// complete or be refused, and refusals stay rare (shedding by prediction may refuse a
/// few in bursts; more means the fleet is overloaded and the bench no longer measures
/// what it says).
fn run(policy: &str, requests: usize) -> Duration {
    let p = dujiang::policy::build(policy, &toml::Table::new(), 1).expect("policy");
    let pools = if policy == "disaggregated" {
        pd_fleet()
    } else {
        fleet()
    };
    let replay = Replay::new(pools, p, ReplayConfig::default()).expect("fleet");
    let trace = SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, RATE, 42))
        .expect("trace")
        .take(requests)
        .map(Ok::<_, Infallible>);
    let start = Instant::now();
    let report = replay.run(trace).expect("replay");
    let wall = start.elapsed();
    let (done, refused) = (report.stats.completed, report.stats.rejected);
    assert_eq!(
        (done + refused) as usize,
        requests,
        "every request completes or is refused"
    );
    assert!(
        refused as usize * 100 <= requests,
        "{refused} of {requests} refused"
    );
    if policy == "disaggregated" {
        // The case measures hand-offs and transfers, not whole requests on decode pools.
        assert!(
            report.stats.handoffs * 4 >= done,
            "only {} of {done} requests split",
            report.stats.handoffs
        );
    }
    wall
}

fn replay(c: &mut Criterion) {
    let requests: usize = std::env::var("DUJIANG_REPLAY_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let goal: f64 = std::env::var("DUJIANG_REPLAY_GOAL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(GOAL_PER_S);
    if let Ok(policy) = std::env::var("DUJIANG_REPLAY_ONCE") {
        let wall = run(&policy, requests);
        println!(
            "replay/{policy}: one run of {requests} requests in {:.3} s",
            wall.as_secs_f64()
        );
        return;
    }
    println!("replay: {requests} requests, 1024 backends in 8 pools, Poisson {RATE} req/s");
    // Memory first: the peak resident set is the process's, and criterion's own analysis
    // afterwards would raise it.
    for n in [requests / 4, requests / 2, requests] {
        run("least-work", n);
        println!(
            "replay/memory: peak RSS after a {n}-request run: {:.1} MB",
            peak_rss_mb()
        );
    }
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(requests as u64));
    // A run of a million requests takes seconds: ten runs per policy, one per sample.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));
    let mut medians = Vec::new();
    for policy in POLICIES {
        let mut walls: Vec<f64> = Vec::new();
        group.bench_function(policy, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let wall = run(policy, requests);
                        walls.push(wall.as_secs_f64());
                        wall
                    })
                    .sum()
            })
        });
        // A criterion filter (`cargo bench --bench replay -- least-work`) skips the others.
        if walls.is_empty() {
            continue;
        }
        walls.sort_by(f64::total_cmp);
        medians.push((policy, requests as f64 / walls[walls.len() / 2]));
    }
    group.finish();
    for (policy, per_s) in &medians {
        println!(
            "replay/{policy}: median {per_s:.0} simulated requests/s (goal ≥ {goal:.0}): {}",
            if *per_s >= goal { "met" } else { "NOT MET" }
        );
    }
    let short: Vec<_> = medians.iter().filter(|(_, r)| *r < goal).collect();
    assert!(
        short.is_empty(),
        "below {goal:.0} simulated requests/s: {short:?} (DUJIANG_REPLAY_GOAL=0 reports only)"
    );
}

criterion_group!(benches, replay);
criterion_main!(benches);
