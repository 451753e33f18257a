//! Inference backends for herd.
//!
//! Owns: the [`Backend`] / [`Instance`] traits that the serving core drives, the ONNX Runtime
//! backend (through `ort` with `load-dynamic`), finding and installing `libonnxruntime`
//! ([`install`]), tensor conversion, and measuring how much memory a loaded model takes
//! ([`memory`]). Must not depend on: HTTP, storage, tokio.
//!
//! An [`Instance`] is run with exclusive access (`&mut self`, as ONNX Runtime's `Session::run`
//! requires); the core keeps a small pool of instances per loaded model for concurrency.

use std::path::{Path, PathBuf};

use herd_api::v2::{Tensor, TensorMetadata};
use herd_api::{ErrorCode, HasErrorCode};

pub mod install;
pub mod memory;
mod ort_backend;
pub mod shared;

pub use ort_backend::OrtBackend;

/// The input/output signature of a loaded model, read from the model itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// How to build an instance.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Threads one inference may use inside an operator; 0 = the backend's shared default.
    pub intra_threads: usize,
}

/// An inference engine. Implementations must be cheap to share across threads.
pub trait Backend: Send + Sync + 'static {
    /// Short engine name shown in metadata (`platform`), e.g. `onnxruntime_onnx`.
    fn platform(&self) -> &'static str;
    /// Builds one runnable instance of the model file at `path`. Blocking; call off the async runtime.
    fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Box<dyn Instance>, RuntimeError>;
}

/// One runnable copy of a model. Not shared: the caller holds it exclusively while running.
pub trait Instance: Send {
    fn signature(&self) -> &Signature;
    /// Runs the model. `inputs` are already validated against the signature by the caller.
    /// Returns every output of the model, in signature order.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError>;
    /// The weights this instance shares with other instances ([`shared`]); none by default.
    fn sharing(&self) -> shared::Sharing {
        shared::Sharing::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in: {}). Run `herd runtime install`, or point HERD_ORT_LIB at libonnxruntime.so.{}",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        install::ORT_VERSION
    )]
    LibraryMissing { searched: Vec<PathBuf> },
    #[error("could not load ONNX Runtime from {path}: {reason}")]
    LibraryBroken { path: PathBuf, reason: String },
    #[error("installing ONNX Runtime failed: {0}")]
    Install(String),
    #[error("model file {path} could not be loaded: {reason}")]
    LoadFailed { path: PathBuf, reason: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("inference failed: {0}")]
    Run(String),
}

impl HasErrorCode for RuntimeError {
    fn code(&self) -> ErrorCode {
        match self {
            RuntimeError::LibraryMissing { .. }
            | RuntimeError::LibraryBroken { .. }
            | RuntimeError::Install(_)
            | RuntimeError::LoadFailed { .. } => ErrorCode::ModelLoadFailed,
            RuntimeError::InvalidInput(_) => ErrorCode::InvalidInput,
            RuntimeError::Run(_) => ErrorCode::Internal,
        }
    }
}
