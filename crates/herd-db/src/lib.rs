//! herd's SQL database layer, shared by the registry and the job queue.
//!
//! Owns: connecting to SQLite (a file, WAL, busy timeout) or PostgreSQL by URL ([`connect`]), the
//! embedded schema of each user per backend ([`Schema`]: versioned sqlx migrations, or idempotent
//! DDL applied under a lock), the [`dispatch!`] macro that runs one query text on either pool,
//! typed row access that reads the same on both ([`RowExt`]), URL redaction ([`redact_url`]) and
//! the unique-violation check ([`is_unique_violation`]).
//! Must not depend on: any other herd crate (its users map [`DbError`] into their own errors,
//! which carry the stable error codes), HTTP, inference engines.
//!
//! Queries are written once in portable SQL: `$1` placeholders (both backends accept them, and
//! a number used twice is the same argument), `CAST(x AS TEXT)` rather than `x::TEXT`, `CASE`
//! rather than SQLite's boolean sums or `MAX(a, b)`. What really differs between the backends
//! (the statement that opens a write transaction, row locks, the clock) is chosen explicitly by
//! the caller, by matching on [`Db`].

mod error;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;

pub use error::DbError;
pub use sqlx::sqlite::SqliteSynchronous;

/// A connected database.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$begin` to the statement that starts
/// a write transaction on it (`pool.begin_with($begin)`): SQLite `BEGIN IMMEDIATE` (two writers
/// queue on the busy timeout instead of failing on a lock upgrade), PostgreSQL `BEGIN`. The body
/// is compiled once per backend, so the same query text runs on either.
#[macro_export]
macro_rules! dispatch {
    ($db:expr, |$pool:ident, $begin:ident| $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $begin = "BEGIN IMMEDIATE";
                $body
            }
            $crate::Db::Postgres($pool) => {
                #[allow(unused_variables)]
                let $begin = "BEGIN";
                $body
            }
        }
    };
}

