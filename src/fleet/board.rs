//! The daemon's load view. Each backend's driver owns a [`LoadSlot`] of atomics and stores
//! its engine's [`LoadSnapshot`] into it after every change; policies read the slots with
//! relaxed loads. Membership is an `ArcSwap`: a change builds a new snapshot and swaps it
//! in, so a reader never blocks and never sees half a change.
//!
//! The slots live side by side in a few large segments that never move (see `Slots`),
//! not one allocation each: at tens of thousands of backends every sampled load is a cache
//! miss, and a slot found through a table of pointers costs two misses in a row where a
//! slot found by arithmetic costs one (issue 17's 1 µs routing goal at 65,536 backends).
//!
//! A reader may see a slot's fields from two consecutive stores (say `waiting` from the
//! newer one and `running` from the older). Routing only ranks backends by rough load, and
//! the next decision sees the settled values, so this costs nothing worth a lock.
//!
//! Two requests routed at the same instant on two threads would otherwise both see the
//! same loads and herd onto the same backend, where virtual time (which routes one request
//! after another) would have split them. So a decision [`claims`](AtomicLoadBoard::claim)
//! its backend optimistically, against a routing epoch read before it looked: if another
//! decision committed in between, it decides again on a view that includes that one.

use super::membership::{BackendId, BackendState, FleetError, Membership, PoolConfig, PoolId};
use super::view::LoadView;
use crate::engine::LoadSnapshot;
use arc_swap::{ArcSwap, Guard};
use crossbeam::utils::CachePadded;
use parking_lot::Mutex;
use std::ops::Deref;
use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::Arc;

/// One backend's load, as atomics. Cache-line aligned so two drivers writing neighbouring
/// slots do not slow each other (or the readers) down.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct LoadSlot {
    waiting: AtomicU32,
    running: AtomicU32,
    kv_used_blocks: AtomicU32,
    kv_total_blocks: AtomicU32,
    queued_prefill_tokens: AtomicU64,
    remaining_decode_tokens: AtomicU64,
    predicted_drain_ns: AtomicU64,
    /// Requests routed here that the driver has not yet published as its own: added by
    /// the router, taken back by the driver after the store that includes them. Kept
    /// apart from the stored fields so a store cannot wipe out a claim made meanwhile.
    claimed_requests: AtomicU32,
    claimed_prompt_tokens: AtomicU64,
    claimed_decode_tokens: AtomicU64,
}

/// What a routed request adds to its backend's load until the driver reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub prompt_tokens: u32,
    pub max_tokens: u32,
}

impl Claim {
    pub fn of(req: &crate::request::Request) -> Claim {
        Claim {
            prompt_tokens: req.prompt_tokens,
            max_tokens: req.max_tokens,
        }
    }
}

impl LoadSlot {
    /// Publishes a backend's current load. Called by that backend's driver only.
    pub fn store(&self, s: &LoadSnapshot) {
        self.waiting.store(s.waiting, Relaxed);
        self.running.store(s.running, Relaxed);
        self.kv_used_blocks.store(s.kv_used_blocks, Relaxed);
        self.kv_total_blocks.store(s.kv_total_blocks, Relaxed);
        self.queued_prefill_tokens
            .store(s.queued_prefill_tokens, Relaxed);
        self.remaining_decode_tokens
            .store(s.remaining_decode_tokens, Relaxed);
        self.predicted_drain_ns.store(s.predicted_drain_ns, Relaxed);
    }

    /// Counts a request routed here before the driver has taken it in. Without this,
    /// requests arriving together all see the backend as it was and herd onto it.
    pub fn claim(&self, c: Claim) {
        self.claimed_requests.fetch_add(1, Relaxed);
        self.claimed_prompt_tokens
            .fetch_add(u64::from(c.prompt_tokens), Relaxed);
        self.claimed_decode_tokens
            .fetch_add(u64::from(c.max_tokens), Relaxed);
    }

