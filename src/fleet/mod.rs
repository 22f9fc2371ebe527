//! Fleets: sets of pools of identical backends, and the load view routing policies read.
//!
//! A fleet file ([`FleetSpec`]) names pools (chip × model × tensor parallelism × count)
//! and is resolved against the chip and model catalogue into [`PoolConfig`]s; a pool may run one phase only (prefill or decode), its
//! KV moving over a modelled link ([`LinkTable`]). At run time
//! the fleet is a [`Membership`]: an immutable snapshot of which backends exist, which pool
//! each belongs to and whether it is serving, draining or failed. Changes (add or remove a
//! pool, drain, resume, fail) build a new snapshot and publish it whole, so a policy picking
//! a backend never waits for an operator and never sees half a change.
//!
//! Policies read per-backend load through one trait, [`LoadView`]. The daemon backs it with
//! [`AtomicLoadBoard`] (per-backend atomics written by each backend's driver, membership
//! behind an `ArcSwap`); tests back it with [`PlainLoadView`] (plain fields), and virtual
//! time with the engines themselves, read as of the moment of each decision. The same
//! policy code runs on all of them.

mod board;
pub mod cells;
mod links;
mod membership;
pub mod outlier;
mod plain;
mod spec;
mod stretch;
pub mod upstream;
mod view;

pub use board::{AtomicLoadBoard, BoardView, Claim, LoadSlot, SlotHandle};
pub use cells::{CellKey, CellSpec, FleetTotals, MAX_CELLS};
pub use links::{
    check_roles, check_simulated_roles, Link, LinkSpec, LinkTable, DEFAULT_BANDWIDTH_GBPS,
    DEFAULT_LATENCY_US, DEFAULT_STAGING_GBPS,
};
pub use membership::{
    check_pool_name, mix64, BackendEntry, BackendId, BackendState, FleetError, Membership,
    PoolConfig, PoolId, PoolInfo, ServingList, MAX_FLEET_BACKENDS, MAX_POOLS, MAX_POOL_BACKENDS,
    MAX_POOL_NAME_LEN, NOMINAL_CONTEXT_TOKENS,
};
pub use plain::PlainLoadView;
pub use spec::{FleetSpec, PolicySpec, PoolKind, PoolSpec, SpendSplit, EMBEDDED_DEMO};
pub use stretch::StretchClock;
pub use upstream::UpstreamSpec;
pub use view::{LoadView, MaskedView, PoolMask};

#[cfg(test)]
pub(crate) use membership::fixtures as test_fleets;
