//! OpenAI under `/v1`: `POST /v1/embeddings` routed to the named model's text pipeline with the
//! same tenant rules as v2, `GET /v1/models[/{model}]` (the caller's models only), and errors as
//! OpenAI error objects, so the `openai` SDKs (`e.code`, `e.type`, `e.param`), LangChain and
//! vector-database integrations work against a customer's own embedding model.
//!
//! `input` may be token arrays (LangChain's default): they are cl100k ids (what OpenAI's
//! embedding models take), decoded to text with the cl100k table built into herd (no download),
//! then tokenized again with the model's own tokenizer.

use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use herd_api::openai::{EmbeddingInput, EmbeddingsRequest, ErrorBody, Model, ModelList};
use herd_api::{ApiError, ErrorCode};
use serde_json::{json, Value};

use crate::auth::bearer;
use crate::service::{Caller, Embed, Listed};
use crate::AppState;

/// An error in OpenAI's shape, with the status from herd's code table.
pub struct OpenAiError {
    code: ErrorCode,
    message: String,
    param: Option<&'static str>,
}

impl OpenAiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            code,
            message: message.into(),
            param: None,
        }
    }

    pub(crate) fn param(mut self, p: &'static str) -> OpenAiError {
        self.param = Some(p);
        self
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> OpenAiError {
        let param = match e.code {
            ErrorCode::ModelNotFound | ErrorCode::Forbidden => Some("model"),
            _ => None,
        };
        OpenAiError {
            code: e.code,
            message: e.error,
            param,
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            Json(ErrorBody::new(self.code, self.message, self.param)),
        )
            .into_response();
        if let Some(secs) = self.code.retry_after_secs() {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        r
    }
}

fn caller(s: &AppState, headers: &HeaderMap) -> Result<Caller, OpenAiError> {
    Ok(s.service.identify(bearer(headers))?)
}

/// Unknown paths under `/v1` answer in OpenAI's shape too.
pub async fn not_found() -> OpenAiError {
    OpenAiError::new(
        ErrorCode::NotFound,
        "no such endpoint; herd serves POST /v1/embeddings and GET /v1/models",
    )
}

fn model_object(m: Listed) -> Model {
    Model {
        id: m.name,
        object: "model".into(),
        created: 0,
        owned_by: m.tenant.unwrap_or_else(|| "herd".into()),
    }
}

pub async fn list_models(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, OpenAiError> {
    let c = caller(&s, &headers)?;
    let models = s.service.list_models(&c)?;
    Ok(Json(ModelList {
        object: "list".into(),
        data: models.into_iter().map(model_object).collect(),
    }))
}

pub async fn get_model(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Model>, OpenAiError> {
    let c = caller(&s, &headers)?;
    let (entry, _) = s.service.authorize(&c, &model, None)?;
    Ok(Json(model_object(Listed {
        name: entry.name,
        versions: entry.versions,
        tenant: entry.config.tenant,
        text: entry.config.pipeline.is_some(),
    })))
}

fn cl100k() -> Result<&'static tiktoken_rs::CoreBPE, OpenAiError> {
    static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok())
        .as_ref()
        .ok_or_else(|| OpenAiError::new(ErrorCode::Internal, "the cl100k table failed to load"))
}

/// cl100k token ids to text (a chunk boundary inside a character decodes as U+FFFD).
fn decode_tokens(ids: Vec<u32>) -> Result<String, OpenAiError> {
    // Ordinary ranks 0..100256 and the five special tokens.
    let known = |t: u32| t < 100_256 || matches!(t, 100_257..=100_260 | 100_276);
    if let Some(bad) = ids.iter().find(|&&t| !known(t)) {
        return Err(OpenAiError::new(
            ErrorCode::InvalidInput,
            format!("token id {bad} is not a cl100k_base token"),
        )
        .param("input"));
    }
    let bytes: Vec<u8> = cl100k()?._decode_native_and_split(ids).flatten().collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub async fn embeddings(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, OpenAiError> {
    let c = caller(&s, &headers)?;
    let req: EmbeddingsRequest = serde_json::from_slice(&body).map_err(|e| {
        OpenAiError::new(
            ErrorCode::InvalidInput,
            format!("invalid embeddings request: {e}; expected {{\"model\": \"...\", \"input\": \"text\", [\"text\", ...] or token arrays}}"),
        )
    })?;
    let texts = match req.input {
        EmbeddingInput::Text(t) => vec![t],
        EmbeddingInput::Texts(v) => v,
        EmbeddingInput::Tokens(ids) => vec![decode_tokens(ids)?],
        EmbeddingInput::TokenArrays(v) => {
            v.into_iter().map(decode_tokens).collect::<Result<_, _>>()?
        }
    };
    if texts.is_empty() {
        return Err(
            OpenAiError::new(ErrorCode::InvalidInput, "input must hold at least one text")
                .param("input"),
        );
    }
    let base64 = wants_base64(req.encoding_format.as_deref())?;
    let out = s
        .service
        .embed(
            &c,
            Embed {
                model: req.model.clone(),
                texts,
                dimensions: req.dimensions,
            },
        )
        .await
        .map_err(|e| {
            let dims = e.error.contains("dimensions");
            let e = OpenAiError::from(e);
            if dims {
                e.param("dimensions")
            } else {
                e
            }
        })?;
    let data: Vec<Value> = out
        .vectors
        .iter()
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
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    })))
}

/// OpenAI's `encoding_format`: `float` (the default) or `base64` (true); anything else is a 400
/// naming the parameter.
pub(crate) fn wants_base64(encoding_format: Option<&str>) -> Result<bool, OpenAiError> {
    match encoding_format {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(OpenAiError::new(
            ErrorCode::InvalidInput,
            format!("encoding_format '{other}' is not supported; use float or base64"),
        )
        .param("encoding_format")),
    }
}

pub(crate) fn base64_encode(raw: &[u8]) -> String {
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
