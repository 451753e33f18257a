use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herd_api::v2::ModelMetadata;
use herd_api::ErrorCode;
use herd_core::ModelState;
use serde_json::{json, Value};

use crate::auth::bearer;
use crate::error::HttpError;
use crate::AppState;

pub async fn metadata(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, HttpError> {
    describe(&s, &headers, &model, None).await
}

pub async fn metadata_version(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, HttpError> {
    describe(&s, &headers, &model, Some(&version)).await
}

async fn describe(
    s: &AppState,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
) -> Result<Json<ModelMetadata>, HttpError> {
    let caller = s.service.identify(bearer(headers))?;
    Ok(Json(s.service.metadata(&caller, model, version).await?))
}

pub async fn ready(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    is_ready(&s, &headers, &model, None)
}

pub async fn ready_version(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    is_ready(&s, &headers, &model, Some(&version))
}

/// 200 `{"name", "ready": true, "state"}` when herd can serve the version: loaded, loading, or
/// unloaded and loaded on its first request. 503 `{"ready": false}` with the reason when its
/// last load failed (KServe and Triton clients read any non-200 as not ready). 404 when unknown.
fn is_ready(
    s: &AppState,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    let caller = s.service.identify(bearer(headers))?;
    let r = s.service.model_ready(&caller, model, version)?;
    let state = r.state.as_str();
    Ok(match &r.state {
        ModelState::Failed(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "name": r.model, "version": r.version, "ready": false, "state": state,
                "error": reason, "code": ErrorCode::ModelNotReady,
            })),
        ),
        ModelState::Ready | ModelState::Loading | ModelState::Unloaded => (
            StatusCode::OK,
            Json(json!({"name": r.model, "version": r.version, "ready": true, "state": state})),
        ),
    })
}

/// Triton's model configuration JSON.
pub async fn config(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, HttpError> {
    let caller = s.service.identify(bearer(&headers))?;
    Ok(Json(s.service.model_config(&caller, &model, None).await?))
}

pub async fn config_version(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, HttpError> {
    let caller = s.service.identify(bearer(&headers))?;
    Ok(Json(
        s.service
            .model_config(&caller, &model, Some(&version))
            .await?,
    ))
}
