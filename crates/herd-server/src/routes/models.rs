use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herd_api::v2::ModelMetadata;

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
    }))
}

pub async fn ready(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<StatusCode, HttpError> {
    is_ready(&s, &headers, &model, None)
}

pub async fn ready_version(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    is_ready(&s, &headers, &model, Some(&version))
}

/// 200 when the version is loaded, 400 when it is known but not loaded (as Triton answers).
fn is_ready(
    s: &AppState,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
) -> Result<StatusCode, HttpError> {
    s.auth.principal(headers)?;
    let (entry, v) = s.core.resolve(model, version)?;
    s.auth
        .check_model(headers, model, entry.config.tenant.as_deref())?;
    Ok(if s.core.peek(model, &v).is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    })
}
