//! The worker loop behind `herd worker`: claim, run, renew, ack/fail; exit when idle; on shutdown
//! stop claiming and finish the current job within the grace period, or release its lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::run::{JobContext, Runner};
use crate::{FailOutcome, Failure, JobsError, Lease, Queue};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Identifies this worker in leases (the autoscaler never stops a worker holding one).
    pub worker_id: String,
    /// Queues to claim from, in no particular order (priority decides across them).
    pub queues: Vec<String>,
    /// Lease length; renewed every third of it while a job runs.
    pub lease: Duration,
    /// Exit after this long without a job (`None`: run until shut down).
    pub idle_exit: Option<Duration>,
    /// After a shutdown request, how long the current job may still run before its lease is
    /// released for another worker.
    pub grace: Duration,
    /// Pause between claims when the queue is empty.
    pub poll: Duration,
    /// Give up after this many consecutive queue errors (the queue is unreachable).
    pub max_queue_errors: u32,
    /// After abandoning a job, how long to wait for its runner to clean up (a command's process
    /// group gets SIGTERM, then SIGKILL after the runner's kill grace) before dropping it.
    pub abandon_wait: Duration,
}

impl WorkerConfig {
    pub fn new(worker_id: impl Into<String>, queues: Vec<String>) -> Self {
        WorkerConfig {
            worker_id: worker_id.into(),
            queues,
            lease: Duration::from_secs(30),
            idle_exit: None,
            grace: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            max_queue_errors: 20,
            abandon_wait: Duration::from_secs(30),
        }
    }
}

/// A default worker id: `<host>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Why the worker loop ended and what it did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    pub done: u64,
    pub failed: u64,
    pub released: u64,
    pub lost: u64,
    /// `idle`, `shutdown`.
    pub exit_reason: &'static str,
}

/// What happened to one job.
enum JobEnd {
    Done,
    Failed,
    Released,
    Lost,
}

pub struct Worker {
    queue: Arc<dyn Queue>,
    runner: Arc<dyn Runner>,
    cfg: WorkerConfig,
}

impl Worker {
    pub fn new(queue: Arc<dyn Queue>, runner: Arc<dyn Runner>, cfg: WorkerConfig) -> Self {
        Worker { queue, runner, cfg }
    }