    /// Takes back a claim: the request was refused, or the driver has stored a load that
    /// includes it.
    pub fn release(&self, c: Claim) {
        self.claimed_requests.fetch_sub(1, Relaxed);
        self.claimed_prompt_tokens
            .fetch_sub(u64::from(c.prompt_tokens), Relaxed);
        self.claimed_decode_tokens
            .fetch_sub(u64::from(c.max_tokens), Relaxed);
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        // A store and the release after it may be seen half done, counting a request
        // twice or not at all for that instant; the next read sees the settled sum.
        LoadSnapshot {
            waiting: self
                .waiting
                .load(Relaxed)
                .saturating_add(self.claimed_requests.load(Relaxed)),
            running: self.running.load(Relaxed),
            queued_prefill_tokens: self
                .queued_prefill_tokens
                .load(Relaxed)
                .saturating_add(self.claimed_prompt_tokens.load(Relaxed)),
            remaining_decode_tokens: self
                .remaining_decode_tokens
                .load(Relaxed)
                .saturating_add(self.claimed_decode_tokens.load(Relaxed)),
            kv_used_blocks: self.kv_used_blocks.load(Relaxed),
            kv_total_blocks: self.kv_total_blocks.load(Relaxed),
            predicted_drain_ns: self.predicted_drain_ns.load(Relaxed),
        }
    }
}

/// Slots in segment 0; each later segment is twice the one before.
const FIRST_SEGMENT: usize = 64;

/// Where backend id `i`'s slot lives: segment `k` holds the ids from
/// `FIRST_SEGMENT · (2^k − 1)` on, `FIRST_SEGMENT · 2^k` of them. Arithmetic only, so
/// finding a slot reads no memory but the (few, always cached) segment pointers.
fn locate(i: usize) -> (usize, usize) {
    let j = i + FIRST_SEGMENT;
    let k = (j.ilog2() - FIRST_SEGMENT.ilog2()) as usize;
    (k, j - (FIRST_SEGMENT << k))
}

/// The load slots of backend ids `0..bound`, in segments of doubling size. A segment is
/// allocated once and never moves or shrinks, so a driver's [`SlotHandle`] stays valid for
/// the board's life, and a membership change copies only the segment pointers (at most 19
/// for the 2^24 ids a fleet may allocate).
#[derive(Clone, Debug, Default)]
struct Slots {
    segments: Vec<Arc<[LoadSlot]>>,
    bound: usize,
}

impl Slots {
    /// These slots extended to cover ids `0..bound` (kept as they are if they do).
    fn covering(mut self, bound: usize) -> Slots {
        if let Some(last) = bound.checked_sub(1) {
            while self.segments.len() <= locate(last).0 {
                let len = FIRST_SEGMENT << self.segments.len();
                self.segments
                    .push((0..len).map(|_| LoadSlot::default()).collect());
            }
        }
        self.bound = self.bound.max(bound);
        self
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&LoadSlot> {
        if i >= self.bound {
            return None;
        }
        let (k, off) = locate(i);
        self.segments.get(k).and_then(|s| s.get(off))
    }

    fn handle(&self, i: usize) -> Option<SlotHandle> {
        self.get(i)?;
        let (k, index) = locate(i);
        Some(SlotHandle {
            segment: self.segments[k].clone(),
            index,
        })
    }
}

/// A driver's handle on its backend's slot: keeps the slot's segment alive, so stores
/// stay harmless even after the backend (or the board) is gone.
#[derive(Clone, Debug)]
pub struct SlotHandle {
    segment: Arc<[LoadSlot]>,
    index: usize,
}

impl Default for SlotHandle {
    /// A slot of its own that no board reads (for a driver whose backend is unknown).
    fn default() -> Self {
        SlotHandle {
            segment: Arc::new([LoadSlot::default()]),
            index: 0,
        }
    }
}

impl Deref for SlotHandle {
    type Target = LoadSlot;

