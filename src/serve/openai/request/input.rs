//! The prompt as the client sent it: a chat's `messages` (roles checked, text parts
//! joined, anything but text refused naming the part) and a completion's `prompt` (text,
//! token ids, or a one-element list of either), each with the [`Shape`] its length and
//! prefix hashes are derived from. Apart from [`super`] because these are the fields with
//! the most ways to be wrong.

use super::super::error::ApiError;
use super::super::json::Val;
use super::super::prompt::{self, Shape};
use super::body::{Body, Fields};
use crate::wire;

const ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

/// The chat's (role, content) pairs, text parts joined.
pub(super) fn messages(b: &Body) -> Result<Vec<wire::ChatMessage>, ApiError> {
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
pub(super) fn token_ids<'b>(b: &'b Body) -> Option<&'b Val<'b>> {
    let p = match b.get("prompt")? {
        Val::Arr(a) if a.len() == 1 && a[0].is_array() => &a[0],
        p => p,
    };
    matches!(p, Val::Arr(ids) if ids.first().is_some_and(Val::is_number)).then_some(p)
}

/// `/v1/completions`' `prompt`: a string, token ids, or a one-element list of either.
pub(super) fn completion_prompt(
    b: &Body,
    wire: &mut wire::GenerateRequest,
) -> Result<Shape, ApiError> {
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
