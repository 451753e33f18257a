//! herd's queued work.
//!
//! Owns: the job model ([`JobSpec`], [`Job`], the kinds `batch-infer` and `command`), the
//! [`Queue`] trait with its backends chosen by URL ([`connect`]: `sqlite://PATH`, the embedded
//! default, `redis://` / `redis+cluster://` and `postgres://`), leases, retries with exponential backoff and jitter,
//! the dead letter, retention, the worker loop ([`worker`]) and the job runners ([`run`]).
//! Must not depend on: HTTP servers (it is an HTTP *client* of `herd serve` for batch-infer only),
//! inference engines.
//!
//! Delivery is at least once: a worker claims a job with a lease, renews it while it works and acks
//! it at the end; a lease that expires (the worker died) makes the job claimable again. Every lease
//! carries a token, so a worker whose lease was lost cannot ack, fail or release a job that another
//! worker now holds. Job runners write their results idempotently (temp file + atomic rename keyed
//! by job id), so a job that runs twice does not duplicate its side effects.

pub mod api;
pub mod batch;
mod clock;
mod error;
mod model;
mod queue;
pub mod redis_queue;
pub mod run;
pub mod sql;
pub mod storage;
pub mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::JobsError;
pub use model::*;
pub use queue::{backoff_delay_ms, Queue};

use std::sync::Arc;

/// The queue URL used when none is given: an SQLite file under `.herd/` in the current directory.
pub const DEFAULT_QUEUE_URL: &str = "sqlite://.herd/jobs.db";

/// Options for [`connect_with`].
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// A test clock for leases, delays and retention. `None` (the default): the store's clock
    /// (Redis `TIME`, the database's `now()`; for the embedded SQLite file, this host's clock),
    /// so workers whose wall clocks disagree still agree on who holds a lease.
    pub clock: Option<Arc<dyn Clock>>,
}

impl ConnectOptions {
    /// Options with a test clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        ConnectOptions { clock: Some(clock) }
    }
}

/// Opens the queue named by `url`: `sqlite://PATH` (created if missing; the default is
/// [`DEFAULT_QUEUE_URL`]) or `postgres://` (both [`sql::SqlQueue`]), `redis://` / `rediss://`
/// or `redis+cluster://` (see [`redis_queue`]). Any other scheme is an error that names the
/// supported ones.
pub async fn connect(url: &str) -> Result<Arc<dyn Queue>, JobsError> {
    connect_with(url, ConnectOptions::default()).await
}

/// [`connect`] with explicit options (a clock for tests).
pub async fn connect_with(url: &str, opts: ConnectOptions) -> Result<Arc<dyn Queue>, JobsError> {
    let url = url.trim();
    if ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        let q = sql::SqlQueue::open(url, opts.clock).await?;
        return Ok(Arc::new(q));
    }
    if [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ]
    .iter()
    .any(|p| url.starts_with(p))
    {
        let q = redis_queue::RedisQueue::open(url, opts.clock).await?;
        return Ok(Arc::new(q));
    }
    Err(JobsError::UnsupportedUrl {
        url: redact_url(url),
    })
}

/// `url` with any password replaced by `***`, for logs and errors (see [`herd_db::redact_url`]).
pub use herd_db::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scheme_names_the_supported_ones() {
        let err = match connect("amqp://localhost").await {
            Ok(_) => panic!("amqp must be rejected"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains("amqp://localhost"), "{msg}");
        assert!(msg.contains("sqlite://"), "{msg}");
        assert!(msg.contains("redis://"), "{msg}");
        let err = match connect("amqp://u:hunter2@localhost").await {
            Ok(_) => panic!("amqp must be rejected"),
            Err(e) => e,
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(
            herd_api::HasErrorCode::code(&err),
            herd_api::ErrorCode::InvalidInput
        );
    }
}
