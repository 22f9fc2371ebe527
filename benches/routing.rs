//! Time of one routing decision, per policy, at 8, 64, 512, 4096 and 65,536 backends in 8
//! pools, with one thread picking and with two threads picking at once. The decision sits on every request's path in the
//! daemon (its time is exported as the router decision time), and one cell of a
//! Doubao-scale fleet has tens of thousands of backends (issue 17), so the goal is a median
//! of at most 1 µs for every policy at 65,536 backends, where the load board (64 bytes a
//! backend) no longer fits in cache, and a second
//! concurrent picker slowing each decision by no more than 1.5×: policies must sample or
//! index by pool instead of scanning the fleet, and must not share contended state.
//!
//! A decision here is take a view of the atomic load board (one `ArcSwap` load), then
//! `Policy::pick`. Loads are random but fixed; requests cycle through 4096 pre-built ones
//! with prefix hashes drawn from 64 hot prefixes.
//!
//! The daemon also commits each load-aware decision against the board's routing epoch
//! (so parallel decisions do not herd) and counts the request on its backend until the
//! driver takes it in. `routing-claimed/*` times that whole path, claim and release
//! included, for two load-aware policies; with two threads deciding back to back every
//! decision races the other thread's, which is the worst case for the retries.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dujiang::engine::LoadSnapshot;
use dujiang::fleet::{AtomicLoadBoard, BackendId, Claim, LoadView, PoolConfig};
use dujiang::policy::{build, Policy, POLICIES};
use dujiang::profile::Catalogue;
use dujiang::request::Request;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZES: [u32; 5] = [8, 64, 512, 4096, 65_536];
const POOL_CHIPS: [&str; 8] = [
    "h20",
    "ascend-910b",
    "mlu590",
    "h100",
    "ascend-910c",
    "mlu370-x8",
    "h20",
    "ascend-910b",
];

fn board(backends: u32, seed: u64) -> AtomicLoadBoard {
    let cat = Catalogue::embedded();
    let model = cat.model("llama-3-8b").expect("catalogue has llama-3-8b");
    let pools = POOL_CHIPS.iter().enumerate().map(|(i, chip)| {
        let perf = cat.perf(chip, None, &model.id, 1, None).expect("8B fits");
        PoolConfig::new(format!("{chip}-{i}"), Arc::new(perf), backends / 8)
    });
    let board = AtomicLoadBoard::from_pools(pools).expect("valid fleet");
    let mut rng = StdRng::seed_from_u64(seed);
    for b in 0..backends {
        let running = rng.random_range(0..64);
        board.store(
            BackendId(b),
            &LoadSnapshot {
                waiting: rng.random_range(0..8),
                running,
                queued_prefill_tokens: rng.random_range(0..20_000),
                remaining_decode_tokens: u64::from(running) * rng.random_range(10..400),
                kv_used_blocks: rng.random_range(0..4000),
                kv_total_blocks: 4096,
                predicted_drain_ns: 0,
            },
        );
    }
    board
}

fn requests(seed: u64) -> Vec<Request> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..4096u64)
        .map(|id| Request {
            id,
            arrival: id * 1_000_000,
            prompt_tokens: rng.random_range(64..4096),
            max_tokens: rng.random_range(16..1024),
            prefix_hashes: vec![rng.random_range(0..64u64), rng.random()],
            ..Default::default()
        })
        .collect()
}

fn policy(name: &str) -> Box<dyn Policy> {
    let params: toml::Table = match name {
        "weighted" => toml::from_str(
            "weights = { h20-0 = 2.0, ascend-910b-1 = 1.0, mlu590-2 = 1.0, h100-3 = 3.0 }",
        )
        .unwrap(),
        "domestic-share" => toml::from_str("inner = \"least-work\"\ntarget = 0.6").unwrap(),
        _ => toml::Table::new(),
    };
    build(name, &params, 7).expect("policy builds")
}

fn decide(p: &dyn Policy, board: &AtomicLoadBoard, req: &Request) -> Option<BackendId> {
    let view = board.view();
    p.pick(req, &view as &dyn LoadView, req.arrival)
}

/// As the daemon routes: up to four optimistic attempts, the last one forced; then the
/// driver's release, so the board's loads stay as built.
fn decide_claimed(p: &dyn Policy, board: &AtomicLoadBoard, req: &Request) -> Option<BackendId> {
    let claim = Claim::of(req);
    for attempt in 1..=4 {
        let seen = (attempt < 4).then(|| board.epoch());
        let b = decide(p, board, req)?;
        if board.claim(b, claim, seen) {
            board.release(b, claim);
            return Some(b);
        }
    }
    unreachable!("the last attempt always commits")
}

fn routing(c: &mut Criterion) {
    let reqs = requests(1);
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("routing/{threads}thread"));
        for &n in &SIZES {
            let board = board(n, 2);
            for info in POLICIES {
                let p = policy(info.name);
                group.bench_with_input(BenchmarkId::new(info.name, n), &n, |b, _| {
                    if threads == 1 {
                        let mut i = 0usize;
                        b.iter(|| {
                            i = (i + 1) & 4095;
                            black_box(decide(p.as_ref(), &board, &reqs[i]))
                        });
                    } else {
                        b.iter_custom(|iters| two_threads(p.as_ref(), &board, &reqs, iters));
                    }
                });
            }
        }
        group.finish();
    }
}

fn routing_claimed(c: &mut Criterion) {
    let reqs = requests(1);
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("routing-claimed/{threads}thread"));
        for n in [64, 4096] {
            let board = board(n, 2);
            for name in ["least-work", "power-of-two"] {
                let p = policy(name);
                group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                    if threads == 1 {
                        let mut i = 0usize;
                        b.iter(|| {
                            i = (i + 1) & 4095;
                            black_box(decide_claimed(p.as_ref(), &board, &reqs[i]))
                        });
                    } else {
                        b.iter_custom(|iters| {
                            two_threads_with(decide_claimed, p.as_ref(), &board, &reqs, iters)
                        });
                    }
                });
            }
        }
        group.finish();
    }
}

fn two_threads(p: &dyn Policy, board: &AtomicLoadBoard, reqs: &[Request], iters: u64) -> Duration {
    two_threads_with(decide, p, board, reqs, iters)
}

type Decide = fn(&dyn Policy, &AtomicLoadBoard, &Request) -> Option<BackendId>;

/// Times `iters` decisions on this thread while a second thread makes decisions with the
/// same policy and board for the whole measured span.
fn two_threads_with(
    decide: Decide,
    p: &dyn Policy,
    board: &AtomicLoadBoard,
    reqs: &[Request],
    iters: u64,
) -> Duration {
    let started = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 2048usize;
            started.store(true, Ordering::Release);
            while !stop.load(Ordering::Relaxed) {
                i = (i + 1) & 4095;
                black_box(decide(p, board, &reqs[i]));
            }
        });
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        let mut i = 0usize;
        for _ in 0..iters {
            i = (i + 1) & 4095;
            black_box(decide(p, board, &reqs[i]));
        }
        let elapsed = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        elapsed
    })
}

criterion_group!(benches, routing, routing_claimed);
criterion_main!(benches);
