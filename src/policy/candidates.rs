//! How policies find candidates without scanning the fleet: a deterministic per-request
//! random stream, uniform sampling over the serving backends of the allowed pools, and a
//! bounded scan-or-sample helper. A decision touches a few dozen backends at most, so it
//! costs the same for 8 backends as for 4096.

use crate::engine::LoadSnapshot;
use crate::fleet::{
    BackendId, LoadView, Membership, PoolId, PoolInfo, PoolMask, ServingList, MAX_POOLS,
};
use crate::request::Request;

/// splitmix64: a tiny counter-based generator. Seeded from the policy's seed and the
/// request, so the same trace replayed with the same seed routes identically no matter how
/// many threads pick at once (no shared generator state to race on).
#[derive(Clone, Debug)]
pub struct PickRng {
    state: u64,
}

impl PickRng {
    pub fn new(seed: u64) -> PickRng {
        PickRng { state: seed }
    }

    /// The stream for one routing decision.
    pub fn for_request(seed: u64, req: &Request) -> PickRng {
        let s =
            crate::fleet::mix64(seed ^ crate::fleet::mix64(req.id)) ^ req.arrival.rotate_left(29);
        PickRng { state: s }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for any fleet).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The serving backends of a view's allowed pools, indexed `0..total` pool by pool. Built
/// once per decision (one pass over at most [`MAX_POOLS`] pools, on the stack), after
/// which drawing a random candidate is a multiply and a short search: no per-backend
/// table lookups, no allocation.
pub struct Eligible<'v> {
    membership: &'v Membership,
    ends: Ends<'v>,
    total: usize,
}

/// (cumulative end index, pool slot) of each allowed pool with serving backends: the
/// membership's own table when every pool is allowed, else a copy filtered by the mask.
// Deliberately unboxed: a decision must not allocate, and the array lives on the stack.
#[allow(clippy::large_enum_variant)]
enum Ends<'v> {
    All(&'v [(u32, u32)]),
    Masked([(u32, u32); MAX_POOLS], usize),
}

impl<'v> Eligible<'v> {
    pub fn of(view: &'v dyn LoadView) -> Eligible<'v> {
        let membership = view.membership();
        let allowed = view.allowed().0;
        if allowed & membership.live_mask() == membership.live_mask() {
            return Eligible {
                membership,
                ends: Ends::All(membership.serving_ends()),
                total: membership.all_serving().len(),
            };
        }
        let mut ends = [(0, 0); MAX_POOLS];
        let (mut len, mut total) = (0, 0);
        for p in view.eligible_pools() {
            total += membership.serving(p.id).len();
            ends[len] = (total as u32, p.id.0);
            len += 1;
        }
        Eligible {
            membership,
            ends: Ends::Masked(ends, len),
            total,
        }
    }

    /// Number of eligible backends.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The `i`-th eligible backend and its pool.
    pub fn nth(&self, i: usize) -> Option<(&'v PoolInfo, BackendId)> {
        let ends: &[(u32, u32)] = match &self.ends {
            Ends::All(e) => e,
            Ends::Masked(e, len) => &e[..*len],
        };
        let k = ends.iter().position(|(end, _)| i < *end as usize)?;
        let start = if k == 0 { 0 } else { ends[k - 1].0 as usize };
        let id = PoolId(ends[k].1);
        let pool = self.membership.pool(id)?;
        let b = self.membership.serving_list(id).get(i - start)?;
        Some((pool, b))
    }

    /// A uniformly random eligible backend and its pool.
    pub fn random(&self, rng: &mut PickRng) -> Option<(&'v PoolInfo, BackendId)> {
        if self.total == 0 {
            None
        } else {
            self.nth(rng.below(self.total))
        }
    }
}

/// One uniformly random serving backend of the allowed pools.
pub fn random_eligible<'v>(
    view: &'v dyn LoadView,
    rng: &mut PickRng,
) -> Option<(&'v PoolInfo, BackendId)> {
    Eligible::of(view).random(rng)
}

