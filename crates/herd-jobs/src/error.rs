//! The one error type of herd-jobs, with its stable code for the HTTP layer.

use herd_api::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("unsupported queue URL '{url}': use sqlite://PATH (the default is sqlite://.herd/jobs.db), redis://HOST:PORT[/DB], redis+cluster://HOST:PORT,HOST:PORT or postgres://USER@HOST/DB")]
    UnsupportedUrl { url: String },

    #[error("invalid queue URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid job: {0}")]
    InvalidSpec(String),

    #[error("{0}")]
    InvalidArgument(String),

    #[error("job '{0}' not found (list jobs with `herd job list`)")]
    NotFound(String),

    #[error("job '{job_id}': this worker's lease is gone (it expired or the job was released); another worker may be running it")]
    LeaseLost { job_id: String },

    #[error("job '{id}' is {state}: only dead jobs can be requeued")]
    NotDead { id: String, state: String },

    #[error("job '{id}' is {state}: only waiting, delayed or running jobs can be cancelled")]
    NotCancellable { id: String, state: String },

    #[error("{0}")]
    Forbidden(String),

    #[error("SQLite queue {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("PostgreSQL queue {url}: {source}")]
    Postgres {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("Redis queue: {0} (is redis-server running and the URL right?)")]
    // Not `#[from]`/`#[source]`: the message already holds the Redis error, and as a source it
    // was printed two more times by every `{:#}` chain.
    Redis(redis::RedisError),

    #[error("stored job record is unreadable: {0}")]
    Corrupt(String),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("bad input file {path}: {message}")]
    BadInput { path: String, message: String },

    #[error("inference server {server}: {message}")]
    Server { server: String, message: String },
}

impl JobsError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        JobsError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl HasErrorCode for JobsError {
    fn code(&self) -> ErrorCode {
        match self {
            JobsError::UnsupportedUrl { .. }
            | JobsError::InvalidUrl { .. }
            | JobsError::InvalidSpec(_)
            | JobsError::InvalidArgument(_)
            | JobsError::BadInput { .. } => ErrorCode::InvalidInput,
            JobsError::NotFound(_) => ErrorCode::NotFound,
            JobsError::LeaseLost { .. }
            | JobsError::NotDead { .. }
            | JobsError::NotCancellable { .. } => ErrorCode::Conflict,
            JobsError::Forbidden(_) => ErrorCode::Forbidden,
            JobsError::Redis(_) | JobsError::Postgres { .. } | JobsError::Server { .. } => {
                ErrorCode::Unavailable
            }
            JobsError::Sqlite { .. } | JobsError::Corrupt(_) | JobsError::Io { .. } => {
                ErrorCode::Internal
            }
        }
    }
}

impl From<redis::RedisError> for JobsError {
    fn from(e: redis::RedisError) -> Self {
        JobsError::Redis(e)
    }
}
