//! Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
//! status codes OpenAI clients act on: 400 for a bad request (naming the field), 404 for
//! an unknown model, 429 with `Retry-After` when shed (clients back off and retry), 503
//! with `Retry-After` when no backend is healthy or the daemon drains, 504 when the
//! request's own timeout ran out. A [`ServeError`] from the shared request path becomes
//! one of these here, and only here.

use crate::serve::error::ServeError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The hint sent with a 503: the daemon cannot say when a backend recovers or a drain
/// ends, so clients are told to try again soon (and may go elsewhere).
const UNAVAILABLE_RETRY_MS: u64 = 1000;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: String,
    pub param: Option<String>,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// 400 naming the field at fault (`messages[2].content`, `n`, a header name, ...).
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        let param = param.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_request".into(),
            message: format!("{param}: {}", message.into()),
            param: Some(param),
            retry_after_ms: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
        .to_string()
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> ApiError {
        let message = e.to_string();
        let mut out = ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: "internal_error".into(),
            param: None,
            message,
            retry_after_ms: None,
        };
        match e {
            // The model is the one field with a status of its own: OpenAI answers an
            // unknown one with 404 `model_not_found`.
            ServeError::InvalidArgument { field: "model", .. } => {
                out.status = StatusCode::NOT_FOUND;
                out.kind = "invalid_request_error";
                out.code = "model_not_found".into();
                out.param = Some("model".into());
            }
            ServeError::InvalidArgument { field, reason, .. } => {
                out.status = StatusCode::BAD_REQUEST;
                out.kind = "invalid_request_error";
                out.code = reason.into();
                out.param = Some(field.into());
            }
            ServeError::Shed {
                reason,
                retry_after_ms,
                ..
            } => {
                out.status = StatusCode::TOO_MANY_REQUESTS;
                out.kind = "rate_limit_error";
                out.code = reason.into();
                out.retry_after_ms = Some(retry_after_ms);
            }
            ServeError::Unavailable(_) => {
                out.status = StatusCode::SERVICE_UNAVAILABLE;
                out.kind = "service_unavailable";
                out.code = "unavailable".into();
                out.retry_after_ms = Some(UNAVAILABLE_RETRY_MS);
            }
            ServeError::DeadlineExceeded { .. } | ServeError::DeadlineUnmeetable(_) => {
                out.status = StatusCode::GATEWAY_TIMEOUT;
                out.kind = "timeout";
                out.code = "deadline_exceeded".into();
            }
            ServeError::NotFound(_)
            | ServeError::AlreadyExists(_)
            | ServeError::FailedPrecondition(_) => {}
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response();
        if let Some(ms) = self.retry_after_ms {
            // `Retry-After` takes whole seconds (RFC 9110 §10.2.3), rounded up so a client
            // never comes back early; the OpenAI SDKs read `retry-after-ms` first.
            let h = r.headers_mut();
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(ms.div_ceil(1000).max(1)),
            );
            h.insert("retry-after-ms", HeaderValue::from(ms));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_serve_error_gets_its_status() {
        let e: ApiError = ServeError::invalid("model", "unknown model `x`").into();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::NOT_FOUND, "model_not_found")
        );
        let e: ApiError = ServeError::invalid("max_tokens", "must be at least 1").into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e: ApiError = ServeError::Shed {
            reason: "queue_full",
            message: "full".into(),
            retry_after_ms: 1500,
        }
        .into();
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()["retry-after-ms"], "1500");
        let e: ApiError = ServeError::DeadlineExceeded { elapsed_ms: 5 }.into();
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        let e: ApiError = ServeError::Unavailable("draining".into()).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
