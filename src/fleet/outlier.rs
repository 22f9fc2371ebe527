//! Straggler detection: which backends to eject from routing because their steps take much
//! longer than the performance model predicts, and which ejected ones to re-admit.
//!
//! Each backend driver keeps an EWMA of observed over predicted step time ([`StepRatio`]).
//! The daemon periodically feeds every backend's ratio into [`OutlierDetector::evaluate`],
//! which decides; replay runs the same detector with the same defaults in virtual time,
//! so a slowed backend is ejected there as it is in the daemon. Comparing against the model rather than against the pool's other
//! backends means a whole pool being slow is still seen, and the ejection bound (never more
//! than a fraction of a pool) keeps a mis-calibrated model from emptying the fleet, as
//! Envoy's `max_ejection_percent` does. An ejected backend gets no traffic and so no
//! samples: the daemon sends it small probe requests, and it is re-admitted once their
//! step times bring the ratio back under the recovery threshold.
//!
//! Pure: no clock, no I/O. Time is the caller's `now` in nanoseconds.

use crate::request::Nanos;
use std::collections::BTreeMap;

/// EWMA of observed/predicted step time, kept by one backend's driver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRatio {
    alpha: f64,
    value: f64,
    samples: u64,
}

impl StepRatio {
    pub fn new(alpha: f64) -> StepRatio {
        StepRatio {
            alpha: alpha.clamp(0.0, 1.0),
            value: 1.0,
            samples: 0,
        }
    }

    /// Adds one step: `observed_ns` on the fleet clock for `predicted_ns` of modelled work.
    pub fn record(&mut self, observed_ns: Nanos, predicted_ns: Nanos) {
        if predicted_ns == 0 {
            return;
        }
        let r = observed_ns as f64 / predicted_ns as f64;
        // The first sample replaces the neutral prior outright, so a backend slow from the
        // start is not judged on a mostly-prior average.
        self.value = if self.samples == 0 {
            r
        } else {
            self.value + self.alpha * (r - self.value)
        };
        self.samples += 1;
    }

    /// Adds `n` steps that all ran `ratio` times their modelled time, as `n` calls of
    /// [`Self::record`] would (replay knows a backend's steps only in bulk).
    pub fn record_steps(&mut self, ratio: f64, n: u64) {
        if n == 0 || !ratio.is_finite() {
            return;
        }
        let prior = if self.samples == 0 { ratio } else { self.value };
        let keep = (1.0 - self.alpha).powi(n.min(i32::MAX as u64) as i32);
        self.value = ratio + (prior - ratio) * keep;
        self.samples = self.samples.saturating_add(n);
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Probe requests take ids from the top half of the id space, which no driver's request
/// counter reaches.
pub const PROBE_ID_BASE: crate::request::RequestId = 1 << 63;
/// A probe is short: enough decode steps to move the EWMA, little enough KV to matter.
pub const PROBE_PROMPT_TOKENS: u32 = 32;
pub const PROBE_MAX_TOKENS: u32 = 12;

/// EWMA weight of the newest step in [`StepRatio`], the default for both drivers.
pub const DEFAULT_EWMA_ALPHA: f64 = 0.2;

/// How often the detector runs by default, in the daemon's wall milliseconds (simulated
/// milliseconds at time scale 1, replay's).
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 100;

/// The detector's thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierConfig {
    pub straggler_ratio: f64,
    pub recover_ratio: f64,
    pub min_samples: u64,
    pub max_ejection_fraction: f64,
    /// Least time between two probes of one ejected backend.
    pub probe_interval_ns: Nanos,
}

impl Default for OutlierConfig {
    /// The defaults both drivers use: eject at twice the modelled step time (a backend
    /// that slow serves at half speed), re-admit under 1.3×, judge after 16 steps, never
    /// more than half a pool, probe every two default check intervals. Engineering choices
    /// (estimate), not measurements.
    fn default() -> Self {
        OutlierConfig {
            straggler_ratio: 2.0,
            recover_ratio: 1.3,
            min_samples: 16,
            max_ejection_fraction: 0.5,
            probe_interval_ns: 2 * DEFAULT_CHECK_INTERVAL_MS * crate::request::NANOS_PER_MS,
        }
    }
}

/// One backend as the detector sees it on one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSample {
    pub backend: u32,
    pub pool: u32,
    /// Backends in the pool (serving, draining or failed).
    pub pool_size: u32,
    /// Whether routing currently sends it work (serving, not drained by an operator).
    pub serving: bool,
    pub ratio: f64,
    /// Total step samples the backend has recorded.
    pub samples: u64,
    /// Whether it holds no requests (a probe then measures it alone).
    pub idle: bool,
}

