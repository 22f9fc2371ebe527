//! dujiang's own request fields, read from the body or, for clients that cannot add body
//! fields, from headers (body fields win): `prefix_hashes` / `x-dujiang-prefix-hashes`,
//! `priority` / `x-dujiang-priority`, `slo` / `x-dujiang-slo-ttft-ms` and
//! `x-dujiang-slo-tpot-ms`, and the header readers the rest of the request uses. Apart
//! from [`super`] (the OpenAI fields) because these are the router's, not OpenAI's.

use super::super::error::ApiError;
use super::super::json::Val;
use super::super::prompt::Shape;
use super::{Body, Fields};
use crate::request::PREFIX_BLOCK_TOKENS;
use crate::wire;
use axum::http::HeaderMap;

/// The wire fields a request's headers gave (rather than its body or the text), so that
/// the shared checks' refusals, which name the wire's field (`request_id`,
/// `prefix_hashes`, `prompt`), name the header the client actually sent instead; and
/// whether the prompt came as a chat's `messages`, the field a chat client sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct FromHeaders {
    pub(super) request_id: bool,
    pub(super) prefix_hashes: bool,
    pub(super) prompt_tokens: bool,
    pub(super) chat: bool,
}

impl FromHeaders {
    /// `e` with its field renamed to the header that gave it, if one did.
    pub fn rename(self, mut e: ApiError) -> ApiError {
        let header = match e.param.as_deref() {
            Some("request_id") if self.request_id => "x-request-id",
            Some("prefix_hashes") if self.prefix_hashes => "x-dujiang-prefix-hashes",
            Some("prompt" | "prompt_tokens") if self.prompt_tokens => "x-dujiang-prompt-tokens",
            Some("prompt") if self.chat => "messages",
            _ => return e,
        };
        if let Some(p) = e.param.replace(header.into()) {
            if let Some(rest) = e.message.strip_prefix(p.as_str()) {
                e.message = format!("{header}{rest}");
            }
        }
        e
    }
}

pub(super) fn prefix_hashes(
    b: &Body,
    headers: &HeaderMap,
    shape: Shape,
    tokens: u64,
) -> Result<Vec<u64>, ApiError> {
    match b.get("prefix_hashes") {
        None | Some(Val::Null) => {}
        Some(Val::Arr(a)) => {
            return a
                .iter()
                .map(Val::as_u64)
                .collect::<Option<_>>()
                .ok_or_else(|| ApiError::invalid("prefix_hashes", "must be integers ≥ 0"));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "prefix_hashes",
                "must be a list of integers",
            ))
        }
    }
    if let Some(v) = header_str(headers, "x-dujiang-prefix-hashes")? {
        return v
            .split(',')
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                ApiError::invalid(
                    "x-dujiang-prefix-hashes",
                    "must be comma-separated integers",
                )
            });
    }
    // Derived from the text; an overridden length keeps the blocks it covers.
    let mut hashes = shape.prefix_hashes;
    hashes.truncate(tokens.div_ceil(u64::from(PREFIX_BLOCK_TOKENS)) as usize);
    Ok(hashes)
}

pub(super) fn priority(b: &Body, headers: &HeaderMap) -> Result<wire::Priority, ApiError> {
    let named = |s: &str, field: &str| match s {
        "interactive" => Ok(wire::Priority::Interactive),
        "batch" => Ok(wire::Priority::Batch),
        _ => Err(ApiError::invalid(field, "must be interactive or batch")),
    };
    match b.get("priority") {
        None | Some(Val::Null) => {}
        Some(Val::Str(s)) => return named(s, "priority"),
        // vLLM's convention: lower values are served first, 0 the default.
        Some(Val::Num(n)) if n.as_i64().is_some() => {
            return Ok(if n.as_i64() > Some(0) {
                wire::Priority::Batch
            } else {
                wire::Priority::Interactive
            });
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "priority",
                "must be \"interactive\", \"batch\" or an integer",
            ))
        }
    }
    match header_str(headers, "x-dujiang-priority")? {
        Some(s) => named(s, "x-dujiang-priority"),
        None => Ok(wire::Priority::Unspecified),
    }
}

pub(super) fn slo(b: &Body, headers: &HeaderMap) -> Result<Option<wire::Slo>, ApiError> {
    let ms =
        |v: Option<&Val>, field: &str| match v {
            None | Some(Val::Null) => Ok(None),
            Some(v) => v.as_u64().filter(|&n| n > 0).map(Some).ok_or_else(|| {
                ApiError::invalid(field, "must be a positive integer (milliseconds)")
            }),
        };
    let (mut ttft, mut tpot) = match b.get("slo") {
        None | Some(Val::Null) => (None, None),
        Some(Val::Obj(o)) => (
            ms(o.get("ttft_ms"), "slo.ttft_ms")?,
            ms(o.get("tpot_ms"), "slo.tpot_ms")?,
        ),
        Some(_) => {
            return Err(ApiError::invalid(
                "slo",
                "must be {\"ttft_ms\", \"tpot_ms\"}",
            ))
        }
    };
    if ttft.is_none() {
        ttft = positive(
            header_u64(headers, "x-dujiang-slo-ttft-ms")?,
            "x-dujiang-slo-ttft-ms",
        )?;
    }
    if tpot.is_none() {
        tpot = positive(
            header_u64(headers, "x-dujiang-slo-tpot-ms")?,
            "x-dujiang-slo-tpot-ms",
        )?;
    }
    // 0 means "the default objective" on the wire.
    Ok((ttft.is_some() || tpot.is_some()).then(|| wire::Slo {
        ttft_ms: ttft.unwrap_or(0),
        tpot_ms: tpot.unwrap_or(0),
    }))
}

fn positive(v: Option<u64>, field: &str) -> Result<Option<u64>, ApiError> {
    match v {
        Some(0) => Err(ApiError::invalid(field, "must be at least 1")),
        v => Ok(v),
    }
}

pub(super) fn header_str<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, ApiError> {
    // `get` parses the name before looking: not worth it in an empty map.
    if headers.is_empty() {
        return Ok(None);
    }
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::invalid(name, "must be visible ASCII"))
        })
        .transpose()
}

pub(super) fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    header_str(headers, name)?
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| ApiError::invalid(name, "must be a non-negative integer"))
        })
        .transpose()
}
