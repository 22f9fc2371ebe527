//! Policies under concurrent change, as in the daemon: several threads pick while one
//! thread stores fresh loads into the atomic board and another adds, drains, resumes,
//! fails and removes backends. Every pick must return a backend that is serving in the
//! snapshot it read, every snapshot read after a change is published must include it,
//! and every thread must finish its bounded loop (no deadlock, no livelock).

use dujiang::engine::LoadSnapshot;
use dujiang::fleet::{
    AtomicLoadBoard, BackendId, BackendState, Claim, LoadView, PoolConfig, PoolId,
};
use dujiang::policy::{build, Policy, Route, POLICIES};
use dujiang::profile::Catalogue;
use dujiang::request::Request;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const PICKS_PER_THREAD: u64 = 20_000;
const CHANGES: usize = 2000;

fn pool(cat: &Catalogue, chip: &str, name: String, count: u32) -> PoolConfig {
    let perf = cat.perf(chip, None, "llama-3-8b", 1, None).unwrap();
    PoolConfig::new(name, Arc::new(perf), count)
}

fn policies() -> Vec<Box<dyn Policy>> {
    POLICIES
        .iter()
        .map(|info| {
            let params: toml::Table = match info.name {
                "weighted" => toml::from_str("weights = { h20 = 1.0, ascend = 2.0 }").unwrap(),
                "domestic-share" => toml::from_str("inner = \"power-of-two\"").unwrap(),
                _ => toml::Table::new(),
            };
            build(info.name, &params, 11).unwrap()
        })
        .collect()
}

