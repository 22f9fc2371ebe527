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

/// Tokens covered by one prefix hash: Mooncake's `hash_ids` name 512-token blocks (its
/// public `mooncake_trace.jsonl`, kvcache-ai/Mooncake: a 6,755-token prompt carries 14
/// ids); the engine's prefix cache (`EngineConfig::prefix_block_tokens`) uses the same.
pub const PREFIX_BLOCK_TOKENS: u32 = 512;

/// Longest client `request_id` accepted, in bytes: it is echoed back and logged, so it is
/// bounded like every other field a client controls.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Why a request is refused before routing. Both drivers check requests with
/// [`check_request`] and count refusals under [`Invalid::as_str`], so a replay refuses
/// exactly what the daemon refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invalid {
    /// Zero prompt tokens.
    EmptyPrompt,
    /// The prompt alone fills the model's context.
    PromptTooLong,
    /// Zero output tokens asked for.
    NoOutput,
    /// Prompt plus output exceed the model's context.
    OutputTooLong,
    /// More prefix hashes than prompt blocks, or a hash repeated.
    PrefixHashes,
    /// `request_id` longer than [`MAX_REQUEST_ID_BYTES`].
    RequestId,
}

impl Invalid {
    pub const ALL: [Invalid; 6] = [
        Invalid::EmptyPrompt,
        Invalid::PromptTooLong,
        Invalid::NoOutput,
        Invalid::OutputTooLong,
        Invalid::PrefixHashes,
        Invalid::RequestId,
    ];

    /// Stable label for refusal counts (metrics `reason`, replay `rejected_by_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::EmptyPrompt => "invalid_empty_prompt",
            Invalid::PromptTooLong => "invalid_prompt_too_long",
            Invalid::NoOutput => "invalid_no_output",
            Invalid::OutputTooLong => "invalid_output_too_long",
            Invalid::PrefixHashes => "invalid_prefix_hashes",
            Invalid::RequestId => "invalid_request_id",
        }
    }
}

/// A refused request: the reason, the request field at fault and a message naming both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub reason: Invalid,
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for RequestError {}

/// What a request is checked against: the model it asks for.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits<'a> {
    pub model: &'a str,
    /// The model's context window, in tokens.
    pub max_context: u32,
}

/// The one request check both drivers run before routing: the prompt and its output fit
/// the model's context, the prefix hashes are at most one per prompt block and distinct
/// (a repeated hash would fake prefix-cache hits), and the client's id is bounded.
/// Returns the prompt length as the core counts it.
pub fn check_request(
    prompt_tokens: u64,
    max_tokens: u32,
    prefix_hashes: &[u64],
    request_id: &str,
    limits: RequestLimits<'_>,
) -> Result<u32, RequestError> {
    let err = |reason, field, message: String| RequestError {
        reason,
        field,
        message,
    };
    let RequestLimits { model, max_context } = limits;
    let context = u64::from(max_context);
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(err(
            Invalid::RequestId,
            "request_id",
            format!(
                "is {} bytes; at most {MAX_REQUEST_ID_BYTES} are accepted",
                request_id.len()
            ),
        ));
    }
    if prompt_tokens == 0 {
        return Err(err(
            Invalid::EmptyPrompt,
            "prompt_tokens",
            "the prompt has no tokens".into(),
        ));
    }
    if prompt_tokens >= context {
        return Err(err(
            Invalid::PromptTooLong,
            "prompt",
            format!("{prompt_tokens} tokens; model `{model}` has a {context}-token context"),
        ));
    }
    if max_tokens == 0 {
        return Err(err(
            Invalid::NoOutput,
            "max_tokens",
            "must be at least 1".into(),
        ));
    }
    if u64::from(max_tokens) + prompt_tokens > context {
        return Err(err(
            Invalid::OutputTooLong,
            "max_tokens",
            format!(
                "{max_tokens} tokens after a {prompt_tokens}-token prompt exceed model `{model}`'s {context}-token context"
            ),
        ));
    }
    // Checked above: the prompt is shorter than a u32 context.
    let prompt = prompt_tokens as u32;
    let blocks = prompt.div_ceil(PREFIX_BLOCK_TOKENS) as usize;
    if prefix_hashes.len() > blocks {
        return Err(err(
            Invalid::PrefixHashes,
            "prefix_hashes",
            format!(
                "{} hashes for a {prompt}-token prompt; at most one per {PREFIX_BLOCK_TOKENS}-token block ({blocks})",
                prefix_hashes.len()
            ),
        ));
    }
    // At most a context's worth of blocks (256 at 128k tokens): sorting a copy is cheap.
    let mut sorted = prefix_hashes.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        let at = prefix_hashes.iter().position(|&h| h == w[0]).unwrap_or(0);
        return Err(err(
            Invalid::PrefixHashes,
            "prefix_hashes",
            format!("hash {} (at index {at}) appears more than once", w[0]),
        ));
    }
    Ok(prompt)
}

