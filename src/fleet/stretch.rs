//! One backend's local time under a slowdown fault, for both drivers: a backend slowed by
//! factor f lives on a clock that runs f times slower than the fleet's, so every step its
//! engine models takes f times longer as seen by clients, without the engine knowing about
//! faults. The daemon's backend drivers and replay use this one implementation, so a
//! slowdown means the same thing to both.
//!
//! Integer arithmetic throughout: the factor is held in millionths, products are taken in
//! 128 bits and results saturate at the end of time instead of wrapping. Fleet → local
//! rounds down and local → fleet rounds up, which gives the two guarantees the drivers rely
//! on: a backend is never woken before its event (`local(fleet(l)) ≥ l`), and the fleet
//! time of an event seen at local instant `local(t)` is never after `t`. A driver measuring
//! from an arrival at `t` to an event there must therefore subtract with `saturating_sub`:
//! the event can map up to one factor's worth of nanoseconds before `t`.

use crate::request::Nanos;

/// Factor resolution: millionths, so any factor the fault plans allow is exact to 1 ppm.
const SCALE: u128 = 1_000_000;

/// Fleet time → one backend's local time: piecewise linear, re-anchored at each change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StretchClock {
    anchor_fleet: Nanos,
    anchor_local: Nanos,
    /// The slowdown in millionths (1_000_000: none). Never 0.
    factor_ppm: u64,
}

impl Default for StretchClock {
    fn default() -> Self {
        StretchClock {
            anchor_fleet: 0,
            anchor_local: 0,
            factor_ppm: SCALE as u64,
        }
    }
}

fn saturate(x: u128) -> Nanos {
    Nanos::try_from(x).unwrap_or(Nanos::MAX)
}

impl StretchClock {
    /// The local time at fleet time `fleet` (rounded down). Fleet times before the last
    /// re-anchoring map to its local anchor.
    pub fn local(&self, fleet: Nanos) -> Nanos {
        if self.factor_ppm == SCALE as u64 {
            // Unslowed (nearly every backend, every event): the same value without the
            // 128-bit division.
            return self
                .anchor_local
                .saturating_add(fleet.saturating_sub(self.anchor_fleet));
        }
        let d = u128::from(fleet.saturating_sub(self.anchor_fleet));
        let local = d * SCALE / u128::from(self.factor_ppm);
        saturate(u128::from(self.anchor_local) + local)
    }

    /// The fleet time of a local instant at or after the last re-anchoring, rounded up so
    /// a backend is never woken before its event.
    pub fn fleet(&self, local: Nanos) -> Nanos {
        if self.factor_ppm == SCALE as u64 {
            return self
                .anchor_fleet
                .saturating_add(local.saturating_sub(self.anchor_local));
        }
        let d = u128::from(local.saturating_sub(self.anchor_local));
        let fleet = (d * u128::from(self.factor_ppm)).div_ceil(SCALE);
        saturate(u128::from(self.anchor_fleet) + fleet)
    }

    /// The slowdown in force.
    pub fn factor(&self) -> f64 {
        self.factor_ppm as f64 / SCALE as f64
    }

    /// Changes the slowdown from fleet time `now_fleet` on; time already passed keeps its
    /// rate. A factor that is not finite and positive is taken as 1 (no slowdown; fault
    /// files are checked before this), and a factor is held to 1 ppm resolution, at least
    /// 1 ppm.
    pub fn set_factor(&mut self, now_fleet: Nanos, factor: f64) {
        let ppm = if factor.is_finite() && factor > 0.0 {
            // `as` saturates at u64::MAX for huge factors.
            ((factor * SCALE as f64).round() as u64).max(1)
        } else {
            SCALE as u64
        };
        self.anchor_local = self.local(now_fleet);
        self.anchor_fleet = now_fleet;
        self.factor_ppm = ppm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_at_factor_one_and_stretches_only_later_time() {
        let mut c = StretchClock::default();
        assert_eq!(c.local(123_456_789_012_345), 123_456_789_012_345);
        assert_eq!(c.fleet(123_456_789_012_345), 123_456_789_012_345);
        c.set_factor(1000, 4.0);
        assert_eq!(c.local(1000), 1000);
        assert_eq!(c.local(5000), 2000);
        assert_eq!(c.fleet(2000), 5000);
        c.set_factor(5000, 1.0);
        assert_eq!(c.local(6000), 3000);
        assert_eq!(c.fleet(3000), 6000);
    }

    #[test]
    fn the_end_of_time_saturates_instead_of_wrapping() {
        let mut c = StretchClock::default();
        c.set_factor(0, 1e6);
        assert_eq!(c.fleet(Nanos::MAX), Nanos::MAX);
        c.set_factor(0, 1e-12);
        assert_eq!(c.local(Nanos::MAX), Nanos::MAX);
        c.set_factor(10, f64::NAN);
        assert_eq!(c.factor(), 1.0);
    }

    proptest! {
        /// At factor 1 the shortcut gives what the general formula gives, for any anchors
        /// (a slowdown that has ended) and up to saturation at the end of time.
        #[test]
        fn the_unslowed_shortcut_matches_the_formula(
            at in any::<u64>(),
            later in any::<u64>(),
            t in any::<u64>(),
        ) {
            let mut c = StretchClock::default();
            c.set_factor(at, 3.0);
            c.set_factor(at.saturating_add(later), 1.0);
            let d = u128::from(t.saturating_sub(c.anchor_fleet));
            let local = saturate(u128::from(c.anchor_local) + d * SCALE / SCALE);
            prop_assert_eq!(c.local(t), local);
            let d = u128::from(t.saturating_sub(c.anchor_local));
            let fleet = saturate(u128::from(c.anchor_fleet) + (d * SCALE).div_ceil(SCALE));
            prop_assert_eq!(c.fleet(t), fleet);
        }

        /// On times that do not divide by the factor: a backend is never woken early, the
        /// fleet time of what happens at an arrival's local instant is never after the
        /// arrival and at most one factor's worth of ns before it, and both maps are
        /// monotone.
        #[test]
        fn rounding_never_wakes_early_and_stays_within_one_factor(
            at in 0u64..1u64 << 50,
            factor in 1.0f64..1000.0,
            t in 0u64..1u64 << 50,
            dt in 0u64..1u64 << 40,
            l in 0u64..1u64 << 50,
        ) {
            let mut c = StretchClock::default();
            c.set_factor(at, factor);
            prop_assert!(c.local(c.fleet(l)) >= l);
            let t = t.max(at);
            let back = c.fleet(c.local(t));
            prop_assert!(back <= t, "{back} > {t}");
            prop_assert!(t - back <= c.factor().ceil() as u64, "{back} vs {t}");
            prop_assert!(c.local(t + dt) >= c.local(t));
            prop_assert!(c.fleet(l + dt) >= c.fleet(l));
        }
    }
}
