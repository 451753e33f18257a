use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use herd_api::v2::{RepositoryIndexEntry, RepositoryIndexRequest};
use herd_api::ErrorCode;
use herd_core::ModelState;
use serde_json::{json, Value};

use crate::error::HttpError;
use crate::AppState;

pub async fn index(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<RepositoryIndexEntry>>, HttpError> {
    s.auth.check_admin(&headers)?;
    let req: RepositoryIndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RepositoryIndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            HttpError::new(ErrorCode::InvalidInput, format!("invalid JSON body: {e}"))
        })?
    };
    let core = s.core.clone();
    let entries = tokio::task::spawn_blocking(move || core.index())
        .await
        .map_err(|e| HttpError::new(ErrorCode::Internal, e.to_string()))??;
    Ok(Json(
        entries
            .into_iter()
            .filter(|e| !req.ready.unwrap_or(false) || e.state == ModelState::Ready)
            .map(|e| RepositoryIndexEntry {
                unique_bytes: (e.state == ModelState::Ready).then_some(e.charge),
                shared_bytes: (e.state == ModelState::Ready).then_some(e.shared_bytes),
                reason: match &e.state {
                    ModelState::Failed(r) => Some(r.clone()),
                    _ => None,
                },
                state: Some(e.state.as_str().to_string()),
                name: e.name,
                version: e.version,
            })
            .collect(),
    ))
}

pub async fn load(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, HttpError> {
    s.auth.check_admin(&headers)?;
    s.core.load_model(&model).await?;
    Ok(Json(json!({})))
}

pub async fn unload(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, HttpError> {
    s.auth.check_admin(&headers)?;
    s.core.unload_model(&model)?;
    Ok(Json(json!({})))
}
