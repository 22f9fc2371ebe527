//! Prefill/decode engine tests: hand-offs after the first token, KV held until the bytes
//! have left, prefix caching of arrived KV, role checks, and a property test that hand-offs
//! keep the two granularities exact. Split from `tests.rs`, whose fixtures they share.

use super::tests::{case, observable, perf, req, small_kv_perf};
use super::*;
use crate::profile::PerfModel;
use crate::request::{Nanos, Request};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Drives a prefill engine and a decode engine: each handoff reaches the decode engine
/// `delay(kv_tokens)` later (a stand-in for the link), and is admitted there; the prefill
/// engine holds its KV until half that time (the bytes have left). Checks KV on both
/// after every call. Returns (prefill events, decode events).
fn drive_pd(
    perf: Arc<PerfModel>,
    cfg: EngineConfig,
    mut reqs: Vec<Request>,
    delay: impl Fn(u32) -> Nanos,
) -> (Vec<EngineEvent>, Vec<EngineEvent>) {
    reqs.sort_by_key(|r| (r.arrival, r.id));
    let by_id: HashMap<u64, Request> = reqs.iter().map(|r| (r.id, r.clone())).collect();
    let mut pre = Engine::new(perf.clone(), cfg.with_role(Role::Prefill));
    let mut dec = Engine::new(perf, cfg.with_role(Role::Decode));
    let (mut pre_out, mut dec_out) = (Vec::new(), Vec::new());
    // Transfers in flight: (arrival at the decode engine, id, generated).
    let mut moving: Vec<(Nanos, u64, u32)> = Vec::new();
    // KV being sent: (sent, id).
    let mut sending: Vec<(Nanos, u64)> = Vec::new();
    let mut ri = 0;
    loop {
        let next = [
            reqs.get(ri).map(|r| r.arrival),
            moving.iter().map(|m| m.0).min(),
            sending.iter().map(|m| m.0).min(),
            pre.next_event_at(),
            dec.next_event_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(now) = next else { break };
        let seen = pre_out.len();
        pre.advance(now, &mut pre_out);
        for e in &pre_out[seen..] {
            if let EngineEvent::Handoff {
                id,
                at,
                kv_tokens,
                generated,
            } = *e
            {
                assert_eq!(kv_tokens, by_id[&id].prompt_tokens);
                moving.push((at + delay(kv_tokens), id, generated));
                sending.push((at + delay(kv_tokens) / 2, id));
            }
        }
        sending.sort_unstable();
        while sending.first().is_some_and(|m| m.0 == now) {
            let (_, id) = sending.remove(0);
            assert!(
                pre.release_handed_off(id, now),
                "request {id} held until sent"
            );
        }
        dec.advance(now, &mut dec_out);
        moving.sort_unstable();
        while moving.first().is_some_and(|m| m.0 == now) {
            let (_, id, generated) = moving.remove(0);
            // As both drivers send it: with its prefix hashes, which the decode side
            // caches when the sequence joins.
            dec.admit_transferred(by_id[&id].clone(), generated, now)
                .unwrap();
        }
        while ri < reqs.len() && reqs[ri].arrival == now {
            pre.admit(reqs[ri].clone(), now).unwrap();
            ri += 1;
        }
        for e in [&pre, &dec] {
            let (total, used) = e.kv_blocks();
            assert!(used <= total, "KV over capacity: {used} > {total}");
        }
    }
    for e in [&pre, &dec] {
        assert!(
            e.is_empty() && e.kv_blocks().1 == 0,
            "work or KV left behind"
        );
        let load = e.load();
        assert_eq!(
            (
                load.waiting,
                load.running,
                load.queued_prefill_tokens,
                load.remaining_decode_tokens
            ),
            (0, 0, 0, 0)
        );
    }
    (pre_out, dec_out)
}

#[test]
fn prefill_instance_hands_off_after_the_first_token_and_decode_continues() {
    let p = perf();
    let cfg = EngineConfig::for_perf(&p);
    let reqs = vec![req(1, 0, 1000, 50), req(2, 0, 200, 1)];
    let (pre, dec) = drive_pd(p.clone(), cfg, reqs, |_| 5_000_000);
    let first = pre
        .iter()
        .find_map(|e| match *e {
            EngineEvent::FirstToken { id: 1, at } => Some(at),
            _ => None,
        })
        .unwrap();
    let handoff = pre
        .iter()
        .find_map(|e| match *e {
            EngineEvent::Handoff { id: 1, at, .. } => Some(at),
            _ => None,
        })
        .unwrap();
    assert_eq!(first, handoff, "hand-off at the first token");
    // A one-token request is done on the prefill side: nothing to hand off.
    assert!(pre.iter().any(|e| matches!(
        e,
        EngineEvent::Finished {
            id: 2,
            output_tokens: 1,
            ..
        }
    )));
    let done = dec
        .iter()
        .find_map(|e| match *e {
            EngineEvent::Finished {
                id: 1,
                at,
                output_tokens,
            } => Some((at, output_tokens)),
            _ => None,
        })
        .unwrap();
    assert_eq!(done.1, 50);
    // 49 decode steps after the KV arrives, one sequence at ~1.2k context.
    let expect = p.decode_run_ns(1, 1001, 49);
    assert_eq!(done.0, handoff + 5_000_000 + expect);
    assert!(!dec
        .iter()
        .any(|e| matches!(e, EngineEvent::FirstToken { .. })));
}

/// A prefill instance holds a handed-off sequence's KV until the link has sent it, then
/// frees it; work waiting for that KV is scheduled once it is free.
#[test]
fn a_prefill_instance_holds_the_kv_until_the_bytes_have_left() {
    let p = small_kv_perf();
    let cfg = EngineConfig::for_perf(&p).with_role(Role::Prefill);
    let mut pre = Engine::new(p, cfg);
    let total = pre.kv_blocks().0;
    let block = u64::from(cfg.block_size);
    // A prompt taking over half the KV: a second one cannot start while it is held.
    let prompt = ((total / 2 + 1) * block) as u32;
    pre.admit(req(1, 0, prompt, 10), 0).unwrap();
    pre.admit(req(2, 0, prompt, 10), 0).unwrap();
    let mut out = Vec::new();
    let mut handed = None;
    while handed.is_none() {
        let t = pre.next_event_at().expect("work");
        pre.advance(t, &mut out);
        handed = out.iter().find_map(|e| match *e {
            EngineEvent::Handoff { id: 1, at, .. } => Some(at),
            _ => None,
        });
    }
    let at = handed.unwrap();
    let held = pre.kv_blocks().1;
    assert!(
        held >= total / 2,
        "KV freed at hand-off: {held} of {total} blocks in use"
    );
    assert_eq!(pre.load().running, 0, "a sending sequence does not run");
    // Request 2 waits for the room request 1's KV holds.
    assert_eq!(
        pre.next_event_at(),
        None,
        "nothing can run while the KV is held"
    );
    assert!(!out
        .iter()
        .any(|e| matches!(e, EngineEvent::Scheduled { id: 2, .. })));
    let sent = at + 1_000_000;
    assert!(pre.release_handed_off(1, sent));
    assert!(!pre.release_handed_off(1, sent), "released once");
    assert_eq!(pre.kv_blocks().1, 0);
    assert_eq!(
        pre.next_event_at(),
        Some(sent),
        "request 2 is scheduled now"
    );
    pre.advance(sent, &mut out);
    assert!(out
        .iter()
        .any(|e| matches!(e, EngineEvent::Scheduled { id: 2, at } if *at == sent)));
}

#[test]
fn a_decode_instance_caches_the_prefix_of_an_arrived_kv() {
    let p = perf();
    let cfg = EngineConfig::for_perf(&p).with_role(Role::Decode);
    let mut dec = Engine::new(p.clone(), cfg);
    let mut out = Vec::new();
    // A 2,048-token prompt prefilled elsewhere arrives with its four block hashes.
    let mut handed = req(1, 0, 2048, 4);
    handed.prefix_hashes = vec![11, 12, 13, 14];
    dec.admit_transferred(handed, 1, 0).unwrap();
    dec.advance(1_000_000_000, &mut out);
    assert!(out
        .iter()
        .any(|e| matches!(e, EngineEvent::Finished { id: 1, .. })));
    // A request sharing three blocks, served whole here, computes only the last 512.
    let at = 10_000_000_000;
    let mut b = req(2, at, 2048, 1);
    b.prefix_hashes = vec![11, 12, 13, 99];
    dec.admit(b, at).unwrap();
    out.clear();
    dec.advance(at + 10_000_000_000, &mut out);
    let first = out
        .iter()
        .find_map(|e| match *e {
            EngineEvent::FirstToken { id: 2, at } => Some(at),
            _ => None,
        })
        .unwrap();
    assert_eq!(first - at, p.prefill_ns(512, 1536));
}

#[test]
fn roles_refuse_what_they_do_not_run() {
    let p = perf();
    let cfg = EngineConfig::for_perf(&p);
    let mut pre = Engine::new(p.clone(), cfg.with_role(Role::Prefill));
    assert!(matches!(
        pre.admit_transferred(req(1, 0, 100, 10), 1, 0),
        Err(AdmitError::WrongRole { .. })
    ));
    let mut dec = Engine::new(p, cfg.with_role(Role::Decode));
    assert!(dec.admit_transferred(req(1, 0, 100, 10), 10, 0).is_err());
    assert!(dec.admit_transferred(req(1, 0, 100, 10), 1, 0).is_ok());
    assert!(matches!(
        dec.admit_transferred(req(1, 0, 100, 10), 1, 0),
        Err(AdmitError::DuplicateId(1))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Handoffs keep the granularities exact: a prefill engine handing off to a decode
    /// engine makes the same observable events at the same nanoseconds whether both step
    /// token by token or jump decode stretches, every request ends once on the decode side
    /// with all its tokens, and KV never exceeds either engine's capacity.
    #[test]
    fn handoffs_keep_granularities_exact(c in case(), ns_per_token in 0u64..20_000) {
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
        let delay = |tokens: u32| 100_000 + u64::from(tokens) * ns_per_token;
        let (fine_p, fine_d) = drive_pd(p.clone(), cfg.with_granularity(Granularity::PerToken), c.reqs.clone(), delay);
        let (coarse_p, coarse_d) = drive_pd(p, cfg, c.reqs.clone(), delay);
        prop_assert_eq!(observable(&fine_p), coarse_p.clone());
        prop_assert_eq!(observable(&fine_d), coarse_d.clone());
        let mut ended: HashMap<u64, u32> = HashMap::new();
        for e in coarse_p.iter().chain(&coarse_d) {
            if let EngineEvent::Finished { id, output_tokens, .. } = *e {
                *ended.entry(id).or_default() += 1;
                prop_assert_eq!(output_tokens, c.reqs[id as usize].max_tokens);
            }
        }
        for r in &c.reqs {
            prop_assert_eq!(ended.get(&r.id).copied(), Some(1), "request {}", r.id);
        }
        // Streams: token 1 on the prefill side, 2.. on the decode side, each once, in order.
        let mut next: HashMap<u64, u32> = HashMap::new();
        for e in fine_p.iter().chain(&fine_d) {
            if let EngineEvent::Token { id, index, .. } = *e {
                let n = next.entry(id).or_insert(1);
                prop_assert_eq!(index, *n);
                *n += 1;
            }
        }
        for r in &c.reqs {
            prop_assert_eq!(next[&r.id] - 1, r.max_tokens);
        }
    }
}
