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
//!
//! Here: [`parse`], which checks what the fields say and builds the wire request. How the
//! fields are found in the body is [`body`]'s, the prompt (`messages` or `prompt`) is
//! [`input`]'s, and dujiang's own fields and the headers are [`fields`]'.

use super::error::ApiError;
use super::json::Val;
use super::prompt;
use crate::serve::upstream::PROMPT_IDS;
use crate::wire;
use axum::http::HeaderMap;
use serde_json::{Map, Value};
use std::time::Duration;

mod body;
mod fields;
mod input;
pub use body::SAMPLING_FIELDS;
use body::{read_body, Body, Fields};
pub use fields::FromHeaders;
use fields::{header_str, header_u64, prefix_hashes, priority, slo};
use input::{completion_prompt, messages, token_ids};

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
