//! Replay speed and memory: 1 million synthetic requests streamed through a 1,024-backend
//! fleet (8 pools of 128) in virtual time on one core. Goal: at least 500,000 simulated
//! requests per second of wall time, and resident memory that does not grow with the
//! trace (it is streamed, and only requests in flight are held). Prints the median of
//! three runs per policy and the peak resident set after 250k, 500k and 1M requests.
//!
//! `cargo bench --bench replay` (set DUJIANG_REPLAY_REQUESTS to change the size).

use dujiang::fleet::PoolConfig;
use dujiang::profile::Catalogue;
use dujiang::sim::{Replay, ReplayConfig};
use dujiang::trace::{ArrivalProcess, SynthConfig, SyntheticTrace};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

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

/// Wall seconds, requests completed, requests refused.
fn run(policy: &str, requests: usize, rate: f64) -> (f64, u64, u64) {
    let p = dujiang::policy::build(policy, &toml::Table::new(), 1).expect("policy");
    let replay = Replay::new(fleet(), p, ReplayConfig::default()).expect("fleet");
    let trace = SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, rate, 42))
        .expect("trace")
        .take(requests)
        .map(Ok::<_, Infallible>);
    let start = Instant::now();
    let report = replay.run(trace).expect("replay");
    let stats = &report.stats;
    (
        start.elapsed().as_secs_f64(),
        stats.completed,
        stats.rejected,
    )
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; nothing to parse.
    let requests: usize = std::env::var("DUJIANG_REPLAY_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // About 60% of what this fleet sustains with Azure-conversation lengths.
    let rate = 1_500.0;
    println!("replay: {requests} requests, 1024 backends in 8 pools, Poisson {rate} req/s");
    for policy in ["least-work", "round-robin", "predicted-latency"] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let (secs, done, refused) = run(policy, requests, rate);
            assert_eq!(
                (done + refused) as usize,
                requests,
                "every request completes or is refused"
            );
            // Shedding by prediction may refuse a few in bursts; more means the fleet is
            // overloaded and the bench no longer measures what it says.
            assert!(
                refused as usize * 100 <= requests,
                "{refused} of {requests} refused"
            );
            times.push(secs);
        }
        times.sort_by(f64::total_cmp);
        let median = times[1];
        println!(
            "replay/{policy}: median {median:.3} s wall = {:.0} simulated requests/s (runs: {:?})",
            requests as f64 / median,
            times.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>()
        );
    }
    for n in [requests / 4, requests / 2, requests] {
        run("least-work", n, rate);
        println!(
            "replay/memory: peak RSS after a {n}-request run: {:.1} MB",
            peak_rss_mb()
        );
    }
}
