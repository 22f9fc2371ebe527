//! Fleet membership: which backends exist, which pool each belongs to and what state it is
//! in. A [`Membership`] is immutable; every change returns a new one, which the owner then
//! publishes whole. Readers therefore always see a consistent fleet, and the per-pool
//! serving lists, the speed tables and the prefix hash ring are computed once per change
//! instead of once per routing decision.

use crate::profile::PerfModel;
use std::sync::Arc;

/// Dense index of a backend. Ids are never reused, so a stale id can never name a newer
/// backend; a removed backend's id simply stops resolving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

impl BackendId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// Dense index of a pool slot. Slots of removed pools are reused (at most [`MAX_POOLS`]
/// live at once, so a pool set fits a 64-bit mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub u32);

impl PoolId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// At most this many pools at once: pool sets are 64-bit masks.
pub const MAX_POOLS: usize = 64;

/// Per-sequence context the speed tables assume. Decode step time grows with context, but
/// a routing decision only needs to rank backends, and reading each backend's real context
/// distribution would cost more than the decision is worth.
pub const NOMINAL_CONTEXT_TOKENS: u64 = 1024;

/// Prompt length at which prefill speed is measured for the speed tables.
const PREFILL_PROBE_TOKENS: u64 = 1024;

/// Lifecycle of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Takes new requests.
    Serving,
    /// Finishes what it holds but takes nothing new (operator drain, shutdown).
    Draining,
    /// Out of service (fault injected or detected); takes nothing new.
    Failed,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Serving => "serving",
            BackendState::Draining => "draining",
            BackendState::Failed => "failed",
        }
    }
}

/// What it takes to create a pool: `count` identical backends of one performance model
/// and engine settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub perf: Arc<PerfModel>,
    pub count: u32,
    /// Largest running batch (vLLM `max_num_seqs`).
    pub max_num_seqs: u32,
    /// Token budget of one engine step (vLLM `max_num_batched_tokens`).
    pub max_batched_tokens: u32,
    /// KV block size in tokens.
    pub block_size: u32,
    /// Which phases the pool's backends run (prefill/decode disaggregation).
    pub role: crate::engine::Role,
    /// Set for a pool of real engines: the endpoints its backends proxy to (one each).
    /// Routing reads the pool's performance model all the same, as the prior.
    pub upstream: Option<Arc<super::upstream::UpstreamSpec>>,
}

impl PoolConfig {
    /// Default engine settings for `perf`: the chip's largest batch, an 8192-token step
    /// budget (vLLM's chunked-prefill default) and 16-token KV blocks.
    pub fn new(name: impl Into<String>, perf: Arc<PerfModel>, count: u32) -> Self {
        let max_num_seqs = perf.max_batch().max(1);
        PoolConfig {
            name: name.into(),
            perf,
            count,
            max_num_seqs,
            max_batched_tokens: 8192,
            block_size: 16,
            role: crate::engine::Role::Mixed,
            upstream: None,
        }
    }

    /// Price of the whole pool per hour.
    pub fn cost_per_hour_usd(&self) -> f64 {
        self.perf.price_per_hour_usd() * f64::from(self.count)
    }

    /// Whether the pool's chips count towards a domestic-share target.
    pub fn domestic(&self) -> bool {
        self.perf.chip.domestic
    }
}

/// One pool as policies see it: its configuration plus speed figures precomputed from the
/// performance model, so a routing decision does table lookups instead of roofline maths.
#[derive(Debug)]
pub struct PoolInfo {
    pub id: PoolId,
    pub config: PoolConfig,
    pub domestic: bool,
    /// Price of one backend (all its chips) per hour.
    pub price_per_hour_usd: f64,
    /// Prefill cost per prompt token, picoseconds, at a 1024-token prompt.
    pub prefill_ps_per_token: u64,
    /// Decode step time by running batch size (index 0..=max_num_seqs) at
    /// [`NOMINAL_CONTEXT_TOKENS`] per sequence.
    decode_step_ns: Vec<u64>,
    /// Output tokens per second one backend produces at its full batch.
    pub decode_tokens_per_s: f64,
    /// Dollars per million output tokens at full batch: the pool's unit cost.
    pub usd_per_mtok: f64,
}

