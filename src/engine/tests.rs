//! Engine tests: hand-checked timings, and property tests that the two granularities agree
//! to the nanosecond, that KV never exceeds capacity, and that every request ends once.

use super::*;
use crate::profile::fixtures::{h20, llama3_8b, perf as fixture_perf};
use crate::profile::PerfModel;
use crate::request::{Nanos, Priority, Request};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) fn perf() -> Arc<PerfModel> {
    Arc::new(fixture_perf(&h20(), &llama3_8b(), 1).unwrap())
}

/// A perf model with a tiny KV cache, to force preemption and prefix eviction.
pub(super) fn small_kv_perf() -> Arc<PerfModel> {
    let mut chip = h20();
    // 8.03e9·2 B of weights + 2 GB reserve + ~6,000 tokens of KV (128 KiB each).
    chip.memory_gb = (8.03e9 * 2.0 + 2e9 + 6000.0 * 131072.0) / 0.9 / 1e9;
    Arc::new(fixture_perf(&chip, &llama3_8b(), 1).unwrap())
}

pub(super) fn req(id: u64, arrival: Nanos, prompt: u32, out: u32) -> Request {
    Request {
        id,
        arrival,
        prompt_tokens: prompt,
        max_tokens: out,
        ..Default::default()
    }
}

/// Drives an engine over arrivals and aborts (time, id) in time order, checking KV
/// after every call. Returns all events.
fn drive(
    perf: Arc<PerfModel>,
    cfg: EngineConfig,
    mut reqs: Vec<Request>,
    aborts: &[(Nanos, u64)],
) -> Vec<EngineEvent> {
    reqs.sort_by_key(|r| (r.arrival, r.id));
    let mut engine = Engine::new(perf, cfg);
    let mut out = Vec::new();
    let (mut ri, mut ai) = (0, 0);
    loop {
        let next_arrival = reqs.get(ri).map(|r| r.arrival);
        let next_abort = aborts.get(ai).map(|a| a.0);
        let next = [next_arrival, next_abort, engine.next_event_at()]
            .into_iter()
            .flatten()
            .min();
        let Some(now) = next else { break };
        engine.advance(now, &mut out);
        while ri < reqs.len() && reqs[ri].arrival == now {
            engine.admit(reqs[ri].clone(), now).unwrap();
            ri += 1;
        }
        while ai < aborts.len() && aborts[ai].0 == now {
            engine.abort(aborts[ai].1, now);
            ai += 1;
        }
        let (total, used) = engine.kv_blocks();
        assert!(used <= total, "KV over capacity: {used} > {total}");
    }
    assert!(
        engine.is_empty(),
        "engine still holds {} requests",
        engine.len()
    );
    assert_eq!(engine.kv_blocks().1, 0, "KV not returned");
    let load = engine.load();
    assert_eq!((load.waiting, load.running), (0, 0));
    assert_eq!(
        (load.queued_prefill_tokens, load.remaining_decode_tokens),
        (0, 0)
    );
    out
}

pub(super) fn observable(events: &[EngineEvent]) -> Vec<EngineEvent> {
    events
        .iter()
        .filter(|e| !matches!(e, EngineEvent::Token { .. }))
        .copied()
        .collect()
}

#[test]
fn one_request_on_idle_engine_matches_perf_model() {
    let p = perf();
    let cfg = EngineConfig::for_perf(&p);
    let ev = drive(p.clone(), cfg, vec![req(1, 1000, 1000, 4)], &[]);
    let prefill = p.prefill_ns(1000, 0);
    let mut t = 1000 + prefill;
    assert_eq!(ev[0], EngineEvent::Scheduled { id: 1, at: 1000 });
    assert_eq!(ev[1], EngineEvent::FirstToken { id: 1, at: t });
    // Three decode steps at context 1001, 1002, 1003.
    for ctx in 1001..1004 {
        t += p.decode_step_ns(1, ctx);
    }
    assert_eq!(
        ev[2],
        EngineEvent::Finished {
            id: 1,
            at: t,
            output_tokens: 4
        }
    );
    assert_eq!(ev.len(), 3);
}

