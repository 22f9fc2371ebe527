//! The daemon's load view. Each backend's driver owns a [`LoadSlot`] of atomics and stores
//! its engine's [`LoadSnapshot`] into it after every change; policies read the slots with
//! relaxed loads. Membership is an `ArcSwap`: a change builds a new snapshot and swaps it
//! in, so a reader never blocks and never sees half a change.
//!
//! A reader may see a slot's fields from two consecutive stores (say `waiting` from the
//! newer one and `running` from the older). Routing only ranks backends by rough load, and
//! the next decision sees the settled values, so this costs nothing worth a lock.

use super::membership::{BackendId, BackendState, FleetError, Membership, PoolConfig, PoolId};
use super::view::LoadView;
use crate::engine::LoadSnapshot;
use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
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

    /// Counts a request the router has just sent here, before the backend's driver has
    /// taken it in. Without this, requests arriving together all see the backend as it was
    /// and herd onto it; the driver's next [`Self::store`] replaces the estimate with the
    /// engine's own figures, which include the request by then.
    pub fn add_routed(&self, prompt_tokens: u32, max_tokens: u32) {
        self.waiting.fetch_add(1, Relaxed);
        self.queued_prefill_tokens
            .fetch_add(u64::from(prompt_tokens), Relaxed);
        self.remaining_decode_tokens
            .fetch_add(u64::from(max_tokens), Relaxed);
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            waiting: self.waiting.load(Relaxed),
            running: self.running.load(Relaxed),
            queued_prefill_tokens: self.queued_prefill_tokens.load(Relaxed),
            remaining_decode_tokens: self.remaining_decode_tokens.load(Relaxed),
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

    /// See [`LoadSlot::add_routed`].
    pub fn add_routed(&self, backend: BackendId, prompt_tokens: u32, max_tokens: u32) {
        if let Some(slot) = self.current.load().slots.get(backend.index()) {
            slot.add_routed(prompt_tokens, max_tokens);
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
    fn routed_requests_count_until_the_driver_reports() {
        let board = AtomicLoadBoard::new(fast_and_slow(1));
        board.add_routed(BackendId(1), 500, 40);
        board.add_routed(BackendId(1), 300, 10);
        let seen = board.view().load(BackendId(1));
        assert_eq!(
            (
                seen.waiting,
                seen.queued_prefill_tokens,
                seen.remaining_decode_tokens
            ),
            (2, 800, 50)
        );
        // The driver's own figures replace the router's estimate.
        let truth = LoadSnapshot {
            running: 2,
            remaining_decode_tokens: 48,
            ..Default::default()
        };
        board.store(BackendId(1), &truth);
        assert_eq!(board.view().load(BackendId(1)), truth);
        assert_eq!(board.view().load(BackendId(0)), LoadSnapshot::default());
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
