//! The PostgreSQL backend (`postgres://USER:PASS@HOST:PORT/DB`): one table `herd_jobs`, claims
//! with `FOR UPDATE SKIP LOCKED` (concurrent claimers skip each other's rows instead of waiting),
//! `LISTEN/NOTIFY` on the channel `herd_jobs` to wake idle workers when a job is enqueued, and
//! every time (lease expiry, retry, finish) from the database's clock (`clock_timestamp()`).
//! The SQL is the SQLite backend's, in the same sqlx style as the registry's database layer.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use crate::queue::duration_ms;
use crate::{
    backoff_delay_ms, new_job_id, new_token, Clock, FailOutcome, Failure, Job, JobId, JobOutcome,
    JobSpec, JobState, JobsError, Lease, ListFilter, Progress, Queue, QueueStats,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS herd_jobs (
  id TEXT PRIMARY KEY,
  queue TEXT NOT NULL,
  state TEXT NOT NULL,
  priority BIGINT NOT NULL,
  spec TEXT NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  max_attempts BIGINT NOT NULL,
  created_ms BIGINT NOT NULL,
  updated_ms BIGINT NOT NULL,
  run_at_ms BIGINT NOT NULL,
  finished_ms BIGINT,
  worker_id TEXT,
  lease_token TEXT,
  lease_expires_ms BIGINT,
  last_error TEXT,
  result TEXT,
  progress TEXT
);
CREATE INDEX IF NOT EXISTS herd_jobs_claim ON herd_jobs(queue, state, priority DESC, id);
CREATE INDEX IF NOT EXISTS herd_jobs_due ON herd_jobs(queue, state, run_at_ms);
CREATE INDEX IF NOT EXISTS herd_jobs_lease ON herd_jobs(queue, state, lease_expires_ms);
CREATE INDEX IF NOT EXISTS herd_jobs_finished ON herd_jobs(state, finished_ms);
"#;

/// The PostgreSQL backend (`postgres://...`).
pub struct PgQueue {
    pool: PgPool,
    /// The URL with its password redacted, for errors.
    url: String,
    /// A test clock, or None for the database's clock.
    clock: Option<Arc<dyn Clock>>,
    /// Woken by `NOTIFY herd_jobs, '<queue>'` on every enqueue (created on first wait).
    listener: tokio::sync::Mutex<Option<PgListener>>,
}

impl PgQueue {
    /// Connects to `url` and creates the table if needed. `clock`: a test clock, or None for
    /// the database's clock.
    pub async fn open(url: &str, clock: Option<Arc<dyn Clock>>) -> Result<Self, JobsError> {
        let shown = crate::redact_url(url);
        let err = |source| JobsError::Postgres {
            url: shown.clone(),
            source,
        };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(err)?;
        // Concurrent first starts must not race on CREATE TABLE: one at a time (one simple
        // query on one connection: a transaction holding an advisory lock).
        sqlx::raw_sql(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7421001); {SCHEMA} COMMIT;"
        ))
        .execute(&pool)
        .await
        .map_err(err)?;
        Ok(PgQueue {
            pool,
            url: shown,
            clock,
            listener: tokio::sync::Mutex::new(None),
        })
    }

    fn err(&self, source: sqlx::Error) -> JobsError {
        JobsError::Postgres {
            url: self.url.clone(),
            source,
        }
    }

    /// The test clock's time, or the database's `clock_timestamp()` in ms.
    async fn now(&self) -> Result<i64, JobsError> {
        if let Some(c) = &self.clock {
            return Ok(c.now_ms());
        }
        sqlx::query_scalar::<_, i64>(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, JobsError> {
        self.pool.begin().await.map_err(|e| self.err(e))
    }

    /// Checks the lease token inside `tx`; LeaseLost if the job moved on.
    async fn check_lease(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        lease: &Lease,
    ) -> Result<Job, JobsError> {
        let row = sqlx::query("SELECT * FROM herd_jobs WHERE id = $1")
            .bind(&lease.job.id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Err(JobsError::LeaseLost {
                job_id: lease.job.id.clone(),
            });
        };
        let token: Option<String> = row.try_get("lease_token").map_err(|e| self.err(e))?;
        let state: String = row.try_get("state").map_err(|e| self.err(e))?;
        if state != "running" || token.as_deref() != Some(lease.token.as_str()) {
            return Err(JobsError::LeaseLost {
                job_id: lease.job.id.clone(),
            });
        }
        row_to_job(&row)
    }
    /// One claim; a poison job found on the way is dead-lettered and reported as Corrupt.
    async fn claim_once(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<Option<Lease>, JobsError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        // 1. Per queue, settle what time has changed (each step one indexed range): expired leases
        //    on the last attempt go to dead, other expired leases and due retries to waiting.
        //    2. Take the best waiting job across the queues.
        let mut best: Option<(i64, String)> = None;
        for name in queues {
            sqlx::query(
                "UPDATE herd_jobs SET state = 'dead', finished_ms = $1, updated_ms = $2, lease_token = NULL,
                 lease_expires_ms = NULL,
                 last_error = 'lease expired on the last attempt (the worker died or hung); ' || COALESCE(last_error, '')
                 WHERE queue = $3 AND state = 'running' AND lease_expires_ms <= $4 AND attempts >= max_attempts",
            )
            .bind(now)
            .bind(now)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            sqlx::query(
                "UPDATE herd_jobs SET state = 'waiting', lease_token = NULL, lease_expires_ms = NULL, updated_ms = $1
                 WHERE queue = $2 AND state = 'running' AND lease_expires_ms <= $3",
            )
            .bind(now)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            sqlx::query(
                "UPDATE herd_jobs SET state = 'waiting', updated_ms = $1
                 WHERE queue = $2 AND state = 'delayed' AND run_at_ms <= $3",
            )
            .bind(now)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            let top = sqlx::query(
                "SELECT id, priority FROM herd_jobs WHERE queue = $1 AND state = 'waiting'
                 ORDER BY priority DESC, id ASC LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            if let Some(row) = top {
                let id: String = row.try_get("id").map_err(|e| self.err(e))?;
                let prio: i64 = row.try_get("priority").map_err(|e| self.err(e))?;
                let better = match &best {
                    None => true,
                    Some((bp, bid)) => prio > *bp || (prio == *bp && id < *bid),
                };
                if better {
                    best = Some((prio, id));
                }
            }
        }
        let Some((_, id)) = best else {
            tx.commit().await.map_err(|e| self.err(e))?;
            return Ok(None);
        };
        let token = new_token();
        let expires = now.saturating_add(duration_ms(lease));
        let row = sqlx::query(
            "UPDATE herd_jobs SET state = 'running', attempts = attempts + 1, worker_id = $1, lease_token = $2,
             lease_expires_ms = $3, updated_ms = $4 WHERE id = $5 RETURNING *",
        )
        .bind(worker_id)
        .bind(&token)
        .bind(expires)
        .bind(now)
        .bind(&id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        match row_to_job(&row) {
            Ok(job) => {
                tx.commit().await.map_err(|e| self.err(e))?;
                Ok(Some(Lease {
                    job,
                    token,
                    worker_id: worker_id.to_string(),
                    expires_ms: expires,
                }))
            }
            Err(e) => {
                // A poison job: its record does not decode. Dead-letter it with the reason, in
                // the same transaction, and tell the caller to claim again.
                tracing::error!(job_id = %id, error = %e, "poison job: moving it to the dead letter");
                sqlx::query(
                    "UPDATE herd_jobs SET state = 'dead', finished_ms = $1, updated_ms = $2, lease_token = NULL,
                     lease_expires_ms = NULL, last_error = $3 WHERE id = $4",
                )
                .bind(now)
                .bind(now)
                .bind(format!(
                    "undecodable job record, moved to the dead letter: {e}"
                ))
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
                tx.commit().await.map_err(|e| self.err(e))?;
                Err(JobsError::Corrupt(format!("job {id}: {e}")))
            }
        }
    }
}

fn row_to_job(row: &PgRow) -> Result<Job, JobsError> {
    let c = |e: sqlx::Error| JobsError::Corrupt(e.to_string());
    let spec: String = row.try_get("spec").map_err(c)?;
    let spec: JobSpec =
        serde_json::from_str(&spec).map_err(|e| JobsError::Corrupt(format!("spec: {e}")))?;
    let state: String = row.try_get("state").map_err(c)?;
    let result: Option<String> = row.try_get("result").map_err(c)?;
    let progress: Option<String> = row.try_get("progress").map_err(c)?;
    let attempts: i64 = row.try_get("attempts").map_err(c)?;
    Ok(Job {
        id: row.try_get("id").map_err(c)?,
        spec,
        state: JobState::from_str(&state).map_err(|e| JobsError::Corrupt(e.to_string()))?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_ms: row.try_get("created_ms").map_err(c)?,
        updated_ms: row.try_get("updated_ms").map_err(c)?,
        run_at_ms: row.try_get("run_at_ms").map_err(c)?,
        finished_ms: row.try_get("finished_ms").map_err(c)?,
        worker_id: row.try_get("worker_id").map_err(c)?,
        lease_expires_ms: row.try_get("lease_expires_ms").map_err(c)?,
        last_error: row.try_get("last_error").map_err(c)?,
        result: match result {
            Some(r) => Some(
                serde_json::from_str(&r).map_err(|e| JobsError::Corrupt(format!("result: {e}")))?,
            ),
            None => None,
        },
        progress: match progress {
            Some(p) => serde_json::from_str(&p).ok(),
            None => None,
        },
    })
}

#[async_trait]
impl Queue for PgQueue {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn enqueue(&self, spec: JobSpec) -> Result<JobId, JobsError> {
        spec.validate()?;
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        // An id that exists already is never overwritten (nor is the insert an error): draw
        // another (odds 2^-80 per pair of same-millisecond ids).
        for _ in 0..8 {
            let now = self.now().await?;
            let id = new_job_id(now);
            let done = sqlx::query(
                "INSERT INTO herd_jobs (id, queue, state, priority, spec, attempts, max_attempts, created_ms, updated_ms, run_at_ms)
                 VALUES ($1, $2, 'waiting', $3, $4, 0, $5, $6, $7, $8) ON CONFLICT(id) DO NOTHING",
            )
            .bind(&id)
            .bind(&spec.queue)
            .bind(spec.priority)
            .bind(&spec_json)
            .bind(i64::from(spec.max_attempts))
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
            if done.rows_affected() == 1 {
                // Wake idle workers of this queue (LISTEN herd_jobs).
                let _ = sqlx::query("SELECT pg_notify('herd_jobs', $1)")
                    .bind(&spec.queue)
                    .execute(&self.pool)
                    .await;
                metrics::counter!("herd_jobs_enqueued_total", "queue" => spec.queue.clone())
                    .increment(1);
                return Ok(id);
            }
            tracing::warn!(job_id = %id, "job id already taken; drawing another");
        }
        Err(JobsError::Corrupt(
            "eight fresh job ids in a row were taken: is the id generator broken?".into(),
        ))
    }

    async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<Option<Lease>, JobsError> {
        if queues.is_empty() {
            return Ok(None);
        }
        // Poison jobs are dead-lettered one by one; the claim goes on to the next job.
        for _ in 0..16 {
            match self.claim_once(worker_id, queues, lease).await {
                Err(JobsError::Corrupt(_)) => continue,
                other => return other,
            }
        }
        Ok(None)
    }

    async fn renew(
        &self,
        lease: &mut Lease,
        extend: Duration,
        progress: Option<&Progress>,
    ) -> Result<(), JobsError> {
        let now = self.now().await?;
        let expires = now.saturating_add(duration_ms(extend));
        let progress = progress.and_then(|p| serde_json::to_string(p).ok());
        let done = sqlx::query(
            "UPDATE herd_jobs SET lease_expires_ms = $1, updated_ms = $2, progress = COALESCE($3, progress)
             WHERE id = $4 AND state = 'running' AND lease_token = $5",
        )
        .bind(expires)
        .bind(now)
        .bind(progress)
        .bind(&lease.job.id)
        .bind(&lease.token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if done.rows_affected() == 0 {
            return Err(JobsError::LeaseLost {
                job_id: lease.job.id.clone(),
            });
        }
        lease.expires_ms = expires;
        Ok(())
    }

    async fn ack(&self, lease: &Lease, outcome: &JobOutcome) -> Result<(), JobsError> {
        let now = self.now().await?;
        let result =
            serde_json::to_string(outcome).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        let done = sqlx::query(
            "UPDATE herd_jobs SET state = 'done', finished_ms = $1, updated_ms = $2, result = $3, lease_token = NULL,
             lease_expires_ms = NULL WHERE id = $4 AND state = 'running' AND lease_token = $5",
        )
        .bind(now)
        .bind(now)
        .bind(result)
        .bind(&lease.job.id)
        .bind(&lease.token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if done.rows_affected() == 0 {
            return Err(JobsError::LeaseLost {
                job_id: lease.job.id.clone(),
            });
        }
        Ok(())
    }

    async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, JobsError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        let job = self.check_lease(&mut tx, lease).await?;
        let outcome = if !failure.retryable || job.attempts >= job.spec.max_attempts {
            sqlx::query(
                "UPDATE herd_jobs SET state = 'dead', finished_ms = $1, updated_ms = $2, last_error = $3,
                 lease_token = NULL, lease_expires_ms = NULL WHERE id = $4",
            )
            .bind(now)
            .bind(now)
            .bind(&failure.message)
            .bind(&job.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            FailOutcome::Dead
        } else {
            let delay = backoff_delay_ms(&job.spec.backoff, job.attempts, &mut rand::thread_rng());
            let run_at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX / 4));
            sqlx::query(
                "UPDATE herd_jobs SET state = 'delayed', run_at_ms = $1, updated_ms = $2, last_error = $3,
                 lease_token = NULL, lease_expires_ms = NULL WHERE id = $4",
            )
            .bind(run_at)
            .bind(now)
            .bind(&failure.message)
            .bind(&job.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            FailOutcome::Retry { run_at_ms: run_at }
        };
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease) -> Result<(), JobsError> {
        let now = self.now().await?;
        let done = sqlx::query(
            "UPDATE herd_jobs SET state = 'waiting', run_at_ms = $1, updated_ms = $2, attempts = GREATEST(attempts - 1, 0),
             lease_token = NULL, lease_expires_ms = NULL WHERE id = $3 AND state = 'running' AND lease_token = $4",
        )
        .bind(now)
        .bind(now)
        .bind(&lease.job.id)
        .bind(&lease.token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if done.rows_affected() == 0 {
            return Err(JobsError::LeaseLost {
                job_id: lease.job.id.clone(),
            });
        }
        Ok(())
    }

    async fn requeue_dead(&self, queue: &str, id: Option<&str>) -> Result<u64, JobsError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        if let Some(id) = id {
            let row = sqlx::query("SELECT state, queue FROM herd_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            let Some(row) = row else {
                return Err(JobsError::NotFound(id.to_string()));
            };
            let state: String = row.try_get("state").map_err(|e| self.err(e))?;
            let job_queue: String = row.try_get("queue").map_err(|e| self.err(e))?;
            if job_queue != queue {
                return Err(JobsError::NotFound(format!("{id} (in queue {queue})")));
            }
            if state != "dead" {
                return Err(JobsError::NotDead {
                    id: id.to_string(),
                    state,
                });
            }
        }
        let res = sqlx::query(
            "UPDATE herd_jobs SET state = 'waiting', attempts = 0, run_at_ms = $1, updated_ms = $2, finished_ms = NULL,
             worker_id = NULL WHERE queue = $3 AND state = 'dead' AND ($4::TEXT IS NULL OR id = $5)",
        )
        .bind(now)
        .bind(now)
        .bind(queue)
        .bind(id)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(res.rows_affected())
    }

    async fn cancel(&self, id: &str, reason: &str) -> Result<JobState, JobsError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT state FROM herd_jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Err(JobsError::NotFound(id.to_string()));
        };
        let state: String = row.try_get("state").map_err(|e| self.err(e))?;
        let state = JobState::from_str(&state).map_err(|e| JobsError::Corrupt(e.to_string()))?;
        if matches!(state, JobState::Done | JobState::Dead) {
            return Err(JobsError::NotCancellable {
                id: id.to_string(),
                state: state.to_string(),
            });
        }
        sqlx::query(
            "UPDATE herd_jobs SET state = 'dead', finished_ms = $1, updated_ms = $2, last_error = $3,
             lease_token = NULL, lease_expires_ms = NULL WHERE id = $4",
        )
        .bind(now)
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(state)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, JobsError> {
        let rows = sqlx::query(
            "SELECT * FROM herd_jobs WHERE ($1::TEXT IS NULL OR queue = $2) AND ($3::TEXT IS NULL OR state = $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(filter.queue.as_deref())
        .bind(filter.queue.as_deref())
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter().map(row_to_job).collect()
    }

    async fn show(&self, id: &str) -> Result<Option<Job>, JobsError> {
        let row = sqlx::query("SELECT * FROM herd_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_job).transpose()
    }

    async fn purge(&self, retention: Duration) -> Result<u64, JobsError> {
        let cutoff = self.now().await?.saturating_sub(duration_ms(retention));
        let res = sqlx::query(
            "DELETE FROM herd_jobs WHERE state IN ('done', 'dead') AND finished_ms IS NOT NULL AND finished_ms < $1",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(res.rows_affected())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, JobsError> {
        let now = self.now().await?;
        let row = sqlx::query(
            "SELECT
               COALESCE(SUM(CASE WHEN state = 'waiting' OR (state = 'running' AND lease_expires_ms <= $1) THEN 1 ELSE 0 END), 0)::BIGINT AS waiting,
               COALESCE(SUM(CASE WHEN state = 'running' AND lease_expires_ms > $2 THEN 1 ELSE 0 END), 0)::BIGINT AS running,
               COALESCE(SUM(CASE WHEN state = 'delayed' THEN 1 ELSE 0 END), 0)::BIGINT AS delayed,
               COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0)::BIGINT AS dead,
               COALESCE(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0)::BIGINT AS done
             FROM herd_jobs WHERE queue = $3",
        )
        .bind(now)
        .bind(now)
        .bind(queue)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let get = |name: &str| -> Result<u64, JobsError> {
            let v: i64 = row.try_get(name).map_err(|e| self.err(e))?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        Ok(QueueStats {
            waiting: get("waiting")?,
            running: get("running")?,
            delayed: get("delayed")?,
            dead: get("dead")?,
            done: get("done")?,
        })
    }

    async fn lease_holders(&self, queue: &str) -> Result<Vec<String>, JobsError> {
        let now = self.now().await?;
        let rows = sqlx::query(
            "SELECT DISTINCT worker_id FROM herd_jobs WHERE queue = $1 AND state = 'running'
             AND lease_expires_ms > $2 AND worker_id IS NOT NULL ORDER BY worker_id",
        )
        .bind(queue)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("worker_id").map_err(|e| self.err(e)))
            .collect()
    }

    async fn wait_for_work(&self, queues: &[String], max: Duration) {
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => match l.listen("herd_jobs").await {
                    Ok(()) => *guard = Some(l),
                    Err(e) => tracing::warn!(error = %e, "LISTEN herd_jobs failed; polling"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot open a LISTEN connection; polling"),
            }
        }
        let Some(listener) = guard.as_mut() else {
            tokio::time::sleep(max).await;
            return;
        };
        let deadline = tokio::time::Instant::now() + max;
        loop {
            match tokio::time::timeout_at(deadline, listener.recv()).await {
                Err(_) => return, // the poll interval is over
                Ok(Ok(n)) if queues.iter().any(|q| q == n.payload()) => return,
                Ok(Ok(_)) => continue, // another queue's job
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; polling");
                    *guard = None;
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
    }

    async fn queues(&self) -> Result<Vec<String>, JobsError> {
        let rows = sqlx::query("SELECT DISTINCT queue FROM herd_jobs ORDER BY queue")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("queue").map_err(|e| self.err(e)))
            .collect()
    }
}
