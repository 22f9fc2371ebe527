//! Request traces: readers for the public LLM serving traces (Azure 2023/2024, BurstGPT,
//! Mooncake) and dujiang's own JSONL, a JSONL writer, seeded synthetic generators (including
//! a streaming, shardable provider-scale day, [`day`]), and iterator adapters for what-if
//! questions (faster, slower, a window, the first N).
//!
//! Everything streams: a reader is an iterator over a [`std::io::BufRead`] that holds one
//! line at a time, so a ten-million-request file replays in constant memory. Arrival times
//! are nanoseconds from the start of the trace ([`Nanos`]), the same clock the sim uses.
//!
//! # dujiang JSONL
//!
//! One JSON object per line; keys (unknown keys are an error, to catch typos):
//!
//! | key | type | required | meaning |
//! |---|---|---|---|
//! | `arrival_ms` | number | one of the two | arrival, ms from the start (fractions allowed; the writer prints ns precision) |
//! | `arrival_ns` | integer | one of the two | arrival, ns from the start |
//! | `input_tokens` | integer | yes | prompt length |
//! | `output_tokens` | integer | yes | tokens to generate |
//! | `hash_ids` | array of integers | no | ids of the prompt's fixed-size blocks (Mooncake's meaning) |
//! | `priority` | `"interactive"` / `"batch"` | no | default interactive |
//! | `slo_ttft_ms`, `slo_tpot_ms` | number | no | per-request SLO; one alone takes the other from [`Slo::default`] |
//! | `session` | integer | no | conversation id |
//! | `model` | string | no | model name as the trace gave it |
//!
//! # Broken lines, failures and disorder
//!
//! By default a line that cannot be parsed ends the read with an error naming the file,
//! line and field ([`OnError::Fail`]); [`OnError::Skip`] skips it and counts it in
//! [`ReadCounts::malformed`] instead. A header without a required column, and I/O errors,
//! always end the read. BurstGPT rows with zero response tokens are failed requests in
//! that trace: they are always skipped and counted in [`ReadCounts::failed`]. Because a
//! stream cannot be sorted, an arrival earlier than the previous one is by default clamped
//! to the previous arrival and counted in [`ReadCounts::out_of_order`]
//! ([`OutOfOrder::Clamp`]); [`OutOfOrder::Reject`] makes it a line error instead.

pub mod cells;
pub mod day;
mod error;
mod format;
mod reader;
mod shard;
pub mod stats;
pub mod synth;
mod timestamp;
pub mod transform;
mod writer;

pub use cells::{cell_filter, cell_of, partition_key};
pub use day::{DayConfig, DayTrace, SessionShape};
pub use error::{TraceError, TraceErrorKind};
pub use format::Format;
pub use reader::{open, OnError, OutOfOrder, ReadCounts, ReadOptions, TraceReader};
pub use shard::Shard;
pub use stats::TraceStats;
pub use synth::{
    ArrivalProcess, DiurnalProfile, LengthDist, PrefixSharing, SynthConfig, SyntheticTrace,
};
pub use timestamp::{parse_datetime_ns, parse_decimal_ns};
pub use transform::{mean_rate, rate_factor, TraceExt};
pub use writer::JsonlWriter;

use crate::request::{Nanos, Priority, Request, RequestId, Slo};

/// One request of a trace, in the units every format can express.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// Nanoseconds from the start of the trace.
    pub arrival_ns: Nanos,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Prompt block ids (equal leading ids = shared prefix); empty when the trace has none.
    pub hash_ids: Vec<u64>,
    pub priority: Priority,
    pub slo: Option<Slo>,
    pub session: Option<u64>,
    pub model: Option<String>,
}

impl TraceRecord {
    /// The request the scheduler sees. `max_tokens` is the trace's output length as is:
    /// the simulated backend produces exactly what the real one did.
    pub fn to_request(&self, id: RequestId) -> Request {
        Request {
            id,
            arrival: self.arrival_ns,
            prompt_tokens: self.prompt_tokens,
            max_tokens: self.output_tokens,
            priority: self.priority,
            slo: self.slo,
            prefix_hashes: self.hash_ids.clone(),
            session: self.session,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_request_carries_every_field() {
        let rec = TraceRecord {
            arrival_ns: 1_500,
            prompt_tokens: 700,
            output_tokens: 90,
            hash_ids: vec![4, 5],
            priority: Priority::Batch,
            slo: Some(Slo::default()),
            session: Some(9),
            model: Some("gpt-4".into()),
        };
        let req = rec.to_request(42);
        assert_eq!(req.id, 42);
        assert_eq!(req.arrival, 1_500);
        assert_eq!(req.prompt_tokens, 700);
        assert_eq!(req.max_tokens, 90);
        assert_eq!(req.prefix_hashes, vec![4, 5]);
        assert_eq!(req.priority, Priority::Batch);
        assert_eq!(req.slo, Some(Slo::default()));
        assert_eq!(req.session, Some(9));
    }
}
