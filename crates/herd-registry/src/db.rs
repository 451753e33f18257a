//! The metadata database: SQLite (default, a file) or PostgreSQL, through `herd-db` (one query
//! text for both backends, see [`herd_db::dispatch!`]). This module holds what is the registry's
//! own: its migrations, the gc lock and the stored time format.

pub(crate) use herd_db::{dispatch, is_unique_violation, RowExt};
pub use herd_db::{redact_url, Db};

use herd_db::{DbError, DbOptions, Schema};

use crate::error::{RegistryError, Result};

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

const OPTIONS: DbOptions = DbOptions::new(
    "registry",
    crate::DEFAULT_REGISTRY_URL,
    Schema::Versioned(SQLITE_MIGRATIONS),
    Schema::Versioned(POSTGRES_MIGRATIONS),
);

/// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://...`) and applies the
/// registry's migrations. A missing SQLite file (and its directory) is created.
pub async fn connect(url: &str) -> Result<Db> {
    Ok(herd_db::connect(url, &OPTIONS).await?)
}

impl From<DbError> for RegistryError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Config(m) | DbError::Unreachable { message: m, .. } => {
                RegistryError::Config(m)
            }
            DbError::Io { context, error } => RegistryError::Io { context, error },
            DbError::Database(e) => RegistryError::Database(e),
            DbError::Migrate(e) => RegistryError::Migrate(e),
        }
    }
}

/// Serializes the writers that must not interleave with gc (push, alias set, release create, gc
/// itself) on Postgres: `SELECT pg_advisory_xact_lock(..)` as the first statement of their
/// transactions. On SQLite `BEGIN IMMEDIATE` already serializes writers.
pub(crate) const PG_GC_LOCK: &str = "SELECT pg_advisory_xact_lock(7812763513451)";

/// Now, as stored: RFC 3339 UTC with milliseconds (sorts as text).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
