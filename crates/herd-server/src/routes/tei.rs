//! Hugging Face text-embeddings-inference (TEI) over HTTP: `POST /embed`, `/predict`, `/rerank`,
//! `/tokenize`, `/decode`, `POST /` (by the model's kind), `GET /info` and `GET /health`, with TEI's request fields, answers and error object
//! (`{"error", "error_type"}` with TEI's status per type).
//!
//! TEI serves one model per process and has no `model` field, so herd takes the model from the
//! path prefix `/models/{model}/embed` (and so on), else from the `x-herd-model` header; neither
//! is a 400 that says so. `POST /rerank` is shared with Infinity: a body with `documents` is an
//! Infinity request (see `routes/infinity.rs`), one with `texts` a TEI request.
//!
//! Differences from TEI, each an error that says so rather than a silent change: token-id
//! inputs, `prompt_name`, `truncation_direction = "Left"`, `normalize = false` on a model that
//! normalizes, and `raw_scores = true` on a classifier whose pipeline applies softmax. Truncation
//! follows the model's `[pipeline] truncation` (`/info` says it as `auto_truncate`); the
//! request's `truncate` is accepted and not used.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use herd_api::tei::{
    ClassifierModel, DecodeRequest, EmbedRequest, ErrorResponse, ErrorType, Info, InputIds,
    InputType, ModelType, PredictInput, PredictRequest, Prediction, Rank, RerankRequest, Sequence,
    SimpleToken, TokenizeInput, TokenizeRequest, TruncationDirection,
};
use herd_api::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

use crate::auth::bearer;
use crate::service::{Caller, Embed, Rerank, ScorePairs, TextKind, TextModel};
use crate::AppState;

/// The header that names the model when the path does not.
pub const MODEL_HEADER: &str = "x-herd-model";

/// An error in TEI's shape.
pub struct TeiError {
    status: u16,
    error_type: ErrorType,
    message: String,
    retry_after: Option<u32>,
}

impl TeiError {
    fn new(error_type: ErrorType, message: impl Into<String>) -> TeiError {
        TeiError {
            status: error_type.http_status(),
            error_type,
            message: message.into(),
            retry_after: None,
        }
    }

    fn validation(message: impl Into<String>) -> TeiError {
        TeiError::new(ErrorType::Validation, message)
    }

    /// A body that is not the documented JSON: 422, as TEI's JSON extractor answers.
    fn body(message: impl Into<String>) -> TeiError {
        TeiError {
            status: 422,
            ..TeiError::validation(message)
        }
    }

    /// The model is of another kind than the route needs: TEI answers 424.
    fn wrong_kind(message: impl Into<String>) -> TeiError {
        TeiError::new(ErrorType::Backend, message)
    }

    /// Tokenizer-only routes report input problems as TEI's tokenizer errors (422).
    fn tokenizer(e: ApiError) -> TeiError {
        match e.code {
            ErrorCode::InvalidInput => TeiError::new(ErrorType::Tokenizer, e.error),
            _ => TeiError::from(e),
        }
    }
}

