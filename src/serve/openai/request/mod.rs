//! Reading an OpenAI request (JSON body and headers) into the daemon's one request type,
//! `wire::GenerateRequest`, naming the field at fault when something is wrong.
//!
//! Accepted as vLLM does: `messages[].content` as a string or a list of text parts;
//! `max_tokens` or `max_completion_tokens`; `ignore_eos`, `stop`, `temperature`, `seed`
//! and any unknown field are accepted and ignored (the simulated backends always produce
//! `max_tokens` tokens). Refused with 400: `n` other than 1, tools and function calls,
//! content parts other than text (images, audio), and `stream_options` without a stream.
//! dujiang's own fields: `priority` (`"interactive"`/`"batch"`, or vLLM's integer, where
//! above 0 is batch), `slo`
//! (`{ttft_ms, tpot_ms}`), `prefix_hashes`; the same as headers for clients that cannot
//! add body fields (body fields win): `x-dujiang-priority`, `x-dujiang-slo-ttft-ms`,
//! `x-dujiang-slo-tpot-ms`, `x-dujiang-prefix-hashes` (comma-separated), and
//! `x-dujiang-prompt-tokens` to override the length estimated from the text. The request
//! timeout header `x-dujiang-timeout-ms` is enforced like gRPC's `grpc-timeout`.

use super::error::ApiError;
use super::json::Val;
use super::prompt::{self, Shape};
use crate::serve::upstream::PROMPT_IDS;
use crate::wire;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::Duration;

mod fields;
pub use fields::FromHeaders;
use fields::{header_str, header_u64, prefix_hashes, priority, slo};

/// Output tokens when a request names no limit: OpenAI's documented default for
/// `/v1/completions` (`max_tokens` defaults to 16); used for chat too, which upstream
/// bounds only by the context (`estimate`: a simulator must not stream 100k tokens
/// because a field was left out). As vLLM does, the default shrinks to what fits in the
/// model's context after the prompt ([`Parsed::max_tokens_given`]).
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A request read and checked: what to submit, and how to answer.
#[derive(Debug)]
pub struct Parsed {
    pub wire: wire::GenerateRequest,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    pub timeout: Option<Duration>,
    /// Sampling fields a real engine is sent as they came ([`SAMPLING_FIELDS`]).
    pub sampling: Map<String, Value>,
    /// Which of the wire's fields came from headers.
    pub from_headers: FromHeaders,
    /// The client named an output limit. Without one the wire carries
    /// [`DEFAULT_MAX_TOKENS`], which the handler shrinks to the room the model's context
    /// leaves after the prompt: a refusal then names the prompt, never a `max_tokens`
    /// the client did not send.
    pub max_tokens_given: bool,
}

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
struct Body<'a> {
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
    fn set(&mut self, seen: &mut u64, key: &str, v: Val<'a>) -> Option<()> {
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
    fn sampling(&self) -> [&Option<Val<'a>>; SAMPLING_FIELDS.len()] {
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
trait Fields {
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

impl Fields for super::json::Obj<'_> {
    fn get(&self, field: &str) -> Option<&Val<'_>> {
        super::json::Obj::get(self, field)
    }
}

/// The body read into [`Body`]; 400 naming `body` unless it is one JSON object.
fn read_body(body: &[u8]) -> Result<Body<'_>, ApiError> {
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
    if super::json::read_object(body, |k, v| b.set(&mut seen, &k, v)).is_some() {
        return Ok(b);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))
}

