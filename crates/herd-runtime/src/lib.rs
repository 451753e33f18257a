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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herd_api::v2::{Tensor, TensorMetadata};
use herd_api::{ErrorCode, HasErrorCode};

pub mod adapters;
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
    /// A LoRA adapter file (ONNX Runtime `.onnx_adapter`) to activate on every run of the model
    /// at `path`; instances with adapters on one base file share one session of it.
    pub adapter: Option<std::path::PathBuf>,
    /// A session of the whole model, never a head on a shared trunk: for a model's second and
    /// later instances, which must run side by side (the instances of one model hold the same
    /// tensors, so they would otherwise share one trunk session and take turns on it).
    pub whole: bool,
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

    /// Runs the model unless `cancel` fires first; an engine that can stop a run in progress
    /// (ONNX Runtime's run-options terminate flag) does so and answers
    /// [`RuntimeError::Cancelled`]. The default only checks before starting.
    fn run_cancellable(
        &mut self,
        inputs: Vec<Tensor>,
        cancel: &Cancel,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        self.run(inputs)
    }
}

type Hook = Box<dyn FnOnce() + Send>;

/// A run's cancellation, shared by the request (which fires it when nobody waits for the answer
/// any more: timeout, client gone) and the engine (which registers how to stop a run).
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    hook: Mutex<Option<Hook>>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Fires: marks the run cancelled and calls the registered hook (once).
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let hook = self.0.hook.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = hook {
            h();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Registers what stops the run in progress (replacing an earlier hook); called at once if
    /// already cancelled.
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        let mut slot = self.0.hook.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_cancelled() {
            drop(slot);
            hook();
            return;
        }
        *slot = Some(Box::new(hook));
    }

    /// Removes the hook (the run is over).
    pub fn clear(&self) {
        self.0.hook.lock().unwrap_or_else(|p| p.into_inner()).take();
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
    #[error("the run was cancelled: nobody waits for its answer any more")]
    Cancelled,
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
            RuntimeError::Cancelled => ErrorCode::Unavailable,
        }
    }
}
