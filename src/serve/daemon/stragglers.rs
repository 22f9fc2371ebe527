//! The periodic straggler check: feeds every backend's observed/predicted step-time ratio
//! to the outlier detector, and applies its ejections, probes and re-admissions.

use super::Daemon;
use crate::fleet::BackendState;
use crate::serve::backend::Command;
use crate::serve::outlier::{BackendSample, OutlierAction};

impl Daemon {
    /// One round of straggler detection: ejects backends whose steps run much slower
    /// than modelled, probes ejected ones, and re-admits those that recovered.
    pub fn check_outliers(&self) {
        let _serial = self.admin.lock();
        let membership = self.board.membership();
        let handles = self.backends();
        let mut samples = Vec::with_capacity(handles.len());
        let mut det = self.outliers.lock();
        for b in &handles {
            let Some(entry) = membership.backend(b.id) else {
                det.forget(b.id.0);
                b.gauges.serving.set(0.0);
                continue;
            };
            // Kept current here, on the outlier tick, so operator drains, failures and
            // ejections all show within one check interval.
            let serving = entry.state == BackendState::Serving;
            b.gauges.serving.set(if serving { 1.0 } else { 0.0 });
            if det.is_ejected(b.id.0) && entry.state != BackendState::Draining {
                // An operator resumed or failed it: no longer ours to manage.
                det.forget(b.id.0);
                b.gauges.ejected.set(0.0);
            }
            let (ratio, n) = b.step_ratio();
            samples.push(BackendSample {
                backend: b.id.0,
                pool: entry.pool.0,
                pool_size: membership.pool_backends(entry.pool).count() as u32,
                serving: entry.state == BackendState::Serving,
                ratio,
                samples: n,
                idle: b.is_idle(),
            });
        }
        let actions = det.evaluate(&samples, self.now());
        drop(det);
        for action in actions {
            let (id, state) = match action {
                OutlierAction::Probe(id) => {
                    if let Some(b) = handles.iter().find(|b| b.id.0 == id) {
                        b.send(Command::Probe);
                    }
                    continue;
                }
                OutlierAction::Eject(id) => (id, BackendState::Draining),
                OutlierAction::Readmit(id) => (id, BackendState::Serving),
            };
            let Some(b) = handles.iter().find(|b| b.id.0 == id) else {
                continue;
            };
            let ejected = state == BackendState::Draining;
            if self.board.set_state(b.id, state).is_ok() {
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
}