    fn deref(&self) -> &LoadSlot {
        &self.segment[self.index]
    }
}

/// What is published as one unit: the membership and the slots of every backend id ever
/// allocated (slots outlive their backend so a late driver write lands harmlessly).
#[derive(Debug, Default)]
pub struct BoardSnapshot {
    membership: Arc<Membership>,
    slots: Slots,
}

/// Lock-free-to-read fleet state for the daemon.
#[derive(Debug, Default)]
pub struct AtomicLoadBoard {
    current: ArcSwap<BoardSnapshot>,
    /// Serialises membership changes (rare, operator-driven) so two of them cannot both
    /// build from the same old snapshot and lose one. Readers never take it.
    changes: Mutex<()>,
    /// Moves on by two for each committed routing decision, and is odd while a winner
    /// counts its claim; see [`Self::claim`]. Padded: every router writes it.
    epoch: CachePadded<AtomicU64>,
}

/// A consistent view of the board for one or more routing decisions. Holding it keeps its
/// snapshot alive; take a fresh one per decision so membership changes are seen at once.
pub struct BoardView {
    snap: Guard<Arc<BoardSnapshot>>,
}

impl AtomicLoadBoard {
    pub fn new(membership: Membership) -> AtomicLoadBoard {
        let slots = Slots::default().covering(membership.backend_id_bound());
        AtomicLoadBoard {
            current: ArcSwap::from_pointee(BoardSnapshot {
                membership: Arc::new(membership),
                slots,
            }),
            changes: Mutex::new(()),
            epoch: CachePadded::new(AtomicU64::new(0)),
        }
    }

    pub fn from_pools(pools: impl IntoIterator<Item = PoolConfig>) -> Result<Self, FleetError> {
        Ok(AtomicLoadBoard::new(Membership::from_pools(pools)?))
    }

    /// A view for routing: one atomic pointer load, no lock.
    pub fn view(&self) -> BoardView {
        BoardView {
            snap: self.current.load(),
        }
    }

    /// The current membership snapshot.
    pub fn membership(&self) -> Arc<Membership> {
        self.current.load().membership.clone()
    }

    /// The slot a backend's driver writes its load into.
    pub fn slot(&self, backend: BackendId) -> Option<SlotHandle> {
        self.current.load().slots.handle(backend.index())
    }

    /// Stores a backend's load (convenience for drivers that do not keep their slot).
    pub fn store(&self, backend: BackendId, load: &LoadSnapshot) {
        if let Some(slot) = self.current.load().slots.get(backend.index()) {
            slot.store(load);
        }
    }

    /// The routing epoch. Read it before taking the view a decision looks at, and pass
    /// it to [`Self::claim`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Acquire)
    }

    /// Counts a request on the backend chosen for it. With `seen: Some(epoch)` the claim
    /// commits only if no other claim has committed or begun since `epoch` was read, and
    /// otherwise returns false having counted nothing: the caller decides again on a
    /// fresh view, which will include the decision it raced. Of racing decisions exactly
    /// one wins, so routing as a whole always progresses. `seen: None` commits whatever
    /// happens: for a last attempt, or a policy that does not look at load.
    ///
    /// The epoch is odd while a claim is being counted. A winner moves it from even to
    /// odd before counting, so a decision reading the epoch cannot see the winner's
    /// claim half-made, and only to the next even value after counting, so a decision
    /// reading that value sees the claim. A loser never counts anything, so no decision
    /// is swayed by a claim that is then withdrawn.
    pub fn claim(&self, backend: BackendId, claim: Claim, seen: Option<u64>) -> bool {
        let snap = self.current.load();
        let Some(slot) = snap.slots.get(backend.index()) else {
            return true;
        };
        match seen {
            None => {
                slot.claim(claim);
                // Adding 2 keeps a concurrent winner's parity; both increments land.
                self.epoch.fetch_add(2, AcqRel);
                true
            }
            Some(e) => {
                if e % 2 == 1
                    || self
                        .epoch
                        .compare_exchange(e, e + 1, AcqRel, Relaxed)
                        .is_err()
                {
                    return false;
                }
                slot.claim(claim);
                self.epoch.fetch_add(1, AcqRel);
                true
            }
        }
    }

    /// See [`LoadSlot::release`].
    pub fn release(&self, backend: BackendId, claim: Claim) {
        if let Some(slot) = self.current.load().slots.get(backend.index()) {
            slot.release(claim);
        }
    }

    fn change(
        &self,
        f: impl FnOnce(&Membership) -> Result<Membership, FleetError>,
    ) -> Result<(), FleetError> {
        let _serialised = self.changes.lock();
        let old = self.current.load_full();
        let membership = f(&old.membership)?;
        let slots = old.slots.clone().covering(membership.backend_id_bound());
        self.current.store(Arc::new(BoardSnapshot {
            membership: Arc::new(membership),
            slots,
        }));
        Ok(())
    }