    /// Runs until idle for `idle_exit`, or until `shutdown` turns true (then the current job
    /// gets `grace` to finish, else its lease is released).
    pub async fn run(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<WorkerSummary, JobsError> {
        let mut summary = WorkerSummary::default();
        let mut idle_since = Instant::now();
        let mut errors = 0u32;
        tracing::info!(worker_id = %self.cfg.worker_id, queues = ?self.cfg.queues, backend = self.queue.backend(), "worker started");
        loop {
            if *shutdown.borrow() {
                summary.exit_reason = "shutdown";
                break;
            }
            let asked = Instant::now();
            let claimed = self
                .queue
                .claim(&self.cfg.worker_id, &self.cfg.queues, self.cfg.lease)
                .await;
            match claimed {
                Err(e) => {
                    errors += 1;
                    tracing::warn!(error = %e, consecutive = errors, "claim failed");
                    if errors >= self.cfg.max_queue_errors {
                        return Err(e);
                    }
                    wait_or_shutdown(self.cfg.poll * errors.min(10), &mut shutdown).await;
                }
                Ok(None) => {
                    errors = 0;
                    if let Some(idle) = self.cfg.idle_exit {
                        if idle_since.elapsed() >= idle {
                            summary.exit_reason = "idle";
                            break;
                        }
                    }
                    tokio::select! {
                        _ = self.queue.wait_for_work(&self.cfg.queues, self.cfg.poll) => {}
                        _ = wait_or_shutdown(self.cfg.poll, &mut shutdown) => {}
                    }
                }
                Ok(Some(lease)) => {
                    errors = 0;
                    match self.process(lease, asked, &mut shutdown).await {
                        JobEnd::Done => summary.done += 1,
                        JobEnd::Failed => summary.failed += 1,
                        JobEnd::Released => summary.released += 1,
                        JobEnd::Lost => summary.lost += 1,
                    }
                    idle_since = Instant::now();
                }
            }
        }
        tracing::info!(worker_id = %self.cfg.worker_id, done = summary.done, failed = summary.failed,
            released = summary.released, reason = summary.exit_reason, "worker stopped");
        Ok(summary)
    }

    async fn process(
        &self,
        lease: Lease,
        asked: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> JobEnd {
        use tracing::Instrument;
        let span = tracing::info_span!("job", job_id = %lease.job.id, kind = lease.job.spec.kind.name(), attempt = lease.job.attempts);
        self.process_inner(lease, asked, shutdown)
            .instrument(span)
            .await
    }

    async fn process_inner(
        &self,
        mut lease: Lease,
        asked: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> JobEnd {
        let job = lease.job.clone();
        let queue_name = job.spec.queue.clone();
        tracing::info!(queue = %queue_name, "job claimed");
        metrics::counter!("herd_jobs_claimed_total", "queue" => queue_name.clone()).increment(1);
        let started = Instant::now();

        let (ctx, cancel, mut prx) = JobContext::new();
        let runner = self.runner.clone();
        let job_for_task = job.clone();
        // A task of its own: a panicking runner becomes a failed attempt, not a dead worker.
        let mut task = tokio::spawn(async move { runner.run(&job_for_task, &ctx).await });
        let timeout_at = tokio::time::Instant::now() + Duration::from_secs(job.spec.timeout_secs);
        let renew_every = (self.cfg.lease / 3).max(Duration::from_millis(50));
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The lease is ours until this instant at the latest (measured on this host's monotonic
        // clock from before the request that granted it, so it never overestimates). If renewals
        // keep failing, the job is stopped before then: after it, another worker may hold it.
        let mut lease_valid_until = asked + self.cfg.lease;
        let lease_margin = (self.cfg.lease / 10).max(Duration::from_millis(20));
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        let mut shutdown_seen = *shutdown.borrow();
        if shutdown_seen {
            grace_deadline = Some(tokio::time::Instant::now() + self.cfg.grace);
        }

        enum Abandon {
            Timeout,
            Grace,
            LeaseLost,
            LeaseExpiring,
        }
        let result = loop {
            let expiring_at = tokio::time::Instant::from_std(
                lease_valid_until
                    .checked_sub(lease_margin)
                    .unwrap_or(lease_valid_until),
            );
            tokio::select! {
                res = &mut task => break Ok(res),
                _ = renew.tick() => {
                    let progress = prx.borrow_and_update().clone();
                    if let Some(p) = &progress {
                        tracing::info!(done = p.done, total = ?p.total, "progress");
                    }
                    let asked = Instant::now();
                    match self.queue.renew(&mut lease, self.cfg.lease, progress.as_ref()).await {
                        Ok(()) => lease_valid_until = asked + self.cfg.lease,
                        Err(JobsError::LeaseLost { .. }) => break Err(Abandon::LeaseLost),
                        Err(e) => tracing::warn!(error = %e, valid_for_ms = lease_valid_until.saturating_duration_since(Instant::now()).as_millis() as u64, "lease renewal failed; will retry"),
                    }
                }
                _ = tokio::time::sleep_until(expiring_at) => break Err(Abandon::LeaseExpiring),
                _ = tokio::time::sleep_until(timeout_at) => break Err(Abandon::Timeout),
                changed = shutdown.changed(), if !shutdown_seen => {
                    if changed.is_err() {
                        // The sender is gone: no shutdown can come any more.
                        shutdown_seen = true;
                    } else if *shutdown.borrow() {
                        shutdown_seen = true;
                        tracing::info!(grace_s = self.cfg.grace.as_secs_f64(), "shutdown requested; finishing the current job within the grace period");
                        grace_deadline = Some(tokio::time::Instant::now() + self.cfg.grace);
                    }
                }
                _ = sleep_until_opt(grace_deadline) => break Err(Abandon::Grace),
            }
        };

        let result = match result {
            Ok(joined) => Ok(joined),
            Err(why) => {
                let reason = match why {
                    Abandon::Timeout => format!(
                        "timed out after {}s (the job's timeout)",
                        job.spec.timeout_secs
                    ),
                    Abandon::Grace => {
                        "the worker is shutting down and the grace period is over".to_string()
                    }
                    Abandon::LeaseLost => {
                        "the lease was lost (another worker owns the job now)".to_string()
                    }
                    Abandon::LeaseExpiring => {
                        "the lease could not be renewed and is about to expire".to_string()
                    }
                };
                tracing::warn!(reason = %reason, "abandoning the job");
                cancel.cancel(reason.clone());
                // Let the runner clean up (a command's process group: TERM, then KILL); drop it
                // if that takes far too long.
                let bound = self.cfg.abandon_wait;
                if tokio::time::timeout(bound, &mut task).await.is_err() {
                    tracing::warn!(
                        wait_s = bound.as_secs_f64(),
                        "the runner did not stop in time; dropping it"
                    );
                    task.abort();
                    let _ = (&mut task).await;
                }
                Err((why, reason))
            }
        };

        let seconds = started.elapsed().as_secs_f64();
        let end = match result {
            Err((Abandon::Grace, _)) => {
                tracing::warn!("grace period over; releasing the lease for another worker");
                match self.queue.release(&lease).await {
                    Ok(()) => JobEnd::Released,
                    Err(e) => {
                        tracing::warn!(error = %e, "release failed; the lease will expire instead");
                        JobEnd::Lost
                    }
                }
            }
            Err((Abandon::LeaseLost, _)) => JobEnd::Lost,
            Err((Abandon::LeaseExpiring, _)) => {
                // Try to give it back; most likely the store is still unreachable and the lease
                // simply expires.
                let _ = self.queue.release(&lease).await;
                JobEnd::Lost
            }
            Err((Abandon::Timeout, reason)) => {
                self.record_failure(&lease, Failure::retryable(reason))
                    .await
            }
            Ok(joined) => {
                let outcome = match joined {
                    Ok(Ok(outcome)) => Ok(outcome),
                    Ok(Err(failure)) => Err(failure),
                    Err(join) => Err(Failure::retryable(format!("job runner crashed: {join}"))),
                };
                match outcome {
                    Ok(outcome) => match self.queue.ack(&lease, &outcome).await {
                        Ok(()) => {
                            tracing::info!(seconds, location = ?outcome.location, "job done");
                            JobEnd::Done
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ack failed; the job will run again (its outcome file makes that cheap)");
                            JobEnd::Lost
                        }
                    },
                    Err(failure) => self.record_failure(&lease, failure).await,
                }
            }
        };
        let status = match end {
            JobEnd::Done => "done",
            JobEnd::Failed => "failed",
            JobEnd::Released => "released",
            JobEnd::Lost => "lost",
        };
        metrics::counter!("herd_jobs_finished_total", "queue" => queue_name.clone(), "status" => status).increment(1);
        metrics::histogram!("herd_jobs_run_seconds", "queue" => queue_name).record(seconds);
        end
    }

    async fn record_failure(&self, lease: &Lease, failure: Failure) -> JobEnd {
        match self.queue.fail(lease, &failure).await {
            Ok(FailOutcome::Retry { run_at_ms }) => {
                tracing::warn!(error = %failure.message, run_at_ms, "job failed; will retry");
                JobEnd::Failed
            }
            Ok(FailOutcome::Dead) => {
                tracing::error!(error = %failure.message, retryable = failure.retryable, "job failed; moved to the dead letter");
                JobEnd::Failed
            }
            Err(e) => {
                tracing::warn!(error = %e, job_error = %failure.message, "recording the failure failed");
                JobEnd::Lost
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn wait_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        changed = shutdown.changed() => {
            // The sender is gone: nobody can ask for a shutdown any more; just wait.
            if changed.is_err() {
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Runs a worker until it is idle or the process gets SIGTERM/SIGINT (then: grace, release).
/// What `herd worker` runs after parsing its flags.
pub async fn run_until_signalled(
    queue: Arc<dyn Queue>,
    runner: Arc<dyn Runner>,
    cfg: WorkerConfig,
) -> Result<WorkerSummary, JobsError> {
    let (tx, rx) = watch::channel(false);
    let signals = tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut term, mut int) = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => (t, i),
                _ => {
                    tracing::warn!(
                        "cannot install signal handlers; SIGTERM will kill the worker outright"
                    );
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: no new jobs; finishing the current one"),
                _ = int.recv() => tracing::info!("SIGINT: no new jobs; finishing the current one"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = tx.send(true);
        // Keep the sender alive so the worker does not mistake a dropped sender for "never".
        std::future::pending::<()>().await;
    });
    let out = Worker::new(queue, runner, cfg).run(rx).await;
    signals.abort();
    out
}

/// Parses a human duration: `500ms`, `30s`, `5m`, `2h`, `7d`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, JobsError> {
    let t = s.trim();
    let bad = || {
        JobsError::InvalidArgument(format!(
            "invalid duration '{s}': use a number with ms, s, m, h or d (e.g. 500ms, 30s, 5m, 7d)"
        ))
    };
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_explain_errors() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "abc", "5 parsecs", "-1s", "1e400"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
    }
}