pub fn parse(endpoint: Endpoint, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ApiError> {
    // Most clients send none of the headers read here; one pass over the names spares the
    // seven lookups (each parses and hashes its name) for them.
    let none = HeaderMap::new();
    let headers = if headers.keys().any(|k| {
        let k = k.as_str();
        k.starts_with("x-dujiang-") || k == "x-request-id"
    }) {
        headers
    } else {
        &none
    };
    let b = read_body(body)?;
    refuse_unsupported(&b)?;
    let model = match b.get("model") {
        None | Some(Val::Null) => String::new(),
        Some(Val::Str(s)) => s.to_string(),
        Some(_) => return Err(ApiError::invalid("model", "must be a string")),
    };
    let mut wire = wire::GenerateRequest {
        model,
        ..Default::default()
    };
    let shape = match endpoint {
        Endpoint::Chat => {
            wire.messages = messages(&b)?;
            prompt::chat(
                wire.messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str())),
            )
        }
        Endpoint::Completions => completion_prompt(&b, &mut wire)?,
    };
    let given = max_tokens(&b)?;
    wire.max_tokens = given.unwrap_or(DEFAULT_MAX_TOKENS);
    let stream = flag(&b, "stream")?;
    let (include_usage, continuous_usage) = match b.get("stream_options") {
        None | Some(Val::Null) => (false, false),
        Some(Val::Obj(o)) => (
            flag(o, "include_usage").map_err(|e| nest("stream_options", e))?,
            flag(o, "continuous_usage_stats").map_err(|e| nest("stream_options", e))?,
        ),
        Some(_) => return Err(ApiError::invalid("stream_options", "must be an object")),
    };
    // As vLLM and OpenAI refuse it: a client that gets it through here would be refused
    // by the engines it is tested for. An empty object is let through, as vLLM does.
    if !stream && matches!(b.get("stream_options"), Some(Val::Obj(o)) if !o.0.is_empty()) {
        return Err(ApiError::invalid(
            "stream_options",
            "only allowed with \"stream\": true",
        ));
    }
    // The length: the client's override, else the estimate. An override the shared
    // checks would refuse is refused here, naming the header the client sent (they would
    // name the wire's `prompt_tokens`, or the u32 it was clamped to).
    const PROMPT_TOKENS: &str = "x-dujiang-prompt-tokens";
    let length = header_u64(headers, PROMPT_TOKENS)?;
    let tokens = match length {
        Some(0) => return Err(ApiError::invalid(PROMPT_TOKENS, "must be at least 1")),
        Some(n) if n > u64::from(u32::MAX) => {
            return Err(ApiError::invalid(
                PROMPT_TOKENS,
                format!("{n} tokens is longer than any model's context"),
            ))
        }
        Some(n) => n,
        None => shape.tokens,
    };
    // Beyond u32 is beyond any context: the shared check refuses it as too long.
    wire.prompt_tokens = Some(u32::try_from(tokens).unwrap_or(u32::MAX));
    wire.prefix_hashes = prefix_hashes(&b, headers, shape, tokens)?;
    wire.priority = priority(&b, headers)? as i32;
    wire.slo = slo(&b, headers)?;
    wire.request_id = match b.get("request_id") {
        Some(Val::Str(s)) => s.to_string(),
        Some(Val::Null) | None => header_str(headers, "x-request-id")?
            .unwrap_or_default()
            .to_string(),
        Some(_) => return Err(ApiError::invalid("request_id", "must be a string")),
    };
    // Only a header the body did not override counts (and most requests have none).
    let from_headers = FromHeaders {
        request_id: b.get("request_id").is_none()
            && !headers.is_empty()
            && headers.contains_key("x-request-id"),
        prefix_hashes: b.get("prefix_hashes").is_none()
            && !headers.is_empty()
            && headers.contains_key("x-dujiang-prefix-hashes"),
        prompt_tokens: length.is_some(),
        chat: endpoint == Endpoint::Chat,
    };
    let timeout = match header_u64(headers, "x-dujiang-timeout-ms")? {
        Some(0) => {
            return Err(ApiError::invalid(
                "x-dujiang-timeout-ms",
                "must be at least 1",
            ))
        }
        t => t.map(Duration::from_millis),
    };
    // Most requests carry none: then nothing is built.
    let mut sampling = Map::new();
    for (f, v) in SAMPLING_FIELDS.iter().zip(b.sampling()) {
        if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
            sampling.insert(f.to_string(), v.to_value());
        }
    }
    // A prompt of token ids has no text for the daemon to carry: a real engine is sent
    // the ids themselves (the daemon's own prompt is a placeholder).
    if let Some(ids) = token_ids(&b) {
        sampling.insert(PROMPT_IDS.into(), ids.to_value());
    }
    Ok(Parsed {
        wire,
        stream,
        include_usage,
        continuous_usage,
        timeout,
        sampling,
        from_headers,
        max_tokens_given: given.is_some(),
    })
}

