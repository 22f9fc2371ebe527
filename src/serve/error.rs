//! Why a request or an admin call failed, classified once where it happens and turned
//! into a gRPC status only at the service boundary (`From<ServeError> for Status`).

use tonic::{Code, Status};

/// Metadata key carrying the retry hint of a shed request, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// The request itself is wrong; `field` names the offending field. → INVALID_ARGUMENT
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
        /// The refusal counter's label (`dujiang_requests_shed_total{reason}`).
        reason: &'static str,
    },
    /// Admission refused it; retrying later may work. → RESOURCE_EXHAUSTED + retry hint
    #[error("shed ({reason}): {message}")]
    Shed {
        reason: &'static str,
        message: String,
        retry_after_ms: u64,
    },
    /// No healthy backend can take it, its backend failed, or the daemon is shutting
    /// down. → UNAVAILABLE
    #[error("{0}")]
    Unavailable(String),
    /// The client's deadline ran out. → DEADLINE_EXCEEDED
    #[error("deadline exceeded after {elapsed_ms} ms")]
    DeadlineExceeded { elapsed_ms: u64 },
    /// Admission predicted the first token after the client's deadline and refused the
    /// request up front. → DEADLINE_EXCEEDED
    #[error("{0}")]
    DeadlineUnmeetable(String),
    /// An admin call named something that does not exist. → NOT_FOUND
    #[error("{0}")]
    NotFound(String),
    /// An admin call would create something that exists. → ALREADY_EXISTS
    #[error("{0}")]
    AlreadyExists(String),
    /// An admin call does not apply in the current state. → FAILED_PRECONDITION
    #[error("{0}")]
    FailedPrecondition(String),
}

impl ServeError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> ServeError {
        ServeError::InvalidArgument {
            field,
            message: message.into(),
            reason: "invalid_request",
        }
    }

    /// An invalid request refused by the shared check, counted under its own reason.
    pub fn invalid_because(
        reason: &'static str,
        field: &'static str,
        message: impl Into<String>,
    ) -> ServeError {
        ServeError::InvalidArgument {
            field,
            message: message.into(),
            reason,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ServeError::InvalidArgument { .. } => Code::InvalidArgument,
            ServeError::Shed { .. } => Code::ResourceExhausted,
            ServeError::Unavailable(_) => Code::Unavailable,
            ServeError::DeadlineExceeded { .. } | ServeError::DeadlineUnmeetable(_) => {
                Code::DeadlineExceeded
            }
            ServeError::NotFound(_) => Code::NotFound,
            ServeError::AlreadyExists(_) => Code::AlreadyExists,
            ServeError::FailedPrecondition(_) => Code::FailedPrecondition,
        }
    }
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if let ServeError::Shed { retry_after_ms, .. } = e {
            status.metadata_mut().insert(
                RETRY_AFTER_MS,
                retry_after_ms
                    .to_string()
                    .parse()
                    .expect("digits are valid metadata"),
            );
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_carries_a_retry_hint() {
        let s: Status = ServeError::Shed {
            reason: "queue_full",
            message: "backend queue is full".into(),
            retry_after_ms: 250,
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let s: Status = ServeError::invalid("max_tokens", "must be at least 1").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "max_tokens: must be at least 1");
    }
}