/// Scan-or-sample bounds shared by the "least X" policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reach {
    /// Scan every eligible backend when there are at most this many.
    pub scan_limit: usize,
    /// Otherwise look at this many, drawn at random (with replacement).
    pub sample: usize,
}

impl Default for Reach {
    /// Eight random choices: with d choices the heaviest queue shrinks like
    /// log log n / log d (Mitzenmacher), so eight is already close to a full scan.
    fn default() -> Self {
        Reach {
            scan_limit: 32,
            sample: 8,
        }
    }
}

/// Candidates whose loads are read together: enough to cover a decision's usual sample
/// (eight draws, or two in each of eight pools) in one pass, small enough that the stack
/// arrays cost nothing to set up.
const GATHER: usize = 16;

/// Calls `f` with each candidate of `cands` and its load, in order. Loads are read
/// [`GATHER`] candidates at a time through [`LoadView::loads`] before any is weighed, so
/// their cache misses overlap; the candidates are drawn first, so the draws (and with
/// them every pick) are the same as reading each load as it is drawn.
///
/// Always inlined: its callers' closures are the whole decision, and when a build (the
/// partition into codegen units moves with unrelated edits) kept it out of line,
/// `predicted-latency` cost ~500 more instructions per routing decision in the replay
/// bench (callgrind) for the calls through the closure and the 16-entry arrays it then
/// passes by reference.
#[inline(always)]
pub fn for_each_load<'v>(
    view: &dyn LoadView,
    mut cands: impl Iterator<Item = (&'v PoolInfo, BackendId)>,
    mut f: impl FnMut(&'v PoolInfo, BackendId, &LoadSnapshot),
) {
    let mut pools: [Option<&'v PoolInfo>; GATHER] = [None; GATHER];
    let mut ids = [BackendId(0); GATHER];
    let mut loads = [LoadSnapshot::default(); GATHER];
    loop {
        let mut n = 0;
        while n < GATHER {
            let Some((p, b)) = cands.next() else { break };
            (pools[n], ids[n]) = (Some(p), b);
            n += 1;
        }
        if n == 0 {
            return;
        }
        view.loads(&ids[..n], &mut loads[..n]);
        for i in 0..n {
            if let Some(p) = pools[i] {
                f(p, ids[i], &loads[i]);
            }
        }
        if n < GATHER {
            return;
        }
    }
}

/// `per_pool` uniformly random serving backends of each allowed pool of `pools` in turn,
/// by ascending pool id (pools with none serving give none), drawn from `rng` in that
/// order: the order [`LoadView::eligible_pools`] gives, with the view's allowed pools
/// read once. The pools left are a bit mask, so moving to the next pool is a
/// trailing-zeros count rather than a walk over every pool slot through
/// `eligible_pools`: drawing by that walk cost ~1,200 instructions of a
/// `predicted-latency` decision's 4,700 (callgrind, routing bench, 8 pools).
pub struct PerPoolDraws<'v, 'r> {
    membership: &'v Membership,
    pools: u64,
    rng: &'r mut PickRng,
    per_pool: usize,
    current: Option<(&'v PoolInfo, ServingList<'v>)>,
    left: usize,
}

impl<'v, 'r> PerPoolDraws<'v, 'r> {
    pub fn new(
        view: &'v dyn LoadView,
        pools: PoolMask,
        rng: &'r mut PickRng,
        per_pool: usize,
    ) -> Self {
        let membership = view.membership();
        PerPoolDraws {
            membership,
            pools: pools.and(view.allowed()).0 & membership.live_mask(),
            rng,
            per_pool: per_pool.max(1),
            current: None,
            left: 0,
        }
    }
}

impl<'v> Iterator for PerPoolDraws<'v, '_> {
    type Item = (&'v PoolInfo, BackendId);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        while self.left == 0 {
            if self.pools == 0 {
                return None;
            }
            let id = PoolId(self.pools.trailing_zeros());
            self.pools &= self.pools - 1;
            let serving = self.membership.serving_list(id);
            if serving.is_empty() {
                continue;
            }
            if let Some(pool) = self.membership.pool(id) {
                self.current = Some((pool, serving));
                self.left = self.per_pool;
            }
        }
        let (pool, serving) = self.current?;
        self.left -= 1;
        Some((pool, serving.get(self.rng.below(serving.len()))?))
    }
}

