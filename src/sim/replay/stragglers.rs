//! Straggler ejection in virtual time: the daemon's outlier detector
//! ([`crate::fleet::outlier`]), with its defaults, run every check interval of simulated
//! time. A backend's step-time ratio is what the daemon's driver would measure: on the
//! fleet clock each step takes the slowdown factor times its modelled time, so the EWMA is
//! fed the factor once per engine step (in bulk, between checks, and flushed before the
//! factor changes). Ejected backends drain (no new work), are probed when idle with the
//! daemon's probe request, and are re-admitted once probes bring the ratio back down.

use super::Replay;
use crate::fleet::outlier::{
    BackendSample, OutlierAction, OutlierConfig, OutlierDetector, StepRatio,
    DEFAULT_CHECK_INTERVAL_MS, DEFAULT_EWMA_ALPHA, PROBE_ID_BASE, PROBE_MAX_TOKENS,
    PROBE_PROMPT_TOKENS,
};
use crate::fleet::{BackendId, BackendState};
use crate::request::{Nanos, Priority, Request, RequestId, NANOS_PER_MS};

/// How replay checks for stragglers; the default is the daemon's at time scale 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StragglerConfig {
    pub detector: OutlierConfig,
    pub ewma_alpha: f64,
    /// Simulated time between two checks.
    pub interval_ns: Nanos,
}

impl Default for StragglerConfig {
    fn default() -> Self {
        StragglerConfig {
            detector: OutlierConfig::default(),
            ewma_alpha: DEFAULT_EWMA_ALPHA,
            interval_ns: DEFAULT_CHECK_INTERVAL_MS * NANOS_PER_MS,
        }
    }
}

/// The detector's state across one replay.
pub(super) struct Stragglers {
    det: OutlierDetector,
    ratios: Vec<StepRatio>,
    /// Engine steps already fed to `ratios`, per backend.
    fed: Vec<u64>,
    pub(super) next_check: Nanos,
    interval_ns: Nanos,
    next_probe: RequestId,
    straggler_ratio: f64,
    pub(super) ejected: u64,
    pub(super) readmitted: u64,
}

impl Stragglers {
    pub(super) fn new(cfg: StragglerConfig, backends: usize) -> Stragglers {
        Stragglers {
            det: OutlierDetector::new(cfg.detector),
            ratios: vec![StepRatio::new(cfg.ewma_alpha); backends],
            fed: vec![0; backends],
            next_check: cfg.interval_ns.max(1),
            interval_ns: cfg.interval_ns.max(1),
            next_probe: PROBE_ID_BASE,
            straggler_ratio: cfg.detector.straggler_ratio,
            ejected: 0,
            readmitted: 0,
        }
    }
}

impl Replay {
    /// Schedules the next check after fleet time `t` (on the interval grid), for when a
    /// slowdown starts while checks sleep.
    pub(super) fn wake_stragglers(&mut self, t: Nanos) {
        if let Some(s) = self.stragglers.as_mut() {
            let next = (t / s.interval_ns)
                .saturating_add(1)
                .saturating_mul(s.interval_ns);
            s.next_check = s.next_check.min(next);
        }
    }

    /// Feeds backend `b`'s steps since the last feed at its current slowdown. Called
    /// before every check and before the factor changes.
    pub(super) fn feed_step_ratio(&mut self, b: usize) {
        let Some(s) = self.stragglers.as_mut() else {
            return;
        };
        let steps = self.engines[b].steps_taken();
        let n = steps.saturating_sub(s.fed[b]);
        s.fed[b] = steps;
        s.ratios[b].record_steps(self.clocks[b].factor(), n);
    }

    /// One straggler check at the next check time.
    pub(super) fn check_stragglers(&mut self) {
        let Some(t) = self.stragglers.as_ref().map(|s| s.next_check) else {
            return;
        };
        self.now = self.now.max(t);
        let n = self.engines.len();
        for b in 0..n {
            self.feed_step_ratio(b);
        }
        let membership = self.view.membership_arc().clone();
        let s = self.stragglers.as_mut().expect("checked above");
        s.next_check = t.saturating_add(s.interval_ns);
        let mut samples = Vec::with_capacity(n);
        for b in 0..n {
            let id = BackendId(b as u32);
            let Some(entry) = membership.backend(id) else {
                s.det.forget(id.0);
                continue;
            };
            if s.det.is_ejected(id.0) && entry.state != BackendState::Draining {
                // A fault plan failed or recovered it: no longer the detector's.
                s.det.forget(id.0);
            }
            samples.push(BackendSample {
                backend: id.0,
                pool: entry.pool.0,
                pool_size: self.pools[self.backend_pool[b]].count,
                serving: entry.state == BackendState::Serving,
                ratio: s.ratios[b].value(),
                samples: s.ratios[b].samples(),
                idle: self.engines[b].is_empty(),
            });
        }
        let actions = s.det.evaluate(&samples, t);
        // Nothing slowed, nothing ejected and every ratio under the threshold: more steps
        // at factor 1 only pull ratios toward 1, so no check can act until a slowdown
        // starts (which wakes them). Steps are fed in bulk then, to the same result.
        let quiet = actions.is_empty()
            && samples.iter().all(|x| x.ratio < s.straggler_ratio)
            && (0..n).all(|b| !s.det.is_ejected(b as u32) && self.clocks[b].factor() == 1.0);
        if quiet {
            s.next_check = Nanos::MAX;
        }
        for action in actions {
            match action {
                OutlierAction::Eject(id) => {
                    if self
                        .view
                        .set_state(BackendId(id), BackendState::Draining)
                        .is_ok()
                    {
                        self.stragglers.as_mut().expect("on").ejected += 1;
                    }
                }
                OutlierAction::Readmit(id) => {
                    if self
                        .view
                        .set_state(BackendId(id), BackendState::Serving)
                        .is_ok()
                    {
                        self.stragglers.as_mut().expect("on").readmitted += 1;
                    }
                }
                OutlierAction::Probe(id) => self.probe(id as usize, t),
            }
        }
    }

    /// Sends the daemon's probe request to backend `b`; its events belong to no request.
    fn probe(&mut self, b: usize, t: Nanos) {
        let s = self.stragglers.as_mut().expect("on");
        let id = s.next_probe;
        s.next_probe += 1;
        self.step_backend(b, t);
        let local = self.clocks[b].local(t);
        let probe = Request {
            id,
            arrival: local,
            prompt_tokens: PROBE_PROMPT_TOKENS,
            max_tokens: PROBE_MAX_TOKENS,
            priority: Priority::Batch,
            ..Request::default()
        };
        // A probe that does not fit is not sent, as in the daemon.
        let _ = self.engines[b].admit(probe, local);
        self.publish_load(b, t);
        self.reschedule(b);
    }
}