impl Request {
    /// The request to route and prefill when it moves to another backend after `produced`
    /// output tokens: the prompt grows by what the client already has and only the rest is
    /// owed. `None` when nothing is owed. Both drivers move requests through this, and
    /// route the enlarged request, since that is the prefill the new backend does.
    pub fn resumed_after(&self, produced: u32) -> Option<Request> {
        let owed = self.max_tokens.checked_sub(produced).filter(|&n| n > 0)?;
        Some(Request {
            prompt_tokens: self.prompt_tokens.checked_add(produced)?,
            max_tokens: owed,
            ..self.clone()
        })
    }
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

    #[test]
    fn a_moved_request_prefills_what_the_client_has() {
        let r = Request {
            prompt_tokens: 100,
            max_tokens: 10,
            ..Request::default()
        };
        let m = r.resumed_after(4).unwrap();
        assert_eq!((m.prompt_tokens, m.max_tokens), (104, 6));
        assert_eq!(r.resumed_after(0).unwrap(), r);
        assert!(r.resumed_after(10).is_none() && r.resumed_after(11).is_none());
    }

    fn limits() -> RequestLimits<'static> {
        RequestLimits {
            model: "m",
            max_context: 8192,
        }
    }

    #[test]
    fn the_shared_check_refuses_by_reason() {
        let ok = check_request(1024, 100, &[1, 2], "a", limits());
        assert_eq!(ok, Ok(1024));
        let reason = |p: u64, m: u32, h: &[u64], id: &str| {
            check_request(p, m, h, id, limits()).unwrap_err().reason
        };
        assert_eq!(reason(0, 1, &[], ""), Invalid::EmptyPrompt);
        assert_eq!(reason(8192, 1, &[], ""), Invalid::PromptTooLong);
        assert_eq!(reason(u64::MAX, 1, &[], ""), Invalid::PromptTooLong);
        // Shown after the field's name, so it does not repeat it ("prompt: prompt is").
        let e = check_request(9000, 1, &[], "", limits()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `prompt`: 9000 tokens; model `m` has a 8192-token context"
        );
        assert_eq!(reason(10, 0, &[], ""), Invalid::NoOutput);
        assert_eq!(reason(8000, 193, &[], ""), Invalid::OutputTooLong);
        assert!(check_request(8000, 192, &[], "", limits()).is_ok());
        // 513 tokens are two blocks: two hashes pass, three do not.
        assert!(check_request(513, 1, &[7, 8], "", limits()).is_ok());
        assert_eq!(reason(513, 1, &[7, 8, 9], ""), Invalid::PrefixHashes);
        let e = check_request(2048, 1, &[7, 8, 7], "", limits()).unwrap_err();
        assert_eq!(e.reason, Invalid::PrefixHashes);
        assert!(e.to_string().contains("hash 7 (at index 0)"), "{e}");
        let long = "x".repeat(MAX_REQUEST_ID_BYTES + 1);
        assert_eq!(reason(10, 1, &[], &long), Invalid::RequestId);
        assert!(check_request(10, 1, &[], &long[1..], limits()).is_ok());
        let labels: std::collections::BTreeSet<_> =
            Invalid::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Invalid::ALL.len());
    }
}
