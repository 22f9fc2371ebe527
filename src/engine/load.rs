//! The load snapshot an engine publishes for routing policies: a handful of counters kept
//! up to date incrementally, so reading it costs nothing on the hot path.

use crate::request::Nanos;

/// What a policy may know about one backend's load at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    /// Requests admitted but not yet scheduled into a step (including preempted ones).
    pub waiting: u32,
    /// Requests in the running set (prefilling or decoding).
    pub running: u32,
    /// Prompt tokens still to prefill, over waiting and running requests.
    pub queued_prefill_tokens: u64,
    /// Output tokens still to generate, over waiting and running requests.
    pub remaining_decode_tokens: u64,
    pub kv_used_blocks: u32,
    pub kv_total_blocks: u32,
    /// The engine's own estimate of how long until everything it holds is done, if no more
    /// work arrived.
    pub predicted_drain_ns: Nanos,
}

impl LoadSnapshot {
    /// Requests the backend holds: waiting plus running.
    pub fn outstanding(&self) -> u32 {
        self.waiting + self.running
    }

    /// KV-cache usage in [0, 1].
    pub fn kv_usage(&self) -> f64 {
        if self.kv_total_blocks == 0 {
            0.0
        } else {
            f64::from(self.kv_used_blocks) / f64::from(self.kv_total_blocks)
        }
    }
}