/// Calls `key` on the candidates of one decision, with each one's load: every eligible
/// backend (starting at a random one, so ties do not always favour the lowest id) when
/// there are few, otherwise a random sample. Returns the candidate with the smallest key
/// (the first drawn of equal ones).
///
/// Inlined into each policy's `pick` like [`for_each_load`]: when an unrelated edit moved
/// the codegen-unit partition and left it out of line, least-work's decisions cost ~50
/// more instructions each in the replay bench (callgrind).
#[inline(always)]
pub fn min_by_key<K: PartialOrd>(
    view: &dyn LoadView,
    rng: &mut PickRng,
    reach: Reach,
    mut key: impl FnMut(&PoolInfo, BackendId, &LoadSnapshot) -> K,
) -> Option<BackendId> {
    let eligible = Eligible::of(view);
    let n = eligible.total();
    if n == 0 {
        return None;
    }
    let mut best: Option<(K, BackendId)> = None;
    let consider = |pool: &PoolInfo, b: BackendId, load: &LoadSnapshot| {
        let k = key(pool, b, load);
        if best.as_ref().is_none_or(|(bk, _)| k < *bk) {
            best = Some((k, b));
        }
    };
    if n <= reach.scan_limit {
        let start = rng.below(n);
        let all = (0..n).filter_map(|j| eligible.nth((start + j) % n));
        for_each_load(view, all, consider);
    } else {
        let draws = (0..reach.sample.max(1)).filter_map(|_| eligible.random(rng));
        for_each_load(view, draws, consider);
    }
    best.map(|(_, b)| b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::test_fleets::pool;
    use crate::fleet::{BackendState, MaskedView, PlainLoadView};

    /// Draws walk the allowed pools with serving backends in ascending id, `per_pool`
    /// each, and skip a removed pool, a pool with none serving and a masked-out pool.
    #[test]
    fn per_pool_draws_visit_each_eligible_pool_in_order() {
        // Pools 0..5 of 3 backends: ids 0-2, 3-5, 6-8, 9-11, 12-14.
        let m = Membership::from_pools((0..5).map(|i| pool(&format!("p{i}"), 3, 1.0, 1.0, false)))
            .unwrap();
        let m = m.without_pool(PoolId(1)).unwrap();
        let m = (6..9).fold(m, |m, b| {
            m.with_state(BackendId(b), BackendState::Draining).unwrap()
        });
        let view = PlainLoadView::new(m);
        let masked = MaskedView {
            inner: &view,
            mask: PoolMask::ALL.and(PoolMask(!(1 << 4))),
        };
        let mut rng = PickRng::new(3);
        let got: Vec<(u32, u32)> = PerPoolDraws::new(&masked, PoolMask::ALL, &mut rng, 3)
            .map(|(p, b)| (p.id.0, b.0))
            .collect();
        let pools: Vec<u32> = got.iter().map(|g| g.0).collect();
        assert_eq!(pools, [0, 0, 0, 3, 3, 3]);
        assert!(got.iter().all(|&(p, b)| b / 3 == p), "{got:?}");
        // The pools argument narrows further; the view's mask still applies.
        let mut rng = PickRng::new(3);
        let only: Vec<u32> = PerPoolDraws::new(&masked, PoolMask(0b1_1001), &mut rng, 1)
            .map(|(p, _)| p.id.0)
            .collect();
        assert_eq!(only, [0, 3]);
    }
}
