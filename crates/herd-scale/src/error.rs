//! The one error type of herd-scale, with its stable code for the HTTP layer.

use herd_api::{ErrorCode, HasErrorCode};

/// Everything that can go wrong while loading a policy, deciding, or applying decisions.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The policy file is not valid TOML, has a wrong type or an unknown field, or fails validation.
    #[error("invalid policy {source_name}: {message}")]
    Policy {
        source_name: String,
        message: String,
    },
    /// The policy file could not be read.
    #[error("cannot read policy file {path}: {source}; check the path given to --policy")]
    PolicyRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A child process (`herd worker` / `herd serve`) could not be started or stopped.
    #[error("local backend: {0}")]
    Process(String),
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// No Kubernetes configuration (no in-cluster service account, no kubeconfig).
    #[error("cannot configure a Kubernetes client: {0}; run inside a cluster or set KUBECONFIG")]
    KubeConfig(String),
    /// Reading a server's `/metrics` or a queue's stats failed.
    #[error("observe {what}: {message}")]
    Observe { what: String, message: String },
    /// A server refused the autoscaler's `/metrics` scrape (401/403): no token, an unknown one,
    /// or one without the `metrics` scope. Not zero load: the pool is left alone.
    #[error("metrics of {what}: HTTP {status}: {hint}")]
    MetricsAuth {
        what: String,
        status: u16,
        hint: String,
    },
    /// The metrics token file could not be read or is empty.
    #[error("metrics token file {path}: {message}")]
    MetricsToken { path: String, message: String },
    /// Bad manifest options (names, sizes).
    #[error("manifest options: {0}")]
    Manifest(String),
    /// Writing rendered manifests failed.
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl HasErrorCode for ScaleError {
    fn code(&self) -> ErrorCode {
        match self {
            ScaleError::Policy { .. }
            | ScaleError::Manifest(_)
            | ScaleError::MetricsToken { .. } => ErrorCode::InvalidInput,
            ScaleError::MetricsAuth { .. } => ErrorCode::Unauthorized,
            ScaleError::PolicyRead { .. } => ErrorCode::NotFound,
            ScaleError::KubeConfig(_) | ScaleError::Observe { .. } => ErrorCode::Unavailable,
            ScaleError::Process(_) | ScaleError::Kube { .. } | ScaleError::Write { .. } => {
                ErrorCode::Internal
            }
        }
    }
}

pub type Result<T, E = ScaleError> = std::result::Result<T, E>;