#[test]
fn unchunked_prompts_run_whole_one_per_step_when_two_overflow_the_budget() {
    // Two 5,000-token prompts at once, budget 8,192. Chunked, the second fills the first
    // step's leftover 3,192 tokens; unchunked (TensorRT-LLM's default), it waits for the
    // next step and runs whole there, beside the first one's decode.
    let p = perf();
    let both = vec![req(1, 0, 5000, 3), req(2, 0, 5000, 3)];
    let chunked = EngineConfig {
        chunked_prefill: true,
        ..EngineConfig::for_perf(&p)
    };
    let ev = drive(p.clone(), chunked, both.clone(), &[]);
    assert!(
        ev.contains(&EngineEvent::Scheduled { id: 2, at: 0 }),
        "{ev:?}"
    );
    let whole = EngineConfig {
        chunked_prefill: false,
        ..chunked
    };
    let ev = drive(p.clone(), whole, both, &[]);
    let first = p.prefill_ns(5000, 0);
    assert!(
        ev.contains(&EngineEvent::FirstToken { id: 1, at: first }),
        "{ev:?}"
    );
    assert!(
        ev.contains(&EngineEvent::Scheduled { id: 2, at: first }),
        "{ev:?}"
    );
    let mut step = crate::profile::StepShape::decode(1, 5001);
    step.add(crate::profile::StepShape::prefill(5000, 0));
    let second = first + p.step_ns(&step);
    assert!(
        ev.contains(&EngineEvent::FirstToken { id: 2, at: second }),
        "{ev:?}"
    );
    // A prompt longer than the whole budget still runs, alone, in one step.
    let ev = drive(p.clone(), whole, vec![req(3, 0, 9000, 1)], &[]);
    let at = p.prefill_ns(9000, 0);
    assert!(
        ev.contains(&EngineEvent::FirstToken { id: 3, at }),
        "{ev:?}"
    );
}

#[test]
fn long_prompt_is_chunked_by_the_token_budget() {
    let p = perf();
    let cfg = EngineConfig {
        max_batched_tokens: 512,
        ..EngineConfig::for_perf(&p)
    };
    let ev = drive(p.clone(), cfg, vec![req(1, 0, 1200, 1)], &[]);
    let expect = p.prefill_ns(512, 0) + p.prefill_ns(512, 512) + p.prefill_ns(176, 1024);
    assert_eq!(ev[1], EngineEvent::FirstToken { id: 1, at: expect });
}

#[test]
fn per_token_mode_streams_every_token_once_in_order() {
    let p = perf();
    let cfg = EngineConfig::for_perf(&p).with_granularity(Granularity::PerToken);
    let reqs = (0..20)
        .map(|i| req(i, i * 3_000_000, 100 + i as u32 * 37, 1 + i as u32 * 5))
        .collect();
    let ev = drive(p, cfg, reqs, &[]);
    let mut next: HashMap<u64, u32> = HashMap::new();
    for e in &ev {
        if let EngineEvent::Token { id, index, .. } = *e {
            let n = next.entry(id).or_insert(1);
            assert_eq!(index, *n, "token {index} of {id} out of order");
            *n += 1;
        }
    }
    for i in 0..20u64 {
        assert_eq!(next[&i] - 1, 1 + i as u32 * 5);
    }
}

#[test]
fn prefix_cache_hit_skips_the_shared_prefill() {
    let p = perf();
    let cfg = EngineConfig::for_perf(&p);
    let mut a = req(1, 0, 2048, 1);
    a.prefix_hashes = vec![11, 12, 13, 14];
    let mut b = req(2, 10_000_000_000, 2048, 1);
    b.prefix_hashes = vec![11, 12, 13, 99];
    let ev = drive(p.clone(), cfg, vec![a, b], &[]);
    let first = |id| {
        ev.iter()
            .find_map(|e| match *e {
                EngineEvent::FirstToken { id: i, at } if i == id => Some(at),
                _ => None,
            })
            .unwrap()
    };
    // Three 512-token blocks are shared: only the last 512 are computed.
    assert_eq!(first(2) - 10_000_000_000, p.prefill_ns(512, 1536));
    assert_eq!(first(1), p.prefill_ns(2048, 0));
}

