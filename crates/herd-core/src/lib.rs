//! The serving core of herd.
//!
//! Owns: the model cache (memory budget, measured charges, eviction by GreedyDual-Size-Frequency
//! or LRU, single-flight loads on a bounded loader pool, pins, warm-up), per-model dynamic
//! batching with bounded queues and instance pools, input validation, and the [`ModelSource`]
//! trait through which models are found (a directory now, a registry release later).
//! Must not depend on: HTTP (axum), storage engines.

mod cache;
pub mod config;
mod limits;
mod model;
pub mod overrides;
pub mod pipeline;
pub mod policy;
pub mod source;
mod validate;

use std::time::Duration;

use herd_api::{ErrorCode, HasErrorCode};

pub use cache::{CacheStats, Core, IndexEntry, InferOutput, InferRequest, ModelState, Timing};
pub use config::ModelConfig;
pub use source::{DirectorySource, ModelEntry, ModelSource, Serving};

/// Eviction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionPolicy {
    /// GreedyDual-Size-Frequency: keeps models that are used often, cheap in memory and slow to
    /// load; ages out the rest.
    Gdsf,
    /// Least recently used, for comparison.
    Lru,
}

impl std::str::FromStr for EvictionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gdsf" => Ok(EvictionPolicy::Gdsf),
            "lru" => Ok(EvictionPolicy::Lru),
            other => Err(format!(
                "unknown eviction policy '{other}'; use gdsf or lru"
            )),
        }
    }
}

/// Bounds on one request, checked before any work is done (protocol-neutral: every wire format
/// reaches them through [`Core::infer`]). Server-wide defaults; a model's `config.toml` may
/// override each (same key names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Rows (first, batch dimension) of one request to a tensor model.
    pub max_rows_per_request: usize,
    /// Texts of one request to a text pipeline (OpenAI's own limit is 2,048 inputs).
    pub max_texts_per_request: usize,
    /// Characters of one text. Longer texts are cut to this before tokenizing when the pipeline
    /// truncates (`truncation = true`), else refused.
    pub max_chars_per_text: usize,
    /// Tokens (after truncation to `max_length`) of all texts of one request together.
    pub max_tokens_per_request: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_rows_per_request: 8192,
            max_texts_per_request: 2048,
            max_chars_per_text: 32_768,
            max_tokens_per_request: 300_000,
        }
    }
}

impl RequestLimits {
    /// These limits with a model's overrides applied.
    pub fn for_model(&self, cfg: &ModelConfig) -> RequestLimits {
        RequestLimits {
            max_rows_per_request: cfg
                .max_rows_per_request
                .unwrap_or(self.max_rows_per_request),
            max_texts_per_request: cfg
                .max_texts_per_request
                .unwrap_or(self.max_texts_per_request),
            max_chars_per_text: cfg.max_chars_per_text.unwrap_or(self.max_chars_per_text),
            max_tokens_per_request: cfg
                .max_tokens_per_request
                .unwrap_or(self.max_tokens_per_request),
        }
    }
}

/// Settings of the core (a part of the server's settings).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Bytes that loaded models may take in all.
    pub memory_budget: u64,
    pub policy: EvictionPolicy,
    /// Loads that may run at the same time (the loader pool).
    pub load_concurrency: usize,
    /// Requests that may wait in one model's queue; more are refused with 429.
    pub queue_capacity: usize,
    /// Longest time a request may take in all (load, queue, inference); then 504.
    pub request_timeout: Duration,
    /// A model that failed to load is retried on demand after this long.
    pub failed_retry_after: Duration,
    /// How long a load waits for an in-use model to become evictable before answering 503.
    pub room_wait: Duration,
    /// Server-wide request limits (models may override them in `config.toml`).
    pub limits: RequestLimits,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            memory_budget: 1 << 30,
            policy: EvictionPolicy::Gdsf,
            load_concurrency: 2,
            queue_capacity: 256,
            request_timeout: Duration::from_secs(30),
            failed_retry_after: Duration::from_secs(10),
            room_wait: Duration::from_secs(2),
            limits: RequestLimits::default(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    #[error("model '{0}' not found in the repository")]
    ModelNotFound(String),
    #[error("model '{model}' has no served version '{version}'")]
    VersionNotFound { model: String, version: String },
    #[error("model '{model}': invalid config.toml: {reason}")]
    BadConfig { model: String, reason: String },
    #[error("{0}")]
    BadRepository(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("model '{model}' version {version} failed to load: {reason}")]
    LoadFailed {
        model: String,
        version: String,
        reason: String,
    },
    #[error("model '{model}' needs about {needed} bytes, more than the whole memory budget of {budget} bytes; raise --memory-budget")]
    TooLarge {
        model: String,
        needed: u64,
        budget: u64,
    },
    #[error("model '{model}' needs about {needed} bytes but only {free} bytes can be freed now ({reason}); retry shortly")]
    NoRoom {
        model: String,
        needed: u64,
        free: u64,
        reason: String,
    },
    #[error(
        "model '{model}' is overloaded: its queue of {capacity} requests is full; retry shortly"
    )]
    Overloaded { model: String, capacity: usize },
    #[error("request to model '{model}' timed out after {after:?}")]
    Timeout { model: String, after: Duration },
    #[error("model '{0}' is not loaded")]
    NotReady(String),
    #[error("model '{model}' failed during inference: {reason}")]
    Inference { model: String, reason: String },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A request over one of the [`RequestLimits`]; refused before any work.
    #[error(
        "model '{model}': {got} {what} is more than {limit} = {max}; send at most {max} ({hint})",
        hint = limit_hint(limit)
    )]
    LimitExceeded {
        model: String,
        /// The limit's name, as the config key (`max_texts_per_request`, ...).
        limit: &'static str,
        max: u64,
        got: u64,
        /// What was counted, e.g. "texts in one request".
        what: String,
    },
}

/// Where a request limit is set, for its error message.
fn limit_hint(limit: &str) -> String {
    match limit {
        // A property of the model's shapes: its config.toml only.
        "max_dynamic_dim" => format!("the model's config.toml sets {limit}"),
        _ => format!(
            "the server sets it with --{}, a model with {limit} in its config.toml",
            limit.replace('_', "-")
        ),
    }
}

impl HasErrorCode for CoreError {
    fn code(&self) -> ErrorCode {
        match self {
            CoreError::ModelNotFound(_) | CoreError::VersionNotFound { .. } => {
                ErrorCode::ModelNotFound
            }
            CoreError::BadConfig { .. } | CoreError::LoadFailed { .. } => {
                ErrorCode::ModelLoadFailed
            }
            CoreError::BadRepository(_) => ErrorCode::Internal,
            CoreError::InvalidInput(_) => ErrorCode::InvalidInput,
            CoreError::TooLarge { .. } => ErrorCode::ModelTooLarge,
            CoreError::NoRoom { .. } | CoreError::ShuttingDown => ErrorCode::Unavailable,
            CoreError::Overloaded { .. } => ErrorCode::Overloaded,
            CoreError::Timeout { .. } => ErrorCode::Timeout,
            CoreError::NotReady(_) => ErrorCode::ModelNotReady,
            CoreError::Inference { .. } => ErrorCode::Internal,
            CoreError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
        }
    }
}
