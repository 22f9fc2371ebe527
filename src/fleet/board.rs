//! The daemon's load view. Each backend's driver owns a [`LoadSlot`] of atomics and stores
//! its engine's [`LoadSnapshot`] into it after every change; policies read the slots with
//! relaxed loads. Membership is an `ArcSwap`: a change builds a new snapshot and swaps it
//! in, so a reader never blocks and never sees half a change.
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

/// What is published as one unit: the membership and the slots of every backend id ever
/// allocated (slots outlive their backend so a late driver write lands harmlessly).
#[derive(Debug, Default)]
pub struct BoardSnapshot {
    membership: Arc<Membership>,
    slots: Vec<Arc<LoadSlot>>,
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
        let slots = (0..membership.backend_id_bound())
            .map(|_| Arc::new(LoadSlot::default()))
            .collect();
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
    pub fn slot(&self, backend: BackendId) -> Option<Arc<LoadSlot>> {
        self.current.load().slots.get(backend.index()).cloned()
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
        let mut slots = old.slots.clone();
        slots.resize_with(membership.backend_id_bound(), Default::default);
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

    fn loads(&self, ids: &[BackendId], out: &mut [LoadSnapshot]) {
        let slots = &self.snap.slots;
        for (o, &b) in out.iter_mut().zip(ids) {
            *o = slots
                .get(b.index())
                .map(|s| s.snapshot())
                .unwrap_or_default();
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
