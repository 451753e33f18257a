//! Triton's statistics extension: `GET /v2/models/stats`, `/v2/models/{m}/stats` and
//! `/v2/models/{m}/versions/{v}/stats` answer `{"model_stats": [...]}`.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::bearer;
use crate::error::HttpError;
use crate::AppState;

async fn answer(
    s: &AppState,
    headers: &HeaderMap,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Json<Value>, HttpError> {
    let caller = s.service.identify(bearer(headers))?;
    let stats = s.service.statistics(&caller, model, version)?;
    Ok(Json(json!({ "model_stats": stats })))
}

pub async fn all(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, HttpError> {
    answer(&s, &headers, None, None).await
}

pub async fn model(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, HttpError> {
    answer(&s, &headers, Some(&model), None).await
}

pub async fn version(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, HttpError> {
    answer(&s, &headers, Some(&model), Some(&version)).await
}
