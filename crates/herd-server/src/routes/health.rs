use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herd_api::v2::ServerMetadata;
use herd_api::ErrorCode;
use serde_json::{json, Value};

use crate::error::HttpError;
use crate::AppState;

/// `{"live": true}` while the process answers.
pub async fn live(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let live = s.health.is_live();
    (status(live), Json(json!({ "live": live })))
}

/// `{"ready": true}` once the pinned models are preloaded and until shutdown begins; else 503
/// with `{"ready": false}` (other models load on demand and do not hold readiness back).
pub async fn ready(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let ready = s.health.is_ready();
    (status(ready), Json(json!({ "ready": ready })))
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
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

pub async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/v1/") {
        return super::openai::not_found().await.into_response();
    }
    HttpError::new(
        ErrorCode::NotFound,
        "no such endpoint; see the KServe v2 protocol: /v2/models/{model}/infer, /v2/repository/index, /metrics",
    )
    .into_response()
}
