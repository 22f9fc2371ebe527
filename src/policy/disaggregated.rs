//! `disaggregated`: prefill/decode routing for fleets with `prefill` and `decode` pools.
//! It picks a (prefill, decode) pair: the decode side first, by predicted time per output
//! token among backends with room in their KV for the whole request, then the prefill
//! side by predicted time to first token *including* moving the prompt's KV over the link
//! to that decode pool (the client's first token leaves from the decode side, as in vLLM's
//! and SGLang's P/D, so the transfer is part of TTFT). Ties within `tie_tolerance` go to
//! the pool whose prefill costs least per token.
//!
//! Selective: a prompt with fewer than `threshold` *uncached* tokens is served whole on a
//! mixed or decode backend, since moving a short prompt's KV costs about as much as
//! prefilling it in place; llm-d's and AIBrix's P/D deciders split on the same quantity.
//! The whole-serving candidate is picked first (by `predicted-latency` over those pools);
//! its uncached tokens are the prompt less the leading 512-token prefix blocks the policy
//! believes it holds. The policy cannot see the engines' caches: it keeps its own bounded
//! record of what it saw served where (`PrefixRecord`, up to `cache_entries` block-backend
//! pairs), so it may believe in a prefix the engine has evicted, or miss one it holds.
//! A request's full prompt blocks are recorded when it ends having produced a token
//! (`on_finished`), on the backend it ended on: a whole route's backend prefilled the
//! prompt, and a split route's decode backend cached the arrived KV (as vLLM's does). Not
//! at routing: a prefix still queued or in transfer is not there yet. An entry is
//! believed only while the KV that requests on that backend took since (every block,
//! since an arrived KV is allocated whole even where its prefix is cached) is within what
//! its running sequences and queued prefills leave free now. On the full Mooncake trace
//! (6×910B prefill + 1×H20 decode), counting only new prefix blocks as age let about a
//! hundred turns reach a decode backend that had evicted their prefix and prefill it in
//! full there; counting every block, six. A prompt without prefix hashes counts whole,
//! as before. The default of 512 tokens is our `estimate` of where a
//! 0.5 ms transfer and a decode-side prefill of the same prompt cross on the chips in
//! `config/chips.toml`.
//!
//! Composes with `domestic-share` (which passes its domestic-only view down), and falls
//! back to whole requests when the fleet has no serving prefill or decode pool.

use super::candidates::{for_each_load, PerPoolDraws, PickRng};
use super::predict::predict;
use super::prefix_record::{full_blocks, reusable_blocks, PrefixRecord};
use super::{bad, params, Policy, PolicyError, PredictedLatency, Route};
use crate::engine::Role;
use crate::fleet::{BackendId, LinkTable, LoadView, MaskedView, PoolId, PoolInfo, PoolMask};
use crate::request::{Nanos, Request, PREFIX_BLOCK_TOKENS};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    threshold: u32,
    per_pool: usize,
    tie_tolerance: f64,
    cache_entries: usize,
}

/// Default size of the prefix record: 65,536 (block, backend) pairs, 512 KiB once a
/// request with prefix hashes arrives; 32M tokens of prefixes, beyond the prefix caches of
/// a few dozen backends.
pub(crate) const CACHE_ENTRIES: usize = 1 << 16;

impl Default for Params {
    fn default() -> Self {
        Params {
            threshold: 512,
            per_pool: 2,
            tie_tolerance: 0.05,
            cache_entries: CACHE_ENTRIES,
        }
    }
}

/// Prefill on one pool, decode on another.
#[derive(Debug)]
pub struct Disaggregated {
    threshold: u32,
    per_pool: usize,
    tie_tolerance: f64,
    seed: u64,
    whole: PredictedLatency,
    /// Prefixes routed whole, by backend: what counts as cached.
    record: PrefixRecord,
}

impl Disaggregated {
    pub fn new(threshold: u32, per_pool: usize, tie_tolerance: f64, seed: u64) -> Self {
        Self::with_record(threshold, per_pool, tie_tolerance, seed, CACHE_ENTRIES)
    }

