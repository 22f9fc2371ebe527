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
    /// Which fields were given (bit `i`: [`Body::set`]'s field `i`; all of them when serde
    /// read the body), so [`Body::dispose`] visits only those.
    #[serde(skip)]
    held: u64,
}

impl<'a> Body<'a> {
    /// Takes one top-level member as serde's reading of the struct does: a known field
    /// once (`None` for a second time, which serde refuses), `null` as absent, any other
    /// field ignored.
    pub(super) fn set(&mut self, key: &str, v: Val<'a>) -> Option<()> {
        let bit = match key {
            "model" => 0,
            "messages" => 1,
            "prompt" => 2,
            "max_tokens" => 3,
            "max_completion_tokens" => 4,
            "stream" => 5,
            "stream_options" => 6,
            "n" => 7,
            "tools" => 8,
            "functions" => 9,
            "tool_choice" => 10,
            "function_call" => 11,
            "prefix_hashes" => 12,
            "priority" => 13,
            "slo" => 14,
            "request_id" => 15,
            "temperature" => 16,
            "top_p" => 17,
            "top_k" => 18,
            "min_p" => 19,
            "stop" => 20,
            "stop_token_ids" => 21,
            "seed" => 22,
            "ignore_eos" => 23,
            "min_tokens" => 24,
            "presence_penalty" => 25,
            "frequency_penalty" => 26,
            "repetition_penalty" => 27,
            "logit_bias" => 28,
            "skip_special_tokens" => 29,
            "user" => 30,
            "response_format" => 31,
            _ => return Some(()),
        };
        if self.held & (1 << bit) != 0 {
            return None;
        }
        self.held |= 1 << bit;
        // The slot is empty (its bit was clear): nothing to drop.
        std::mem::forget(std::mem::replace(
            self.slot(bit),
            (!v.is_null()).then_some(v),
        ));
        Some(())
    }

    /// The field of [`Body::set`]'s bit `bit`.
    fn slot(&mut self, bit: u32) -> &mut Option<Val<'a>> {
        match bit {
            0 => &mut self.model,
            1 => &mut self.messages,
            2 => &mut self.prompt,
            3 => &mut self.max_tokens,
            4 => &mut self.max_completion_tokens,
            5 => &mut self.stream,
            6 => &mut self.stream_options,
            7 => &mut self.n,
            8 => &mut self.tools,
            9 => &mut self.functions,
            10 => &mut self.tool_choice,
            11 => &mut self.function_call,
            12 => &mut self.prefix_hashes,
            13 => &mut self.priority,
            14 => &mut self.slo,
            15 => &mut self.request_id,
            16 => &mut self.temperature,
            17 => &mut self.top_p,
            18 => &mut self.top_k,
            19 => &mut self.min_p,
            20 => &mut self.stop,
            21 => &mut self.stop_token_ids,
            22 => &mut self.seed,
            23 => &mut self.ignore_eos,
            24 => &mut self.min_tokens,
            25 => &mut self.presence_penalty,
            26 => &mut self.frequency_penalty,
            27 => &mut self.repetition_penalty,
            28 => &mut self.logit_bias,
            29 => &mut self.skip_special_tokens,
            30 => &mut self.user,
            31 => &mut self.response_format,
            _ => unreachable!("a body has 32 fields"),
        }
    }

    /// Drops the body visiting only the fields that were set: dropping it whole visits
    /// all 32, each a call into the drop of a nested value, for the handful a request
    /// has.
    pub(super) fn dispose(mut self) {
        let mut held = self.held;
        while held != 0 {
            let bit = held.trailing_zeros();
            drop(self.slot(bit).take());
            held &= held - 1;
        }
        // Every field is empty now.
        std::mem::forget(self);
    }

    /// Whether any of the [`SAMPLING_FIELDS`] was given (most requests give none).
    pub(super) fn any_sampling(&self) -> bool {
        self.held >> 16 != 0
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
    if super::super::json::read_object(body, |k, v| b.set(&k, v)).is_some() {
        return Ok(b);
    }
    let mut b: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))?;
    b.held = u64::MAX >> (64 - 32);
    Ok(b)
}
