//! Text operations over text pipelines, for the dialects that speak text (TEI, Infinity,
//! Cohere/Jina rerank): classify, score text pairs / rerank (cross-encoders), tokenize, decode,
//! and what kind of pipeline a model is. Inference goes through [`Service::infer`], so auth,
//! limits, request metrics and statistics are the same as for every other dialect.

use std::time::Instant;

use herd_api::v2::{Tensor, TensorData};
use herd_api::{ApiError, ErrorCode};
use herd_core::pipeline::{TEXT_INPUT, TEXT_PAIR_INPUT};
use herd_core::Timing;
use herd_pipeline::{PipelineConfig, PipelineKind, Token};

use super::{err, from, Caller, Infer, Service};

/// What a text model does, read from its config (no load needed).
#[derive(Debug, Clone)]
pub struct TextModel {
    pub name: String,
    pub version: String,
    pub kind: TextKind,
    /// Tokens per text (pair), special tokens included.
    pub max_length: usize,
    /// Whether longer texts are cut (else refused).
    pub truncation: bool,
    /// Embedding models: whether vectors are L2-normalised.
    pub normalize: bool,
    /// Classifiers: class names by index (may be empty).
    pub labels: Vec<String>,
    /// Classifiers: whether scores are softmax probabilities.
    pub softmax: bool,
    /// Cross-encoders: whether the default score is `sigmoid(logit)`.
    pub sigmoid: bool,
    /// The request limits that apply to this model.
    pub limits: herd_core::RequestLimits,
    pub max_batch_size: usize,
    pub instances: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Pooling name (`mean`, `cls`, `max`).
    Embedding(&'static str),
    Classifier,
    CrossEncoder,
}

/// Texts through a classifier pipeline.
#[derive(Debug)]
pub struct Classify {
    pub model: String,
    pub texts: Vec<String>,
}

#[derive(Debug)]
pub struct Classified {
    pub model: String,
    pub version: String,
    /// Per text, the pipeline's `top_k` `(label, score)` pairs, best first.
    pub predictions: Vec<Vec<(String, f32)>>,
    pub tokens: u64,
    pub timing: Timing,
}

/// Text pairs through a cross-encoder.
#[derive(Debug)]
pub struct ScorePairs {
    pub model: String,
    pub pairs: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct PairScores {
    pub model: String,
    pub version: String,
    /// Per pair, in order: the pipeline's score (sigmoid of the logit unless the model's
    /// `[pipeline.cross_encoder] sigmoid = false`) and the raw logit.
    pub scores: Vec<f32>,
    pub logits: Vec<f32>,
    pub tokens: u64,
    pub timing: Timing,
}

/// A query against documents through a cross-encoder.
#[derive(Debug)]
pub struct Rerank {
    pub model: String,
    pub query: String,
    pub documents: Vec<String>,
    /// Answer raw logits instead of the model's default score.
    pub raw_scores: bool,
    /// Keep only the best `top_n` (all when `None`).
    pub top_n: Option<usize>,
}

/// One ranked document.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// Position in the request's documents.
    pub index: usize,
    pub score: f32,
}

#[derive(Debug)]
pub struct Reranked {
    pub model: String,
    pub version: String,
    /// Best first; equal scores keep the request's order.
    pub ranked: Vec<Ranked>,
    pub tokens: u64,
    pub timing: Timing,
}

fn tokens_of(outputs: &[Tensor]) -> u64 {
    match outputs
        .iter()
        .find(|t| t.name == "token_count")
        .map(|t| &t.data)
    {
        Some(TensorData::I64(v)) => v.iter().map(|&t| t.max(0) as u64).sum(),
        _ => 0,
    }
}

fn f32s<'a>(outputs: &'a [Tensor], name: &str) -> Result<&'a [f32], ApiError> {
    match outputs.iter().find(|t| t.name == name).map(|t| &t.data) {
        Some(TensorData::F32(v)) => Ok(v),
        _ => Err(err(
            ErrorCode::Internal,
            format!("the pipeline did not answer FP32 '{name}'"),
        )),
    }
}

fn bytes_tensor(name: &str, texts: Vec<String>) -> Tensor {
    Tensor::new(
        name,
        vec![texts.len() as i64],
        TensorData::Bytes(texts.into_iter().map(String::into_bytes).collect()),
    )
}