    /// As [`Self::new`], with a prefix record of `cache_entries` (block, backend) pairs.
    pub fn with_record(
        threshold: u32,
        per_pool: usize,
        tie_tolerance: f64,
        seed: u64,
        cache_entries: usize,
    ) -> Self {
        Disaggregated {
            threshold,
            per_pool: per_pool.max(1),
            tie_tolerance,
            seed,
            whole: PredictedLatency::new(per_pool.max(1), tie_tolerance, seed),
            record: PrefixRecord::new(cache_entries),
        }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let p: Params = params("disaggregated", table)?;
        if p.per_pool == 0 || p.per_pool > 64 {
            return Err(bad("disaggregated", "per_pool must be between 1 and 64"));
        }
        if !(0.0..1.0).contains(&p.tie_tolerance) {
            return Err(bad("disaggregated", "tie_tolerance must be in [0, 1)"));
        }
        if !(1..=1 << 24).contains(&p.cache_entries) {
            return Err(bad(
                "disaggregated",
                "cache_entries must be between 1 and 16777216",
            ));
        }
        Ok(Disaggregated::with_record(
            p.threshold,
            p.per_pool,
            p.tie_tolerance,
            seed,
            p.cache_entries,
        ))
    }

    /// Tokens of `req`'s prompt that `backend` must compute, by the prefix record: the
    /// prompt less its leading blocks recorded there (none without prefix hashes).
    fn uncached(&self, req: &Request, view: &dyn LoadView, backend: BackendId) -> u32 {
        if req.prefix_hashes.is_empty() || !self.record.is_allocated() {
            return req.prompt_tokens;
        }
        let m = view.membership();
        let Some(pool) = m.backend(backend).and_then(|e| m.pool(e.pool)) else {
            return req.prompt_tokens;
        };
        // What the engine can keep of what it was sent is bounded by the KV its running
        // sequences and queued prefills leave: the free blocks and the evictable cached
        // ones (`kv_used_blocks` counts running and pinned blocks only), in prefix blocks.
        let load = view.load(backend);
        let kv_blocks = if load.kv_total_blocks == 0 {
            u64::MAX // not reported: trust the record's own bound
        } else {
            (u64::from(load.kv_total_blocks.saturating_sub(load.kv_used_blocks))
                * u64::from(pool.config.block_size))
            .saturating_sub(load.queued_prefill_tokens)
                / u64::from(PREFIX_BLOCK_TOKENS)
        };
        let cached = self.record.cached_blocks(
            backend,
            &req.prefix_hashes,
            reusable_blocks(req.prompt_tokens),
            kv_blocks,
        ) as u32;
        req.prompt_tokens - cached * PREFIX_BLOCK_TOKENS
    }

    /// The request served whole, on a mixed or decode pool.
    fn whole(&self, req: &Request, view: &dyn LoadView, now: Nanos) -> Option<BackendId> {
        let mask = mask_of(view, |r| r.serves_whole());
        self.whole.pick(req, &MaskedView { inner: view, mask }, now)
    }
}

/// The eligible pools whose role `keep` accepts. Walks the allowed live pools' bits
/// rather than [`LoadView::eligible_pools`]: it runs on every decision (`whole` calls it),
/// and the walk over every pool slot cost more than the rest of building the mask.
fn mask_of(view: &dyn LoadView, keep: impl Fn(Role) -> bool) -> PoolMask {
    let m = view.membership();
    let mut left = view.allowed().0 & m.live_mask();
    let mut mask = PoolMask::NONE;
    while left != 0 {
        let id = PoolId(left.trailing_zeros());
        left &= left - 1;
        if m.serving(id).is_empty() {
            continue;
        }
        if m.pool(id).is_some_and(|p| keep(p.config.role)) {
            mask = mask.with(id);
        }
    }
    mask
}

/// The decode backend for a request whose prompt is (or will be) prefilled on a backend of
/// `from`: among decode pools (mixed ones when the fleet has none), the sampled backend
/// with the lowest predicted TPOT that has room in its KV for the whole request, else the
/// one with the most room. Drivers use it for a prefill pick made by a policy that does
/// not choose pairs.
pub fn pick_decode<'v>(
    req: &Request,
    view: &'v dyn LoadView,
    rng: &mut PickRng,
    per_pool: usize,
) -> Option<(BackendId, &'v PoolInfo)> {
    let decode = mask_of(view, |r| r == Role::Decode);
    let mask = if decode == PoolMask::NONE {
        mask_of(view, |r| r == Role::Mixed)
    } else {
        decode
    };
    let need = u64::from(req.prompt_tokens) + u64::from(req.max_tokens);
    // (lacks room, TPOT or -room) lower is better.
    let mut best: Option<((bool, i128), BackendId, &'v PoolInfo)> = None;
    let draws = PerPoolDraws::new(view, mask, rng, per_pool);
    for_each_load(view, draws, |pool, b, load| {
        let free = u64::from(load.kv_total_blocks.saturating_sub(load.kv_used_blocks))
            * u64::from(pool.config.block_size);
        let key = if free >= need {
            (false, i128::from(predict(pool, load, req).tpot_ns))
        } else {
            (true, -i128::from(free))
        };
        if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
            best = Some((key, b, pool));
        }
    });
    best.map(|(_, b, p)| (b, p))
}

