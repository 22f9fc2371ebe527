//! One simulated serving instance, modelled on vLLM's continuous batching: a waiting
//! queue with priority classes, a running set bounded by `max_num_seqs` and a per-step
//! token budget, chunked prefill, paged KV blocks with a prefix cache, and preemption by
//! recompute when KV runs out. An instance may run one phase only (prefill/decode
//! disaggregation): see [`Role`]. Pure: the driver passes `now` in and learns when the next
//! thing happens from `next_event_at`.

mod config;
mod handoff;
mod instance;
mod kv;
mod load;
mod prefix;
mod schedule;
mod seq;
mod stretch;

pub use config::{AdmitError, EngineConfig, EngineEvent, Granularity, Role};
pub use instance::Engine;
pub use load::LoadSnapshot;
pub use stretch::DecodeStretch;

#[cfg(test)]
mod pd_tests;
#[cfg(test)]
mod tests;