impl Service {
    /// The kind and settings of a text model the caller may use (404/403 like every
    /// operation; 400 when the model is not a text pipeline).
    pub fn text_model(&self, caller: &Caller, model: &str) -> Result<TextModel, ApiError> {
        let (entry, version) = self.authorize(caller, model, None)?;
        let table = entry.config.pipeline.clone().ok_or_else(|| {
            err(
                ErrorCode::InvalidInput,
                format!(
                    "model '{model}' is not a text pipeline: it takes tensors (declare a \
                     [pipeline] table in its config.toml to serve text)"
                ),
            )
        })?;
        let cfg = PipelineConfig::from_table(table).map_err(from)?;
        let kind = match cfg.kind() {
            PipelineKind::Embedding(p) => TextKind::Embedding(match p {
                herd_pipeline::Pooling::Mean => "mean",
                herd_pipeline::Pooling::Cls => "cls",
                herd_pipeline::Pooling::Max => "max",
            }),
            PipelineKind::Classifier => TextKind::Classifier,
            PipelineKind::CrossEncoder => TextKind::CrossEncoder,
        };
        Ok(TextModel {
            name: model.to_string(),
            version,
            kind,
            max_length: cfg.max_length,
            truncation: cfg.truncation,
            normalize: cfg.normalize,
            labels: cfg
                .classifier
                .as_ref()
                .map(|c| c.labels.clone())
                .unwrap_or_default(),
            softmax: cfg.classifier.as_ref().is_some_and(|c| c.softmax),
            sigmoid: cfg.cross_encoder.as_ref().is_some_and(|c| c.sigmoid),
            limits: self.core.config().limits.for_model(&entry.config),
            max_batch_size: entry.config.max_batch_size,
            instances: entry.config.instances,
        })
    }

    fn require(
        &self,
        caller: &Caller,
        model: &str,
        want: TextKind,
        what: &str,
    ) -> Result<TextModel, ApiError> {
        let m = self.text_model(caller, model)?;
        let same = matches!(
            (m.kind, want),
            (TextKind::Embedding(_), TextKind::Embedding(_))
                | (TextKind::Classifier, TextKind::Classifier)
                | (TextKind::CrossEncoder, TextKind::CrossEncoder)
        );
        if !same {
            let is = match m.kind {
                TextKind::Embedding(_) => "an embedding model",
                TextKind::Classifier => "a classifier",
                TextKind::CrossEncoder => "a cross-encoder (reranker)",
            };
            return Err(err(
                ErrorCode::InvalidInput,
                format!("model '{model}' is {is}; {what}"),
            ));
        }
        Ok(m)
    }

    /// Classifies texts with a classifier pipeline.
    pub async fn classify(&self, caller: &Caller, req: Classify) -> Result<Classified, ApiError> {
        if req.texts.is_empty() {
            return Err(err(
                ErrorCode::InvalidInput,
                "input must hold at least one text",
            ));
        }
        self.require(
            caller,
            &req.model,
            TextKind::Classifier,
            "classification needs a classifier ([pipeline.classifier])",
        )?;
        let n = req.texts.len();
        let out = self
            .infer(
                caller,
                Infer {
                    model: req.model,
                    version: None,
                    inputs: vec![bytes_tensor(TEXT_INPUT, req.texts)],
                    outputs: None,
                },
            )
            .await?;
        let scores = f32s(&out.outputs, "score")?;
        let labels = match out.outputs.iter().find(|t| t.name == "label") {
            Some(Tensor {
                data: TensorData::Bytes(v),
                ..
            }) => v,
            _ => {
                return Err(err(
                    ErrorCode::Internal,
                    "the classifier answered no labels",
                ))
            }
        };
        let k = scores.len().checked_div(n).unwrap_or(0);
        let predictions = (0..n)
            .map(|i| {
                (0..k)
                    .map(|j| {
                        let at = i * k + j;
                        (
                            String::from_utf8_lossy(&labels[at]).into_owned(),
                            scores[at],
                        )
                    })
                    .collect()
            })
            .collect();
        Ok(Classified {
            tokens: tokens_of(&out.outputs),
            model: out.model,
            version: out.version,
            predictions,
            timing: out.timing,
        })
    }