/// What the daemon should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutlierAction {
    Eject(u32),
    Readmit(u32),
    Probe(u32),
}

#[derive(Clone, Copy, Debug)]
struct Ejected {
    pool: u32,
    /// Samples the backend had when ejected: re-admission needs fresh ones.
    samples_at_ejection: u64,
    last_probe: Option<Nanos>,
}

/// Ejection state across evaluations.
#[derive(Debug)]
pub struct OutlierDetector {
    cfg: OutlierConfig,
    ejected: BTreeMap<u32, Ejected>,
}

impl OutlierDetector {
    pub fn new(cfg: OutlierConfig) -> OutlierDetector {
        OutlierDetector {
            cfg,
            ejected: BTreeMap::new(),
        }
    }

    pub fn is_ejected(&self, backend: u32) -> bool {
        self.ejected.contains_key(&backend)
    }

    /// Forgets a backend (removed, or put back into service by an operator).
    pub fn forget(&mut self, backend: u32) {
        self.ejected.remove(&backend);
    }

    /// Decides ejections, re-admissions and probes for this round. The caller applies
    /// every `Eject`/`Readmit` it gets (the detector already counts them as done).
    pub fn evaluate(&mut self, backends: &[BackendSample], now: Nanos) -> Vec<OutlierAction> {
        let mut actions = Vec::new();
        for b in backends {
            let Some(e) = self.ejected.get_mut(&b.backend) else {
                continue;
            };
            let fresh = b.samples.saturating_sub(e.samples_at_ejection);
            if fresh >= self.cfg.min_samples.clamp(1, 4) && b.ratio <= self.cfg.recover_ratio {
                self.ejected.remove(&b.backend);
                actions.push(OutlierAction::Readmit(b.backend));
            } else if b.idle
                && e.last_probe
                    .is_none_or(|t| now.saturating_sub(t) >= self.cfg.probe_interval_ns)
            {
                e.last_probe = Some(now);
                actions.push(OutlierAction::Probe(b.backend));
            }
        }
        // Worst first, so a bound that allows one ejection takes the slowest backend.
        let mut candidates: Vec<&BackendSample> = backends
            .iter()
            .filter(|b| {
                b.serving
                    && !self.ejected.contains_key(&b.backend)
                    && b.samples >= self.cfg.min_samples
                    && b.ratio >= self.cfg.straggler_ratio
            })
            .collect();
        candidates.sort_by(|a, b| b.ratio.total_cmp(&a.ratio).then(a.backend.cmp(&b.backend)));
        for b in candidates {
            let allowed =
                (f64::from(b.pool_size) * self.cfg.max_ejection_fraction).floor() as usize;
            let in_pool = self.ejected.values().filter(|e| e.pool == b.pool).count();
            if in_pool >= allowed {
                continue;
            }
            self.ejected.insert(
                b.backend,
                Ejected {
                    pool: b.pool,
                    samples_at_ejection: b.samples,
                    last_probe: None,
                },
            );
            actions.push(OutlierAction::Eject(b.backend));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            straggler_ratio: 2.0,
            recover_ratio: 1.3,
            min_samples: 10,
            max_ejection_fraction: 0.5,
            probe_interval_ns: 100,
        }
    }

