//! Hugging Face text-embeddings-inference (TEI) wire types, as its published OpenAPI document
//! (TEI 1.7) describes them: `/embed`, `/predict`, `/rerank`, `/tokenize`, `/decode`, `/info`
//! and the error object `{"error", "error_type"}`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// One input: a text, or token ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum InputType {
    Text(String),
    Ids(Vec<u32>),
}

/// `inputs` of `/embed`: one input or a batch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Single(InputType),
    Batch(Vec<InputType>),
}

impl Input {
    pub fn into_vec(self) -> Vec<InputType> {
        match self {
            Input::Single(i) => vec![i],
            Input::Batch(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TruncationDirection {
    #[serde(alias = "left")]
    Left,
    #[default]
    #[serde(alias = "right")]
    Right,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbedRequest {
    pub inputs: Input,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: TruncationDirection,
    #[serde(default)]
    pub prompt_name: Option<String>,
    #[serde(default = "yes")]
    pub normalize: bool,
}

fn yes() -> bool {
    true
}

/// A predict sequence: one text or a pair.
#[derive(Debug, Clone, PartialEq)]
pub enum Sequence {
    Single(String),
    Pair(String, String),
}

/// `inputs` of `/predict`: `"text"`, `["a", "b"]` (a pair), or a batch `[["t"], ["a", "b"]]`.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictInput {
    Single(Sequence),
    Batch(Vec<Sequence>),
}

impl<'de> Deserialize<'de> for PredictInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Flat(Vec<String>),
            Batch(Vec<Vec<String>>),
        }
        let expecting = "a string, a pair of strings [string, string] or a batch of mixed \
                         strings and pairs [[string], [string, string], ...]";
        let seq = |mut v: Vec<String>| -> Result<Sequence, D::Error> {
            match v.len() {
                1 => Ok(Sequence::Single(v.remove(0))),
                2 => {
                    let b = v.remove(1);
                    Ok(Sequence::Pair(v.remove(0), b))
                }
                n => Err(D::Error::custom(format!(
                    "invalid length {n}, expected {expecting}"
                ))),
            }
        };
        match Raw::deserialize(d).map_err(|_| D::Error::custom(format!("expected {expecting}")))? {
            Raw::Text(t) => Ok(PredictInput::Single(Sequence::Single(t))),
            Raw::Flat(v) => seq(v).map(PredictInput::Single),
            Raw::Batch(b) if b.is_empty() => Err(D::Error::custom(format!(
                "invalid length 0, expected {expecting}"
            ))),
            Raw::Batch(b) => b
                .into_iter()
                .map(seq)
                .collect::<Result<_, _>>()
                .map(PredictInput::Batch),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PredictRequest {
    pub inputs: PredictInput,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: TruncationDirection,
    #[serde(default)]
    pub raw_scores: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub score: f32,
    pub label: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: TruncationDirection,
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default)]
    pub return_text: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rank {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    pub score: f32,
}

/// `inputs` of `/tokenize`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenizeInput {
    Single(String),
    Batch(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub inputs: TokenizeInput,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    #[serde(default)]
    pub prompt_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimpleToken {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// `ids` of `/decode`: one id list or several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum InputIds {
    Single(Vec<u32>),
    Batch(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct DecodeRequest {
    pub ids: InputIds,
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

/// `model_type` of `/info`: `{"embedding": {"pooling"}}`, `{"classifier": {...}}` or
/// `{"reranker": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    Embedding { pooling: String },
    Classifier(ClassifierModel),
    Reranker(ClassifierModel),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierModel {
    pub id2label: std::collections::BTreeMap<String, String>,
    pub label2id: std::collections::BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub model_id: String,
    pub model_sha: Option<String>,
    pub model_dtype: String,
    pub model_type: ModelType,
    pub max_concurrent_requests: usize,
    pub max_input_length: usize,
    pub max_batch_tokens: usize,
    pub max_batch_requests: Option<usize>,
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
    pub tokenization_workers: usize,
    pub version: String,
    pub sha: Option<String>,
    pub docker_label: Option<String>,
}

/// TEI's `ErrorType`; its HTTP status is fixed by the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorType {
    Unhealthy,
    Backend,
    Overloaded,
    Validation,
    Tokenizer,
}

impl ErrorType {
    /// TEI's status for the type (503, 424, 429, 413, 422).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorType::Unhealthy => 503,
            ErrorType::Backend => 424,
            ErrorType::Overloaded => 429,
            ErrorType::Validation => 413,
            ErrorType::Tokenizer => 422,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    pub error_type: ErrorType,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_accept_what_tei_accepts() {
        let r: EmbedRequest = serde_json::from_value(json!({"inputs": "hi"})).unwrap();
        assert_eq!(r.inputs.into_vec(), vec![InputType::Text("hi".into())]);
        assert!(r.normalize);
        let r: EmbedRequest =
            serde_json::from_value(json!({"inputs": ["a", "b"], "normalize": false})).unwrap();
        assert_eq!(r.inputs.into_vec().len(), 2);
        let r: EmbedRequest = serde_json::from_value(json!({"inputs": [1, 2]})).unwrap();
        assert_eq!(r.inputs.into_vec(), vec![InputType::Ids(vec![1, 2])]);
        let r: EmbedRequest =
            serde_json::from_value(json!({"inputs": "x", "truncation_direction": "Left"})).unwrap();
        assert_eq!(r.truncation_direction, TruncationDirection::Left);
    }

    #[test]
    fn predict_inputs_are_texts_pairs_or_batches() {
        let p = |v| serde_json::from_value::<PredictInput>(v);
        assert_eq!(
            p(json!("t")).unwrap(),
            PredictInput::Single(Sequence::Single("t".into()))
        );
        assert_eq!(
            p(json!(["a", "b"])).unwrap(),
            PredictInput::Single(Sequence::Pair("a".into(), "b".into()))
        );
        assert_eq!(
            p(json!([["t"], ["a", "b"]])).unwrap(),
            PredictInput::Batch(vec![
                Sequence::Single("t".into()),
                Sequence::Pair("a".into(), "b".into())
            ])
        );
        assert!(p(json!(["a", "b", "c"])).is_err());
        assert!(p(json!([["a", "b", "c"]])).is_err());
        assert!(p(json!(3)).is_err());
    }

    #[test]
    fn answers_have_tei_field_names() {
        let info = Info {
            model_id: "m".into(),
            model_sha: None,
            model_dtype: "float32".into(),
            model_type: ModelType::Embedding {
                pooling: "mean".into(),
            },
            max_concurrent_requests: 1,
            max_input_length: 256,
            max_batch_tokens: 1,
            max_batch_requests: None,
            max_client_batch_size: 1,
            auto_truncate: true,
            tokenization_workers: 1,
            version: "x".into(),
            sha: None,
            docker_label: None,
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["model_type"], json!({"embedding": {"pooling": "mean"}}));
        let e = ErrorResponse {
            error: "no".into(),
            error_type: ErrorType::Validation,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"error": "no", "error_type": "Validation"})
        );
        let r = Rank {
            index: 1,
            text: None,
            score: 0.5,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"index": 1, "score": 0.5})
        );
    }
}