/// A database user's schema on one backend.
#[derive(Clone, Copy, Debug)]
pub enum Schema {
    /// Versioned migrations `(version, description, sql)`, applied once each through sqlx's
    /// migrator (its ledger `_sqlx_migrations`, and on PostgreSQL its advisory lock). A database
    /// that has a migration this build does not know is refused (it is newer than this herd).
    Versioned(&'static [(i64, &'static str, &'static str)]),
    /// DDL that may run again (`CREATE ... IF NOT EXISTS`), applied at every connect in one write
    /// transaction: SQLite `BEGIN IMMEDIATE`; PostgreSQL `BEGIN` and then
    /// `pg_advisory_xact_lock(pg_lock_key)`, so concurrent first starts do not race on
    /// `CREATE TABLE` (PostgreSQL's `IF NOT EXISTS` is not safe against a concurrent creator).
    /// No ledger table: it suits a user that shares a PostgreSQL database with another one
    /// (sqlx's ledger name is fixed, two users' versions would collide in it).
    Idempotent { sql: &'static str, pg_lock_key: i64 },
}

/// How [`connect`] opens a database for one user (the registry, the queue).
#[derive(Clone, Copy, Debug)]
pub struct DbOptions {
    /// What the database is for, in messages: "registry", "queue".
    pub what: &'static str,
    /// The user's default SQLite URL, suggested in messages (`sqlite://.herd/registry.db`).
    pub default_url: &'static str,
    /// The schema on SQLite.
    pub sqlite: Schema,
    /// The schema on PostgreSQL.
    pub postgres: Schema,
    /// SQLite's `synchronous` setting: `Full` (sqlx's default) survives a power loss with the
    /// last commit; `Normal` in WAL mode may lose the last commits on power loss, never on a
    /// process crash, and commits faster.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Connections per pool on PostgreSQL (SQLite: 4, or 1 for `sqlite::memory:`).
    pub pg_max_connections: u32,
}

impl DbOptions {
    /// Options for `what` with both schemas, `synchronous = FULL` and 8 PostgreSQL connections.
    pub const fn new(
        what: &'static str,
        default_url: &'static str,
        sqlite: Schema,
        postgres: Schema,
    ) -> Self {
        DbOptions {
            what,
            default_url,
            sqlite,
            postgres,
            sqlite_synchronous: SqliteSynchronous::Full,
            pg_max_connections: 8,
        }
    }
}

/// How long a first PostgreSQL connection may take before the URL is reported unreachable.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url` (`sqlite://path`, `sqlite:path`, `sqlite::memory:`, `postgres://...`,
/// `postgresql://...`) and applies the schema of `opts`. A missing SQLite file (and its
/// directory) is created.
pub async fn connect(url: &str, opts: &DbOptions) -> Result<Db, DbError> {
    if url.starts_with("sqlite:") {
        connect_sqlite(url, opts).await
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        connect_postgres(url, opts).await
    } else {
        Err(DbError::Config(format!(
            "unsupported {} URL '{}'; use sqlite://PATH (e.g. {}) or postgres://user@host/db",
            opts.what,
            redact_url(url),
            opts.default_url
        )))
    }
}

/// The file path of an SQLite URL (`sqlite://PATH`, `sqlite:PATH`), without its query.
pub fn sqlite_path(url: &str) -> &str {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    path.split('?').next().unwrap_or("")
}

async fn connect_sqlite(url: &str, opts: &DbOptions) -> Result<Db, DbError> {
    let path = sqlite_path(url);
    if path.trim().is_empty() {
        return Err(DbError::Config(format!(
            "{} URL '{url}' has no file path; use {}",
            opts.what, opts.default_url
        )));
    }
    if path != ":memory:" {
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|error| DbError::Io {
                    context: format!("cannot create directory {}", parent.display()),
                    error,
                })?;
            }
        }
    }
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(|e| DbError::Config(format!("bad SQLite URL '{url}': {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(opts.sqlite_synchronous)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    // Every connection of `sqlite::memory:` would be a database of its own.
    let max = if path == ":memory:" { 1 } else { 4 };
    let pool = SqlitePoolOptions::new()
        .max_connections(max)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(connect)
        .await?;
    match opts.sqlite {
        Schema::Versioned(m) => Migrator::new(Embedded(m)).await?.run(&pool).await?,
        Schema::Idempotent { sql, .. } => {
            // One simple query on one connection (a `raw_sql` future on a transaction is not
            // `Send` for every lifetime, which spawned callers need). On an error the pool is
            // dropped, and with it the connection left inside the transaction.
            sqlx::raw_sql(&format!("BEGIN IMMEDIATE; {sql} COMMIT;"))
                .execute(&pool)
                .await?;
        }
    }
    Ok(Db::Sqlite(pool))
}

async fn connect_postgres(url: &str, opts: &DbOptions) -> Result<Db, DbError> {
    let shown = redact_url(url);
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| DbError::Config(format!("bad PostgreSQL URL '{shown}': {e}")))?;
    let unreachable = |source: sqlx::Error| DbError::Unreachable {
        message: format!(
            "cannot connect to PostgreSQL at {shown}: {source}; check the URL and that the \
             server is running"
        ),
        source,
    };
    // One direct attempt first: a refused connection or bad password is reported at once
    // instead of after the pool's acquire timeout.
    {
        use sqlx::Connection;
        let conn = tokio::time::timeout(
            PG_CONNECT_TIMEOUT,
            sqlx::PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| {
            unreachable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", PG_CONNECT_TIMEOUT.as_secs()),
            )))
        })?
        .map_err(unreachable)?;
        let _ = conn.close().await;
    }
    let pool = PgPoolOptions::new()
        .max_connections(opts.pg_max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(connect)
        .await
        .map_err(unreachable)?;
    match opts.postgres {
        Schema::Versioned(m) => Migrator::new(Embedded(m)).await?.run(&pool).await?,
        Schema::Idempotent { sql, pg_lock_key } => {
            // One simple query on one connection: the lock is held until COMMIT.
            sqlx::raw_sql(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({pg_lock_key}); {sql} COMMIT;"
            ))
            .execute(&pool)
            .await?;
        }
    }
    Ok(Db::Postgres(pool))
}

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

impl Db {
    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool (waits for the connections in use to come back).
    pub async fn close(&self) {
        dispatch!(self, |pool, _b| pool.close().await)
    }
}

