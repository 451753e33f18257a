//! Infinity (`infinity_emb`) over HTTP: `POST /embeddings`, `/classify`, `/rerank` and
//! `GET /models`, with Infinity's request fields and answers; the model is the body's `model`
//! (Infinity's own field), errors are OpenAI error objects as Infinity's are. `POST /rerank` is
//! shared with TEI (`routes/tei.rs` sends bodies with `documents` here).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use herd_api::infinity::{
    ClassifyObject, ClassifyRequest, ClassifyResult, EmbeddingObject, EmbeddingsRequest,
    EmbeddingsResult, ModelInfo, ModelList, RerankObject, RerankRequest, RerankResult, Usage,
};
use herd_api::ErrorCode;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::openai::{base64_encode, wants_base64, OpenAiError};
use crate::auth::bearer;
use crate::service::{Caller, Classify, Embed, Rerank, TextKind};
use crate::AppState;

fn caller(s: &AppState, headers: &HeaderMap) -> Result<Caller, OpenAiError> {
    Ok(s.service.identify(bearer(headers))?)
}

fn parse<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, OpenAiError> {
    serde_json::from_slice(body).map_err(|e| {
        OpenAiError::new(
            ErrorCode::InvalidInput,
            format!("invalid {what} request: {e}"),
        )
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `infinity-<hex>`: unique within the process (Infinity answers a UUID; clients only echo it).
pub(crate) fn request_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{prefix}-{nanos:016x}-{:08x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn usage(tokens: u64) -> Usage {
    Usage {
        prompt_tokens: tokens,
        total_tokens: tokens,
    }
}

pub async fn embeddings(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<EmbeddingsResult>, OpenAiError> {
    let c = caller(&s, &headers)?;
    let req: EmbeddingsRequest = parse(&body, "embeddings")?;
    if let Some(m) = req.modality.as_deref().filter(|m| *m != "text") {
        return Err(OpenAiError::new(
            ErrorCode::InvalidInput,
            format!("modality '{m}' is not served by herd; only text"),
        )
        .param("modality"));
    }
    let base64 = wants_base64(req.encoding_format.as_deref())?;
    let out = s
        .service
        .embed(
            &c,
            Embed {
                model: req.model.clone(),
                texts: req.input.into_vec(),
                dimensions: None,
            },
        )
        .await?;
    let data = out
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingObject {
            object: "embedding".into(),
            embedding: if base64 {
                let raw: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64_encode(&raw))
            } else {
                json!(v)
            },
            index,
        })
        .collect();
    Ok(Json(EmbeddingsResult {
        object: "list".into(),
        data,
        model: req.model,
        usage: usage(out.tokens),
        id: request_id("infinity"),
        created: now(),
    }))
}

pub async fn classify(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ClassifyResult>, OpenAiError> {
    let c = caller(&s, &headers)?;
    let req: ClassifyRequest = parse(&body, "classify")?;
    let m = s.service.text_model(&c, &req.model)?;
    if req.raw_scores && m.softmax {
        return Err(OpenAiError::new(
            ErrorCode::InvalidInput,
            format!(
                "model '{}' applies softmax in its pipeline ([pipeline.classifier] softmax = \
                 true), so raw_scores = true cannot be served",
                req.model
            ),
        )
        .param("raw_scores"));
    }
    let out = s
        .service
        .classify(
            &c,
            Classify {
                model: req.model.clone(),
                texts: req.input,
            },
        )
        .await?;
    Ok(Json(ClassifyResult {
        object: "classify".into(),
        data: out
            .predictions
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(label, score)| ClassifyObject { score, label })
                    .collect()
            })
            .collect(),
        model: req.model,
        usage: usage(out.tokens),
        id: request_id("infinity"),
        created: now(),
    }))
}

/// Whether a `POST /rerank` body is Infinity's (`documents`) rather than TEI's (`texts`).
pub(crate) fn is_infinity_rerank(body: &Bytes) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        documents: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.documents.is_some())
}

pub(crate) async fn rerank(
    s: AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RerankResult>, OpenAiError> {
    let c = caller(&s, &headers)?;
    let req: RerankRequest = parse(&body, "rerank")?;
    let docs = req.documents;
    let out = s
        .service
        .rerank(
            &c,
            Rerank {
                model: req.model.clone(),
                query: req.query,
                documents: docs.clone(),
                raw_scores: req.raw_scores,
                top_n: req.top_n,
            },
        )
        .await
        .map_err(|e| {
            let top = e.error.contains("top_n");
            let e = OpenAiError::from(e);
            if top {
                e.param("top_n")
            } else {
                e
            }
        })?;
    Ok(Json(RerankResult {
        object: "rerank".into(),
        results: out
            .ranked
            .into_iter()
            .map(|r| RerankObject {
                relevance_score: r.score,
                document: req.return_documents.then(|| docs[r.index].clone()),
                index: r.index,
            })
            .collect(),
        model: req.model,
        usage: usage(out.tokens),
        id: request_id("infinity"),
        created: now(),
    }))
}

/// `GET /models`: the caller's text models with what each can do.
pub async fn models(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, OpenAiError> {
    let c = caller(&s, &headers)?;
    let created = now();
    let data = s
        .service
        .list_models(&c)?
        .into_iter()
        .filter(|m| m.text)
        .filter_map(|m| {
            let tm = s.service.text_model(&c, &m.name).ok()?;
            let capability = match tm.kind {
                TextKind::Embedding(_) => "embed",
                TextKind::Classifier => "classify",
                TextKind::CrossEncoder => "rerank",
            };
            Some(ModelInfo {
                id: m.name,
                stats: serde_json::Map::new(),
                object: "model".into(),
                owned_by: "infinity".into(),
                created,
                backend: "herd-onnxruntime".into(),
                capabilities: vec![capability.into()],
            })
        })
        .collect();
    Ok(Json(ModelList {
        data,
        object: "list".into(),
    }))
}

pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/embeddings", post(embeddings))
        .route("/classify", post(classify))
        .route("/models", get(models))
}
