//! Cohere / Jina style `POST /v1/rerank`: the model is the body's `model`; answers carry both
//! Cohere's (`id`, `results[].relevance_score`, `meta`) and Jina's (`model`, `usage`) fields,
//! best first; errors are OpenAI error objects like the rest of `/v1`. `return_documents`
//! defaults to false (Cohere's default; Jina clients that want the texts send it).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use herd_api::rerank::{
    Document, DocumentText, RerankRequest, RerankResponse, RerankResult, Usage,
};
use herd_api::ErrorCode;
use serde_json::json;

use super::openai::OpenAiError;
use crate::auth::bearer;
use crate::service::Rerank;
use crate::AppState;

pub async fn rerank(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RerankResponse>, OpenAiError> {
    let c = s.service.identify(bearer(&headers))?;
    let req: RerankRequest = serde_json::from_slice(&body).map_err(|e| {
        OpenAiError::new(
            ErrorCode::InvalidInput,
            format!(
                "invalid rerank request: {e}; expected {{\"model\", \"query\", \"documents\": \
                 [\"text\" or {{\"text\"}}], \"top_n\"?, \"return_documents\"?}}"
            ),
        )
    })?;
    let docs: Vec<String> = req.documents.into_iter().map(Document::into_text).collect();
    let out = s
        .service
        .rerank(
            &c,
            Rerank {
                model: req.model.clone(),
                query: req.query,
                documents: docs.clone(),
                raw_scores: false,
                top_n: req.top_n,
            },
        )
        .await
        .map_err(|e| {
            let param = if e.error.contains("top_n") {
                Some("top_n")
            } else if e.error.contains("document") {
                Some("documents")
            } else {
                None
            };
            let e = OpenAiError::from(e);
            match param {
                Some(p) => e.param(p),
                None => e,
            }
        })?;
    let with_docs = req.return_documents.unwrap_or(false);
    Ok(Json(RerankResponse {
        id: super::infinity::request_id("herd-rerank"),
        model: req.model,
        results: out
            .ranked
            .into_iter()
            .map(|r| RerankResult {
                relevance_score: r.score,
                document: with_docs.then(|| DocumentText {
                    text: docs[r.index].clone(),
                }),
                index: r.index,
            })
            .collect(),
        usage: Usage {
            total_tokens: out.tokens,
            prompt_tokens: out.tokens,
        },
        meta: json!({"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}),
    }))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/rerank", axum::routing::post(rerank))
}