    fn sample(backend: u32, ratio: f64, samples: u64) -> BackendSample {
        BackendSample {
            backend,
            pool: 0,
            pool_size: 4,
            serving: true,
            ratio,
            samples,
            idle: false,
        }
    }

    #[test]
    fn the_ewma_follows_a_slowdown_and_its_recovery() {
        let mut r = StepRatio::new(0.2);
        for _ in 0..20 {
            r.record(300, 100);
        }
        assert!((r.value() - 3.0).abs() < 1e-9);
        let mut n = 0;
        while r.value() > 1.3 {
            r.record(100, 100);
            n += 1;
        }
        // 2 · 0.8^n ≤ 0.3 first at n = 9.
        assert_eq!(n, 9);
        r.record(5, 0);
        assert_eq!(r.samples(), 29, "zero-length predictions are ignored");
    }

    #[test]
    fn steps_in_bulk_match_steps_one_by_one() {
        let (mut one, mut bulk) = (StepRatio::new(0.2), StepRatio::new(0.2));
        for (ratio, n) in [(3.0, 7u64), (1.0, 5), (2.5, 1)] {
            for _ in 0..n {
                one.record((ratio * 1000.0) as u64, 1000);
            }
            bulk.record_steps(ratio, n);
            assert!((one.value() - bulk.value()).abs() < 1e-9);
            assert_eq!(one.samples(), bulk.samples());
        }
    }

    #[test]
    fn stragglers_are_ejected_worst_first_within_the_pool_bound() {
        let mut d = OutlierDetector::new(cfg());
        let round = [
            sample(0, 1.0, 50),
            sample(1, 2.5, 50),
            sample(2, 4.0, 50),
            sample(3, 3.0, 50),
        ];
        let a = d.evaluate(&round, 0);
        assert_eq!(a, [OutlierAction::Eject(2), OutlierAction::Eject(3)]);
        // Half the pool is out: backend 1 stays in however slow.
        assert!(d.evaluate(&round, 1).is_empty());
        assert!(d.is_ejected(2) && d.is_ejected(3) && !d.is_ejected(1));
    }

    #[test]
    fn too_few_samples_or_a_drained_backend_are_not_judged() {
        let mut d = OutlierDetector::new(cfg());
        let mut drained = sample(1, 9.0, 50);
        drained.serving = false;
        assert!(d.evaluate(&[sample(0, 9.0, 3), drained], 0).is_empty());
    }

    #[test]
    fn ejected_backends_are_probed_when_idle_and_readmitted_on_recovery() {
        let mut d = OutlierDetector::new(cfg());
        assert_eq!(
            d.evaluate(&[sample(0, 3.0, 50)], 0),
            [OutlierAction::Eject(0)]
        );
        let mut s = sample(0, 3.0, 50);
        s.serving = false;
        assert!(d.evaluate(&[s.clone()], 10).is_empty(), "busy: no probe");
        s.idle = true;
        assert_eq!(d.evaluate(&[s.clone()], 20), [OutlierAction::Probe(0)]);
        assert!(d.evaluate(&[s.clone()], 50).is_empty(), "probe interval");
        // A low ratio without fresh samples is not proof of recovery.
        s.ratio = 1.0;
        assert_eq!(d.evaluate(&[s.clone()], 200), [OutlierAction::Probe(0)]);
        s.samples = 60;
        assert_eq!(d.evaluate(&[s], 210), [OutlierAction::Readmit(0)]);
        assert!(!d.is_ejected(0));
    }

    #[test]
    fn a_pool_of_one_is_never_ejected_below_a_whole_fraction() {
        let mut d = OutlierDetector::new(cfg());
        let mut s = sample(0, 10.0, 50);
        s.pool_size = 1;
        assert!(d.evaluate(&[s], 0).is_empty());
    }
}
