//! The one table of error codes. Every error that reaches a client carries one of these codes;
//! the HTTP layer maps a code to its status here and nowhere else.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Adding a variant forces a review of [`ErrorCode::http_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, wrong shape, wrong datatype, missing input.
    InvalidInput,
    /// The named model (or version) is not in the repository.
    ModelNotFound,
    /// The model exists but is not ready (unloaded, or its last load failed and it is not retried here).
    ModelNotReady,
    /// The model failed to load: corrupt file, unsupported operator, missing runtime.
    ModelLoadFailed,
    /// The model cannot fit in the memory budget even after evicting everything evictable.
    ModelTooLarge,
    /// The model's queue is full: retry later.
    Overloaded,
    /// The server is shutting down or cannot take work now.
    Unavailable,
    /// The request waited or ran longer than the configured timeout.
    Timeout,
    /// The client did not send its request body within the body read timeout.
    RequestTimeout,
    /// No or invalid credentials.
    Unauthorized,
    /// Valid credentials without access to this resource.
    Forbidden,
    /// The request body is larger than the limit.
    PayloadTooLarge,
    /// The request exceeds a request limit (rows, texts, characters or tokens per request); the
    /// message names the limit and its value.
    LimitExceeded,
    /// A resource that is not a model was not found (job, release, alias, version...).
    NotFound,
    /// The request conflicts with the current state (already exists with other content, ...).
    Conflict,
    /// An unexpected failure inside herd. Logged with detail on the server.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this code. The only place where codes meet statuses.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::ModelNotFound => 404,
            ErrorCode::NotFound => 404,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::LimitExceeded => 413,
            ErrorCode::Overloaded => 429,
            ErrorCode::ModelLoadFailed => 500,
            ErrorCode::Internal => 500,
            ErrorCode::ModelNotReady => 503,
            ErrorCode::Unavailable => 503,
            ErrorCode::ModelTooLarge => 507,
            ErrorCode::Timeout => 504,
        }
    }

    /// Whether a client should retry later; the server adds `Retry-After` to such answers.
    pub fn retry_after_secs(self) -> Option<u32> {
        match self {
            ErrorCode::Overloaded | ErrorCode::Unavailable => Some(1),
            ErrorCode::InvalidInput
            | ErrorCode::ModelNotFound
            | ErrorCode::ModelNotReady
            | ErrorCode::ModelLoadFailed
            | ErrorCode::ModelTooLarge
            | ErrorCode::Timeout
            | ErrorCode::RequestTimeout
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::PayloadTooLarge
            | ErrorCode::LimitExceeded
            | ErrorCode::NotFound
            | ErrorCode::Conflict
            | ErrorCode::Internal => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::ModelNotReady => "model_not_ready",
            ErrorCode::ModelLoadFailed => "model_load_failed",
            ErrorCode::ModelTooLarge => "model_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Implemented by every library error enum so the HTTP layer can map it without knowing the crate.
pub trait HasErrorCode: std::error::Error {
    fn code(&self) -> ErrorCode;
}

/// The JSON error body: `{"error": "...", "code": "..."}`. KServe v2 clients read `error`.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    pub error: String,
    pub code: ErrorCode,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            error: message.into(),
            code,
        }
    }
}

impl HasErrorCode for ApiError {
    fn code(&self) -> ErrorCode {
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_are_4xx_or_5xx_overload() {
        for code in [ErrorCode::Overloaded, ErrorCode::Unavailable] {
            assert!(code.retry_after_secs().is_some());
            assert!(matches!(code.http_status(), 429 | 503));
        }
    }

    #[test]
    fn error_body_has_error_field() {
        let e = ApiError::new(ErrorCode::ModelNotFound, "model 'x' not found");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["error"], "model 'x' not found");
        assert_eq!(v["code"], "model_not_found");
    }
}
