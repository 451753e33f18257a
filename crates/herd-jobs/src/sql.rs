//! The SQL queue: one implementation over `herd-db` for the embedded SQLite file
//! (`sqlite://PATH`) and PostgreSQL (`postgres://USER:PASS@HOST:PORT/DB`).
//!
//! Every query is written once, in the portable SQL of `herd-db` (`$1` placeholders, `CAST`,
//! `CASE`), and runs on either pool through [`herd_db::dispatch!`]. What differs between the two
//! backends is kept in the first section of this file, explicitly:
//!
//! * the table: SQLite `jobs` (existing queue files keep working), PostgreSQL `herd_jobs` (a
//!   database shared with other users); the same columns;
//! * the schema, applied at every open (`CREATE ... IF NOT EXISTS`): on SQLite in a
//!   `BEGIN IMMEDIATE` transaction, on PostgreSQL under an advisory lock so concurrent first
//!   starts do not race on `CREATE TABLE`;
//! * write transactions: SQLite `BEGIN IMMEDIATE` (one writer at a time across processes, WAL,
//!   30 s busy timeout), PostgreSQL `BEGIN` with row locks: a claim takes the best waiting row
//!   `FOR UPDATE SKIP LOCKED` (concurrent claimers skip each other's rows instead of waiting),
//!   `fail` and `cancel` lock the row they check (`FOR UPDATE`);
//! * the clock: PostgreSQL's `clock_timestamp()` (workers whose clocks disagree still agree on
//!   who holds a lease); SQLite, an embedded file, this host's clock; a test clock on both when
//!   one is given;
//! * the wake-up: PostgreSQL `NOTIFY herd_jobs '<queue>'` on enqueue and `LISTEN herd_jobs` in
//!   idle workers; SQLite workers poll.

use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use herd_db::{dispatch, Db, DbError, DbOptions, RowExt, Schema, SqliteSynchronous};
use sqlx::postgres::PgListener;
use sqlx::Row;

use crate::queue::{claim_past_poison, duration_ms, enqueue_with_fresh_id, ClaimStep, Drawn};
use crate::{
    backoff_delay_ms, new_job_id, new_token, Clock, FailOutcome, Failure, Job, JobId, JobOutcome,
    JobSpec, JobState, JobsError, Lease, ListFilter, Progress, Queue, QueueStats, SystemClock,
};

// ---- What differs between SQLite and PostgreSQL -------------------------------------------

/// The schema, written once for both (`{jobs}` is the table). SQLite gives `BIGINT` columns
/// INTEGER affinity, the same 64-bit integers as its files created with `INTEGER` columns
/// before; `CREATE ... IF NOT EXISTS` leaves an existing table as it is.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS {jobs} (
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
CREATE INDEX IF NOT EXISTS {jobs}_claim ON {jobs}(queue, state, priority DESC, id);
CREATE INDEX IF NOT EXISTS {jobs}_due ON {jobs}(queue, state, run_at_ms);
CREATE INDEX IF NOT EXISTS {jobs}_lease ON {jobs}(queue, state, lease_expires_ms);
CREATE INDEX IF NOT EXISTS {jobs}_finished ON {jobs}(state, finished_ms);
"#;

/// [`SCHEMA`] for SQLite and for PostgreSQL.
static SCHEMAS: LazyLock<[String; 2]> = LazyLock::new(|| [fill(SCHEMA, false), fill(SCHEMA, true)]);

/// The PostgreSQL advisory lock held while the schema is created.
const PG_SCHEMA_LOCK: i64 = 7421001;

/// The PostgreSQL channel of enqueue notifications (the payload is the queue name).
const PG_CHANNEL: &str = "herd_jobs";

fn options() -> DbOptions {
    let [sqlite, postgres] = &*SCHEMAS;
    DbOptions {
        // A process crash never loses a commit in WAL mode; a power loss may lose the last ones.
        sqlite_synchronous: SqliteSynchronous::Normal,
        ..DbOptions::new(
            "queue",
            crate::DEFAULT_QUEUE_URL,
            Schema::Idempotent {
                sql: sqlite,
                pg_lock_key: PG_SCHEMA_LOCK,
            },
            Schema::Idempotent {
                sql: postgres,
                pg_lock_key: PG_SCHEMA_LOCK,
            },
        )
    }
}

