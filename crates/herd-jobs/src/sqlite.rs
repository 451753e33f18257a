//! The embedded queue: one SQLite file (WAL), every claim and state change inside an
//! `IMMEDIATE` transaction, so workers in different processes can share it safely.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::queue::duration_ms;
use crate::{
    backoff_delay_ms, new_job_id, new_token, Clock, FailOutcome, Failure, Job, JobId, JobOutcome,
    JobSpec, JobState, JobsError, Lease, ListFilter, Progress, Queue, QueueStats,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  queue TEXT NOT NULL,
  state TEXT NOT NULL,
  priority INTEGER NOT NULL,
  spec TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  run_at_ms INTEGER NOT NULL,
  finished_ms INTEGER,
  worker_id TEXT,
  lease_token TEXT,
  lease_expires_ms INTEGER,
  last_error TEXT,
  result TEXT,
  progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(queue, state, priority DESC, id);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(queue, state, run_at_ms);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(queue, state, lease_expires_ms);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(state, finished_ms);
"#;

/// The SQLite backend (`sqlite://PATH`).
pub struct SqliteQueue {
    pool: SqlitePool,
    path: String,
    clock: Arc<dyn Clock>,
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue database at `path`.
    pub async fn open(path: &str, clock: Arc<dyn Clock>) -> Result<Self, JobsError> {
        if path.trim().is_empty() {
            return Err(JobsError::InvalidUrl {
                url: format!("sqlite://{path}"),
                reason: "no file path: use sqlite://PATH, e.g. sqlite://.herd/jobs.db".into(),
            });
        }
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| JobsError::io(parent, e))?;
            }
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let err = |source| JobsError::Sqlite {
            path: path.to_string(),
            source,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(err)?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(err)?;
        Ok(SqliteQueue {
            pool,
            path: path.to_string(),
            clock,
        })
    }

    fn err(&self, source: sqlx::Error) -> JobsError {
        JobsError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, JobsError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.err(e))
    }

    /// Checks the lease token inside `tx`; LeaseLost if the job moved on.
    async fn check_lease(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        lease: &Lease,
    ) -> Result<Job, JobsError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
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
        let now = self.clock.now_ms();
        let mut tx = self.begin().await?;
        // 1. Per queue, settle what time has changed (each step one indexed range): expired leases
        //    on the last attempt go to dead, other expired leases and due retries to waiting.
        //    2. Take the best waiting job across the queues.
        let mut best: Option<(i64, String)> = None;
        for name in queues {
            sqlx::query(
                "UPDATE jobs SET state = 'dead', finished_ms = ?, updated_ms = ?, lease_token = NULL,
                 lease_expires_ms = NULL,
                 last_error = 'lease expired on the last attempt (the worker died or hung); ' || COALESCE(last_error, '')
                 WHERE queue = ? AND state = 'running' AND lease_expires_ms <= ? AND attempts >= max_attempts",
            )
            .bind(now)
            .bind(now)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            sqlx::query(
                "UPDATE jobs SET state = 'waiting', lease_token = NULL, lease_expires_ms = NULL, updated_ms = ?
                 WHERE queue = ? AND state = 'running' AND lease_expires_ms <= ?",
            )
            .bind(now)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            sqlx::query(
                "UPDATE jobs SET state = 'waiting', updated_ms = ?
                 WHERE queue = ? AND state = 'delayed' AND run_at_ms <= ?",
            )
            .bind(now)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            let top = sqlx::query(
                "SELECT id, priority FROM jobs WHERE queue = ? AND state = 'waiting'
                 ORDER BY priority DESC, id ASC LIMIT 1",
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
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, lease_token = ?,
             lease_expires_ms = ?, updated_ms = ? WHERE id = ? RETURNING *",
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
                    "UPDATE jobs SET state = 'dead', finished_ms = ?, updated_ms = ?, lease_token = NULL,
                     lease_expires_ms = NULL, last_error = ? WHERE id = ?",
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

fn row_to_job(row: &sqlx::sqlite::SqliteRow) -> Result<Job, JobsError> {
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
impl Queue for SqliteQueue {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn enqueue(&self, spec: JobSpec) -> Result<JobId, JobsError> {
        spec.validate()?;
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        // An id that exists already is never overwritten (nor is the insert an error): draw
        // another (odds 2^-80 per pair of same-millisecond ids).
        for _ in 0..8 {
            let now = self.clock.now_ms();
            let id = new_job_id(now);
            let done = sqlx::query(
                "INSERT INTO jobs (id, queue, state, priority, spec, attempts, max_attempts, created_ms, updated_ms, run_at_ms)
                 VALUES (?, ?, 'waiting', ?, ?, 0, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
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
        let now = self.clock.now_ms();
        let expires = now.saturating_add(duration_ms(extend));
        let progress = progress.and_then(|p| serde_json::to_string(p).ok());
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_ms = ?, updated_ms = ?, progress = COALESCE(?, progress)
             WHERE id = ? AND state = 'running' AND lease_token = ?",
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
        let now = self.clock.now_ms();
        let result =
            serde_json::to_string(outcome).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'done', finished_ms = ?, updated_ms = ?, result = ?, lease_token = NULL,
             lease_expires_ms = NULL WHERE id = ? AND state = 'running' AND lease_token = ?",
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
        let now = self.clock.now_ms();
        let mut tx = self.begin().await?;
        let job = self.check_lease(&mut tx, lease).await?;
        let outcome = if !failure.retryable || job.attempts >= job.spec.max_attempts {
            sqlx::query(
                "UPDATE jobs SET state = 'dead', finished_ms = ?, updated_ms = ?, last_error = ?,
                 lease_token = NULL, lease_expires_ms = NULL WHERE id = ?",
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
                "UPDATE jobs SET state = 'delayed', run_at_ms = ?, updated_ms = ?, last_error = ?,
                 lease_token = NULL, lease_expires_ms = NULL WHERE id = ?",
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
        let now = self.clock.now_ms();
        let done = sqlx::query(
            "UPDATE jobs SET state = 'waiting', run_at_ms = ?, updated_ms = ?, attempts = MAX(attempts - 1, 0),
             lease_token = NULL, lease_expires_ms = NULL WHERE id = ? AND state = 'running' AND lease_token = ?",
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
        let now = self.clock.now_ms();
        let mut tx = self.begin().await?;
        if let Some(id) = id {
            let row = sqlx::query("SELECT state, queue FROM jobs WHERE id = ?")
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
            "UPDATE jobs SET state = 'waiting', attempts = 0, run_at_ms = ?, updated_ms = ?, finished_ms = NULL,
             worker_id = NULL WHERE queue = ? AND state = 'dead' AND (? IS NULL OR id = ?)",
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
        let now = self.clock.now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT state FROM jobs WHERE id = ?")
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
            "UPDATE jobs SET state = 'dead', finished_ms = ?, updated_ms = ?, last_error = ?,
             lease_token = NULL, lease_expires_ms = NULL WHERE id = ?",
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
            "SELECT * FROM jobs WHERE (? IS NULL OR queue = ?) AND (? IS NULL OR state = ?)
             ORDER BY id DESC LIMIT ?",
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
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_job).transpose()
    }

    async fn purge(&self, retention: Duration) -> Result<u64, JobsError> {
        let cutoff = self.clock.now_ms().saturating_sub(duration_ms(retention));
        let res = sqlx::query(
            "DELETE FROM jobs WHERE state IN ('done', 'dead') AND finished_ms IS NOT NULL AND finished_ms < ?",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(res.rows_affected())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, JobsError> {
        let now = self.clock.now_ms();
        let row = sqlx::query(
            "SELECT
               COALESCE(SUM(state = 'waiting' OR (state = 'running' AND lease_expires_ms <= ?)), 0) AS waiting,
               COALESCE(SUM(state = 'running' AND lease_expires_ms > ?), 0) AS running,
               COALESCE(SUM(state = 'delayed'), 0) AS delayed,
               COALESCE(SUM(state = 'dead'), 0) AS dead,
               COALESCE(SUM(state = 'done'), 0) AS done
             FROM jobs WHERE queue = ?",
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
        let now = self.clock.now_ms();
        let rows = sqlx::query(
            "SELECT DISTINCT worker_id FROM jobs WHERE queue = ? AND state = 'running'
             AND lease_expires_ms > ? AND worker_id IS NOT NULL ORDER BY worker_id",
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

    async fn queues(&self) -> Result<Vec<String>, JobsError> {
        let rows = sqlx::query("SELECT DISTINCT queue FROM jobs ORDER BY queue")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("queue").map_err(|e| self.err(e)))
            .collect()
    }
}
