//! OpenAI wire types herd speaks under `/v1`: embeddings, the model list, and the error object
//! the `openai` SDKs read (`{"error": {"message", "type", "param", "code"}}`).

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
}

/// A text, texts, a token array (cl100k ids) or token arrays.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenArrays(Vec<Vec<u32>>),
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

/// The error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

impl ErrorBody {
    /// herd's code becomes `code`; `type` is the OpenAI class of the HTTP status.
    pub fn new(code: ErrorCode, message: impl Into<String>, param: Option<&str>) -> ErrorBody {
        let kind = match code.http_status() {
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        ErrorBody {
            error: ErrorObject {
                message: message.into(),
                kind: kind.to_string(),
                param: param.map(str::to_string),
                code: Some(code.as_str().to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_forms() {
        let p = |s: &str| serde_json::from_str::<EmbeddingInput>(s).unwrap();
        assert_eq!(p(r#""a""#), EmbeddingInput::Text("a".into()));
        assert_eq!(
            p(r#"["a","b"]"#),
            EmbeddingInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(p("[1,2]"), EmbeddingInput::Tokens(vec![1, 2]));
        assert_eq!(
            p("[[1],[2,3]]"),
            EmbeddingInput::TokenArrays(vec![vec![1], vec![2, 3]])
        );
        assert!(serde_json::from_str::<EmbeddingInput>("[-1]").is_err());
    }

    #[test]
    fn error_object_shape() {
        let v = serde_json::to_value(ErrorBody::new(
            ErrorCode::ModelNotFound,
            "no",
            Some("model"),
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "no", "type": "invalid_request_error",
                "param": "model", "code": "model_not_found"}})
        );
    }
}
