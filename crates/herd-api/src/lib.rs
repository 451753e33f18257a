//! Wire types of herd.
//!
//! Owns: the KServe v2 / Open Inference Protocol request and response types, tensor data types,
//! the OpenAI, TEI, Infinity and Cohere/Jina rerank DTOs,
//! and the single table that binds every error code to its HTTP status ([`ErrorCode`]).
//! Must not depend on: tokio, axum, inference engines, storage.

pub mod error;
pub mod infinity;
pub mod jobs;
pub mod openai;
pub mod rerank;
pub mod tei;
pub mod units;
pub mod v2;

pub use error::{ApiError, ErrorCode, HasErrorCode};
