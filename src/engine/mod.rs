//! One simulated serving instance, modelled on vLLM's continuous batching: a waiting
//! queue with priority classes, a running set bounded by `max_num_seqs` and a per-step
//! token budget, chunked prefill, paged KV blocks with a prefix cache, and preemption by
//! recompute when KV runs out. Pure: the driver passes `now` in and learns when the next
//! thing happens from `next_event_at`.

mod instance;
mod load;
mod prefix;

pub use instance::{AdmitError, DecodeStretch, Engine, EngineConfig, EngineEvent, Granularity};
pub use load::LoadSnapshot;

#[cfg(test)]
mod tests;