impl PoolInfo {
    fn new(id: PoolId, config: PoolConfig) -> PoolInfo {
        let perf = &config.perf;
        let probe = PREFILL_PROBE_TOKENS.min(u64::from(config.max_batched_tokens.max(1)));
        let prefill_ps_per_token = perf.prefill_ns(probe, 0) * 1000 / probe;
        let max = u64::from(config.max_num_seqs.max(1));
        let decode_step_ns: Vec<u64> = (0..=max)
            .map(|b| perf.decode_step_ns(b, b * NOMINAL_CONTEXT_TOKENS))
            .collect();
        let full_step = decode_step_ns[max as usize].max(1) as f64;
        let decode_tokens_per_s = max as f64 * 1e9 / full_step;
        let price = perf.price_per_hour_usd();
        PoolInfo {
            id,
            domestic: perf.chip.domestic,
            price_per_hour_usd: price,
            prefill_ps_per_token,
            decode_step_ns,
            decode_tokens_per_s,
            usd_per_mtok: price / (decode_tokens_per_s * 3600.0) * 1e6,
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Decode step time with `batch` running sequences (clamped to the pool's batch limit).
    pub fn decode_step_ns(&self, batch: u32) -> u64 {
        let i = (batch as usize).min(self.decode_step_ns.len() - 1);
        self.decode_step_ns[i]
    }

    /// Time to prefill `tokens` prompt tokens, ignoring interleaved decode.
    pub fn prefill_ns(&self, tokens: u64) -> u64 {
        tokens.saturating_mul(self.prefill_ps_per_token) / 1000
    }
}

/// Where a backend lives and what state it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    pub pool: PoolId,
    pub state: BackendState,
}

/// A membership change that does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("no pool {0:?}")]
    UnknownPool(PoolId),
    #[error("no backend {0}")]
    UnknownBackend(BackendId),
    #[error("a fleet holds at most {MAX_POOLS} pools")]
    TooManyPools,
    #[error("a pool named `{0}` already exists")]
    DuplicatePoolName(String),
    #[error("pool `{0}` must have at least one backend")]
    EmptyPool(String),
    #[error("pool name {0:?}: {1}")]
    InvalidPoolName(String, &'static str),
    #[error("pool `{0}` has {1} backends; a pool holds at most {MAX_POOL_BACKENDS}")]
    PoolTooLarge(String, u32),
    #[error("adding {1} backends for pool `{0}` to the {2} the fleet has would pass its limit of {MAX_FLEET_BACKENDS}")]
    FleetTooLarge(String, u32, usize),
    #[error("backend ids are exhausted: this daemon has allocated {0} over its life")]
    BackendIdsExhausted(usize),
}

/// Most backends in one pool. Each is a driver task with an engine, a load slot and a
/// few metric series, and routing samples within pools, so thousands are cheap but
/// millions would exhaust memory. One cell of a Doubao-scale deployment has tens of
/// thousands of backends of a few chip kinds (issue 17): the routing bench decides among
/// 65,536 in 8 pools.
pub const MAX_POOL_BACKENDS: u32 = 8192;
/// Most backends in a fleet, across all its pools.
pub const MAX_FLEET_BACKENDS: u32 = 65_536;
/// Backend ids a fleet may allocate over its life. Ids are never reused (a removed pool's
/// backends may still be finishing), so this bounds what add/remove cycles can allocate
/// and keeps every id arithmetic far inside `u32`.
pub const MAX_BACKEND_IDS: usize = 1 << 24;
/// Longest pool name (a DNS label's limit: names end up in metric labels and backend
/// names).
pub const MAX_POOL_NAME_LEN: usize = 63;

/// Pool names become metric labels, backend names and log fields: `[a-z0-9-]{1,63}`.
pub fn check_pool_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_POOL_NAME_LEN {
        return Err("is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only lowercase ASCII letters, digits and `-`");
    }
    Ok(())
}

/// Virtual nodes per serving backend on the prefix hash ring: enough to spread keys evenly,
/// few enough that rebuilding the ring for 4096 backends stays a millisecond-scale job.
const RING_VNODES: u64 = 8;

/// An immutable snapshot of the fleet.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    epoch: u64,
    pools: Vec<Option<Arc<PoolInfo>>>,
    serving: Vec<Vec<BackendId>>,
    /// Per pool slot: the first id of `serving` when it is a run of consecutive ids, else
    /// [`NOT_A_RUN`]. See [`ServingList`].
    serving_first: Vec<u32>,
    all_serving: Vec<BackendId>,
    backends: Vec<Option<BackendEntry>>,
    ring: Vec<(u64, BackendId)>,
    /// (cumulative end in `all_serving`, pool slot) of each pool with serving backends.
    serving_ends: Vec<(u32, u32)>,
    /// Bits of the live pools.
    live: u64,
}

