//! `POST /v1/embeddings` in the OpenAI embeddings format, routed to the named model's text
//! pipeline with the same tenant rules as v2, so OpenAI client libraries and vector-database
//! integrations work against a customer's own embedding model.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use herd_api::v2::{Tensor, TensorData};
use herd_api::ErrorCode;
use herd_core::pipeline::TEXT_INPUT;
use herd_core::InferRequest;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::HttpError;
use crate::AppState;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(#[allow(dead_code)] Vec<Value>),
}

pub async fn embeddings(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, HttpError> {
    s.auth.principal(&headers)?;
    let req: EmbeddingsRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidInput,
            format!("invalid embeddings request: {e}; expected {{\"model\": \"...\", \"input\": \"text\" or [\"text\", ...]}}"),
        )
    })?;
    let texts = match req.input {
        Input::One(t) => vec![t],
        Input::Many(v) => v,
        Input::Tokens(_) => {
            return Err(HttpError::new(
                ErrorCode::InvalidInput,
                "token-id inputs are not supported: send the texts as strings",
            ))
        }
    };
    if texts.is_empty() {
        return Err(HttpError::new(
            ErrorCode::InvalidInput,
            "input must hold at least one text",
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(HttpError::new(
                ErrorCode::InvalidInput,
                format!("encoding_format '{other}' is not supported; use float or base64"),
            ))
        }
    };
    let (entry, _) = s.core.resolve(&req.model, None)?;
    s.auth
        .check_model(&headers, &req.model, entry.config.tenant.as_deref())?;
    if entry.config.pipeline.is_none() {
        return Err(HttpError::new(
            ErrorCode::InvalidInput,
            format!(
                "model '{}' is not a text pipeline: declare a [pipeline] table with pooling in its config.toml",
                req.model
            ),
        ));
    }
    let n = texts.len();
    let out = s
        .core
        .infer(InferRequest {
            model: req.model.clone(),
            version: None,
            inputs: vec![Tensor::new(
                TEXT_INPUT,
                vec![n as i64],
                TensorData::Bytes(texts.into_iter().map(String::into_bytes).collect()),
            )],
            outputs: None,
        })
        .await?;
    let emb = out
        .outputs
        .iter()
        .find(|t| t.name == "embedding")
        .ok_or_else(|| {
            HttpError::new(
                ErrorCode::InvalidInput,
                format!(
                    "model '{}' is a classifier pipeline, not an embedding model",
                    req.model
                ),
            )
        })?;
    let TensorData::F32(values) = &emb.data else {
        return Err(HttpError::new(
            ErrorCode::Internal,
            "embedding output is not FP32",
        ));
    };
    let dim = emb.shape.get(1).copied().unwrap_or(0).max(0) as usize;
    if let Some(d) = req.dimensions {
        if d != dim {
            return Err(HttpError::new(
                ErrorCode::InvalidInput,
                format!(
                    "model '{}' answers {dim} dimensions; it cannot shorten them to {d}",
                    req.model
                ),
            ));
        }
    }
    let tokens: i64 = match out
        .outputs
        .iter()
        .find(|t| t.name == "token_count")
        .map(|t| &t.data)
    {
        Some(TensorData::I64(v)) => v.iter().sum(),
        _ => 0,
    };
    let data: Vec<Value> = values
        .chunks(dim.max(1))
        .take(n)
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let raw: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&raw))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

fn base64_encode(raw: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64_encode(raw.as_bytes()), want);
        }
    }
}