/// Fills the backend's slots of a query text: `{jobs}` (the table), `{skip_locked}` (PostgreSQL
/// `FOR UPDATE SKIP LOCKED`) and `{for_update}` (PostgreSQL `FOR UPDATE`). SQLite needs no row
/// locks: its write transactions (`BEGIN IMMEDIATE`) run one at a time.
fn fill(text: &str, postgres: bool) -> String {
    let (table, skip_locked, for_update) = if postgres {
        ("herd_jobs", " FOR UPDATE SKIP LOCKED", " FOR UPDATE")
    } else {
        ("jobs", "", "")
    };
    text.replace("{jobs}", table)
        .replace("{skip_locked}", skip_locked)
        .replace("{for_update}", for_update)
}

/// The SQLite and PostgreSQL backend.
pub struct SqlQueue {
    db: Db,
    /// The SQLite file, or the PostgreSQL URL with its password redacted, for errors.
    shown: String,
    /// A test clock, or None for the store's clock.
    clock: Option<Arc<dyn Clock>>,
    /// PostgreSQL: woken by `NOTIFY herd_jobs, '<queue>'` on every enqueue (created on first
    /// wait).
    listener: tokio::sync::Mutex<Option<PgListener>>,
}

impl SqlQueue {
    /// Opens `url` (`sqlite://PATH`, created if missing, or `postgres://...`) and creates the
    /// table if needed. `clock`: a test clock, or None for the store's clock.
    pub async fn open(url: &str, clock: Option<Arc<dyn Clock>>) -> Result<Self, JobsError> {
        let sqlite = url.starts_with("sqlite:");
        let shown = if sqlite {
            herd_db::sqlite_path(url).to_string()
        } else {
            crate::redact_url(url)
        };
        let db = herd_db::connect(url, &options())
            .await
            .map_err(|e| match e {
                DbError::Config(reason) => JobsError::InvalidUrl {
                    url: crate::redact_url(url),
                    reason,
                },
                DbError::Io { context, error } => JobsError::Io {
                    path: context,
                    source: error,
                },
                DbError::Unreachable { source, .. } | DbError::Database(source) => {
                    store_error(sqlite, &shown, source)
                }
                DbError::Migrate(m) => store_error(sqlite, &shown, sqlx::Error::Migrate(m.into())),
            })?;
        Ok(SqlQueue {
            db,
            shown,
            clock,
            listener: tokio::sync::Mutex::new(None),
        })
    }