#[test]
fn batch_waits_behind_interactive() {
    let p = perf();
    let cfg = EngineConfig {
        max_num_seqs: 1,
        ..EngineConfig::for_perf(&p)
    };
    let mut batch = req(1, 10, 100, 2);
    batch.priority = Priority::Batch;
    let reqs = vec![req(0, 0, 100, 50), batch, req(2, 20, 100, 2)];
    let ev = drive(p, cfg, reqs, &[]);
    let order: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Scheduled { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![0, 2, 1]);
}

#[test]
fn oversized_request_is_refused() {
    let p = small_kv_perf();
    let mut e = Engine::new(p.clone(), EngineConfig::for_perf(&p));
    let err = e.admit(req(1, 0, 6000, 500), 0).unwrap_err();
    assert!(matches!(err, AdmitError::TooLarge { .. }), "{err}");
    assert!(matches!(
        e.admit(req(2, 0, 0, 5), 0),
        Err(AdmitError::Empty)
    ));
    e.admit(req(3, 0, 10, 5), 0).unwrap();
    assert!(matches!(
        e.admit(req(3, 0, 10, 5), 0),
        Err(AdmitError::DuplicateId(3))
    ));
}

#[test]
fn kv_pressure_preempts_and_still_finishes_everything() {
    let p = small_kv_perf();
    let cfg = EngineConfig::for_perf(&p);
    let reqs = (0..12).map(|i| req(i, i, 800, 300)).collect();
    let ev = drive(p, cfg, reqs, &[]);
    assert!(ev
        .iter()
        .any(|e| matches!(e, EngineEvent::Preempted { .. })));
    let finished = ev
        .iter()
        .filter(|e| matches!(e, EngineEvent::Finished { .. }))
        .count();
    assert_eq!(finished, 12);
}

#[test]
fn abort_frees_kv_immediately() {
    let p = perf();
    let mut e = Engine::new(p.clone(), EngineConfig::for_perf(&p));
    let mut out = Vec::new();
    e.admit(req(1, 0, 4000, 1000), 0).unwrap();
    e.advance(50_000_000, &mut out);
    assert!(e.kv_blocks().1 > 0);
    assert!(e.abort(1, 50_000_000));
    assert_eq!(e.kv_blocks().1, 0);
    assert!(!e.abort(1, 50_000_000));
    e.advance(u64::MAX / 2, &mut out);
    assert!(!out
        .iter()
        .any(|e| matches!(e, EngineEvent::Finished { .. })));
    assert_eq!(e.next_event_at(), None);
}

#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) reqs: Vec<Request>,
    pub(super) aborts: Vec<(Nanos, u64)>,
    pub(super) small_kv: bool,
    pub(super) max_num_seqs: u32,
    pub(super) budget: u32,
}

