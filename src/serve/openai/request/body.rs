//! The request body as read: the fields anything reads ([`Body`], each as it came, JSON
//! `null` as absent, unknown fields skipped unread as vLLM does), found by the fast
//! object reader with serde as the fallback ([`read_body`]), looked up by name through
//! [`Fields`] (also for the objects nested in a body), and the sampling fields passed
//! through untouched to a real engine ([`SAMPLING_FIELDS`]). Apart from [`super`], which
//! checks what these fields say, because this is only how they are found.

use super::super::error::ApiError;
use super::super::json::Val;
use serde::Deserialize;

/// Fields passed through, untouched, to a real engine serving the request (vLLM's and
/// SGLang's sampling parameters); simulated backends ignore them.
pub const SAMPLING_FIELDS: [&str; 16] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stop_token_ids",
    "seed",
    "ignore_eos",
    "min_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "skip_special_tokens",
    "user",
    "response_format",
];

/// A request body's fields that anything reads, each as it came (JSON `null` reads as
/// absent); any other field is skipped unread, as vLLM ignores unknown fields.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Body<'a> {
    #[serde(borrow)]
    model: Option<Val<'a>>,
    #[serde(borrow)]
    messages: Option<Val<'a>>,
    #[serde(borrow)]
    prompt: Option<Val<'a>>,
    #[serde(borrow)]
    max_tokens: Option<Val<'a>>,
    #[serde(borrow)]
    max_completion_tokens: Option<Val<'a>>,
    #[serde(borrow)]
    stream: Option<Val<'a>>,
    #[serde(borrow)]
    stream_options: Option<Val<'a>>,
    #[serde(borrow)]
    n: Option<Val<'a>>,
    #[serde(borrow)]
    tools: Option<Val<'a>>,
    #[serde(borrow)]
    functions: Option<Val<'a>>,
    #[serde(borrow)]
    tool_choice: Option<Val<'a>>,
    #[serde(borrow)]
    function_call: Option<Val<'a>>,
    #[serde(borrow)]
    prefix_hashes: Option<Val<'a>>,
    #[serde(borrow)]
    priority: Option<Val<'a>>,
    #[serde(borrow)]
    slo: Option<Val<'a>>,
    #[serde(borrow)]
    request_id: Option<Val<'a>>,
    /// [`SAMPLING_FIELDS`], in that order.
    #[serde(borrow)]
    temperature: Option<Val<'a>>,
    #[serde(borrow)]
    top_p: Option<Val<'a>>,
    #[serde(borrow)]
    top_k: Option<Val<'a>>,
    #[serde(borrow)]
    min_p: Option<Val<'a>>,
    #[serde(borrow)]
    stop: Option<Val<'a>>,
    #[serde(borrow)]
    stop_token_ids: Option<Val<'a>>,
    #[serde(borrow)]
    seed: Option<Val<'a>>,
    #[serde(borrow)]
    ignore_eos: Option<Val<'a>>,
    #[serde(borrow)]
    min_tokens: Option<Val<'a>>,
    #[serde(borrow)]
    presence_penalty: Option<Val<'a>>,
    #[serde(borrow)]
    frequency_penalty: Option<Val<'a>>,
    #[serde(borrow)]
    repetition_penalty: Option<Val<'a>>,
    #[serde(borrow)]
    logit_bias: Option<Val<'a>>,
    #[serde(borrow)]
    skip_special_tokens: Option<Val<'a>>,
    #[serde(borrow)]
    user: Option<Val<'a>>,
    #[serde(borrow)]
    response_format: Option<Val<'a>>,
}

