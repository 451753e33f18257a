//! Triton's model repository extension: `POST /v2/repository/index`,
//! `/v2/repository/models/{m}/load` (with `parameters.config` applied, see
//! [`crate::service::parse_config`]) and `/unload`. Thin converters over the service.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use herd_api::v2::{RepositoryIndexEntry, RepositoryIndexRequest};
use herd_api::ErrorCode;
use herd_core::ModelState;
use serde_json::{json, Value};

use crate::auth::bearer;
use crate::error::HttpError;
use crate::AppState;

fn is_blank(body: &Bytes) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

pub async fn index(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<RepositoryIndexEntry>>, HttpError> {
    let caller = s.service.identify(bearer(&headers))?;
    let req: RepositoryIndexRequest = if is_blank(&body) {
        RepositoryIndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            HttpError::new(ErrorCode::InvalidInput, format!("invalid JSON body: {e}"))
        })?
    };
    let entries = s.service.index(&caller, req.ready.unwrap_or(false)).await?;
    Ok(Json(
        entries
            .into_iter()
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
    body: Bytes,
) -> Result<Json<Value>, HttpError> {
    let caller = s.service.identify(bearer(&headers))?;
    let config = load_config(&body)?;
    s.service.load(&caller, &model, config.as_ref()).await?;
    Ok(Json(json!({})))
}

pub async fn unload(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, HttpError> {
    let caller = s.service.identify(bearer(&headers))?;
    s.service.unload(&caller, &model)?;
    Ok(Json(json!({})))
}

/// The `parameters.config` of a load body. Other parameters (Triton's `file:<path>` model
/// files) are refused by name: herd does not take model files through `load`.
fn load_config(body: &Bytes) -> Result<Option<Value>, HttpError> {
    if is_blank(body) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| HttpError::new(ErrorCode::InvalidInput, format!("invalid JSON body: {e}")))?;
    let Some(params) = v.get("parameters").and_then(Value::as_object) else {
        return Ok(None);
    };
    let others: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "config")
        .collect();
    if !others.is_empty() {
        return Err(HttpError::new(
            ErrorCode::InvalidInput,
            format!(
                "load parameters are not supported: {}; herd takes model files from its repository or registry, and applies only parameters.config",
                others.join(", ")
            ),
        ));
    }
    Ok(params.get("config").cloned())
}
