//! Infinity (`infinity_emb`) wire types: `/embeddings`, `/classify`, `/rerank`, `/models`, as
//! its pydantic models (`infinity_emb/fastapi_schemas/pymodels.py`) define them. Errors are
//! OpenAI error objects ([`crate::openai::ErrorBody`]).

use serde::{Deserialize, Serialize};

fn default_model() -> String {
    "default/not-specified".into()
}

/// A text or texts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Texts::One(t) => vec![t],
            Texts::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsRequest {
    pub input: Texts,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub modality: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClassifyRequest {
    pub input: Vec<String>,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub raw_scores: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RerankRequest {
    pub query: String,
    pub documents: Vec<String>,
    #[serde(default)]
    pub return_documents: bool,
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub top_n: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingObject {
    pub object: String,
    pub embedding: serde_json::Value,
    pub index: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResult {
    pub object: String,
    pub data: Vec<EmbeddingObject>,
    pub model: String,
    pub usage: Usage,
    pub id: String,
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyObject {
    pub score: f32,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyResult {
    pub object: String,
    pub data: Vec<Vec<ClassifyObject>>,
    pub model: String,
    pub usage: Usage,
    pub id: String,
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankObject {
    pub relevance_score: f32,
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub document: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    pub object: String,
    pub results: Vec<RerankObject>,
    pub model: String,
    pub usage: Usage,
    pub id: String,
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub stats: serde_json::Map<String, serde_json::Value>,
    pub object: String,
    pub owned_by: String,
    pub created: u64,
    pub backend: String,
    /// `embed`, `classify` or `rerank`.
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub data: Vec<ModelInfo>,
    pub object: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_take_infinity_defaults() {
        let r: EmbeddingsRequest = serde_json::from_value(json!({"input": "hi"})).unwrap();
        assert_eq!(r.model, "default/not-specified");
        assert_eq!(r.input.into_vec(), vec!["hi"]);
        let r: RerankRequest =
            serde_json::from_value(json!({"query": "q", "documents": ["a"], "model": "m"}))
                .unwrap();
        assert!(!r.return_documents && !r.raw_scores && r.top_n.is_none());
        assert!(serde_json::from_value::<ClassifyRequest>(json!({"input": "x"})).is_err());
    }
}
