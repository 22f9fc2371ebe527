//! Request types shared by every layer: what a chat request asks for, in tokens, and the
//! service level it expects. Times are nanoseconds on whatever clock the driver uses
//! (virtual in replay, wall-clock since start in the daemon), so the core never reads one.

use serde::{Deserialize, Serialize};

/// Nanoseconds on the driver's clock.
pub type Nanos = u64;

/// Identifies one request for its whole life, across retries and migrations.
pub type RequestId = u64;

pub const NANOS_PER_MS: Nanos = 1_000_000;
pub const NANOS_PER_SEC: Nanos = 1_000_000_000;

/// Priority class. `Batch` work is shed before `Interactive` work and waits behind it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }

    /// Index into per-class arrays; interactive sorts first.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interactive" => Ok(Priority::Interactive),
            "batch" => Ok(Priority::Batch),
            other => Err(format!(
                "unknown priority `{other}` (expected interactive or batch)"
            )),
        }
    }
}

/// A latency objective: time to first token and mean time per output token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ns: Nanos,
    pub tpot_ns: Nanos,
}

impl Default for Slo {
    /// TTFT ≤ 2 s and TPOT ≤ 100 ms: the chat SLO used throughout unless configured.
    fn default() -> Self {
        Slo {
            ttft_ns: 2 * NANOS_PER_SEC,
            tpot_ns: 100 * NANOS_PER_MS,
        }
    }
}

impl Slo {
    /// Whether a finished request met this objective. TPOT is the mean gap between
    /// output tokens after the first; a one-token answer has no TPOT to miss.
    pub fn met(&self, ttft_ns: Nanos, tpot_ns: Option<Nanos>) -> bool {
        ttft_ns <= self.ttft_ns && tpot_ns.is_none_or(|t| t <= self.tpot_ns)
    }
}

/// One inference request as the core sees it: token counts, not text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    /// When the request reached the scheduler.
    pub arrival: Nanos,
    pub prompt_tokens: u32,
    /// Output tokens to generate; the simulated backend always produces exactly this many.
    pub max_tokens: u32,
    pub priority: Priority,
    pub slo: Option<Slo>,
    /// Ids of the prompt's fixed-size blocks (Mooncake's `hash_ids`): equal leading ids
    /// mean a shared prefix that a backend's prefix cache can reuse.
    pub prefix_hashes: Vec<u64>,
    pub session: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_checks_both_bounds() {
        let slo = Slo::default();
        assert!(slo.met(2 * NANOS_PER_SEC, Some(100 * NANOS_PER_MS)));
        assert!(!slo.met(2 * NANOS_PER_SEC + 1, None));
        assert!(!slo.met(0, Some(100 * NANOS_PER_MS + 1)));
        assert!(slo.met(0, None));
    }

    #[test]
    fn priority_parses_and_orders() {
        assert_eq!("batch".parse::<Priority>().unwrap(), Priority::Batch);
        assert!("urgent".parse::<Priority>().is_err());
        assert!(Priority::Interactive < Priority::Batch);
    }
}
