//! herd's text pipelines as pure functions: the steps a model's `config.toml` declares around an
//! ONNX model so a client sends text and gets an embedding or labels (issue 5).
//!
//! Owns: the `[pipeline]` config ([`PipelineConfig`]) and its check against a model signature
//! ([`PipelineConfig::bind`]); tokenization with the `tokenizers` crate ([`Preprocessor`]);
//! pair encoding for cross-encoders; pooling, L2 normalisation, softmax, top-k and sigmoid
//! ([`post`]).
//! Must not depend on: tokio, HTTP, inference engines, storage. The serving core runs the model
//! between [`Preprocessor::encode`] and [`post::embeddings`] / [`post::classify`].

pub mod config;
mod group;
pub mod post;
mod pre;

use std::path::PathBuf;

use herd_api::{ErrorCode, HasErrorCode};

pub use config::{
    Binding, ClassifierConfig, CrossEncoderConfig, InputNames, Padding, PipelineConfig,
    PipelineKind, Pooling,
};
pub use group::{length_groups, RunCost};
pub use post::{
    classify, embeddings, f32_output, l2_normalize, pair_logits, pool, sigmoid, softmax, top_k,
};
pub use pre::{texts_from_tensor, Encoded, Preprocessor, Token};

/// Errors of the pipeline steps. Config, tokenizer and signature problems surface when the model
/// loads (`model_load_failed`); text problems are the request's (`invalid_input`).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The `[pipeline]` table is invalid.
    #[error("invalid pipeline config: {0}")]
    Config(String),
    #[error(
        "tokenizer file {} not found; put the model's tokenizer.json there or set \
         [pipeline] tokenizer to its path inside the model directory",
        path.display()
    )]
    TokenizerMissing { path: PathBuf },
    #[error("tokenizer file {} could not be loaded: {reason}", path.display())]
    TokenizerInvalid { path: PathBuf, reason: String },
    /// The config does not fit the model's inputs/outputs.
    #[error("pipeline does not match the model: {0}")]
    Signature(String),
    #[error(
        "input '{input}' is {got}, but this model takes text: send a BYTES tensor of UTF-8 strings"
    )]
    NotText { input: String, got: String },
    #[error("input '{input}' element {index} is not UTF-8 text: {reason}")]
    NotUtf8 {
        input: String,
        index: usize,
        reason: String,
    },
    #[error("text {index} could not be tokenized: {reason}")]
    Tokenize { index: usize, reason: String },
    #[error(
        "text {index} has {tokens} tokens, more than max_length {max_length}, and truncation is \
         off; send a shorter text"
    )]
    TooLong {
        index: usize,
        tokens: usize,
        max_length: usize,
    },
    /// The model's output does not have the shape the post-processing needs.
    #[error("model output does not fit the pipeline: {0}")]
    Shape(String),
}

impl HasErrorCode for PipelineError {
    fn code(&self) -> ErrorCode {
        match self {
            PipelineError::Config(_)
            | PipelineError::TokenizerMissing { .. }
            | PipelineError::TokenizerInvalid { .. }
            | PipelineError::Signature(_)
            | PipelineError::Shape(_) => ErrorCode::ModelLoadFailed,
            PipelineError::NotText { .. }
            | PipelineError::NotUtf8 { .. }
            | PipelineError::Tokenize { .. }
            | PipelineError::TooLong { .. } => ErrorCode::InvalidInput,
        }
    }
}
