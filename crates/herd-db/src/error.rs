//! herd-db's one error type. Its users map it into their own error types, which carry the stable
//! error codes (herd-db does not depend on `herd-api`).

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL cannot be used (unsupported scheme, no file path, malformed). The message says what
    /// to write instead; passwords are redacted.
    #[error("{0}")]
    Config(String),
    /// The PostgreSQL server did not answer or refused the connection. `message` names the URL
    /// (redacted) and what to check.
    #[error("{message}")]
    Unreachable {
        message: String,
        #[source]
        source: sqlx::Error,
    },
    /// A local directory for an SQLite file could not be created.
    #[error("{context}: {error}")]
    Io {
        context: String,
        /// Kept out of the `source()` chain: the message already includes it.
        error: std::io::Error,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed (the database may be newer than this herd, or unreachable).
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