    /// The clock of this queue: a test clock, PostgreSQL's `clock_timestamp()`, or (SQLite, an
    /// embedded file) this host's clock; in ms since the Unix epoch.
    async fn now(&self) -> Result<i64, JobsError> {
        if let Some(c) = &self.clock {
            return Ok(c.now_ms());
        }
        match &self.db {
            Db::Sqlite(_) => Ok(SystemClock.now_ms()),
            Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
            )
            .fetch_one(pool)
            .await
            .map_err(|e| self.err(e)),
        }
    }

    /// PostgreSQL: wakes the idle workers of `queue` (`LISTEN herd_jobs`). SQLite workers poll.
    async fn notify(&self, queue: &str) {
        if let Db::Postgres(pool) = &self.db {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(PG_CHANNEL)
                .bind(queue)
                .execute(pool)
                .await
            {
                tracing::debug!(error = %e, "NOTIFY failed; idle workers find the job when they poll");
            }
        }
    }

    // ---- One implementation for both -----------------------------------------------------

    fn q(&self, text: &str) -> String {
        fill(text, matches!(self.db, Db::Postgres(_)))
    }

    fn err(&self, source: sqlx::Error) -> JobsError {
        store_error(matches!(self.db, Db::Sqlite(_)), &self.shown, source)
    }

    /// One claim; a poison job found on the way is dead-lettered and reported as
    /// [`ClaimStep::Buried`].
    async fn claim_once(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<ClaimStep, JobsError> {
        let now = self.now().await?;
        let token = new_token();
        let expires = now.saturating_add(duration_ms(lease));
        dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await.map_err(|e| self.err(e))?;
            // 1. Per queue, settle what time has changed (each step one indexed range): expired
            //    leases on the last attempt go to dead, other expired leases and due retries to
            //    waiting. 2. Take the best waiting job across the queues.
            let mut best: Option<(i64, String)> = None;
            for name in queues {
                sqlx::query(&self.q(
                    "UPDATE {jobs} SET state = 'dead', finished_ms = $1, updated_ms = $1,
                     lease_token = NULL, lease_expires_ms = NULL,
                     last_error = 'lease expired on the last attempt (the worker died or hung); ' || COALESCE(last_error, '')
                     WHERE queue = $2 AND state = 'running' AND lease_expires_ms <= $1 AND attempts >= max_attempts",
                ))
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
                sqlx::query(&self.q(
                    "UPDATE {jobs} SET state = 'waiting', lease_token = NULL, lease_expires_ms = NULL, updated_ms = $1
                     WHERE queue = $2 AND state = 'running' AND lease_expires_ms <= $1",
                ))
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
                sqlx::query(
                    &self.q("UPDATE {jobs} SET state = 'waiting', updated_ms = $1
                     WHERE queue = $2 AND state = 'delayed' AND run_at_ms <= $1"),
                )
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
                let top = sqlx::query(&self.q(
                    "SELECT id, priority FROM {jobs} WHERE queue = $1 AND state = 'waiting'
                     ORDER BY priority DESC, id ASC LIMIT 1{skip_locked}",
                ))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
                if let Some(row) = top {
                    let id = row.s("id").map_err(|e| self.err(e))?;
                    let prio = row.i("priority").map_err(|e| self.err(e))?;
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
                return Ok(ClaimStep::Done(None));
            };
            let row = sqlx::query(&self.q(
                "UPDATE {jobs} SET state = 'running', attempts = attempts + 1, worker_id = $1,
                 lease_token = $2, lease_expires_ms = $3, updated_ms = $4 WHERE id = $5 RETURNING *",
            ))
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
                    Ok(ClaimStep::Done(Some(Lease {
                        job,
                        token,
                        worker_id: worker_id.to_string(),
                        expires_ms: expires,
                    })))
                }
                Err(e) => {
                    // A poison job: its record does not decode. Dead-letter it with the reason,
                    // in the same transaction, and tell the caller to claim again.
                    tracing::error!(job_id = %id, error = %e, "poison job: moving it to the dead letter");
                    sqlx::query(&self.q(
                        "UPDATE {jobs} SET state = 'dead', finished_ms = $1, updated_ms = $1,
                         lease_token = NULL, lease_expires_ms = NULL, last_error = $2 WHERE id = $3",
                    ))
                    .bind(now)
                    .bind(format!("undecodable job record, moved to the dead letter: {e}"))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                    tx.commit().await.map_err(|e| self.err(e))?;
                    Ok(ClaimStep::Buried)
                }
            }
        })
    }

    /// Runs one statement that changes the leased job only while the lease is still this one's
    /// (`$1` the job id, `$2` the lease token, then `binds`); LeaseLost when it changed nothing.
    async fn fenced(&self, lease: &Lease, text: &str, binds: Binds) -> Result<(), JobsError> {
        let sql = self.q(text);
        let done = dispatch!(&self.db, |pool, _b| {
            let mut query = sqlx::query(&sql).bind(&lease.job.id).bind(&lease.token);
            for b in binds.0 {
                query = match b {
                    Bind::I(v) => query.bind(v),
                    Bind::S(v) => query.bind(v),
                };
            }
            query
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| self.err(e))?
        });
        if done == 0 {
            return Err(JobsError::LeaseLost {
                job_id: lease.job.id.clone(),
            });
        }
        Ok(())
    }
}