#[test]
fn picks_stay_on_serving_backends_while_the_fleet_changes() {
    let cat = Catalogue::embedded();
    let board = AtomicLoadBoard::from_pools([
        pool(&cat, "h20", "h20".into(), 16),
        pool(&cat, "ascend-910b", "ascend".into(), 16),
        pool(&cat, "mlu590", "mlu".into(), 16),
    ])
    .unwrap();
    let policies = policies();
    // Epoch of the latest published change; a view taken after reading it must be at
    // least that new.
    let published = AtomicU64::new(board.view().membership().epoch());
    let done = AtomicBool::new(false);
    let picks = AtomicUsize::new(0);
    let nones = AtomicUsize::new(0);

    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (board, policies, published, picks, nones) =
                (&board, &policies, &published, &picks, &nones);
            s.spawn(move || {
                for i in 0..PICKS_PER_THREAD {
                    let p = &policies[(i as usize + t as usize) % policies.len()];
                    let req = Request {
                        id: t << 32 | i,
                        arrival: i * 1000,
                        prompt_tokens: 100 + (i % 2000) as u32,
                        max_tokens: 10 + (i % 300) as u32,
                        prefix_hashes: vec![i % 7, i],
                        ..Default::default()
                    };
                    let floor = published.load(Ordering::Acquire);
                    let view = board.view();
                    let m = view.membership();
                    assert!(m.epoch() >= floor, "stale snapshot {} < {floor}", m.epoch());
                    match p.pick(&req, &view, req.arrival) {
                        Some(b) => {
                            let entry = m.backend(b).unwrap_or_else(|| {
                                panic!("{} picked removed backend {b}", p.name())
                            });
                            assert_eq!(
                                entry.state,
                                BackendState::Serving,
                                "{} picked {b} in state {:?}",
                                p.name(),
                                entry.state
                            );
                            p.on_routed(&req, Route::whole(b), &view, req.arrival);
                            picks.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            // `weighted` only routes to the pools it names.
                            let candidates = m
                                .pools()
                                .filter(|pl| {
                                    p.name() != "weighted" || ["h20", "ascend"].contains(&pl.name())
                                })
                                .map(|pl| m.serving(pl.id).len())
                                .sum::<usize>();
                            assert_eq!(candidates, 0, "{} found nothing", p.name());
                            nones.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }

        // Load writer: what backend drivers do after every engine step.
        let (board_ref, done_ref) = (&board, &done);
        s.spawn(move || {
            let mut rng = StdRng::seed_from_u64(3);
            let mut rounds = 0;
            while !done_ref.load(Ordering::Relaxed) && rounds < 1_000_000 {
                let bound = board_ref.view().membership().backend_id_bound() as u32;
                let b = BackendId(rng.random_range(0..bound));
                let running = rng.random_range(0..64);
                board_ref.store(
                    b,
                    &LoadSnapshot {
                        waiting: rng.random_range(0..10),
                        running,
                        queued_prefill_tokens: rng.random_range(0..10_000),
                        remaining_decode_tokens: u64::from(running) * 50,
                        kv_used_blocks: rng.random_range(0..1000),
                        kv_total_blocks: 1000,
                        predicted_drain_ns: 0,
                    },
                );
                rounds += 1;
            }
        });

        // Operator: membership changes, each published before the next.
        let mut rng = StdRng::seed_from_u64(5);
        let mut added = 0;
        for _ in 0..CHANGES {
            let m = board.membership();
            let live: Vec<(BackendId, BackendState)> =
                m.backends().map(|(id, e)| (id, e.state)).collect();
            let pools: Vec<PoolId> = m.pools().map(|p| p.id).collect();
            match rng.random_range(0..10) {
                0..=2 if !live.is_empty() => {
                    let (b, _) = live[rng.random_range(0..live.len())];
                    board.drain(b).unwrap();
                }
                3 if !live.is_empty() => {
                    let (b, _) = live[rng.random_range(0..live.len())];
                    board.fail(b).unwrap();
                }
                4..=6 => {
                    if let Some((b, _)) = live.iter().find(|(_, s)| *s != BackendState::Serving) {
                        board.resume(*b).unwrap();
                    }
                }
                7 | 8 if pools.len() < 12 => {
                    added += 1;
                    let chip = ["h20", "ascend-910b", "mlu590"][added % 3];
                    board
                        .add_pool(pool(
                            &cat,
                            chip,
                            format!("extra-{added}"),
                            rng.random_range(1..8),
                        ))
                        .unwrap();
                }
                _ if pools.len() > 1 => {
                    board
                        .remove_pool(pools[rng.random_range(0..pools.len())])
                        .unwrap();
                }
                _ => {}
            }
            published.store(board.view().membership().epoch(), Ordering::Release);
        }
        done.store(true, Ordering::Relaxed);
    });

    let total = picks.load(Ordering::Relaxed) + nones.load(Ordering::Relaxed);
    assert_eq!(total as u64, 3 * PICKS_PER_THREAD);
    assert!(picks.load(Ordering::Relaxed) > 0);
}

/// Requests routed at the same instant on several threads must not herd. The epoch a
/// committed claim was decided at orders all decisions, and each must have been taken on a view holding
/// every claim committed before it: replayed in that order, every least-outstanding pick
/// is one of the least-loaded backends of its moment, exactly as if routed one at a time.
/// Without the epoch check, threads reading the same loads pick the same backend.
#[test]
fn parallel_decisions_see_each_other_like_sequential_ones() {
    let cat = Catalogue::embedded();
    let board = AtomicLoadBoard::from_pools([
        pool(&cat, "h20", "h20".into(), 3),
        pool(&cat, "ascend-910b", "ascend".into(), 4),
    ])
    .unwrap();
    let policy = build("least-outstanding", &toml::Table::new(), 3).unwrap();
    const THREADS: u64 = 3;
    const PER_THREAD: u64 = 5_000;
    let start = std::sync::Barrier::new(THREADS as usize);
    let retries = AtomicU64::new(0);
    let logs: Vec<Vec<(u64, BackendId)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (board, policy, retries, start) = (&board, &policy, &retries, &start);
                s.spawn(move || {
                    let mut log = Vec::with_capacity(PER_THREAD as usize);
                    start.wait();
                    for i in 0..PER_THREAD {
                        let req = Request {
                            id: t * PER_THREAD + i,
                            prompt_tokens: 100,
                            max_tokens: 10,
                            ..Default::default()
                        };
                        loop {
                            let seen = board.epoch();
                            let b = policy.pick(&req, &board.view(), 0).expect("a backend");
                            if board.claim(b, Claim::of(&req), Some(seen)) {
                                log.push((seen, b));
                                break;
                            }
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    log
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut order: Vec<(u64, BackendId)> = logs.into_iter().flatten().collect();
    order.sort_unstable();
    let epochs: Vec<u64> = order.iter().map(|&(e, _)| e).collect();
    // Each winner moved the epoch on by two.
    assert_eq!(
        epochs,
        (0..THREADS * PER_THREAD).map(|k| 2 * k).collect::<Vec<_>>()
    );
    let serving = board.view().membership().all_serving().to_vec();
    let mut counts = vec![0u32; serving.len()];
    for (k, &(_, b)) in order.iter().enumerate() {
        let i = serving.iter().position(|&x| x == b).unwrap();
        let least = *counts.iter().min().unwrap();
        assert_eq!(
            counts[i],
            least,
            "decision {k} chose a backend holding {} while another held {least} \
             ({} decisions were retried)",
            counts[i],
            retries.load(Ordering::Relaxed)
        );
        counts[i] += 1;
    }
}
