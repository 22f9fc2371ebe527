//! The daemon's clock: maps wall time since start to simulated nanoseconds, scaled by
//! `--time-scale` (simulated ns = wall ns × scale), and back, so a backend driver can sleep
//! until the wall instant at which its engine's next event happens.
//!
//! [`BackendClock`] adds a per-backend slowdown on top: a backend slowed by factor f lives
//! on a local clock that runs f times slower than the fleet's, so every step it models
//! takes f times longer as seen by clients, without the engine knowing about faults.

use crate::request::Nanos;
use std::time::{Duration, Instant};

/// Wall clock ↔ simulated time for the whole daemon.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    start: Instant,
    scale: f64,
}

impl SimClock {
    /// `scale` must be positive and finite (checked by the config).
    pub fn new(scale: f64) -> SimClock {
        SimClock {
            start: Instant::now(),
            scale,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Simulated nanoseconds since the daemon started.
    pub fn now(&self) -> Nanos {
        self.sim_at(Instant::now())
    }

    pub fn sim_at(&self, at: Instant) -> Nanos {
        let wall = at.saturating_duration_since(self.start).as_nanos() as f64;
        (wall * self.scale) as Nanos
    }

    /// The earliest wall instant at which `now()` is at least `sim`. Rounded up, plus a
    /// nanosecond against float error, so a driver woken then never sees the event as
    /// still in the future.
    pub fn instant_at(&self, sim: Nanos) -> Instant {
        let wall = (sim as f64 / self.scale).ceil() as u64 + 1;
        self.start + Duration::from_nanos(wall)
    }

    /// Converts a simulated duration to wall time.
    pub fn wall(&self, sim: Nanos) -> Duration {
        Duration::from_nanos((sim as f64 / self.scale) as u64)
    }
}

/// One backend's local time: fleet time slowed down by a fault factor, piecewise linear.
#[derive(Clone, Copy, Debug)]
pub struct BackendClock {
    anchor_fleet: Nanos,
    anchor_local: Nanos,
    factor: f64,
}

impl Default for BackendClock {
    fn default() -> Self {
        BackendClock {
            anchor_fleet: 0,
            anchor_local: 0,
            factor: 1.0,
        }
    }
}

impl BackendClock {
    pub fn local(&self, fleet: Nanos) -> Nanos {
        let d = fleet.saturating_sub(self.anchor_fleet) as f64 / self.factor;
        self.anchor_local + d as Nanos
    }

    /// The fleet time of a local instant at or after the last re-anchoring; rounded up so
    /// the backend is never woken before its event.
    pub fn fleet(&self, local: Nanos) -> Nanos {
        let d = local.saturating_sub(self.anchor_local) as f64 * self.factor;
        self.anchor_fleet + d.ceil() as Nanos
    }

    /// Changes the slowdown from fleet time `now` on; time already passed keeps its rate.
    pub fn set_factor(&mut self, now_fleet: Nanos, factor: f64) {
        self.anchor_local = self.local(now_fleet);
        self.anchor_fleet = now_fleet;
        self.factor = factor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_instant_is_never_early() {
        let c = SimClock::new(7.3);
        for sim in [0u64, 1, 999, 1_000_003, 123_456_789_012] {
            assert!(c.sim_at(c.instant_at(sim)) >= sim, "{sim}");
        }
    }

    #[test]
    fn slowdown_stretches_only_later_time() {
        let mut b = BackendClock::default();
        assert_eq!(b.local(1000), 1000);
        b.set_factor(1000, 4.0);
        assert_eq!(b.local(1000), 1000);
        assert_eq!(b.local(5000), 2000);
        assert_eq!(b.fleet(2000), 5000);
        b.set_factor(5000, 1.0);
        assert_eq!(b.local(6000), 3000);
        assert_eq!(b.fleet(3000), 6000);
    }
}