    pub fn add_pool(&self, config: PoolConfig) -> Result<(PoolId, Vec<BackendId>), FleetError> {
        let mut added = None;
        self.change(|m| {
            let (next, id, ids) = m.with_pool(config)?;
            added = Some((id, ids));
            Ok(next)
        })?;
        Ok(added.expect("set when the change succeeds"))
    }

    /// See [`Membership::with_backend`].
    pub fn add_backend(&self, pool: PoolId, config: PoolConfig) -> Result<BackendId, FleetError> {
        let mut added = None;
        self.change(|m| {
            let (next, id) = m.with_backend(pool, config)?;
            added = Some(id);
            Ok(next)
        })?;
        Ok(added.expect("set when the change succeeds"))
    }

    /// See [`Membership::without_backend`].
    pub fn remove_backend(&self, backend: BackendId, config: PoolConfig) -> Result<(), FleetError> {
        self.change(|m| m.without_backend(backend, config))
    }

    pub fn remove_pool(&self, pool: PoolId) -> Result<(), FleetError> {
        self.change(|m| m.without_pool(pool))
    }

    pub fn set_state(&self, backend: BackendId, state: BackendState) -> Result<(), FleetError> {
        self.change(|m| m.with_state(backend, state))
    }

    pub fn drain(&self, backend: BackendId) -> Result<(), FleetError> {
        self.set_state(backend, BackendState::Draining)
    }

    pub fn resume(&self, backend: BackendId) -> Result<(), FleetError> {
        self.set_state(backend, BackendState::Serving)
    }

    pub fn fail(&self, backend: BackendId) -> Result<(), FleetError> {
        self.set_state(backend, BackendState::Failed)
    }
}

impl LoadView for BoardView {
    fn membership(&self) -> &Membership {
        &self.snap.membership
    }

    fn load(&self, backend: BackendId) -> LoadSnapshot {
        self.snap
            .slots
            .get(backend.index())
            .map(|s| s.snapshot())
            .unwrap_or_default()
    }

    /// Finds every slot and touches one field of each before reading any whole: a touch
    /// is one instruction, so all of a decision's cache misses are in flight at once.
    /// Reading each slot whole as it is found (ten loads and the adds of `snapshot`) fills
    /// the CPU's reorder window after a handful of slots, and the rest of the misses wait
    /// for the first ones.
    fn loads(&self, ids: &[BackendId], out: &mut [LoadSnapshot]) {
        const CHUNK: usize = 16;
        let slots = &self.snap.slots;
        for (ids, out) in ids.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            let mut found: [Option<&LoadSlot>; CHUNK] = [None; CHUNK];
            let mut touched = 0u32;
            for (f, &b) in found.iter_mut().zip(ids) {
                *f = slots.get(b.index());
                if let Some(s) = f {
                    touched ^= s.running.load(Relaxed);
                }
            }
            std::hint::black_box(touched);
            for (o, f) in out.iter_mut().zip(&found) {
                *o = f.map(LoadSlot::snapshot).unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::membership::fixtures::*;
    use super::*;

    #[test]
    fn stores_are_seen_by_new_and_existing_views() {
        let board = AtomicLoadBoard::new(fast_and_slow(2));
        let view = board.view();
        let load = LoadSnapshot {
            waiting: 3,
            running: 7,
            queued_prefill_tokens: 900,
            ..Default::default()
        };
        board.slot(BackendId(2)).unwrap().store(&load);
        assert_eq!(view.load(BackendId(2)), load);
        assert_eq!(board.view().load(BackendId(2)).outstanding(), 10);
        assert_eq!(view.load(BackendId(99)), LoadSnapshot::default());
    }

    #[test]
    fn claims_count_until_released_and_survive_stores() {
        let board = AtomicLoadBoard::new(fast_and_slow(1));
        let (a, b) = (
            Claim {
                prompt_tokens: 500,
                max_tokens: 40,
            },
            Claim {
                prompt_tokens: 300,
                max_tokens: 10,
            },
        );
        assert!(board.claim(BackendId(1), a, None));
        assert!(board.claim(BackendId(1), b, None));
        let seen = board.view().load(BackendId(1));
        assert_eq!(
            (
                seen.waiting,
                seen.queued_prefill_tokens,
                seen.remaining_decode_tokens
            ),
            (2, 800, 50)
        );
        // The driver stores a load that includes `a` but not yet `b`, then releases `a`:
        // `b` is still counted.
        let stored = LoadSnapshot {
            running: 1,
            remaining_decode_tokens: 39,
            ..Default::default()
        };
        board.store(BackendId(1), &stored);
        board.release(BackendId(1), a);
        let seen = board.view().load(BackendId(1));
        assert_eq!(
            (
                seen.waiting,
                seen.running,
                seen.queued_prefill_tokens,
                seen.remaining_decode_tokens
            ),
            (1, 1, 300, 49)
        );
        board.release(BackendId(1), b);
        assert_eq!(board.view().load(BackendId(1)), stored);
        assert_eq!(board.view().load(BackendId(0)), LoadSnapshot::default());
    }

    #[test]
    fn a_claim_on_a_stale_epoch_is_taken_back() {
        let board = AtomicLoadBoard::new(fast_and_slow(1));
        let c = Claim {
            prompt_tokens: 100,
            max_tokens: 10,
        };
        let (first, second) = (board.epoch(), board.epoch());
        assert!(board.claim(BackendId(0), c, Some(first)));
        // The second decision was taken on a view without the first: refused, and its
        // claim leaves no trace.
        assert!(!board.claim(BackendId(0), c, Some(second)));
        assert_eq!(board.view().load(BackendId(0)).waiting, 1);
        assert!(board.claim(BackendId(0), c, Some(board.epoch())));
        assert_eq!(board.view().load(BackendId(0)).waiting, 2);
    }

    #[test]
    fn slots_are_located_segment_by_segment() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(63), (0, 63));
        assert_eq!(locate(64), (1, 0));
        assert_eq!(locate(191), (1, 127));
        assert_eq!(locate(192), (2, 0));
        assert_eq!(locate(65_535), (10, 65_535 + 64 - (64 << 10)));
    }

