//! The metadata database: SQLite (default, a file) or PostgreSQL, behind one enum.
//!
//! Queries are written once in portable SQL (`$1` placeholders work on both) and run on either pool
//! through the [`dispatch!`] macro, which expands the same code for each backend. Writes on SQLite
//! use `BEGIN IMMEDIATE` so two writers queue on the busy timeout instead of failing on a lock
//! upgrade.

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

use crate::error::{RegistryError, Result};

/// A connected metadata database.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$begin` to the statement that starts
/// a write transaction on it (`pool.begin_with($begin)`).
macro_rules! dispatch {
    ($db:expr, |$pool:ident, $begin:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $begin = "BEGIN IMMEDIATE";
                $body
            }
            $crate::db::Db::Postgres($pool) => {
                #[allow(unused_variables)]
                let $begin = "BEGIN";
                $body
            }
        }
    };
}
pub(crate) use dispatch;

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "bundles",
        include_str!("../migrations/sqlite/0002_bundles.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "bundles",
        include_str!("../migrations/postgres/0002_bundles.sql"),
    ),
];

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> BoxFuture<'s, std::result::Result<Vec<Migration>, sqlx::error::BoxDynError>> {
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

/// Hides the password of a database URL for logs and messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://...`) and applies
    /// migrations. A missing SQLite file (and its directory) is created.
    pub async fn connect(url: &str) -> Result<Db> {
        if url.starts_with("sqlite:") {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or("");
            if path.is_empty() {
                return Err(RegistryError::Config(format!(
                    "registry URL '{url}' has no file path; use sqlite://.herd/registry.db"
                )));
            }
            if path != ":memory:" {
                if let Some(parent) = std::path::Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            RegistryError::io(
                                format!("cannot create directory {}", parent.display()),
                                e,
                            )
                        })?;
                    }
                }
            }
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| RegistryError::Config(format!("bad SQLite URL '{url}': {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let max = if path == ":memory:" { 1 } else { 4 };
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts)
                .await?;
            let migrator = Migrator::new(Embedded(SQLITE_MIGRATIONS)).await?;
            migrator.run(&pool).await?;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(|e| {
                RegistryError::Config(format!("bad PostgreSQL URL '{}': {e}", redact_url(url)))
            })?;
            // One direct attempt first: a refused connection or bad password is reported at
            // once instead of after the pool's acquire timeout.
            {
                use sqlx::Connection;
                let conn = tokio::time::timeout(
                    Duration::from_secs(10),
                    sqlx::PgConnection::connect_with(&opts),
                )
                .await
                .map_err(|_| {
                    RegistryError::Config(format!(
                        "cannot connect to PostgreSQL at {}: no answer within 10 s; check the URL \
                         and that the server is running",
                        redact_url(url)
                    ))
                })?
                .map_err(|e| {
                    RegistryError::Config(format!(
                        "cannot connect to PostgreSQL at {}: {e}; check the URL and that the \
                         server is running",
                        redact_url(url)
                    ))
                })?;
                let _ = conn.close().await;
            }
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(|e| {
                    RegistryError::Config(format!(
                        "cannot connect to PostgreSQL at {}: {e}; check the URL and that the \
                         server is running",
                        redact_url(url)
                    ))
                })?;
            let migrator = Migrator::new(Embedded(POSTGRES_MIGRATIONS)).await?;
            migrator.run(&pool).await?;
            Ok(Db::Postgres(pool))
        } else {
            Err(RegistryError::Config(format!(
                "unsupported registry URL '{}'; use sqlite://path/to/registry.db or \
                 postgres://user@host/db",
                redact_url(url)
            )))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        dispatch!(self, |pool, _b| pool.close().await)
    }
}

/// Typed column access that reads the same on both backends.
pub(crate) trait RowExt {
    fn s(&self, col: &str) -> Result<String>;
    fn os(&self, col: &str) -> Result<Option<String>>;
    fn i(&self, col: &str) -> Result<i64>;
    fn oi(&self, col: &str) -> Result<Option<i64>>;
}

macro_rules! impl_row_ext {
    ($t:ty) => {
        impl RowExt for $t {
            fn s(&self, col: &str) -> Result<String> {
                Ok(self.try_get::<String, _>(col)?)
            }
            fn os(&self, col: &str) -> Result<Option<String>> {
                Ok(self.try_get::<Option<String>, _>(col)?)
            }
            fn i(&self, col: &str) -> Result<i64> {
                Ok(self.try_get::<i64, _>(col)?)
            }
            fn oi(&self, col: &str) -> Result<Option<i64>> {
                Ok(self.try_get::<Option<i64>, _>(col)?)
            }
        }
    };
}
impl_row_ext!(SqliteRow);
impl_row_ext!(PgRow);

/// Serializes the writers that must not interleave with gc (push, alias set, release create, gc
/// itself) on Postgres: `SELECT pg_advisory_xact_lock(..)` as the first statement of their
/// transactions. On SQLite `BEGIN IMMEDIATE` already serializes writers.
pub(crate) const PG_GC_LOCK: &str = "SELECT pg_advisory_xact_lock(7812763513451)";

/// Now, as stored: RFC 3339 UTC with milliseconds (sorts as text).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whether `e` is a unique-constraint violation (a concurrent writer won the race).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.is_unique_violation(),
        _ => false,
    }
}