/// Extra arguments of [`SqlQueue::fenced`], after the id and token.
struct Binds(Vec<Bind>);

enum Bind {
    I(i64),
    S(Option<String>),
}

fn store_error(sqlite: bool, shown: &str, source: sqlx::Error) -> JobsError {
    if sqlite {
        JobsError::Sqlite {
            path: shown.to_string(),
            source,
        }
    } else {
        JobsError::Postgres {
            url: shown.to_string(),
            source,
        }
    }
}

fn row_to_job(row: &impl RowExt) -> Result<Job, JobsError> {
    let c = |e: sqlx::Error| JobsError::Corrupt(e.to_string());
    let spec: JobSpec = serde_json::from_str(&row.s("spec").map_err(c)?)
        .map_err(|e| JobsError::Corrupt(format!("spec: {e}")))?;
    let state = row.s("state").map_err(c)?;
    Ok(Job {
        id: row.s("id").map_err(c)?,
        spec,
        state: JobState::from_str(&state).map_err(|e| JobsError::Corrupt(e.to_string()))?,
        attempts: u32::try_from(row.i("attempts").map_err(c)?).unwrap_or(0),
        created_ms: row.i("created_ms").map_err(c)?,
        updated_ms: row.i("updated_ms").map_err(c)?,
        run_at_ms: row.i("run_at_ms").map_err(c)?,
        finished_ms: row.oi("finished_ms").map_err(c)?,
        worker_id: row.os("worker_id").map_err(c)?,
        lease_expires_ms: row.oi("lease_expires_ms").map_err(c)?,
        last_error: row.os("last_error").map_err(c)?,
        result: match row.os("result").map_err(c)? {
            Some(r) => Some(
                serde_json::from_str(&r).map_err(|e| JobsError::Corrupt(format!("result: {e}")))?,
            ),
            None => None,
        },
        progress: match row.os("progress").map_err(c)? {
            Some(p) => serde_json::from_str(&p).ok(),
            None => None,
        },
    })
}

