//! The model as prior, observations as correction: per endpoint, an EWMA of observed over
//! predicted time to first token (`prefill`) and time per output token (`decode`). The
//! predictions are the routing policies' own ([`crate::policy::predict`]) for the
//! endpoint's pool and its load when the request was sent, so a ratio of 1 means the
//! catalogue describes this stack; a ratio of 3 means it is three times slower than the
//! chip's model says, and its queued work is counted three times over when routing.

use crate::fleet::outlier::StepRatio;
use crate::request::Nanos;

/// Bounds of a correction: an EWMA fed by a few wild samples (a stalled connection, a
/// cached prefix) must not make an endpoint look free or unusable.
const MIN_RATIO: f64 = 0.05;
const MAX_RATIO: f64 = 100.0;

/// One endpoint's prediction ratios.
#[derive(Clone, Copy, Debug)]
pub struct PredictionRatio {
    pub prefill: StepRatio,
    pub decode: StepRatio,
}

impl PredictionRatio {
    pub fn new(alpha: f64) -> PredictionRatio {
        PredictionRatio {
            prefill: StepRatio::new(alpha),
            decode: StepRatio::new(alpha),
        }
    }

    /// A first token came `observed` after the request was sent, where `predicted` was
    /// expected.
    pub fn first_token(&mut self, observed: Nanos, predicted: Nanos) {
        self.prefill.record(observed, predicted.max(1));
    }

    /// The mean gap between output tokens was `observed`, where `predicted` was expected.
    pub fn per_token(&mut self, observed: Nanos, predicted: Nanos) {
        self.decode.record(observed, predicted.max(1));
    }

    /// The factor prefill work is multiplied by when routing.
    pub fn prefill_factor(&self) -> f64 {
        self.prefill.value().clamp(MIN_RATIO, MAX_RATIO)
    }

    /// The factor decode work is multiplied by when routing.
    pub fn decode_factor(&self) -> f64 {
        self.decode.value().clamp(MIN_RATIO, MAX_RATIO)
    }

    /// The larger of the two, for straggler detection, and the samples behind it.
    pub fn worst(&self) -> (f64, u64) {
        let samples = self.prefill.samples() + self.decode.samples();
        (self.prefill_factor().max(self.decode_factor()), samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_observations_within_bounds() {
        let mut r = PredictionRatio::new(0.5);
        assert_eq!(r.worst(), (1.0, 0));
        r.first_token(300, 100);
        assert!((r.prefill_factor() - 3.0).abs() < 1e-9);
        r.first_token(100, 100);
        assert!((r.prefill_factor() - 2.0).abs() < 1e-9);
        r.per_token(1, 1_000_000);
        assert_eq!(r.decode_factor(), MIN_RATIO);
        assert_eq!(r.worst(), (2.0, 3));
    }
}
