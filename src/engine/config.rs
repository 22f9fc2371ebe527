//! The engine's vocabulary: its settings (after vLLM's scheduler options), the events it
//! reports to a driver, and why it refuses a request outright. Drivers (replay, the
//! daemon's simulated backends) and tests speak to an [`super::Engine`] in these terms.

use crate::profile::PerfModel;
use crate::request::{Nanos, RequestId};
use serde::{Deserialize, Serialize};

/// What part of a request an instance serves (prefill/decode disaggregation, as in
/// DistServe and Splitwise). A `prefill` instance computes the prompt and the first output
/// token, then hands the sequence off ([`EngineEvent::Handoff`]), freeing its KV once the
/// link has sent it; vLLM's and SGLang's P/D modes do the same (the prefill side produces
/// one token, which the decode side continues from). A `decode` instance takes handed-off sequences
/// ([`super::Engine::admit_transferred`]) once their KV has arrived, and may also serve
/// short requests whole; a `mixed` one does both phases, as every engine did before roles.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Mixed,
    Prefill,
    Decode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mixed => "mixed",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }

    /// Whether whole requests (prefill and decode in one place) may be sent here.
    pub fn serves_whole(self) -> bool {
        self != Role::Prefill
    }
}

/// How finely the engine reports progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Every output token is an event (the daemon streams each at its own time).
    PerToken,
    /// Only scheduling, first tokens, finishes and preemptions are events; pure decode
    /// stretches are jumped over (virtual-time replay).
    PerEvent,
}

/// Engine settings, after vLLM's scheduler options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV block (vLLM's default 16).
    pub block_size: u32,
    /// Largest running set (`max_num_seqs`).
    pub max_num_seqs: u32,
    /// Token budget per step (`max_num_batched_tokens`); prefills are chunked to fit.
    pub max_batched_tokens: u32,
    /// Prompt tokens covered by one prefix hash (Mooncake's `hash_ids` cover 512).
    pub prefix_block_tokens: u32,
    /// Prompts may be split across steps to fill the budget (vLLM's chunked prefill).
    /// Off, a prompt starts only when all of it fits what the step's budget has left
    /// (TensorRT-LLM without `enable_chunked_context`); one longer than the whole budget
    /// runs alone in its step rather than never.
    pub chunked_prefill: bool,
    pub granularity: Granularity,
    /// Which phases this instance runs (default [`Role::Mixed`]).
    pub role: Role,
}

impl EngineConfig {
    /// vLLM-like defaults for this instance: batch bounded by the chip profile.
    pub fn for_perf(perf: &PerfModel) -> Self {
        EngineConfig {
            block_size: 16,
            max_num_seqs: perf.max_batch().max(1),
            max_batched_tokens: 8192,
            prefix_block_tokens: 512,
            chunked_prefill: perf.engine.coefficients.chunked_prefill,
            granularity: Granularity::PerEvent,
            role: Role::Mixed,
        }
    }

    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }
}

/// Something observable that happened inside the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// First put into a step: its queue time ends here.
    Scheduled {
        id: RequestId,
        at: Nanos,
    },
    FirstToken {
        id: RequestId,
        at: Nanos,
    },
    /// Output token `index` (1-based) is ready. Per-token granularity only.
    Token {
        id: RequestId,
        at: Nanos,
        index: u32,
    },
    Finished {
        id: RequestId,
        at: Nanos,
        output_tokens: u32,
    },
    /// A prefill instance finished the prompt and produced the first token (reported by
    /// `FirstToken` just before); the sequence has left the running set, and its KV stays
    /// until the driver says the link has sent it ([`super::Engine::release_handed_off`]).
    /// `kv_tokens` tokens of KV (the prompt) must move to a decode instance, which
    /// continues after `generated` output tokens. Prefill role only.
    Handoff {
        id: RequestId,
        at: Nanos,
        kv_tokens: u32,
        generated: u32,
    },
    /// KV ran out and the sequence was evicted; it will be recomputed from its prompt and
    /// the tokens already produced, which are not produced again.
    Preempted {
        id: RequestId,
        at: Nanos,
    },
}

impl EngineEvent {
    pub fn id(&self) -> RequestId {
        match *self {
            EngineEvent::Scheduled { id, .. }
            | EngineEvent::FirstToken { id, .. }
            | EngineEvent::Token { id, .. }
            | EngineEvent::Finished { id, .. }
            | EngineEvent::Handoff { id, .. }
            | EngineEvent::Preempted { id, .. } => id,
        }
    }

    pub fn at(&self) -> Nanos {
        match *self {
            EngineEvent::Scheduled { at, .. }
            | EngineEvent::FirstToken { at, .. }
            | EngineEvent::Token { at, .. }
            | EngineEvent::Finished { at, .. }
            | EngineEvent::Handoff { at, .. }
            | EngineEvent::Preempted { at, .. } => at,
        }
    }
}

/// Why an engine refused a request outright.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("request needs {needed} tokens of KV cache but the instance holds {capacity}")]
    TooLarge { needed: u64, capacity: u64 },
    #[error("prompt_tokens and max_tokens must both be at least 1")]
    Empty,
    #[error("request id {0} is already in this engine")]
    DuplicateId(RequestId),
    #[error("a {role} instance cannot take this request ({why})")]
    WrongRole {
        role: &'static str,
        why: &'static str,
    },
}
