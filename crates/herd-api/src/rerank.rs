//! Cohere / Jina style `POST /v1/rerank`: `{model, query, documents, top_n, return_documents}`
//! in, `{id, model, results: [{index, relevance_score, document: {text}}], usage, meta}` out
//! (Cohere's `meta.billed_units` and Jina's `usage` both present, so either SDK reads it).

use serde::{Deserialize, Serialize};

/// A document: a string, or an object with `text` (Cohere and Jina accept both).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    pub fn into_text(self) -> String {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RerankRequest {
    pub model: String,
    pub query: String,
    pub documents: Vec<Document>,
    #[serde(default)]
    pub top_n: Option<usize>,
    #[serde(default)]
    pub return_documents: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentText {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    pub index: usize,
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub document: Option<DocumentText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub total_tokens: u64,
    pub prompt_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResponse {
    pub id: String,
    pub model: String,
    pub results: Vec<RerankResult>,
    pub usage: Usage,
    pub meta: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_strings_or_objects() {
        let r: RerankRequest = serde_json::from_value(json!({
            "model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1
        }))
        .unwrap();
        let docs: Vec<String> = r.documents.into_iter().map(Document::into_text).collect();
        assert_eq!(docs, vec!["a", "b"]);
        assert_eq!(r.top_n, Some(1));
        assert!(
            serde_json::from_value::<RerankRequest>(json!({"query": "q", "documents": []}))
                .is_err()
        );
    }
}