    #[test]
    fn every_id_has_its_own_slot_across_segments_and_growth() {
        // 2 × 40 ids span segments 0 and 1; the added pool's 200 reach segment 2.
        let board = AtomicLoadBoard::new(fast_and_slow(40));
        let load = |i: u32| LoadSnapshot {
            waiting: i,
            running: i + 1,
            ..Default::default()
        };
        let handles: Vec<SlotHandle> = (0..80).map(|i| board.slot(BackendId(i)).unwrap()).collect();
        assert!(board.slot(BackendId(80)).is_none());
        let (_, ids) = board.add_pool(pool("extra", 200, 1.0, 1.0, false)).unwrap();
        assert_eq!(ids.last(), Some(&BackendId(279)));
        for (i, h) in handles.iter().enumerate() {
            h.store(&load(i as u32));
        }
        for &b in &ids {
            board.store(b, &load(b.0));
        }
        let view = board.view();
        for i in 0..280 {
            assert_eq!(view.load(BackendId(i)), load(i), "b{i}");
        }
        assert_eq!(view.load(BackendId(280)), LoadSnapshot::default());
        // A detached handle feeds no board.
        SlotHandle::default().store(&load(7));
        assert!(board.claim(BackendId(300), Claim::default(), None));
    }

    #[test]
    fn membership_changes_publish_whole_snapshots() {
        let board = AtomicLoadBoard::new(fast_and_slow(2));
        let before = board.view();
        let slot = board.slot(BackendId(0)).unwrap();
        board.drain(BackendId(0)).unwrap();
        // An old view keeps its consistent snapshot; a new one sees the drain.
        assert_eq!(before.membership().all_serving().len(), 4);
        assert_eq!(board.view().membership().all_serving().len(), 3);
        let (pool, ids) = board.add_pool(pool("extra", 3, 1.0, 1.0, false)).unwrap();
        assert_eq!(ids.len(), 3);
        // Slots survive changes: the driver's handle still feeds the board.
        slot.store(&LoadSnapshot {
            running: 5,
            ..Default::default()
        });
        assert_eq!(board.view().load(BackendId(0)).running, 5);
        board.remove_pool(pool).unwrap();
        assert_eq!(board.view().membership().all_serving().len(), 3);
        assert!(board.remove_pool(pool).is_err());
    }
}