/// `serving_first` of a pool whose serving ids are not consecutive (ids stay below 2^24).
const NOT_A_RUN: u32 = u32::MAX;

/// A pool's serving backends, to draw from. When they are consecutive ids (the usual case:
/// a pool's backends are allocated together, and stay consecutive until one is drained or
/// removed) the `i`-th is computed rather than read: at tens of thousands of backends the
/// list does not stay in cache, and reading it would put a cache miss in front of every
/// sampled load.
#[derive(Clone, Copy, Debug)]
pub struct ServingList<'a> {
    list: &'a [BackendId],
    first: u32,
}

impl<'a> ServingList<'a> {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The `i`-th serving backend, as `Membership::serving(pool)[i]`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<BackendId> {
        if i >= self.list.len() {
            None
        } else if self.first != NOT_A_RUN {
            Some(BackendId(self.first + i as u32))
        } else {
            Some(self.list[i])
        }
    }
}

/// splitmix64's finaliser: a fast, well-mixed 64-bit hash of an integer.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Membership {
    /// An empty fleet.
    pub fn new() -> Membership {
        Membership::default()
    }

    /// A fleet made of `pools`, in order (pool ids 0, 1, …; backend ids allocated pool by
    /// pool).
    pub fn from_pools(
        pools: impl IntoIterator<Item = PoolConfig>,
    ) -> Result<Membership, FleetError> {
        let mut m = Membership::new();
        for p in pools {
            m = m.with_pool(p)?.0;
        }
        Ok(m)
    }

    /// Increases by one with every change; lets readers tell snapshots apart.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Live pools, in id order.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<PoolInfo>> + '_ {
        self.pools.iter().flatten()
    }

    pub fn pool(&self, id: PoolId) -> Option<&Arc<PoolInfo>> {
        self.pools.get(id.index()).and_then(Option::as_ref)
    }

    pub fn pool_by_name(&self, name: &str) -> Option<&Arc<PoolInfo>> {
        self.pools().find(|p| p.config.name == name)
    }

    /// Number of pool slots (live or free); pool ids are below this.
    pub fn pool_slots(&self) -> usize {
        self.pools.len()
    }

    /// Serving backends of a pool (empty for an unknown pool).
    pub fn serving(&self, pool: PoolId) -> &[BackendId] {
        self.serving.get(pool.index()).map_or(&[], Vec::as_slice)
    }

    /// [`Self::serving`], for drawing from without reading the list when it is a run.
    #[inline]
    pub fn serving_list(&self, pool: PoolId) -> ServingList<'_> {
        ServingList {
            list: self.serving(pool),
            first: self
                .serving_first
                .get(pool.index())
                .copied()
                .unwrap_or(NOT_A_RUN),
        }
    }

    /// Every serving backend, pool by pool.
    pub fn all_serving(&self) -> &[BackendId] {
        &self.all_serving
    }

    /// A backend's pool and state; `None` once it has been removed.
    pub fn backend(&self, id: BackendId) -> Option<BackendEntry> {
        self.backends.get(id.index()).copied().flatten()
    }

    /// One past the highest backend id ever allocated.
    pub fn backend_id_bound(&self) -> usize {
        self.backends.len()
    }

    /// Live backends (any state), in id order.
    pub fn backends(&self) -> impl Iterator<Item = (BackendId, BackendEntry)> + '_ {
        self.backends
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.map(|e| (BackendId(i as u32), e)))
    }

    /// Backends of a pool in any state, in id order.
    pub fn pool_backends(
        &self,
        pool: PoolId,
    ) -> impl Iterator<Item = (BackendId, BackendState)> + '_ {
        self.backends()
            .filter(move |(_, e)| e.pool == pool)
            .map(|(id, e)| (id, e.state))
    }

    /// For each pool with serving backends, in id order: the end of its run in
    /// [`Self::all_serving`] and its pool slot. Lets a policy map an index into the flat
    /// serving list to a pool without a per-backend lookup.
    pub fn serving_ends(&self) -> &[(u32, u32)] {
        &self.serving_ends
    }

    /// Bit mask of the live pools' ids.
    pub fn live_mask(&self) -> u64 {
        self.live
    }

    /// The prefix hash ring: (point, backend) sorted by point, serving backends only.
    pub fn ring(&self) -> &[(u64, BackendId)] {
        &self.ring
    }

    /// Adds a pool of `config.count` serving backends. Returns the new snapshot, the pool's
    /// id and its backends' ids.
    pub fn with_pool(
        &self,
        config: PoolConfig,
    ) -> Result<(Membership, PoolId, Vec<BackendId>), FleetError> {
        self.with_pool_within(config, MAX_BACKEND_IDS)
    }

    /// [`Self::with_pool`] with ids bounded by `id_bound` (at most `u32::MAX`).
    fn with_pool_within(
        &self,
        config: PoolConfig,
        id_bound: usize,
    ) -> Result<(Membership, PoolId, Vec<BackendId>), FleetError> {
        if let Err(why) = check_pool_name(&config.name) {
            return Err(FleetError::InvalidPoolName(config.name, why));
        }
        if config.count == 0 {
            return Err(FleetError::EmptyPool(config.name));
        }
        if config.count > MAX_POOL_BACKENDS {
            return Err(FleetError::PoolTooLarge(config.name, config.count));
        }
        let live = self.backends.iter().flatten().count();
        if live + config.count as usize > MAX_FLEET_BACKENDS as usize {
            return Err(FleetError::FleetTooLarge(config.name, config.count, live));
        }
        // Ids are never reused, so pools added and removed over a long life move them up.
        let first = self.backends.len();
        let end = first
            .checked_add(config.count as usize)
            .filter(|&e| e <= id_bound.min(u32::MAX as usize))
            .ok_or(FleetError::BackendIdsExhausted(first))?;
        let (first, end) = (first as u32, end as u32);
        if self.pool_by_name(&config.name).is_some() {
            return Err(FleetError::DuplicatePoolName(config.name));
        }
        let slot = match self.pools.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.pools.len() < MAX_POOLS => self.pools.len(),
            None => return Err(FleetError::TooManyPools),
        };
        let id = PoolId(slot as u32);
        let mut next = self.clone();
        let info = Arc::new(PoolInfo::new(id, config));
        if slot == next.pools.len() {
            next.pools.push(Some(info.clone()));
        } else {
            next.pools[slot] = Some(info.clone());
        }
        let ids: Vec<BackendId> = (first..end).map(BackendId).collect();
        next.backends.extend(ids.iter().map(|_| {
            Some(BackendEntry {
                pool: id,
                state: BackendState::Serving,
            })
        }));
        next.rebuild();
        Ok((next, id, ids))
    }

    /// Removes a pool and all its backends, whatever their state.
    pub fn without_pool(&self, pool: PoolId) -> Result<Membership, FleetError> {
        if self.pool(pool).is_none() {
            return Err(FleetError::UnknownPool(pool));
        }
        let mut next = self.clone();
        next.pools[pool.index()] = None;
        for e in &mut next.backends {
            if e.is_some_and(|e| e.pool == pool) {
                *e = None;
            }
        }
        while next.pools.last().is_some_and(Option::is_none) {
            next.pools.pop();
        }
        next.rebuild();
        Ok(next)
    }

    /// Adds one serving backend to a pool whose configuration becomes `config` (a pool of
    /// real engines gains an endpoint). Returns the new backend's id.
    pub fn with_backend(
        &self,
        pool: PoolId,
        config: PoolConfig,
    ) -> Result<(Membership, BackendId), FleetError> {
        if self.pool(pool).is_none() {
            return Err(FleetError::UnknownPool(pool));
        }
        let in_pool = self.pool_backends(pool).count() as u32;
        if in_pool >= MAX_POOL_BACKENDS {
            return Err(FleetError::PoolTooLarge(config.name, in_pool + 1));
        }
        let live = self.backends.iter().flatten().count();
        if live >= MAX_FLEET_BACKENDS as usize {
            return Err(FleetError::FleetTooLarge(config.name, 1, live));
        }
        let id = self.backends.len();
        if id >= MAX_BACKEND_IDS {
            return Err(FleetError::BackendIdsExhausted(id));
        }
        let mut next = self.clone();
        next.pools[pool.index()] = Some(Arc::new(PoolInfo::new(pool, config)));
        next.backends.push(Some(BackendEntry {
            pool,
            state: BackendState::Serving,
        }));
        next.rebuild();
        Ok((next, BackendId(id as u32)))
    }

    /// Removes one backend, whatever its state, from a pool whose configuration becomes
    /// `config`. A pool keeps at least one backend (remove the pool instead).
    pub fn without_backend(
        &self,
        backend: BackendId,
        config: PoolConfig,
    ) -> Result<Membership, FleetError> {
        let entry = self
            .backend(backend)
            .ok_or(FleetError::UnknownBackend(backend))?;
        if self.pool_backends(entry.pool).count() <= 1 {
            return Err(FleetError::EmptyPool(config.name));
        }
        let mut next = self.clone();
        next.pools[entry.pool.index()] = Some(Arc::new(PoolInfo::new(entry.pool, config)));
        next.backends[backend.index()] = None;
        next.rebuild();
        Ok(next)
    }

    /// Sets one backend's state (drain, resume, fail).
    pub fn with_state(
        &self,
        backend: BackendId,
        state: BackendState,
    ) -> Result<Membership, FleetError> {
        if self.backend(backend).is_none() {
            return Err(FleetError::UnknownBackend(backend));
        }
        let mut next = self.clone();
        if let Some(Some(e)) = next.backends.get_mut(backend.index()) {
            e.state = state;
        }
        next.rebuild();
        Ok(next)
    }

    /// Recomputes everything derived from pools and backends.
    fn rebuild(&mut self) {
        self.epoch += 1;
        let mut serving = vec![Vec::new(); self.pools.len()];
        for (id, e) in self.backends() {
            if e.state == BackendState::Serving {
                serving[e.pool.index()].push(id);
            }
        }
        self.serving_first = serving
            .iter()
            .map(|ids| match (ids.first(), ids.last()) {
                (Some(a), Some(z)) if (z.0 - a.0) as usize + 1 == ids.len() => a.0,
                _ => NOT_A_RUN,
            })
            .collect();
        self.serving = serving;
        self.all_serving = self.serving.iter().flatten().copied().collect();
        let mut end = 0u32;
        self.serving_ends = self
            .serving
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(slot, s)| {
                end += s.len() as u32;
                (end, slot as u32)
            })
            .collect();
        self.live = self
            .pools
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .fold(0, |m, (slot, _)| m | (1u64 << slot));
        let mut ring: Vec<(u64, BackendId)> = self
            .all_serving
            .iter()
            .flat_map(|&b| {
                (0..RING_VNODES).map(move |v| (mix64(u64::from(b.0) * RING_VNODES + v), b))
            })
            .collect();
        ring.sort_unstable();
        self.ring = ring;
    }
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests;
