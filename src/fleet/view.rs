//! The one trait routing policies read the fleet through. A view pairs a membership
//! snapshot with per-backend load; whether that load lives in atomics (daemon) or plain
//! fields (virtual time) is invisible to the policy.

use super::membership::{BackendId, Membership, PoolId, PoolInfo};
use crate::engine::LoadSnapshot;

/// A set of pools as a bit mask (pool ids are below 64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolMask(pub u64);

impl PoolMask {
    pub const ALL: PoolMask = PoolMask(u64::MAX);
    pub const NONE: PoolMask = PoolMask(0);

    pub fn contains(self, pool: PoolId) -> bool {
        pool.0 < 64 && self.0 & (1u64 << pool.0) != 0
    }

    pub fn with(self, pool: PoolId) -> PoolMask {
        PoolMask(self.0 | (1u64 << pool.0))
    }

    pub fn and(self, other: PoolMask) -> PoolMask {
        PoolMask(self.0 & other.0)
    }
}

impl FromIterator<PoolId> for PoolMask {
    fn from_iter<I: IntoIterator<Item = PoolId>>(ids: I) -> PoolMask {
        ids.into_iter().fold(PoolMask::NONE, PoolMask::with)
    }
}

/// What a policy may read: who is in the fleet and how loaded each backend is.
///
/// Implementations must make `membership` and `load` cheap (no locks, no allocation):
/// they are called many times per routing decision.
pub trait LoadView {
    /// The membership snapshot this view was taken from. Serving lists in it are the only
    /// backends a policy may return.
    fn membership(&self) -> &Membership;

    /// Current load of a backend (a default snapshot for an unknown id).
    fn load(&self, backend: BackendId) -> LoadSnapshot;

    /// The loads of `ids`, into `out` (its first `ids.len()` entries). Policies read the
    /// loads of all their sampled backends here before weighing any: the reads do not
    /// depend on each other, so the CPU overlaps their cache misses, where weighing each
    /// before reading the next would wait out one miss after another (at tens of thousands
    /// of backends every sampled load is a miss).
    fn loads(&self, ids: &[BackendId], out: &mut [LoadSnapshot]) {
        for (o, &b) in out.iter_mut().zip(ids) {
            *o = self.load(b);
        }
    }

    /// Pools the policy may route to. Wrappers such as the domestic-share rule narrow it.
    fn allowed(&self) -> PoolMask {
        PoolMask::ALL
    }

    /// Live pools the policy may route to that have at least one serving backend.
    fn eligible_pools(&self) -> EligiblePools<'_> {
        EligiblePools {
            membership: self.membership(),
            mask: self.allowed(),
            next: 0,
        }
    }

    /// Whether `pool` is allowed by [`Self::allowed`].
    fn pool_allowed(&self, pool: PoolId) -> bool {
        self.allowed().contains(pool)
    }
}

/// Iterator over [`LoadView::eligible_pools`].
pub struct EligiblePools<'a> {
    membership: &'a Membership,
    mask: PoolMask,
    next: usize,
}

impl<'a> Iterator for EligiblePools<'a> {
    type Item = &'a PoolInfo;

    fn next(&mut self) -> Option<&'a PoolInfo> {
        while self.next < self.membership.pool_slots() {
            let id = PoolId(self.next as u32);
            self.next += 1;
            if !self.mask.contains(id) || self.membership.serving(id).is_empty() {
                continue;
            }
            if let Some(p) = self.membership.pool(id) {
                return Some(p);
            }
        }
        None
    }
}

/// Another view restricted to a subset of its pools.
pub struct MaskedView<'a> {
    pub inner: &'a dyn LoadView,
    pub mask: PoolMask,
}

impl LoadView for MaskedView<'_> {
    fn membership(&self) -> &Membership {
        self.inner.membership()
    }

    fn load(&self, backend: BackendId) -> LoadSnapshot {
        self.inner.load(backend)
    }

    fn loads(&self, ids: &[BackendId], out: &mut [LoadSnapshot]) {
        self.inner.loads(ids, out)
    }

    fn allowed(&self) -> PoolMask {
        self.inner.allowed().and(self.mask)
    }
}
