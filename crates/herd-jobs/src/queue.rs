//! The queue contract shared by the SQL (SQLite, PostgreSQL) and Redis backends.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use crate::{
    Backoff, FailOutcome, Failure, Job, JobId, JobOutcome, JobsError, Lease, ListFilter, Progress,
    QueueStats,
};

/// A durable job queue with leases. Every backend implements exactly these semantics (one test
/// suite, `tests/queue.rs`, runs against all of them):
///
/// * `claim` hands out the highest-priority claimable job of the given queues (waiting, delayed
///   whose time has come, or running whose lease expired), oldest first, and increments its
///   attempts. An expired job that already used all its attempts goes to the dead letter instead.
/// * `renew`, `ack`, `fail` and `release` need the lease's token; a stale lease gets
///   [`JobsError::LeaseLost`] and changes nothing.
/// * `fail` delays a retryable failure with exponential backoff and jitter (see
///   [`backoff_delay_ms`]) until `max_attempts`, then moves the job to the dead letter.
/// * `release` gives the job back at once without using up an attempt (graceful shutdown).
#[async_trait]
pub trait Queue: Send + Sync {
    /// `sqlite`, `redis` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Adds a job; it is claimable at once.
    async fn enqueue(&self, spec: crate::JobSpec) -> Result<JobId, JobsError>;

    /// Claims one job from `queues` for `lease`, or `None` when nothing is claimable.
    async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<Option<Lease>, JobsError>;

    /// Extends the lease to now + `extend`, storing the progress if given.
    async fn renew(
        &self,
        lease: &mut Lease,
        extend: Duration,
        progress: Option<&Progress>,
    ) -> Result<(), JobsError>;

    /// Marks the job done with its outcome.
    async fn ack(&self, lease: &Lease, outcome: &JobOutcome) -> Result<(), JobsError>;

    /// Records a failed attempt: retry later, or dead letter.
    async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, JobsError>;

    /// Gives the job back, claimable at once; the attempt does not count.
    async fn release(&self, lease: &Lease) -> Result<(), JobsError>;

    /// Moves dead jobs of `queue` back to waiting with fresh attempts: the one named by `id`, or
    /// all of them. Returns how many moved.
    async fn requeue_dead(&self, queue: &str, id: Option<&str>) -> Result<u64, JobsError>;

    /// Cancels a waiting, delayed or running job: it moves to the dead letter with `reason` as
    /// its last error (so `requeue_dead` can bring it back). A running job's lease is revoked,
    /// so its worker's next renewal gets [`JobsError::LeaseLost`] and the worker stops the job
    /// (a `command` job's whole process group is terminated). Returns the state it was in;
    /// [`JobsError::NotFound`] for an unknown id, [`JobsError::NotCancellable`] for a job that
    /// is done or dead already.
    async fn cancel(&self, id: &str, reason: &str) -> Result<crate::JobState, JobsError>;

    /// Jobs, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, JobsError>;

    /// One job.
    async fn show(&self, id: &str) -> Result<Option<Job>, JobsError>;

    /// Removes done and dead jobs that finished more than `retention` ago. Returns how many.
    async fn purge(&self, retention: Duration) -> Result<u64, JobsError>;

    /// Counts for one queue.
    async fn stats(&self, queue: &str) -> Result<QueueStats, JobsError>;

    /// Worker ids that hold an unexpired lease on a job of `queue`.
    async fn lease_holders(&self, queue: &str) -> Result<Vec<String>, JobsError>;

    /// Names of the queues that have (or had) jobs.
    async fn queues(&self) -> Result<Vec<String>, JobsError>;

    /// Waits up to `max` for work on `queues` (an idle worker between claims). The default
    /// just sleeps; PostgreSQL wakes early on `NOTIFY` from an enqueue.
    async fn wait_for_work(&self, _queues: &[String], max: Duration) {
        tokio::time::sleep(max).await;
    }
}

/// Delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
/// `d = min(max_ms, base_ms * 2^(attempt-1))`, then uniformly in `[d/2, d]` (jitter, so workers
/// that failed together do not retry together).
pub fn backoff_delay_ms(backoff: &Backoff, attempt: u32, rng: &mut impl Rng) -> u64 {
    let exp = attempt.saturating_sub(1).min(62);
    let full = backoff
        .base_ms
        .saturating_mul(1u64 << exp)
        .min(backoff.max_ms);
    let half = full / 2;
    if full == 0 {
        0
    } else {
        rng.gen_range(half..=full)
    }
}

/// One backend insert of [`enqueue_with_fresh_id`]: the id it drew, and whether it was stored.
pub(crate) struct Drawn {
    pub id: JobId,
    pub inserted: bool,
}

/// The enqueue loop every backend shares: `insert` draws a fresh id and stores the job under it
/// only when no job has that id (atomically, in the backend's own way); a taken id is never
/// overwritten, another is drawn (odds 2^-80 per pair of same-millisecond ids), eight times at
/// the most.
pub(crate) async fn enqueue_with_fresh_id<F, Fut>(
    queue: &str,
    mut insert: F,
) -> Result<JobId, JobsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Drawn, JobsError>>,
{
    for _ in 0..8 {
        let Drawn { id, inserted } = insert().await?;
        if inserted {
            metrics::counter!("herd_jobs_enqueued_total", "queue" => queue.to_string())
                .increment(1);
            return Ok(id);
        }
        tracing::warn!(job_id = %id, "job id already taken; drawing another");
    }
    Err(JobsError::Corrupt(
        "eight fresh job ids in a row were taken: is the id generator broken?".into(),
    ))
}

/// One claim attempt of [`claim_past_poison`].
#[allow(clippy::large_enum_variant)] // moved straight out by the loop; no collection of them
pub(crate) enum ClaimStep {
    /// The claim's answer: a lease, or nothing claimable.
    Done(Option<Lease>),
    /// The job it took was a poison job (its record does not decode); the backend has moved
    /// it to the dead letter with the reason, and the claim goes on.
    Buried,
}

/// The claim loop every backend shares: nothing to claim from no queues; a poison job is
/// dead-lettered by `attempt` (atomically, in the backend's own way) and the next job is
/// claimed, sixteen poison jobs at the most per call.
pub(crate) async fn claim_past_poison<F, Fut>(
    queues: &[String],
    mut attempt: F,
) -> Result<Option<Lease>, JobsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<ClaimStep, JobsError>>,
{
    if queues.is_empty() {
        return Ok(None);
    }
    for _ in 0..16 {
        match attempt().await? {
            ClaimStep::Done(lease) => return Ok(lease),
            ClaimStep::Buried => continue,
        }
    }
    Ok(None)
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 1_000,
        };
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let d1 = backoff_delay_ms(&b, 1, &mut rng);
            assert!((50..=100).contains(&d1), "{d1}");
            let d3 = backoff_delay_ms(&b, 3, &mut rng);
            assert!((200..=400).contains(&d3), "{d3}");
            let d10 = backoff_delay_ms(&b, 10, &mut rng);
            assert!((500..=1_000).contains(&d10), "{d10}");
            let huge = backoff_delay_ms(&b, 1_000, &mut rng);
            assert!(huge <= 1_000);
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let b = Backoff {
            base_ms: 10_000,
            max_ms: 100_000,
        };
        let mut rng = rand::thread_rng();
        let delays: std::collections::HashSet<u64> =
            (0..50).map(|_| backoff_delay_ms(&b, 2, &mut rng)).collect();
        assert!(
            delays.len() > 10,
            "jitter should vary the delay: {delays:?}"
        );
    }
}
