//! The one place where errors become HTTP answers: status from the code table in `herd-api`,
//! a `{"error": "...", "code": "..."}` body, and `Retry-After` on overload.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_api::{ApiError, ErrorCode, HasErrorCode};

/// An error on its way to the client.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl HttpError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> HttpError {
        HttpError(ApiError::new(code, msg))
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }
}

impl<E: HasErrorCode> From<E> for HttpError {
    fn from(e: E) -> HttpError {
        let code = e.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "internal error");
        }
        HttpError(ApiError::new(code, e.to_string()))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let code = self.0.code;
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(self.0)).into_response();
        if let Some(secs) = code.retry_after_secs() {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}