#[async_trait]
impl Queue for SqlQueue {
    fn backend(&self) -> &'static str {
        self.db.backend()
    }

    async fn enqueue(&self, spec: JobSpec) -> Result<JobId, JobsError> {
        spec.validate()?;
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        let sql = self.q(
            "INSERT INTO {jobs} (id, queue, state, priority, spec, attempts, max_attempts,
             created_ms, updated_ms, run_at_ms)
             VALUES ($1, $2, 'waiting', $3, $4, 0, $5, $6, $6, $6) ON CONFLICT(id) DO NOTHING",
        );
        // An id that exists already is never overwritten (nor is the insert an error).
        let (sql, spec, spec_json) = (&sql, &spec, &spec_json);
        enqueue_with_fresh_id(&spec.queue, || async move {
            let now = self.now().await?;
            let id = new_job_id(now);
            let inserted = dispatch!(&self.db, |pool, _b| {
                sqlx::query(sql)
                    .bind(&id)
                    .bind(&spec.queue)
                    .bind(i64::from(spec.priority))
                    .bind(spec_json)
                    .bind(i64::from(spec.max_attempts))
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| self.err(e))?
            });
            if inserted == 1 {
                self.notify(&spec.queue).await;
            }
            Ok(Drawn {
                id,
                inserted: inserted == 1,
            })
        })
        .await
    }

    async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<Option<Lease>, JobsError> {
        // Poison jobs are dead-lettered one by one; the claim goes on to the next job.
        claim_past_poison(queues, || self.claim_once(worker_id, queues, lease)).await
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
        self.fenced(
            lease,
            "UPDATE {jobs} SET lease_expires_ms = $3, updated_ms = $4, progress = COALESCE($5, progress)
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
            Binds(vec![Bind::I(expires), Bind::I(now), Bind::S(progress)]),
        )
        .await?;
        lease.expires_ms = expires;
        Ok(())
    }

    async fn ack(&self, lease: &Lease, outcome: &JobOutcome) -> Result<(), JobsError> {
        let now = self.now().await?;
        let result =
            serde_json::to_string(outcome).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        self.fenced(
            lease,
            "UPDATE {jobs} SET state = 'done', finished_ms = $3, updated_ms = $3, result = $4,
             lease_token = NULL, lease_expires_ms = NULL
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
            Binds(vec![Bind::I(now), Bind::S(Some(result))]),
        )
        .await
    }

    async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, JobsError> {
        let now = self.now().await?;
        dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await.map_err(|e| self.err(e))?;
            // The lease, checked and (PostgreSQL) locked until the decision is written.
            let row = sqlx::query(&self.q(
                "SELECT * FROM {jobs} WHERE id = $1 AND state = 'running' AND lease_token = $2{for_update}",
            ))
            .bind(&lease.job.id)
            .bind(&lease.token)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            let Some(row) = row else {
                return Err(JobsError::LeaseLost {
                    job_id: lease.job.id.clone(),
                });
            };
            let job = row_to_job(&row)?;
            let (state, run_at, outcome) =
                if !failure.retryable || job.attempts >= job.spec.max_attempts {
                    ("dead", job.run_at_ms, FailOutcome::Dead)
                } else {
                    let delay =
                        backoff_delay_ms(&job.spec.backoff, job.attempts, &mut rand::thread_rng());
                    let run_at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX / 4));
                    ("delayed", run_at, FailOutcome::Retry { run_at_ms: run_at })
                };
            // A dead job has finished; a delayed one runs again at `run_at`.
            sqlx::query(&self.q(
                "UPDATE {jobs} SET state = $1, run_at_ms = $2, updated_ms = $3,
                 finished_ms = CASE WHEN $1 = 'dead' THEN $3 ELSE finished_ms END,
                 last_error = $4, lease_token = NULL, lease_expires_ms = NULL WHERE id = $5",
            ))
            .bind(state)
            .bind(run_at)
            .bind(now)
            .bind(&failure.message)
            .bind(&job.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok(outcome)
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), JobsError> {
        let now = self.now().await?;
        self.fenced(
            lease,
            "UPDATE {jobs} SET state = 'waiting', run_at_ms = $3, updated_ms = $3,
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
             lease_token = NULL, lease_expires_ms = NULL
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
            Binds(vec![Bind::I(now)]),
        )
        .await
    }

    async fn requeue_dead(&self, queue: &str, id: Option<&str>) -> Result<u64, JobsError> {
        let now = self.now().await?;
        dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await.map_err(|e| self.err(e))?;
            if let Some(id) = id {
                let row = sqlx::query(&self.q("SELECT state, queue FROM {jobs} WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                let Some(row) = row else {
                    return Err(JobsError::NotFound(id.to_string()));
                };
                let state = row.s("state").map_err(|e| self.err(e))?;
                if row.s("queue").map_err(|e| self.err(e))? != queue {
                    return Err(JobsError::NotFound(format!("{id} (in queue {queue})")));
                }
                if state != "dead" {
                    return Err(JobsError::NotDead {
                        id: id.to_string(),
                        state,
                    });
                }
            }
            let res = sqlx::query(&self.q(
                "UPDATE {jobs} SET state = 'waiting', attempts = 0, run_at_ms = $1, updated_ms = $1,
                 finished_ms = NULL, worker_id = NULL
                 WHERE queue = $2 AND state = 'dead' AND (CAST($3 AS TEXT) IS NULL OR id = $3)",
            ))
            .bind(now)
            .bind(queue)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok(res.rows_affected())
        })
    }

    async fn cancel(&self, id: &str, reason: &str) -> Result<JobState, JobsError> {
        let now = self.now().await?;
        dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await.map_err(|e| self.err(e))?;
            let row = sqlx::query(&self.q("SELECT state FROM {jobs} WHERE id = $1{for_update}"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            let Some(row) = row else {
                return Err(JobsError::NotFound(id.to_string()));
            };
            let state = row.s("state").map_err(|e| self.err(e))?;
            let state =
                JobState::from_str(&state).map_err(|e| JobsError::Corrupt(e.to_string()))?;
            if matches!(state, JobState::Done | JobState::Dead) {
                return Err(JobsError::NotCancellable {
                    id: id.to_string(),
                    state: state.to_string(),
                });
            }
            sqlx::query(&self.q(
                "UPDATE {jobs} SET state = 'dead', finished_ms = $1, updated_ms = $1, last_error = $2,
                 lease_token = NULL, lease_expires_ms = NULL WHERE id = $3",
            ))
            .bind(now)
            .bind(reason)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok(state)
        })
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, JobsError> {
        let sql = self.q(
            "SELECT * FROM {jobs} WHERE (CAST($1 AS TEXT) IS NULL OR queue = $1)
             AND (CAST($2 AS TEXT) IS NULL OR state = $2) ORDER BY id DESC LIMIT $3",
        );
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(&sql)
                .bind(filter.queue.as_deref())
                .bind(filter.state.map(|s| s.as_str()))
                .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
                .map_err(|e| self.err(e))?;
            rows.iter().map(row_to_job).collect()
        })
    }

    async fn show(&self, id: &str) -> Result<Option<Job>, JobsError> {
        let sql = self.q("SELECT * FROM {jobs} WHERE id = $1");
        dispatch!(&self.db, |pool, _b| {
            let row = sqlx::query(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(|e| self.err(e))?;
            row.as_ref().map(row_to_job).transpose()
        })
    }

    async fn purge(&self, retention: Duration) -> Result<u64, JobsError> {
        let cutoff = self.now().await?.saturating_sub(duration_ms(retention));
        let sql = self.q(
            "DELETE FROM {jobs} WHERE state IN ('done', 'dead') AND finished_ms IS NOT NULL
             AND finished_ms < $1",
        );
        dispatch!(&self.db, |pool, _b| {
            sqlx::query(&sql)
                .bind(cutoff)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| self.err(e))
        })
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, JobsError> {
        let now = self.now().await?;
        let sql = self.q(
            "SELECT
               COALESCE(SUM(CASE WHEN state = 'waiting' OR (state = 'running' AND lease_expires_ms <= $1) THEN 1 ELSE 0 END), 0) AS waiting,
               COALESCE(SUM(CASE WHEN state = 'running' AND lease_expires_ms > $1 THEN 1 ELSE 0 END), 0) AS running,
               COALESCE(SUM(CASE WHEN state = 'delayed' THEN 1 ELSE 0 END), 0) AS delayed,
               COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0) AS dead,
               COALESCE(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0) AS done
             FROM {jobs} WHERE queue = $2",
        );
        let counts: Vec<i64> = dispatch!(&self.db, |pool, _b| {
            let row = sqlx::query(&sql)
                .bind(now)
                .bind(queue)
                .fetch_one(pool)
                .await
                .map_err(|e| self.err(e))?;
            ["waiting", "running", "delayed", "dead", "done"]
                .iter()
                .map(|c| row.try_get::<i64, _>(*c).map_err(|e| self.err(e)))
                .collect::<Result<_, _>>()?
        });
        let n = |i: usize| u64::try_from(counts[i]).unwrap_or(0);
        Ok(QueueStats {
            waiting: n(0),
            running: n(1),
            delayed: n(2),
            dead: n(3),
            done: n(4),
        })
    }

    async fn lease_holders(&self, queue: &str) -> Result<Vec<String>, JobsError> {
        let now = self.now().await?;
        let sql = self.q(
            "SELECT DISTINCT worker_id FROM {jobs} WHERE queue = $1 AND state = 'running'
             AND lease_expires_ms > $2 AND worker_id IS NOT NULL ORDER BY worker_id",
        );
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(&sql)
                .bind(queue)
                .bind(now)
                .fetch_all(pool)
                .await
                .map_err(|e| self.err(e))?;
            rows.iter()
                .map(|r| r.s("worker_id").map_err(|e| self.err(e)))
                .collect()
        })
    }

    async fn queues(&self) -> Result<Vec<String>, JobsError> {
        let sql = self.q("SELECT DISTINCT queue FROM {jobs} ORDER BY queue");
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(&sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.err(e))?;
            rows.iter()
                .map(|r| r.s("queue").map_err(|e| self.err(e)))
                .collect()
        })
    }

    async fn wait_for_work(&self, queues: &[String], max: Duration) {
        let Db::Postgres(pool) = &self.db else {
            tokio::time::sleep(max).await;
            return;
        };
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(pool).await {
                Ok(mut l) => match l.listen(PG_CHANNEL).await {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SQLite queue file written before the queue moved onto herd-db (the table `jobs`, no
    /// migration ledger) opens with its jobs, which are claimed and acked as before.
    #[tokio::test]
    async fn an_existing_sqlite_queue_file_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let url = format!("sqlite://{}", path.display());
        let spec = JobSpec::new(
            "default",
            crate::JobKind::Command(crate::CommandParams {
                program: "echo".into(),
                args: vec!["old".into()],
                ..Default::default()
            }),
        );
        {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            // The schema as the queue wrote it before herd-db: `INTEGER` columns.
            let old = fill(SCHEMA, false).replace("BIGINT", "INTEGER");
            sqlx::raw_sql(&old).execute(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO jobs (id, queue, state, priority, spec, attempts, max_attempts, created_ms, updated_ms, run_at_ms)
                 VALUES ('j-old', 'default', 'waiting', 0, ?, 0, 3, 1, 1, 1)",
            )
            .bind(serde_json::to_string(&spec).unwrap())
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        // Opened on a spawned task: the open future must be `Send` for callers that spawn it
        // (herd-scale's queue probe did; a `raw_sql` on a transaction was not).
        let queue = tokio::spawn(async move { SqlQueue::open(&url, None).await })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(queue.backend(), "sqlite");
        let lease = queue
            .claim("w", &["default".to_string()], Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the old job is claimable");
        assert_eq!(lease.job.id, "j-old");
        assert_eq!(lease.job.spec, spec);
        queue.ack(&lease, &JobOutcome::default()).await.unwrap();
        let job = queue.show("j-old").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Done);
    }

    #[test]
    fn each_backend_gets_its_table_and_row_locks() {
        let text = "SELECT * FROM {jobs} WHERE id = $1{for_update} LIMIT 1{skip_locked}";
        assert_eq!(
            fill(text, false),
            "SELECT * FROM jobs WHERE id = $1 LIMIT 1"
        );
        assert_eq!(
            fill(text, true),
            "SELECT * FROM herd_jobs WHERE id = $1 FOR UPDATE LIMIT 1 FOR UPDATE SKIP LOCKED"
        );
        assert!(SCHEMAS[0].contains("CREATE TABLE IF NOT EXISTS jobs ("));
        assert!(SCHEMAS[1].contains("CREATE INDEX IF NOT EXISTS herd_jobs_claim ON herd_jobs("));
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_unavailable_and_its_password_hidden() {
        // Port 1 on loopback refuses at once: the direct first connection reports it.
        let err = match SqlQueue::open("postgres://herd:hunter2@127.0.0.1:1/q", None).await {
            Ok(_) => panic!("nothing listens on port 1"),
            Err(e) => e,
        };
        assert!(matches!(err, JobsError::Postgres { .. }), "{err}");
        assert_eq!(
            herd_api::HasErrorCode::code(&err),
            herd_api::ErrorCode::Unavailable
        );
        let msg = err.to_string();
        assert!(msg.contains("herd:***@127.0.0.1:1"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[tokio::test]
    async fn a_queue_url_without_a_file_path_is_refused_with_the_default() {
        let err = match SqlQueue::open("sqlite://", None).await {
            Ok(_) => panic!("an empty path must be refused"),
            Err(e) => e,
        };
        assert!(matches!(err, JobsError::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains(crate::DEFAULT_QUEUE_URL), "{err}");
    }
}