    /// Scores text pairs with a cross-encoder, in order.
    pub async fn score_pairs(
        &self,
        caller: &Caller,
        req: ScorePairs,
    ) -> Result<PairScores, ApiError> {
        if req.pairs.is_empty() {
            return Err(err(
                ErrorCode::InvalidInput,
                "send at least one text pair (one document)",
            ));
        }
        self.require(
            caller,
            &req.model,
            TextKind::CrossEncoder,
            "scoring text pairs needs a cross-encoder ([pipeline.cross_encoder])",
        )?;
        let (a, b): (Vec<String>, Vec<String>) = req.pairs.into_iter().unzip();
        let out = self
            .infer(
                caller,
                Infer {
                    model: req.model,
                    version: None,
                    inputs: vec![
                        bytes_tensor(TEXT_INPUT, a),
                        bytes_tensor(TEXT_PAIR_INPUT, b),
                    ],
                    outputs: None,
                },
            )
            .await?;
        Ok(PairScores {
            scores: f32s(&out.outputs, "score")?.to_vec(),
            logits: f32s(&out.outputs, "logit")?.to_vec(),
            tokens: tokens_of(&out.outputs),
            model: out.model,
            version: out.version,
            timing: out.timing,
        })
    }

    /// Ranks documents by relevance to a query with a cross-encoder, best first.
    pub async fn rerank(&self, caller: &Caller, req: Rerank) -> Result<Reranked, ApiError> {
        if req.documents.is_empty() {
            return Err(err(
                ErrorCode::InvalidInput,
                "documents must hold at least one document",
            ));
        }
        if req.top_n == Some(0) {
            return Err(err(ErrorCode::InvalidInput, "top_n must be at least 1"));
        }
        let pairs = req
            .documents
            .into_iter()
            .map(|d| (req.query.clone(), d))
            .collect();
        let out = self
            .score_pairs(
                caller,
                ScorePairs {
                    model: req.model,
                    pairs,
                },
            )
            .await?;
        let values = if req.raw_scores {
            &out.logits
        } else {
            &out.scores
        };
        let mut ranked: Vec<Ranked> = values
            .iter()
            .enumerate()
            .map(|(index, &score)| Ranked { index, score })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        if let Some(n) = req.top_n {
            ranked.truncate(n);
        }
        Ok(Reranked {
            model: out.model,
            version: out.version,
            ranked,
            tokens: out.tokens,
            timing: out.timing,
        })
    }

    /// Tokens of each text by the model's own tokenizer (the model is loaded if needed).
    pub async fn tokenize(
        &self,
        caller: &Caller,
        model: &str,
        texts: Vec<String>,
        add_special: bool,
    ) -> Result<Vec<Vec<Token>>, ApiError> {
        let started = Instant::now();
        self.text_model(caller, model)?;
        let r = self
            .core
            .tokenize(model, texts, add_special)
            .await
            .map_err(from);
        text_metrics("tokenize", model, &r, started);
        r
    }

    /// Token ids back to text by the model's own tokenizer.
    pub async fn decode(
        &self,
        caller: &Caller,
        model: &str,
        ids: Vec<Vec<u32>>,
        skip_special: bool,
    ) -> Result<Vec<String>, ApiError> {
        let started = Instant::now();
        self.text_model(caller, model)?;
        let r = self
            .core
            .decode(model, ids, skip_special)
            .await
            .map_err(from);
        text_metrics("decode", model, &r, started);
        r
    }
}

/// `herd_text_requests_total{op, model, status}` and `herd_text_request_duration_seconds` for the
/// tokenizer-only operations (inference ones are counted by `Service::infer`). Called after the
/// model was authorized, so `model` is a known name.
fn text_metrics<T>(op: &'static str, model: &str, r: &Result<T, ApiError>, started: Instant) {
    let status = match r {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    metrics::counter!("herd_text_requests_total", "op" => op, "model" => model.to_string(), "status" => status)
        .increment(1);
    metrics::histogram!("herd_text_request_duration_seconds", "op" => op, "model" => model.to_string())
        .record(started.elapsed().as_secs_f64());
}
