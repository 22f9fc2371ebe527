//! The periodic straggler check: feeds every backend's observed/predicted step-time ratio
//! to the outlier detector (the core's, which replay runs too), and applies its
//! ejections, probes and re-admissions.
//!
//! One pass is linear in backends: handles are indexed by backend id and pool sizes are
//! counted once. The admin lock is taken only around each state change the detector asks
//! for, not for the pass, so an operator's command waits for at most one change; the
//! state is read again under the lock, so a drain, failure or resume the operator made
//! meanwhile is never overwritten.

use super::Daemon;
use crate::fleet::outlier::{BackendSample, OutlierAction};
use crate::fleet::{BackendId, BackendState};
use crate::serve::backend::Command;
use rustc_hash::FxHashMap;

impl Daemon {
    /// One round of straggler detection: ejects backends whose steps run much slower
    /// than modelled, probes ejected ones, and re-admits those that recovered.
    pub fn check_outliers(&self) {
        let membership = self.board.membership();
        let handles = self.backends.load_full();
        let mut pool_size: FxHashMap<u32, u32> = FxHashMap::default();
        for pool in membership.pools() {
            let n = membership.pool_backends(pool.id).count() as u32;
            pool_size.insert(pool.id.0, n);
        }
        // Real engines are judged against their pool's typical correction, not the bare
        // model: the catalogue may be off for a whole stack (every endpoint then shows the
        // same ratio, and none is a straggler), while one endpoint much slower than its
        // peers is. The median of the pool's judged endpoints is that correction.
        let mut typical: FxHashMap<u32, f64> = FxHashMap::default();
        {
            let min = u64::from(self.reliability.min_samples);
            let mut by_pool: FxHashMap<u32, Vec<f64>> = FxHashMap::default();
            for b in handles.iter().flatten().filter(|b| b.endpoint.is_some()) {
                let (ratio, n) = b.step_ratio();
                if let (Some(e), true) = (membership.backend(b.id), n >= min) {
                    by_pool.entry(e.pool.0).or_default().push(ratio);
                }
            }
            for (pool, mut r) in by_pool {
                r.sort_by(f64::total_cmp);
                // The lower median: of two endpoints, the faster one is the reference.
                typical.insert(pool, r[(r.len() - 1) / 2].max(1e-9));
            }
        }
        let mut samples = Vec::with_capacity(handles.len());
        let actions = {
            let mut det = self.outliers.lock();
            for b in handles.iter().flatten() {
                let Some(entry) = membership.backend(b.id) else {
                    det.forget(b.id.0);
                    b.gauges.serving.set(0.0);
                    continue;
                };
                // Kept current here, on the outlier tick, so operator drains, failures
                // and ejections all show within one check interval.
                let serving = entry.state == BackendState::Serving;
                b.gauges.serving.set(if serving { 1.0 } else { 0.0 });
                if det.is_ejected(b.id.0) && entry.state != BackendState::Draining {
                    // An operator resumed or failed it: no longer ours to manage.
                    det.forget(b.id.0);
                    b.gauges.ejected.set(0.0);
                }
                let (mut ratio, n) = b.step_ratio();
                if b.endpoint.is_some() {
                    ratio /= typical.get(&entry.pool.0).copied().unwrap_or(1.0);
                }
                samples.push(BackendSample {
                    backend: b.id.0,
                    pool: entry.pool.0,
                    pool_size: pool_size.get(&entry.pool.0).copied().unwrap_or(1),
                    serving,
                    ratio,
                    samples: n,
                    idle: b.is_idle(),
                });
            }
            det.evaluate(&samples, self.now())
        };
        for action in actions {
            let (id, from, to) = match action {
                OutlierAction::Probe(id) => {
                    if let Some(Some(b)) = handles.get(id as usize) {
                        b.send(Command::Probe);
                    }
                    continue;
                }
                OutlierAction::Eject(id) => (id, BackendState::Serving, BackendState::Draining),
                OutlierAction::Readmit(id) => (id, BackendState::Draining, BackendState::Serving),
            };
            let Some(Some(b)) = handles.get(id as usize) else {
                continue;
            };
            let ejected = to == BackendState::Draining;
            let applied = {
                let _serial = self.admin.lock();
                let now = self.board.membership();
                match now.backend(BackendId(id)) {
                    Some(e) if e.state == from => self.board.set_state(b.id, to).is_ok(),
                    _ => false,
                }
            };
            if !applied {
                // The operator changed it since the samples were taken: theirs now.
                self.outliers.lock().forget(id);
                b.gauges.ejected.set(0.0);
                continue;
            }
            b.gauges.ejected.set(if ejected { 1.0 } else { 0.0 });
            self.metrics.ejection(&b.pool, ejected);
            let (ratio, _) = b.step_ratio();
            tracing::warn!(
                backend = %b.name,
                ratio,
                action = if ejected { "ejected" } else { "readmitted" },
                "straggler check"
            );
        }
    }
}
