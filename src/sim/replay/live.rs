//! The load view policies decide on in virtual time: an engine jumping over a decode
//! stretch has done part of it by the moment a policy decides, as the daemon's engines,
//! publishing after every step, show; [`LiveView`] takes those tokens off.

use super::Replay;
use crate::engine::{DecodeStretch, LoadSnapshot};
use crate::fleet::{BackendId, LoadView, Membership, PlainLoadView};
use crate::request::Nanos;

impl Replay {
    pub(super) fn live(&self, now: Nanos) -> LiveView<'_> {
        LiveView {
            plain: &self.view,
            stretches: &self.stretches,
            now,
        }
    }
}

/// The load view policies decide on in virtual time: each backend's load as its engine
/// last published it, less the decode tokens its stretch in flight has produced by `now`.
pub(super) struct LiveView<'a> {
    pub(super) plain: &'a PlainLoadView,
    /// Per backend, on the fleet clock.
    pub(super) stretches: &'a [Option<DecodeStretch>],
    pub(super) now: Nanos,
}

impl LoadView for LiveView<'_> {
    fn membership(&self) -> &Membership {
        self.plain.membership()
    }

    fn load(&self, backend: BackendId) -> LoadSnapshot {
        let mut load = self.plain.load(backend);
        if let Some(Some(s)) = self.stretches.get(backend.index()) {
            load.remaining_decode_tokens -= s.tokens_by(self.now);
        }
        load
    }
}