impl From<ApiError> for TeiError {
    /// TEI's types for the codes TEI has; herd's own statuses (401, 403, 404, 408, 409) are kept,
    /// with `error_type` "Validation".
    fn from(e: ApiError) -> TeiError {
        let (error_type, status) = match e.code {
            ErrorCode::InvalidInput | ErrorCode::LimitExceeded | ErrorCode::PayloadTooLarge => {
                (ErrorType::Validation, 413)
            }
            ErrorCode::Overloaded => (ErrorType::Overloaded, 429),
            ErrorCode::Unavailable | ErrorCode::ModelNotReady => (ErrorType::Unhealthy, 503),
            ErrorCode::ModelLoadFailed
            | ErrorCode::Internal
            | ErrorCode::Timeout
            | ErrorCode::ModelTooLarge => (ErrorType::Backend, 424),
            ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::ModelNotFound
            | ErrorCode::NotFound
            | ErrorCode::RequestTimeout
            | ErrorCode::Conflict => (ErrorType::Validation, e.code.http_status()),
        };
        TeiError {
            status,
            error_type,
            message: e.error,
            retry_after: e.code.retry_after_secs(),
        }
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            Json(ErrorResponse {
                error: self.message,
                error_type: self.error_type,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        r
    }
}

type Answer<T> = Result<(HeaderMap, Json<T>), TeiError>;

fn parse<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, TeiError> {
    serde_json::from_slice(body)
        .map_err(|e| TeiError::body(format!("Failed to deserialize the {what} request: {e}")))
}

/// The caller and the model a TEI request is for.
fn target(
    s: &AppState,
    headers: &HeaderMap,
    path_model: Option<String>,
) -> Result<(Caller, String), TeiError> {
    let caller = s.service.identify(bearer(headers))?;
    let model = match path_model {
        Some(m) => m,
        None => headers
            .get(MODEL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .ok_or_else(|| TeiError {
                status: 400,
                ..TeiError::validation(format!(
                        "herd serves many models: name the model with the {MODEL_HEADER} header \
                         or the path prefix /models/{{model}}/ (for example /models/my-model/embed)"
                    ))
            })?,
    };
    Ok((caller, model))
}

fn timing(t: &herd_core::Timing, rows: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    super::timing_headers(&mut h, t, rows);
    h
}

fn no_left(d: TruncationDirection) -> Result<(), TeiError> {
    match d {
        TruncationDirection::Right => Ok(()),
        TruncationDirection::Left => Err(TeiError::validation(
            "truncation_direction \"Left\" is not supported by herd: texts are truncated on the \
             right, as the model's [pipeline] says",
        )),
    }
}

fn no_prompt(p: &Option<String>) -> Result<(), TeiError> {
    match p {
        None => Ok(()),
        Some(name) => Err(TeiError::validation(format!(
            "prompt_name '{name}' is not supported by herd (models have no prompts); prepend \
             the prompt to the text"
        ))),
    }
}

fn kind_name(k: TextKind) -> &'static str {
    match k {
        TextKind::Embedding(_) => "an embedding model",
        TextKind::Classifier => "a classifier",
        TextKind::CrossEncoder => "a reranker (cross-encoder)",
    }
}

async fn embed_inner(
    s: AppState,
    headers: HeaderMap,
    path_model: Option<String>,
    body: Bytes,
) -> Answer<Vec<Vec<f32>>> {
    let (c, model) = target(&s, &headers, path_model)?;
    let req: EmbedRequest = parse(&body, "embed")?;
    no_left(req.truncation_direction)?;
    no_prompt(&req.prompt_name)?;
    let m = s.service.text_model(&c, &model)?;
    if !matches!(m.kind, TextKind::Embedding(_)) {
        return Err(TeiError::wrong_kind(format!(
            "model '{model}' is {}, not an embedding model",
            kind_name(m.kind)
        )));
    }
    if m.normalize && !req.normalize {
        return Err(TeiError::validation(format!(
            "model '{model}' normalizes its embeddings ([pipeline] normalize = true), so \
             normalize = false cannot be served; omit it"
        )));
    }
    let texts = req
        .inputs
        .into_vec()
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            InputType::Text(t) => Ok(t),
            InputType::Ids(_) => Err(TeiError::validation(format!(
                "inputs[{i}] is a list of token ids; herd takes text (send the string)"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = texts.len();
    let mut out = s
        .service
        .embed(
            &c,
            Embed {
                model,
                texts,
                dimensions: None,
            },
        )
        .await?;
    if req.normalize && !m.normalize {
        out.vectors
            .iter_mut()
            .for_each(|v| herd_pipeline::l2_normalize(v));
    }
    Ok((timing(&out.timing, n), Json(out.vectors)))
}

async fn predict_inner(
    s: AppState,
    headers: HeaderMap,
    path_model: Option<String>,
    body: Bytes,
) -> Result<Response, TeiError> {
    let (c, model) = target(&s, &headers, path_model)?;
    let req: PredictRequest = parse(&body, "predict")?;
    no_left(req.truncation_direction)?;
    let (batch, seqs) = match req.inputs {
        PredictInput::Single(q) => (false, vec![q]),
        PredictInput::Batch(v) => (true, v),
    };
    let m = s.service.text_model(&c, &model)?;
    let rows: Vec<Vec<Prediction>> = match m.kind {
        TextKind::Classifier => {
            if req.raw_scores && m.softmax {
                return Err(TeiError::validation(format!(
                    "model '{model}' applies softmax in its pipeline ([pipeline.classifier] \
                     softmax = true), so raw_scores = true cannot be served"
                )));
            }
            let texts = seqs
                .into_iter()
                .enumerate()
                .map(|(i, q)| match q {
                    Sequence::Single(t) => Ok(t),
                    Sequence::Pair(..) => Err(TeiError::validation(format!(
                        "inputs[{i}] is a text pair, but model '{model}' is a single-text \
                         classifier; pairs need a cross-encoder"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = s
                .service
                .classify(&c, crate::service::Classify { model, texts })
                .await?;
            out.predictions
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|(label, score)| Prediction { score, label })
                        .collect()
                })
                .collect()
        }
        TextKind::CrossEncoder => {
            let pairs = seqs
                .into_iter()
                .enumerate()
                .map(|(i, q)| match q {
                    Sequence::Pair(a, b) => Ok((a, b)),
                    Sequence::Single(_) => Err(TeiError::validation(format!(
                        "inputs[{i}] is a single text, but model '{model}' is a cross-encoder: \
                         send pairs [text, text_pair]"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = s
                .service
                .score_pairs(&c, ScorePairs { model, pairs })
                .await?;
            let values = if req.raw_scores {
                out.logits
            } else {
                out.scores
            };
            values
                .into_iter()
                .map(|score| {
                    vec![Prediction {
                        score,
                        label: "LABEL_0".into(),
                    }]
                })
                .collect()
        }
        TextKind::Embedding(_) => {
            return Err(TeiError::wrong_kind(format!(
                "model '{model}' is an embedding model, not a sequence classification model"
            )))
        }
    };
    Ok(if batch {
        Json(rows).into_response()
    } else {
        Json(rows.into_iter().next().unwrap_or_default()).into_response()
    })
}

async fn rerank_inner(
    s: AppState,
    headers: HeaderMap,
    path_model: Option<String>,
    body: Bytes,
) -> Answer<Vec<Rank>> {
    let (c, model) = target(&s, &headers, path_model)?;
    let req: RerankRequest = parse(&body, "rerank")?;
    no_left(req.truncation_direction)?;
    let m = s.service.text_model(&c, &model)?;
    if m.kind != TextKind::CrossEncoder {
        return Err(TeiError::wrong_kind(format!(
            "model '{model}' is {}, not a reranker: rerank needs a cross-encoder \
             ([pipeline.cross_encoder])",
            kind_name(m.kind)
        )));
    }
    let texts = req.texts;
    let n = texts.len();
    let out = s
        .service
        .rerank(
            &c,
            Rerank {
                model,
                query: req.query,
                documents: texts.clone(),
                raw_scores: req.raw_scores,
                top_n: None,
            },
        )
        .await?;
    let ranks = out
        .ranked
        .into_iter()
        .map(|r| Rank {
            text: req.return_text.then(|| texts[r.index].clone()),
            index: r.index,
            score: r.score,
        })
        .collect();
    Ok((timing(&out.timing, n), Json(ranks)))
}

async fn tokenize_inner(
    s: AppState,
    headers: HeaderMap,
    path_model: Option<String>,
    body: Bytes,
) -> Answer<Vec<Vec<SimpleToken>>> {
    let (c, model) = target(&s, &headers, path_model)?;
    let req: TokenizeRequest = parse(&body, "tokenize")?;
    no_prompt(&req.prompt_name)?;
    let texts = match req.inputs {
        TokenizeInput::Single(t) => vec![t],
        TokenizeInput::Batch(v) => v,
    };
    let toks = s
        .service
        .tokenize(&c, &model, texts, req.add_special_tokens)
        .await
        .map_err(TeiError::tokenizer)?;
    Ok((
        HeaderMap::new(),
        Json(
            toks.into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|t| SimpleToken {
                            id: t.id,
                            text: t.text,
                            special: t.special,
                            start: t.start,
                            stop: t.stop,
                        })
                        .collect()
                })
                .collect(),
        ),
    ))
}

async fn decode_inner(
    s: AppState,
    headers: HeaderMap,
    path_model: Option<String>,
    body: Bytes,
) -> Answer<Vec<String>> {
    let (c, model) = target(&s, &headers, path_model)?;
    let req: DecodeRequest = parse(&body, "decode")?;
    let ids = match req.ids {
        InputIds::Single(v) => vec![v],
        InputIds::Batch(v) => v,
    };
    let texts = s
        .service
        .decode(&c, &model, ids, req.skip_special_tokens)
        .await
        .map_err(TeiError::tokenizer)?;
    Ok((HeaderMap::new(), Json(texts)))
}

fn classifier_model(labels: &[String], classes: usize) -> ClassifierModel {
    let names: Vec<String> = (0..classes.max(labels.len()))
        .map(|i| {
            labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}"))
        })
        .collect();
    ClassifierModel {
        id2label: names
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect(),
        label2id: names
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i))
            .collect(),
    }
}

async fn info_inner(
    s: AppState,
    headers: HeaderMap,
    path_model: Option<String>,
) -> Result<Json<Info>, TeiError> {
    let (c, model) = target(&s, &headers, path_model)?;
    let m: TextModel = s.service.text_model(&c, &model)?;
    let model_type = match m.kind {
        TextKind::Embedding(p) => ModelType::Embedding {
            pooling: p.to_string(),
        },
        TextKind::Classifier => ModelType::Classifier(classifier_model(&m.labels, 0)),
        TextKind::CrossEncoder => ModelType::Reranker(classifier_model(&[], 1)),
    };
    Ok(Json(Info {
        model_id: m.name,
        model_sha: Some(m.version),
        model_dtype: "float32".into(),
        model_type,
        max_concurrent_requests: m.limits.max_texts_per_request,
        max_input_length: m.max_length,
        max_batch_tokens: m.limits.max_tokens_per_request,
        max_batch_requests: Some(m.max_batch_size),
        max_client_batch_size: m.limits.max_texts_per_request,
        auto_truncate: m.truncation,
        tokenization_workers: m.instances,
        version: format!("herd {}", env!("CARGO_PKG_VERSION")),
        sha: None,
        docker_label: None,
    }))
}

/// `GET /health`: 200 with an empty body while herd is ready (pinned models preloaded, not
/// draining), else TEI's 503 `{"error", "error_type": "Unhealthy"}`.
pub async fn health(State(s): State<AppState>) -> Response {
    if s.service.health().is_ready() {
        StatusCode::OK.into_response()
    } else {
        TeiError::new(
            ErrorType::Unhealthy,
            "herd is starting (preloading pinned models) or shutting down",
        )
        .into_response()
    }
}

/// `POST /` (TEI's root route, what `huggingface_hub.InferenceClient(base_url=...)` posts to):
/// `/embed`, `/predict` or `/rerank` by the model's kind.
async fn root_inner(
    s: AppState,
    headers: HeaderMap,
    path_model: Option<String>,
    body: Bytes,
) -> Response {
    let kind = target(&s, &headers, path_model.clone())
        .and_then(|(c, m)| Ok(s.service.text_model(&c, &m)?.kind));
    match kind {
        Err(e) => e.into_response(),
        Ok(TextKind::Embedding(_)) => embed_inner(s, headers, path_model, body)
            .await
            .into_response(),
        Ok(TextKind::Classifier) => predict_inner(s, headers, path_model, body)
            .await
            .into_response(),
        Ok(TextKind::CrossEncoder) => rerank_inner(s, headers, path_model, body)
            .await
            .into_response(),
    }
}

pub async fn root(State(s): State<AppState>, h: HeaderMap, b: Bytes) -> Response {
    root_inner(s, h, None, b).await
}
pub async fn root_at(
    State(s): State<AppState>,
    Path(m): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    root_inner(s, h, Some(m), b).await
}

// Each route twice: the model from the header, or from the `/models/{model}` prefix.

pub async fn embed(State(s): State<AppState>, h: HeaderMap, b: Bytes) -> impl IntoResponse {
    embed_inner(s, h, None, b).await
}
pub async fn embed_at(
    State(s): State<AppState>,
    Path(m): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> impl IntoResponse {
    embed_inner(s, h, Some(m), b).await
}
pub async fn predict(State(s): State<AppState>, h: HeaderMap, b: Bytes) -> impl IntoResponse {
    predict_inner(s, h, None, b).await
}
pub async fn predict_at(
    State(s): State<AppState>,
    Path(m): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> impl IntoResponse {
    predict_inner(s, h, Some(m), b).await
}
/// `POST /rerank`: Infinity's when the body has `documents`, else TEI's.
pub async fn rerank(State(s): State<AppState>, h: HeaderMap, b: Bytes) -> Response {
    if super::infinity::is_infinity_rerank(&b) {
        return super::infinity::rerank(s, h, b).await.into_response();
    }
    rerank_inner(s, h, None, b).await.into_response()
}
pub async fn rerank_at(
    State(s): State<AppState>,
    Path(m): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> impl IntoResponse {
    rerank_inner(s, h, Some(m), b).await
}
pub async fn tokenize(State(s): State<AppState>, h: HeaderMap, b: Bytes) -> impl IntoResponse {
    tokenize_inner(s, h, None, b).await
}
pub async fn tokenize_at(
    State(s): State<AppState>,
    Path(m): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> impl IntoResponse {
    tokenize_inner(s, h, Some(m), b).await
}
pub async fn decode(State(s): State<AppState>, h: HeaderMap, b: Bytes) -> impl IntoResponse {
    decode_inner(s, h, None, b).await
}
pub async fn decode_at(
    State(s): State<AppState>,
    Path(m): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> impl IntoResponse {
    decode_inner(s, h, Some(m), b).await
}
pub async fn info(State(s): State<AppState>, h: HeaderMap) -> impl IntoResponse {
    info_inner(s, h, None).await
}
pub async fn info_at(
    State(s): State<AppState>,
    Path(m): Path<String>,
    h: HeaderMap,
) -> impl IntoResponse {
    info_inner(s, h, Some(m)).await
}

/// The TEI routes, at the root (model from `x-herd-model`) and under `/models/{model}`.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/embed", post(embed))
        .route("/predict", post(predict))
        .route("/rerank", post(rerank))
        .route("/tokenize", post(tokenize))
        .route("/decode", post(decode))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/", post(root))
        .route("/models/{model}", post(root_at))
        .route("/models/{model}/embed", post(embed_at))
        .route("/models/{model}/predict", post(predict_at))
        .route("/models/{model}/rerank", post(rerank_at))
        .route("/models/{model}/tokenize", post(tokenize_at))
        .route("/models/{model}/decode", post(decode_at))
        .route("/models/{model}/info", get(info_at))
}
