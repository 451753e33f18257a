//! The registry's one error type. Every variant has a stable code (see `herd_api::ErrorCode`) and a
//! message that tells the user what to do next.

use herd_api::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The caller passed something the registry cannot accept (bad name, mutable reference,
    /// non-ONNX file, malformed release file...). The message says how to fix it.
    #[error("{0}")]
    InvalidInput(String),
    /// A model, version, alias, release, channel or backup that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not change this (another tenant's model, or a shared model without a
    /// tenant, which only admins may change).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with what is stored (e.g. restore into a non-empty registry).
    #[error("{0}")]
    Conflict(String),
    /// The registry or artifacts URL is malformed or names an unsupported scheme.
    #[error("{0}")]
    Config(String),
    /// The metadata database failed.
    #[error("registry database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed (the database may be newer than this herd, or unreachable).
    #[error("registry database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The artifact store failed.
    #[error("artifact store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// A local file could not be read or written.
    #[error("{context}: {error}")]
    Io {
        context: String,
        /// Kept out of the `source()` chain: the message already includes it.
        error: std::io::Error,
    },
    /// Stored data is inconsistent (digest mismatch, release id mismatch, corrupt backup).
    #[error("integrity check failed: {0}")]
    Integrity(String),
}

impl RegistryError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RegistryError::Io {
            context: context.into(),
            error: source,
        }
    }
}

impl HasErrorCode for RegistryError {
    fn code(&self) -> ErrorCode {
        match self {
            RegistryError::InvalidInput(_) => ErrorCode::InvalidInput,
            RegistryError::NotFound(_) => ErrorCode::NotFound,
            RegistryError::Conflict(_) => ErrorCode::Conflict,
            RegistryError::Forbidden(_) => ErrorCode::Forbidden,
            RegistryError::Config(_) => ErrorCode::InvalidInput,
            RegistryError::Database(_) => ErrorCode::Internal,
            RegistryError::Migrate(_) => ErrorCode::Internal,
            RegistryError::ObjectStore(object_store::Error::NotFound { .. }) => ErrorCode::NotFound,
            RegistryError::ObjectStore(_) => ErrorCode::Unavailable,
            RegistryError::Io { .. } => ErrorCode::Internal,
            RegistryError::Integrity(_) => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