pub(super) fn case() -> impl Strategy<Value = Case> {
    let one = (
        0u64..2_000_000_000,
        1u32..3000,
        1u32..400,
        any::<bool>(),
        proptest::collection::vec(0u64..4, 0..6),
    );
    (
        proptest::collection::vec(one, 1..40),
        proptest::collection::vec((0u64..3_000_000_000, 0u64..40), 0..6),
        any::<bool>(),
        1u32..64,
        prop_oneof![Just(256u32), Just(2048), Just(8192)],
    )
        .prop_map(|(rs, aborts, small_kv, max_num_seqs, budget)| Case {
            reqs: rs
                .into_iter()
                .enumerate()
                .map(|(i, (arrival, prompt, out, batch, hashes))| Request {
                    id: i as u64,
                    arrival,
                    prompt_tokens: prompt,
                    max_tokens: out,
                    priority: if batch {
                        Priority::Batch
                    } else {
                        Priority::Interactive
                    },
                    prefix_hashes: hashes,
                    ..Default::default()
                })
                .collect(),
            aborts: {
                let mut a = aborts;
                a.sort();
                a
            },
            small_kv,
            max_num_seqs,
            budget,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn granularities_agree_and_every_request_ends_once(c in case()) {
        let p = if c.small_kv { small_kv_perf() } else { perf() };
        let cfg = EngineConfig {
            max_num_seqs: c.max_num_seqs,
            max_batched_tokens: c.budget,
            block_size: 16,
            prefix_block_tokens: 64,
            chunked_prefill: true,
            granularity: Granularity::PerEvent,
            role: Role::Mixed,
        };
        let fine = drive(p.clone(), cfg.with_granularity(Granularity::PerToken), c.reqs.clone(), &c.aborts);
        let coarse = drive(p, cfg, c.reqs.clone(), &c.aborts);
        prop_assert_eq!(observable(&fine), coarse.clone());

        let mut ended: HashMap<u64, u32> = HashMap::new();
        for e in &coarse {
            if let EngineEvent::Finished { id, output_tokens, .. } = *e {
                *ended.entry(id).or_default() += 1;
                prop_assert_eq!(output_tokens, c.reqs[id as usize].max_tokens);
            }
        }
        let aborted: std::collections::HashSet<u64> = c.aborts.iter().map(|a| a.1).collect();
        for r in &c.reqs {
            let n = ended.get(&r.id).copied().unwrap_or(0);
            prop_assert!(n <= 1, "request {} finished {} times", r.id, n);
            if n == 0 {
                prop_assert!(aborted.contains(&r.id), "request {} neither finished nor aborted", r.id);
            }
        }
        // Per-token streams: each finished request saw exactly its tokens, once, in order.
        let mut next: HashMap<u64, u32> = HashMap::new();
        for e in &fine {
            if let EngineEvent::Token { id, index, .. } = *e {
                let n = next.entry(id).or_insert(1);
                prop_assert_eq!(index, *n);
                *n += 1;
            }
        }
        for (id, _) in ended {
            prop_assert_eq!(next[&id] - 1, c.reqs[id as usize].max_tokens);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A per-event engine's load with its decode stretch's progress taken off tracks a
    /// per-token engine's (the daemon's) at any instant: every other figure is equal, and
    /// remaining decode tokens are over by at most two steps' worth, never under.
    #[test]
    fn a_stretch_in_flight_tracks_stepping_token_by_token(
        c in case(),
        probes in proptest::collection::vec(0u64..6_000_000_000, 1..40),
    ) {
        let p = if c.small_kv { small_kv_perf() } else { perf() };
        let cfg = EngineConfig {
            max_num_seqs: c.max_num_seqs,
            max_batched_tokens: c.budget,
            block_size: 16,
            prefix_block_tokens: 64,
            chunked_prefill: true,
            granularity: Granularity::PerEvent,
            role: Role::Mixed,
        };
        let mut coarse = Engine::new(p.clone(), cfg);
        let mut fine = Engine::new(p, cfg.with_granularity(Granularity::PerToken));
        let mut reqs = c.reqs.clone();
        reqs.sort_by_key(|r| (r.arrival, r.id));
        let mut probes = probes;
        probes.sort_unstable();
        let mut out = Vec::new();
        let mut ri = 0;
        for t in probes {
            while ri < reqs.len() && reqs[ri].arrival <= t {
                let at = reqs[ri].arrival;
                coarse.advance(at, &mut out);
                fine.advance(at, &mut out);
                coarse.admit(reqs[ri].clone(), at).unwrap();
                fine.admit(reqs[ri].clone(), at).unwrap();
                ri += 1;
            }
            coarse.advance(t, &mut out);
            fine.advance(t, &mut out);
            let (c_load, f_load) = (coarse.load(), fine.load());
            let (done, seqs) = coarse
                .decode_stretch()
                .map_or((0, 0), |s| (s.tokens_by(t), s.seqs));
            let projected = c_load.remaining_decode_tokens - done;
            let exact = f_load.remaining_decode_tokens;
            prop_assert!(
                exact <= projected && projected - exact <= 2 * seqs,
                "at {}: projected {} tokens left, stepping left {} ({} sequences)",
                t, projected, exact, seqs
            );
            prop_assert_eq!(
                (c_load.waiting, c_load.running, c_load.queued_prefill_tokens),
                (f_load.waiting, f_load.running, f_load.queued_prefill_tokens)
            );
        }
    }
}
