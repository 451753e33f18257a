//! ONNX files without an inference engine.
//!
//! Owns: a hand-written `prost` model of the part of `onnx.proto` herd needs ([`proto`]), reading a
//! model's input/output signature ([`read_signature`], or streaming and signature-only from a file
//! with [`scan_file`], which also lists external-data files), and writing tiny linear classifiers
//! ([`LinearClassifier`]) and token-id text classifiers ([`TextClassifier`]) with pure-Rust
//! reference `predict`s — what `herd demo` uses to write thousands of per-customer models —
//! and chains of matrix products whose runs take as long as a test needs ([`MatMulChain`]).
//! [`initializers`] plans the sharing of large initializers between models (keys, folding,
//! stripping) on the wire format.
//! Must not depend on: tokio, inference engines, HTTP, storage.

pub mod initializers;
pub mod proto;

mod chain;
mod classifier;
mod scan;
mod signature;
mod text_classifier;

pub use chain::MatMulChain;
pub use classifier::LinearClassifier;
pub use scan::{scan, scan_file, FileScan};
pub use signature::{data_type, read_signature, Signature};
pub use text_classifier::TextClassifier;

use herd_api::{ErrorCode, HasErrorCode};

/// Errors of this crate. Every variant is a problem with the caller's input.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not an ONNX model (random bytes, a text file, an empty file, no graph...).
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// A graph input or output has a type herd cannot serve.
    #[error(
        "{role} '{name}' has type {kind}, which herd cannot serve; \
         use one of BOOL, (U)INT8/16/32/64, FLOAT16, BFLOAT16, FLOAT, DOUBLE, STRING tensors"
    )]
    UnsupportedType {
        role: &'static str,
        name: String,
        kind: String,
    },
    /// Arguments that cannot describe a classifier (length mismatch, zero sizes).
    #[error("invalid classifier: {0}")]
    InvalidClassifier(String),
}

impl HasErrorCode for OnnxError {
    fn code(&self) -> ErrorCode {
        match self {
            OnnxError::NotOnnx(_)
            | OnnxError::UnsupportedType { .. }
            | OnnxError::InvalidClassifier(_) => ErrorCode::InvalidInput,
        }
    }
}