/// Typed column access that reads the same on both backends.
pub trait RowExt {
    fn s(&self, col: &str) -> Result<String, sqlx::Error>;
    fn os(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn i(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn oi(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
}

macro_rules! impl_row_ext {
    ($t:ty) => {
        impl RowExt for $t {
            fn s(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get::<String, _>(col)
            }
            fn os(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get::<Option<String>, _>(col)
            }
            fn i(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get::<i64, _>(col)
            }
            fn oi(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get::<Option<i64>, _>(col)
            }
        }
    };
}
impl_row_ext!(SqliteRow);
impl_row_ext!(PgRow);

/// Whether `e` is a unique-constraint violation (a concurrent writer won the race).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.is_unique_violation(),
        _ => false,
    }
}

/// `url` with any password replaced by `***` (userinfo `user:pass@`, a lone `pass@` for the
/// Redis schemes, which take one, and `password=` / `pass=` / `token=` / `secret=` query
/// parameters), for logs and errors.
pub fn redact_url(url: &str) -> String {
    let (head, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // Userinfo: everything before the last '@' of the authority (which ends at '/', '?', '#').
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _pw)) => format!("{name}:***@{host}"),
            None if head.starts_with("redis") => format!("***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if ["password", "pass", "token", "secret"]
                            .contains(&k.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{k}=***")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT NOT NULL);";
    const V2: &str = "ALTER TABLE things ADD COLUMN note TEXT;";
    const IDEMPOTENT: &str =
        "CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY, n BIGINT NOT NULL, note TEXT);";

    fn versioned(m: &'static [(i64, &'static str, &'static str)]) -> DbOptions {
        DbOptions::new(
            "test",
            "sqlite://.herd/test.db",
            Schema::Versioned(m),
            Schema::Versioned(m),
        )
    }

    fn url_in(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("sub/t.db").display())
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, want) in [
            (
                "redis://:hunter2@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("redis://hunter2@h:1", "redis://***@h:1"),
            (
                "rediss://default:hunter2@h:1?prefix=x",
                "rediss://default:***@h:1?prefix=x",
            ),
            (
                "redis+cluster://u:hunter2@a:1,b:2",
                "redis+cluster://u:***@a:1,b:2",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "postgres://herd:hunter2@db/q?sslmode=require",
                "postgres://herd:***@db/q?sslmode=require",
            ),
            (
                "postgres://db/q?password=hunter2",
                "postgres://db/q?password=***",
            ),
            ("postgres://herd@db/q", "postgres://herd@db/q"),
            ("sqlite://.herd/jobs.db", "sqlite://.herd/jobs.db"),
        ] {
            assert_eq!(redact_url(url), want);
        }
    }

    #[test]
    fn sqlite_paths_come_out_of_both_url_forms() {
        assert_eq!(sqlite_path("sqlite://.herd/r.db"), ".herd/r.db");
        assert_eq!(sqlite_path("sqlite:///abs/r.db?mode=rwc"), "/abs/r.db");
        assert_eq!(sqlite_path("sqlite:r.db"), "r.db");
        assert_eq!(sqlite_path("sqlite::memory:"), ":memory:");
    }

    #[tokio::test]
    async fn bad_urls_get_precise_errors() {
        let opts = versioned(&[(1, "init", V1)]);
        for (url, want) in [
            ("sqlite://", "has no file path; use sqlite://.herd/test.db"),
            ("mysql://u:hunter2@h/db", "unsupported test URL"),
            ("postgres://u:hunter2@h:notaport/db", "bad PostgreSQL URL"),
        ] {
            let err = connect(url, &opts).await.expect_err(url).to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn versioned_migrations_apply_once_and_a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = url_in(&dir);
        static ONE: &[(i64, &str, &str)] = &[(1, "init", V1)];
        static TWO: &[(i64, &str, &str)] = &[(1, "init", V1), (2, "note", V2)];
        let db = connect(&url, &versioned(ONE)).await.unwrap();
        dispatch!(&db, |pool, _b| {
            sqlx::query("INSERT INTO things (id, n) VALUES ($1, $2)")
                .bind("a")
                .bind(7_i64)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected()
        });
        db.close().await;
        // The second migration runs once; the row of the first is kept; typed access reads it.
        for _ in 0..2 {
            let db = connect(&url, &versioned(TWO)).await.unwrap();
            let row = dispatch!(&db, |pool, _b| {
                sqlx::query("SELECT id, n, note FROM things WHERE id = $1")
                    .bind("a")
                    .fetch_one(pool)
                    .await
                    .map(|r| (r.s("id").unwrap(), r.i("n").unwrap(), r.os("note").unwrap()))
                    .unwrap()
            });
            assert_eq!(row, ("a".to_string(), 7, None));
            db.close().await;
        }
        // This build only knows version 1: the database is newer.
        let err = connect(&url, &versioned(ONE))
            .await
            .expect_err("newer database");
        assert!(matches!(err, DbError::Migrate(_)), "{err}");
    }

    #[tokio::test]
    async fn idempotent_schema_runs_again_and_keeps_rows_and_unique_violations_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let url = url_in(&dir);
        let schema = Schema::Idempotent {
            sql: IDEMPOTENT,
            pg_lock_key: 1,
        };
        let opts = DbOptions::new("test", "sqlite://.herd/test.db", schema, schema);
        let db = connect(&url, &opts).await.unwrap();
        let insert = |db: Db| async move {
            dispatch!(&db, |pool, begin| {
                let mut tx = pool.begin_with(begin).await?;
                sqlx::query("INSERT INTO things (id, n) VALUES ($1, $2)")
                    .bind("a")
                    .bind(1_i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            })
        };
        insert(db.clone()).await.unwrap();
        let again = insert(db.clone()).await.expect_err("duplicate id");
        assert!(is_unique_violation(&again), "{again}");
        assert!(!is_unique_violation(&sqlx::Error::RowNotFound));
        db.close().await;
        let db = connect(&url, &opts).await.unwrap();
        let n: i64 = dispatch!(&db, |pool, _b| {
            sqlx::query_scalar("SELECT COUNT(*) FROM things")
                .fetch_one(pool)
                .await
                .unwrap()
        });
        assert_eq!(n, 1, "reopening must keep the rows");
        assert_eq!(db.backend(), "sqlite");
    }
}
