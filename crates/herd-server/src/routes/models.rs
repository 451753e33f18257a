use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herd_api::v2::ModelMetadata;
use herd_api::ErrorCode;
use herd_core::ModelState;
use serde_json::{json, Value};

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
    s.auth.principal(headers)?;
    let (entry, v) = s.core.resolve(model, version)?;
    s.auth
        .check_model(headers, model, entry.config.tenant.as_deref())?;
    let sig = s.core.signature(model, &v).await?;
    Ok(Json(ModelMetadata {
        name: model.to_string(),
        versions: entry.versions.clone(),
        platform: s.core.platform().to_string(),
        inputs: sig.inputs,
        outputs: sig.outputs,
        state: Some(s.core.state_of(model, &v).as_str().to_string()),
    }))
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
    s.auth.principal(headers)?;
    let (entry, v) = s.core.resolve(model, version)?;
    s.auth
        .check_model(headers, model, entry.config.tenant.as_deref())?;
    let state = s.core.state_of(model, &v);
    Ok(match &state {
        ModelState::Failed(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "name": model, "version": v, "ready": false, "state": state.as_str(),
                "error": reason, "code": ErrorCode::ModelNotReady,
            })),
        ),
        ModelState::Ready | ModelState::Loading | ModelState::Unloaded => (
            StatusCode::OK,
            Json(json!({"name": model, "version": v, "ready": true, "state": state.as_str()})),
        ),
    })
}