impl Policy for Disaggregated {
    fn name(&self) -> &'static str {
        "disaggregated"
    }

    /// Without link information (a driver that routes whole requests only), whole.
    fn pick(&self, req: &Request, view: &dyn LoadView, now: Nanos) -> Option<BackendId> {
        self.whole(req, view, now)
    }

    fn pick_route(
        &self,
        req: &Request,
        view: &dyn LoadView,
        links: &LinkTable,
        now: Nanos,
    ) -> Option<Route> {
        let prefill = mask_of(view, |r| r == Role::Prefill);
        if req.prompt_tokens < self.threshold || prefill == PoolMask::NONE || req.max_tokens <= 1 {
            return self.whole(req, view, now).map(Route::whole);
        }
        // A long prompt whose prefix the whole-serving pick holds is short there.
        if !req.prefix_hashes.is_empty() {
            self.record.arm();
            if let Some(b) = self.whole(req, view, now) {
                if self.uncached(req, view, b) < self.threshold {
                    return Some(Route::whole(b));
                }
            }
        }
        let mut rng = PickRng::for_request(self.seed, req);
        let Some((decode, dpool)) = pick_decode(req, view, &mut rng, self.per_pool) else {
            return self.whole(req, view, now).map(Route::whole);
        };
        // Predictions read lengths only: no need to copy the prefix hashes.
        let first = Request {
            prompt_tokens: req.prompt_tokens,
            max_tokens: 1,
            ..Request::default()
        };
        let bytes = f64::from(req.prompt_tokens) * dpool.config.perf.model.kv_bytes_per_token();
        // (TTFT with transfer, cost per prefill token, backend).
        let mut cands: [(u64, f64, BackendId); crate::fleet::MAX_POOLS] =
            [(0, 0.0, BackendId(0)); crate::fleet::MAX_POOLS];
        let mut n = 0;
        let mut fastest = u64::MAX;
        let mut take = |pool: &PoolInfo, ttft: u64, b: BackendId| {
            let cost = pool.price_per_hour_usd * pool.prefill_ps_per_token as f64;
            cands[n] = (ttft, cost, b);
            n += 1;
            fastest = fastest.min(ttft);
        };
        // Each pool's fastest sample (its transfer included) is its candidate.
        let draws = PerPoolDraws::new(view, prefill, &mut rng, self.per_pool);
        let mut best: Option<(&PoolInfo, u64, BackendId)> = None;
        for_each_load(view, draws, |pool, b, load| {
            let transfer = links
                .between(pool.id.index(), dpool.id.index())
                .alone_ns(bytes);
            let ttft = predict(pool, load, &first).ttft_ns.saturating_add(transfer);
            match &mut best {
                Some((bp, bt, bb)) if bp.id == pool.id => {
                    if ttft < *bt {
                        (*bt, *bb) = (ttft, b);
                    }
                }
                _ => {
                    if let Some((bp, bt, bb)) = best.replace((pool, ttft, b)) {
                        take(bp, bt, bb);
                    }
                }
            }
        });
        if let Some((bp, bt, bb)) = best {
            take(bp, bt, bb);
        }
        let limit = fastest as f64 * (1.0 + self.tie_tolerance);
        let first = cands[..n]
            .iter()
            .filter(|c| c.0 as f64 <= limit)
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|c| c.2)?;
        Some(Route {
            first,
            decode: Some(decode),
        })
    }

    /// Records the prompt's full prefix blocks on the backend where the request ended,
    /// once it produced a token there: a whole route's backend has prefilled the prompt,
    /// a split route's decode side has received its KV, and their engines cache it.
    /// Recording at the end rather than at routing keeps the record from claiming a
    /// prefix still queued or in transfer, which a follow-up turn sent there would have to
    /// prefill in full. Only once a long request with hashes met a fleet with prefill
    /// pools (the record is allocated): otherwise nothing reads it. A prefill backend's
    /// entries are never looked up, since it never serves whole.
    fn on_finished(&self, req: &Request, backend: BackendId, output_tokens: u32, _now: Nanos) {
        let full = full_blocks(req.prompt_tokens).min(req.prefix_hashes.len());
        if output_tokens == 0 || full == 0 || !self.record.is_allocated() {
            return;
        }
        let footprint = (u64::from(req.prompt_tokens) + u64::from(output_tokens))
            .div_ceil(u64::from(PREFIX_BLOCK_TOKENS));
        self.record
            .record(backend, &req.prefix_hashes[..full], footprint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadSnapshot;
    use crate::fleet::test_fleets::pool;
    use crate::fleet::{Membership, PlainLoadView, PoolConfig};
    use crate::policy::testing::req;
    use crate::request::PREFIX_BLOCK_TOKENS;

    fn with_role(mut p: PoolConfig, role: Role) -> PoolConfig {
        p.role = role;
        p
    }

    /// Pools: 0 prefill (fast), 1 prefill (slow), 2 decode, 3 mixed.
    fn fleet() -> PlainLoadView {
        PlainLoadView::new(
            Membership::from_pools([
                with_role(pool("pfast", 2, 2.0, 1.0, true), Role::Prefill),
                with_role(pool("pslow", 2, 0.5, 1.0, true), Role::Prefill),
                with_role(pool("dec", 2, 1.0, 1.0, false), Role::Decode),
                pool("mix", 1, 1.0, 1.0, false),
            ])
            .unwrap(),
        )
    }

    fn pool_of(view: &PlainLoadView, b: BackendId) -> usize {
        view.membership().backend(b).unwrap().pool.index()
    }

    #[test]
    fn long_prompts_split_short_ones_stay_whole() {
        let view = fleet();
        let links = LinkTable::uniform(4, LinkTable::link(142.0, 500.0));
        let p = Disaggregated::new(512, 2, 0.05, 1);
        let r = p.pick_route(&req(1, 4000, 100), &view, &links, 0).unwrap();
        assert_eq!(pool_of(&view, r.first), 0, "fast prefill pool");
        assert_eq!(pool_of(&view, r.decode.unwrap()), 2, "decode pool");
        let r = p.pick_route(&req(2, 100, 100), &view, &links, 0).unwrap();
        assert!(r.decode.is_none());
        assert!(matches!(pool_of(&view, r.first), 2 | 3));
        // Without links the policy never splits.
        assert!(matches!(
            pool_of(&view, p.pick(&req(3, 4000, 100), &view, 0).unwrap()),
            2 | 3
        ));
    }

    fn with_hashes(id: u64, prompt: u32, first_hash: u64) -> Request {
        let mut r = req(id, prompt, 100);
        r.prefix_hashes = (0..u64::from(prompt.div_ceil(PREFIX_BLOCK_TOKENS)))
            .map(|i| first_hash + i)
            .collect();
        r
    }

    #[test]
    fn a_long_prompt_whose_prefix_a_mixed_backend_holds_is_served_whole_there() {
        // Pools: 0 prefill (backends 0, 1), 1 mixed (backend 2).
        let view = PlainLoadView::new(
            Membership::from_pools([
                with_role(pool("pfast", 2, 2.0, 1.0, true), Role::Prefill),
                pool("mix", 1, 1.0, 1.0, false),
            ])
            .unwrap(),
        );
        let links = LinkTable::uniform(2, LinkTable::link(142.0, 500.0));
        let p = Disaggregated::new(512, 2, 0.05, 1);
        // A 4,096-token prompt (eight blocks), split to the mixed backend, ended there.
        let first = with_hashes(1, 4096, 100);
        let r = p.pick_route(&first, &view, &links, 0).unwrap();
        assert_eq!(r.decode, Some(BackendId(2)));
        let next = with_hashes(2, 4300, 100);
        assert!(p
            .pick_route(&next, &view, &links, 0)
            .unwrap()
            .decode
            .is_some());
        p.on_finished(&first, BackendId(2), 100, 0);
        // Its next turn, 4,300 tokens sharing those eight blocks, split while the first was
        // in flight; now 204 tokens are uncached there: whole.
        assert_eq!(
            p.pick_route(&next, &view, &links, 0),
            Some(Route::whole(BackendId(2)))
        );
        // The same length with a fresh prefix is split, as is one without hashes.
        let fresh = with_hashes(3, 4300, 900);
        let r = p.pick_route(&fresh, &view, &links, 0).unwrap();
        assert_eq!((pool_of(&view, r.first), r.decode), (0, Some(BackendId(2))));
        let bare = req(4, 4300, 100);
        assert!(p
            .pick_route(&bare, &view, &links, 0)
            .unwrap()
            .decode
            .is_some());
        // A prefix sharing only four blocks leaves 2,252 uncached: split.
        let mut partial = with_hashes(5, 4300, 100);
        partial.prefix_hashes[4] = 7777;
        assert!(p
            .pick_route(&partial, &view, &links, 0)
            .unwrap()
            .decode
            .is_some());
    }

    #[test]
    fn a_split_routes_decode_side_holds_its_prefix_and_the_prefill_side_does_not() {
        let view = fleet();
        let links = LinkTable::uniform(4, LinkTable::link(142.0, 500.0));
        let p = Disaggregated::new(512, 2, 0.05, 1);
        let first = with_hashes(1, 4096, 100);
        let r = p.pick_route(&first, &view, &links, 0).unwrap();
        let d = r.decode.expect("split");
        p.on_routed(&first, r, &view, 0);
        p.on_finished(&first, d, 100, 0);
        // The next turn is whole wherever the whole-serving pick holds the prefix.
        for id in 2..40 {
            let next = with_hashes(id, 4300, 100);
            let whole_pick = p.pick(&next, &view, 0).unwrap();
            let r = p.pick_route(&next, &view, &links, 0).unwrap();
            if whole_pick == d {
                assert_eq!(r, Route::whole(d));
            } else {
                assert!(r.decode.is_some(), "{whole_pick:?} holds nothing");
            }
        }
        // A prompt that ended on a prefill backend (failed over there, say) is not
        // believed to be cached on any whole-serving one.
        let q = Disaggregated::new(512, 2, 0.05, 1);
        let r = q.pick_route(&first, &view, &links, 0).unwrap();
        q.on_finished(&first, r.first, 100, 0);
        for id in 2..40 {
            let next = with_hashes(id, 4300, 100);
            assert!(q
                .pick_route(&next, &view, &links, 0)
                .unwrap()
                .decode
                .is_some());
        }
    }

    #[test]
    fn routes_from_the_record_are_deterministic() {
        let view = fleet();
        let links = LinkTable::uniform(4, LinkTable::link(142.0, 500.0));
        let run = || {
            let p = Disaggregated::new(512, 2, 0.05, 9);
            let mut routes = Vec::new();
            // 20 conversations of 8 turns, each turn 150 tokens longer.
            for turn in 0..8u32 {
                for conv in 0..20u64 {
                    let r =
                        with_hashes(u64::from(turn) * 100 + conv, 2048 + 150 * turn, conv * 1000);
                    let route = p.pick_route(&r, &view, &links, 0).unwrap();
                    p.on_routed(&r, route, &view, 0);
                    p.on_finished(&r, route.output_side(), 100, 0);
                    routes.push(route);
                }
            }
            routes
        };
        let a = run();
        assert_eq!(a, run());
        let whole = a.iter().filter(|r| r.decode.is_none()).count();
        assert!(whole > 20 && whole < a.len(), "{whole} of {}", a.len());
    }

    #[test]
    fn decode_side_needs_room_and_prefill_side_pays_for_the_link() {
        let mut view = fleet();
        // Decode backend 4 nearly full: backend 5 gets the KV.
        view.set_load(
            BackendId(4),
            LoadSnapshot {
                kv_total_blocks: 1000,
                kv_used_blocks: 999,
                ..Default::default()
            },
        );
        view.set_load(
            BackendId(5),
            LoadSnapshot {
                kv_total_blocks: 1000,
                kv_used_blocks: 10,
                running: 30,
                ..Default::default()
            },
        );
        let links = LinkTable::uniform(4, LinkTable::link(142.0, 500.0));
        let p = Disaggregated::new(512, 8, 0.05, 1);
        for i in 0..20 {
            let r = p.pick_route(&req(i, 4000, 100), &view, &links, 0).unwrap();
            assert_eq!(r.decode, Some(BackendId(5)));
        }
        // With a crawling link from the fast prefill pool to the decode pool, the transfer
        // outweighs its faster prefill and the slow pool wins.
        let mut pairs = vec![LinkTable::link(142.0, 500.0); 16];
        pairs[2] = LinkTable::link(0.01, 500.0); // pool 0 → pool 2
        let links = LinkTable::from_links(4, pairs);
        let r = p.pick_route(&req(99, 4000, 100), &view, &links, 0).unwrap();
        assert_eq!(pool_of(&view, r.first), 1);
    }
}
