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
    body: Bytes,
) -> Result<Json<Value>, HttpError> {
    s.auth.check_admin(&headers)?;
    refuse_load_parameters(&body)?;
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

/// Triton's `load` may carry `parameters.config` (a model configuration to apply) or files.
/// herd takes a model's configuration from its `config.toml` only, so such a load is refused
/// with the keys named rather than silently ignored.
fn refuse_load_parameters(body: &Bytes) -> Result<(), HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| HttpError::new(ErrorCode::InvalidInput, format!("invalid JSON body: {e}")))?;
    let Some(params) = v.get("parameters").and_then(Value::as_object) else {
        return Ok(());
    };
    if params.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<String> = Vec::new();
    for (k, p) in params {
        if k == "config" {
            let cfg: Value = match p {
                Value::String(t) => serde_json::from_str(t).map_err(|e| {
                    HttpError::new(
                        ErrorCode::InvalidInput,
                        format!("parameters.config is not JSON: {e}"),
                    )
                })?,
                other => other.clone(),
            };
            match cfg.as_object() {
                Some(o) => keys.extend(o.keys().map(|c| format!("config.{c}"))),
                None => keys.push("config".into()),
            }
        } else {
            keys.push(k.clone());
        }
    }
    Err(HttpError::new(
        ErrorCode::InvalidInput,
        format!(
            "load parameters are not supported: {}; herd reads a model's configuration from its config.toml (max_batch_size, max_queue_delay_ms, instances, ...)",
            keys.join(", ")
        ),
    ))
}
