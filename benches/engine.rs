//! How many requests per second of wall time one engine simulates in per-event mode under
//! a steady Poisson load near saturation. Whole-fleet replay is built from this loop, so it
//! bounds how fast a day of traffic can be replayed (goal: ≥ 2 million requests/s on one
//! core). The arrival rate is set to 90% of the engine's measured saturation throughput.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dujiang::engine::{Engine, EngineConfig, EngineEvent};
use dujiang::profile::{Catalogue, PerfModel};
use dujiang::request::{Nanos, Request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::sync::Arc;

const REQUESTS: usize = 20_000;

fn workload(rate_per_s: f64, seed: u64) -> Vec<Request> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0f64;
    (0..REQUESTS)
        .map(|i| {
            let u: f64 = rng.random::<f64>().max(1e-12);
            t += -u.ln() / rate_per_s;
            Request {
                id: i as u64,
                arrival: (t * 1e9) as Nanos,
                prompt_tokens: rng.random_range(200..2000),
                max_tokens: rng.random_range(20..400),
                ..Default::default()
            }
        })
        .collect()
}

/// Runs the requests through one engine; returns (finished, simulated end time).
fn run(perf: &Arc<PerfModel>, reqs: &[Request]) -> (usize, Nanos) {
    let mut engine = Engine::new(perf.clone(), EngineConfig::for_perf(perf));
    let mut events: Vec<EngineEvent> = Vec::with_capacity(64);
    let mut finished = 0;
    let mut next = 0;
    let mut now = 0;
    loop {
        let arrival = reqs.get(next).map(|r| r.arrival);
        let t = match (arrival, engine.next_event_at()) {
            (Some(a), Some(e)) => a.min(e),
            (Some(a), None) => a,
            (None, Some(e)) => e,
            (None, None) => break,
        };
        now = t;
        engine.advance(t, &mut events);
        finished += events
            .iter()
            .filter(|e| matches!(e, EngineEvent::Finished { .. }))
            .count();
        events.clear();
        while next < reqs.len() && reqs[next].arrival == t {
            engine.admit(reqs[next].clone(), t).expect("fits");
            next += 1;
        }
    }
    (finished, now)
}

fn engine(c: &mut Criterion) {
    let cat = Catalogue::embedded();
    let perf = Arc::new(
        cat.perf("h20", None, "llama-3-8b", 1, None)
            .expect("h20 serves llama-3-8b"),
    );

    // Saturation throughput: everything arrives at once.
    let burst: Vec<Request> = workload(1e12, 7);
    let (_, makespan) = run(&perf, &burst);
    let capacity = REQUESTS as f64 / (makespan as f64 / 1e9);
    let reqs = workload(0.9 * capacity, 42);
    let (done, end) = run(&perf, &reqs);
    assert_eq!(done, REQUESTS);
    eprintln!(
        "engine: saturation {capacity:.1} req/s simulated; load at 90% finishes {REQUESTS} requests in {:.1} simulated s",
        end as f64 / 1e9
    );

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.sample_size(20);
    group.bench_function("per_event_poisson_90pct", |b| {
        b.iter(|| black_box(run(&perf, &reqs)))
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
