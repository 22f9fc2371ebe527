//! Turning a wire request into what the core needs: model, prompt length (from the text or
//! the client's count), priority and SLO. The bounds (context, output budget, prefix
//! hashes, request id) are the core's [`check_request`], the same check replay runs.

use super::{Daemon, Validated};
use crate::request::{check_request, Priority, RequestLimits, Slo, NANOS_PER_MS};
use crate::serve::error::ServeError;
use crate::wire;

impl Daemon {
    pub(super) fn validate(&self, req: wire::GenerateRequest) -> Result<Validated, ServeError> {
        let model = if req.model.is_empty() {
            self.default_model.clone()
        } else {
            req.model
        };
        let Some(spec) = self.catalogue.model(&model) else {
            return Err(ServeError::invalid(
                "model",
                format!("unknown model `{model}`"),
            ));
        };
        // The estimate is only needed when the client gave no count (the OpenAI front end
        // always gives its own), but the text is checked either way.
        let estimate = req.prompt_tokens.is_none();
        let text_tokens = if !req.messages.is_empty() {
            let mut n = 0u64;
            for (i, m) in req.messages.iter().enumerate() {
                if m.content.is_empty() {
                    return Err(ServeError::invalid(
                        "messages",
                        format!("message {i} has empty content"),
                    ));
                }
                // A chat template adds a few tokens per message (role markers).
                if estimate {
                    n += crate::tokens::estimate_chat_tokens([m.content.as_str()]);
                }
            }
            n
        } else if !req.prompt.is_empty() {
            if estimate {
                estimate_tokens(&req.prompt)
            } else {
                0
            }
        } else {
            return Err(ServeError::invalid(
                "messages",
                "either messages or prompt must be non-empty",
            ));
        };
        // A client's count of 0 is refused by the shared check, under its own reason.
        let prompt_tokens = req.prompt_tokens.map_or(text_tokens, u64::from);
        let prompt_tokens = check_request(
            prompt_tokens,
            req.max_tokens,
            &req.prefix_hashes,
            &req.request_id,
            RequestLimits {
                model: &model,
                max_context: spec.max_context,
            },
        )
        // Counted (by `submit`) under the same reasons replay reports, so the two can be
        // compared.
        .map_err(|e| ServeError::invalid_because(e.reason.as_str(), e.field, e.message))?;
        let priority = match wire::Priority::try_from(req.priority) {
            Ok(wire::Priority::Batch) => Priority::Batch,
            Ok(_) => Priority::Interactive,
            Err(_) => {
                return Err(ServeError::invalid(
                    "priority",
                    format!("unknown priority {}", req.priority),
                ))
            }
        };
        let slo = req.slo.map(|s| {
            let d = Slo::default();
            Slo {
                ttft_ns: if s.ttft_ms == 0 {
                    d.ttft_ns
                } else {
                    s.ttft_ms.saturating_mul(NANOS_PER_MS)
                },
                tpot_ns: if s.tpot_ms == 0 {
                    d.tpot_ns
                } else {
                    s.tpot_ms.saturating_mul(NANOS_PER_MS)
                },
            }
        });
        Ok(Validated {
            client_id: req.request_id,
            model,
            prompt_tokens,
            max_tokens: req.max_tokens,
            priority,
            slo,
            prefix_hashes: req.prefix_hashes,
            session: req.session_id,
            messages: req.messages,
            prompt: req.prompt,
        })
    }
}

/// Prompt length from text, by script ([`crate::tokens`]).
pub use crate::tokens::estimate_tokens;