/// `n > 1`, tools, function calls: refused rather than half-served.
fn refuse_unsupported(b: &Body) -> Result<(), ApiError> {
    match b.get("n") {
        None | Some(Val::Null) => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(_) => return Err(ApiError::invalid("n", "only n = 1 is supported")),
    }
    for field in ["tools", "functions"] {
        match b.get(field) {
            None | Some(Val::Null) => {}
            Some(Val::Arr(a)) if a.is_empty() => {}
            Some(_) => return Err(ApiError::invalid(field, "tool calling is not supported")),
        }
    }
    for field in ["tool_choice", "function_call"] {
        match b.get(field) {
            None | Some(Val::Null) => {}
            Some(Val::Str(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(ApiError::invalid(field, "tool calling is not supported")),
        }
    }
    Ok(())
}

/// Prefixes a nested error's field with its parent's name.
fn nest(parent: &str, mut e: ApiError) -> ApiError {
    if let Some(p) = e.param.take() {
        let full = format!("{parent}.{p}");
        e.message = format!("{full}{}", &e.message[p.len()..]);
        e.param = Some(full);
    }
    e
}

fn flag(b: &impl Fields, field: &str) -> Result<bool, ApiError> {
    match b.get(field) {
        None | Some(Val::Null) => Ok(false),
        Some(Val::Bool(v)) => Ok(*v),
        Some(_) => Err(ApiError::invalid(field, "must be true or false")),
    }
}

const ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

/// The chat's (role, content) pairs, text parts joined.
fn messages(b: &Body) -> Result<Vec<wire::ChatMessage>, ApiError> {
    let Some(Val::Arr(list)) = b.get("messages") else {
        return Err(ApiError::invalid("messages", "must be a non-empty array"));
    };
    if list.is_empty() {
        return Err(ApiError::invalid("messages", "must be a non-empty array"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let Val::Obj(m) = m else {
            return Err(ApiError::invalid(
                format!("messages[{i}]"),
                "must be an object",
            ));
        };
        let role = match m.get("role") {
            Some(Val::Str(r)) if ROLES.contains(&r.as_ref()) => r.to_string(),
            Some(Val::Str(r)) if r == "tool" || r == "function" => {
                return Err(ApiError::invalid(
                    at("role"),
                    "tool calling is not supported",
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    at("role"),
                    "must be one of system, developer, user, assistant",
                ))
            }
        };
        if m.get("tool_calls").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(
                at("tool_calls"),
                "tool calling is not supported",
            ));
        }
        let content = match m.get("content") {
            Some(Val::Str(s)) => s.to_string(),
            Some(Val::Arr(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    // A bare string in the list is not a part missing its `type`.
                    if !matches!(p, Val::Obj(_)) {
                        return Err(ApiError::invalid(
                            at(&format!("content[{j}]")),
                            "must be an object {\"type\": \"text\", \"text\": ...}",
                        ));
                    }
                    let kind = p.get("type").and_then(Val::as_str);
                    match (kind, p.get("text")) {
                        (Some("text"), Some(Val::Str(t))) => text.push_str(t),
                        (Some("text"), _) => {
                            return Err(ApiError::invalid(
                                at(&format!("content[{j}].text")),
                                "must be a string",
                            ))
                        }
                        (Some(other), _) => {
                            return Err(ApiError::invalid(
                                at(&format!("content[{j}].type")),
                                format!("`{other}` parts are not supported; only text"),
                            ))
                        }
                        (None, _) => {
                            return Err(ApiError::invalid(
                                at(&format!("content[{j}].type")),
                                "is missing",
                            ))
                        }
                    }
                }
                text
            }
            _ => {
                return Err(ApiError::invalid(
                    at("content"),
                    "must be a string or a list of text parts",
                ))
            }
        };
        if content.is_empty() {
            return Err(ApiError::invalid(at("content"), "is empty"));
        }
        out.push(wire::ChatMessage { role, content });
    }
    Ok(out)
}

/// A completion's prompt when it is token ids (`[1, 2]` or `[[1, 2]]`), as sent.
fn token_ids<'b>(b: &'b Body) -> Option<&'b Val<'b>> {
    let p = match b.get("prompt")? {
        Val::Arr(a) if a.len() == 1 && a[0].is_array() => &a[0],
        p => p,
    };
    matches!(p, Val::Arr(ids) if ids.first().is_some_and(Val::is_number)).then_some(p)
}

/// `/v1/completions`' `prompt`: a string, token ids, or a one-element list of either.
fn completion_prompt(b: &Body, wire: &mut wire::GenerateRequest) -> Result<Shape, ApiError> {
    let mut p = b
        .get("prompt")
        .ok_or_else(|| ApiError::invalid("prompt", "is required"))?;
    if let Val::Arr(a) = p {
        if a.len() == 1 && (a[0].is_string() || a[0].is_array()) {
            p = &a[0];
        } else if a.first().is_some_and(|v| v.is_string() || v.is_array()) {
            // A list of prompts; one that starts with a number is token ids, and a
            // string among them is a bad id (below), not a second prompt.
            return Err(ApiError::invalid(
                "prompt",
                "one prompt per request; lists of prompts are not supported",
            ));
        }
    }
    match p {
        Val::Str(s) if !s.is_empty() => {
            wire.prompt = s.to_string();
            Ok(prompt::text(s))
        }
        Val::Arr(ids) if !ids.is_empty() => {
            let ids: Vec<u64> = ids
                .iter()
                .map(Val::as_u64)
                .collect::<Option<_>>()
                .ok_or_else(|| ApiError::invalid("prompt", "token ids must be integers ≥ 0"))?;
            // The daemon needs some text; the length is the ids' count.
            wire.prompt = " ".into();
            Ok(prompt::token_ids(&ids))
        }
        _ => Err(ApiError::invalid(
            "prompt",
            "must be a non-empty string or a non-empty list of token ids",
        )),
    }
}

/// The client's output limit, if it named one.
fn max_tokens(b: &Body) -> Result<Option<u32>, ApiError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match b.get(field) {
            None | Some(Val::Null) => {}
            Some(v) => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| ApiError::invalid(field, "must be a non-negative integer"))?;
                // A count no context holds: said so, not that it is not an integer.
                return u32::try_from(n).map(Some).map_err(|_| {
                    ApiError::invalid(
                        field,
                        format!("{n} tokens is longer than any model's context"),
                    )
                });
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
