//! The daemon's clock: maps wall time since start to simulated nanoseconds, scaled by
//! `--time-scale` (simulated ns = wall ns × scale), and back, so a backend driver can sleep
//! until the wall instant at which its engine's next event happens.
//!
//! [`BackendClock`] adds a per-backend slowdown on top: the core's
//! [`crate::fleet::StretchClock`], shared with replay.

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

/// One backend's local time under a slowdown: the core's clock, the same one replay uses.
pub use crate::fleet::StretchClock as BackendClock;

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
}
