//! A load view over plain fields: a membership snapshot and a vector of load snapshots
//! that the owner overwrites. Single-threaded, so plain fields do. Policy tests set loads
//! here directly; the replay keeps its membership here and reads loads from its engines.

use super::membership::{BackendId, BackendState, FleetError, Membership, PoolConfig, PoolId};
use super::view::LoadView;
use crate::engine::LoadSnapshot;
use std::sync::Arc;

/// A [`LoadView`] over plain fields, for virtual time and tests.
#[derive(Clone, Debug, Default)]
pub struct PlainLoadView {
    membership: Arc<Membership>,
    loads: Vec<LoadSnapshot>,
}

impl PlainLoadView {
    pub fn new(membership: Membership) -> PlainLoadView {
        let loads = vec![LoadSnapshot::default(); membership.backend_id_bound()];
        PlainLoadView {
            membership: Arc::new(membership),
            loads,
        }
    }

    /// A fleet made of `pools`, all idle.
    pub fn from_pools(pools: impl IntoIterator<Item = PoolConfig>) -> Result<Self, FleetError> {
        Ok(PlainLoadView::new(Membership::from_pools(pools)?))
    }

    pub fn membership_arc(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// Records a backend's load (ignored for ids never allocated).
    pub fn set_load(&mut self, backend: BackendId, load: LoadSnapshot) {
        if let Some(slot) = self.loads.get_mut(backend.index()) {
            *slot = load;
        }
    }

    /// Mutable access to a backend's load, for simulators that adjust counters in place.
    pub fn load_mut(&mut self, backend: BackendId) -> Option<&mut LoadSnapshot> {
        self.loads.get_mut(backend.index())
    }

    fn publish(&mut self, next: Membership) {
        self.loads
            .resize(next.backend_id_bound(), LoadSnapshot::default());
        self.membership = Arc::new(next);
    }

    pub fn add_pool(&mut self, config: PoolConfig) -> Result<(PoolId, Vec<BackendId>), FleetError> {
        let (next, id, ids) = self.membership.with_pool(config)?;
        self.publish(next);
        Ok((id, ids))
    }

    pub fn remove_pool(&mut self, pool: PoolId) -> Result<(), FleetError> {
        let next = self.membership.without_pool(pool)?;
        self.publish(next);
        Ok(())
    }

    pub fn set_state(&mut self, backend: BackendId, state: BackendState) -> Result<(), FleetError> {
        let next = self.membership.with_state(backend, state)?;
        self.publish(next);
        Ok(())
    }

    pub fn drain(&mut self, backend: BackendId) -> Result<(), FleetError> {
        self.set_state(backend, BackendState::Draining)
    }

    pub fn resume(&mut self, backend: BackendId) -> Result<(), FleetError> {
        self.set_state(backend, BackendState::Serving)
    }

    pub fn fail(&mut self, backend: BackendId) -> Result<(), FleetError> {
        self.set_state(backend, BackendState::Failed)
    }
}

impl LoadView for PlainLoadView {
    fn membership(&self) -> &Membership {
        &self.membership
    }

    fn load(&self, backend: BackendId) -> LoadSnapshot {
        self.loads.get(backend.index()).copied().unwrap_or_default()
    }
}
