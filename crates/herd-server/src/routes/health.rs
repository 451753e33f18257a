use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herd_api::v2::ServerMetadata;
use herd_api::ErrorCode;

use crate::error::HttpError;
use crate::AppState;

pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// Ready once the server accepts requests (models load on demand).
pub async fn ready(State(_s): State<AppState>) -> StatusCode {
    StatusCode::OK
}

pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "herd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec![
            "model_repository".into(),
            "binary_tensor_data".into(),
            "statistics".into(),
        ],
    })
}

pub async fn not_found() -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        "no such endpoint; see the KServe v2 protocol: /v2/models/{model}/infer, /v2/repository/index, /metrics",
    )
}
