//! herd's queued work.
//!
//! Owns: the job model ([`JobSpec`], [`Job`], the kinds `batch-infer` and `command`), the
//! [`Queue`] trait with its two backends chosen by URL ([`connect`]: `sqlite://PATH`, the embedded
//! default, and `redis://HOST:PORT[/DB]`), leases, retries with exponential backoff and jitter,
//! the dead letter, retention, the worker loop ([`worker`]) and the job runners ([`run`]).
//! Must not depend on: HTTP servers (it is an HTTP *client* of `herd serve` for batch-infer only),
//! inference engines.
//!
//! Delivery is at least once: a worker claims a job with a lease, renews it while it works and acks
//! it at the end; a lease that expires (the worker died) makes the job claimable again. Every lease
//! carries a token, so a worker whose lease was lost cannot ack, fail or release a job that another
//! worker now holds. Job runners write their results idempotently (temp file + atomic rename keyed
//! by job id), so a job that runs twice does not duplicate its side effects.

mod batch;
mod clock;
mod error;
mod model;
mod queue;
pub mod redis_queue;
pub mod run;
pub mod sqlite;
pub mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::JobsError;
pub use model::*;
pub use queue::{backoff_delay_ms, Queue};

use std::sync::Arc;

/// The queue URL used when none is given: an SQLite file under `.herd/` in the current directory.
pub const DEFAULT_QUEUE_URL: &str = "sqlite://.herd/jobs.db";

/// Options for [`connect_with`].
#[derive(Clone)]
pub struct ConnectOptions {
    /// Source of "now" for leases, delays and retention. Tests pass a [`ManualClock`].
    pub clock: Arc<dyn Clock>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            clock: Arc::new(SystemClock),
        }
    }
}

/// Opens the queue named by `url`: `sqlite://PATH` (created if missing; the default is
/// [`DEFAULT_QUEUE_URL`]) or `redis://HOST:PORT[/DB]`. Any other scheme is an error that names
/// the supported ones.
pub async fn connect(url: &str) -> Result<Arc<dyn Queue>, JobsError> {
    connect_with(url, ConnectOptions::default()).await
}

/// [`connect`] with explicit options (a clock for tests).
pub async fn connect_with(url: &str, opts: ConnectOptions) -> Result<Arc<dyn Queue>, JobsError> {
    let url = url.trim();
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let q = sqlite::SqliteQueue::open(path, opts.clock).await?;
        return Ok(Arc::new(q));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let q = redis_queue::RedisQueue::open(url, opts.clock).await?;
        return Ok(Arc::new(q));
    }
    Err(JobsError::UnsupportedUrl {
        url: url.to_string(),
    })
}

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
        assert_eq!(
            herd_api::HasErrorCode::code(&err),
            herd_api::ErrorCode::InvalidInput
        );
    }
}