impl<'a> Body<'a> {
    /// Takes one top-level member as serde's reading of the struct does: a known field
    /// once (`None` for a second time, which serde refuses), `null` as absent, any other
    /// field ignored.
    pub(super) fn set(&mut self, seen: &mut u64, key: &str, v: Val<'a>) -> Option<()> {
        let (bit, slot) = match key {
            "model" => (0, &mut self.model),
            "messages" => (1, &mut self.messages),
            "prompt" => (2, &mut self.prompt),
            "max_tokens" => (3, &mut self.max_tokens),
            "max_completion_tokens" => (4, &mut self.max_completion_tokens),
            "stream" => (5, &mut self.stream),
            "stream_options" => (6, &mut self.stream_options),
            "n" => (7, &mut self.n),
            "tools" => (8, &mut self.tools),
            "functions" => (9, &mut self.functions),
            "tool_choice" => (10, &mut self.tool_choice),
            "function_call" => (11, &mut self.function_call),
            "prefix_hashes" => (12, &mut self.prefix_hashes),
            "priority" => (13, &mut self.priority),
            "slo" => (14, &mut self.slo),
            "request_id" => (15, &mut self.request_id),
            "temperature" => (16, &mut self.temperature),
            "top_p" => (17, &mut self.top_p),
            "top_k" => (18, &mut self.top_k),
            "min_p" => (19, &mut self.min_p),
            "stop" => (20, &mut self.stop),
            "stop_token_ids" => (21, &mut self.stop_token_ids),
            "seed" => (22, &mut self.seed),
            "ignore_eos" => (23, &mut self.ignore_eos),
            "min_tokens" => (24, &mut self.min_tokens),
            "presence_penalty" => (25, &mut self.presence_penalty),
            "frequency_penalty" => (26, &mut self.frequency_penalty),
            "repetition_penalty" => (27, &mut self.repetition_penalty),
            "logit_bias" => (28, &mut self.logit_bias),
            "skip_special_tokens" => (29, &mut self.skip_special_tokens),
            "user" => (30, &mut self.user),
            "response_format" => (31, &mut self.response_format),
            _ => return Some(()),
        };
        if *seen & (1 << bit) != 0 {
            return None;
        }
        *seen |= 1 << bit;
        *slot = (!v.is_null()).then_some(v);
        Some(())
    }

    /// The [`SAMPLING_FIELDS`], in that order, read without a lookup by name each.
    pub(super) fn sampling(&self) -> [&Option<Val<'a>>; SAMPLING_FIELDS.len()] {
        [
            &self.temperature,
            &self.top_p,
            &self.top_k,
            &self.min_p,
            &self.stop,
            &self.stop_token_ids,
            &self.seed,
            &self.ignore_eos,
            &self.min_tokens,
            &self.presence_penalty,
            &self.frequency_penalty,
            &self.repetition_penalty,
            &self.logit_bias,
            &self.skip_special_tokens,
            &self.user,
            &self.response_format,
        ]
    }
}

/// Field lookup by name, for a body and for the objects nested in it.
pub(super) trait Fields {
    fn get(&self, field: &str) -> Option<&Val<'_>>;
}

impl Fields for Body<'_> {
    fn get(&self, field: &str) -> Option<&Val<'_>> {
        match field {
            "model" => &self.model,
            "messages" => &self.messages,
            "prompt" => &self.prompt,
            "max_tokens" => &self.max_tokens,
            "max_completion_tokens" => &self.max_completion_tokens,
            "stream" => &self.stream,
            "stream_options" => &self.stream_options,
            "n" => &self.n,
            "tools" => &self.tools,
            "functions" => &self.functions,
            "tool_choice" => &self.tool_choice,
            "function_call" => &self.function_call,
            "prefix_hashes" => &self.prefix_hashes,
            "priority" => &self.priority,
            "slo" => &self.slo,
            "request_id" => &self.request_id,
            "temperature" => &self.temperature,
            "top_p" => &self.top_p,
            "top_k" => &self.top_k,
            "min_p" => &self.min_p,
            "stop" => &self.stop,
            "stop_token_ids" => &self.stop_token_ids,
            "seed" => &self.seed,
            "ignore_eos" => &self.ignore_eos,
            "min_tokens" => &self.min_tokens,
            "presence_penalty" => &self.presence_penalty,
            "frequency_penalty" => &self.frequency_penalty,
            "repetition_penalty" => &self.repetition_penalty,
            "logit_bias" => &self.logit_bias,
            "skip_special_tokens" => &self.skip_special_tokens,
            "user" => &self.user,
            "response_format" => &self.response_format,
            _ => &None,
        }
        .as_ref()
    }
}

impl Fields for super::super::json::Obj<'_> {
    fn get(&self, field: &str) -> Option<&Val<'_>> {
        super::super::json::Obj::get(self, field)
    }
}

/// The body read into [`Body`]; 400 naming `body` unless it is one JSON object.
pub(super) fn read_body(body: &[u8]) -> Result<Body<'_>, ApiError> {
    // A struct also reads from a JSON array (field by field in order): only an object
    // is a request.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ApiError::invalid("body", "must be a JSON object"),
                Err(e) => ApiError::invalid("body", format!("not valid JSON: {e}")),
            },
        );
    }
    // The fast reader, and serde for whatever it leaves (with serde's own errors).
    let mut b = Body::default();
    let mut seen = 0u64;
    if super::super::json::read_object(body, |k, v| b.set(&mut seen, &k, v)).is_some() {
        return Ok(b);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))
}
