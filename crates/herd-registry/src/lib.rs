//! herd's model registry.
//!
//! Owns: content-addressed artifacts in an object store ([`store`]), metadata in SQLite or
//! PostgreSQL through `sqlx` with migrations ([`db`]), models and versions with lineage, aliases with
//! history ([`Registry`]), releases whose id is the SHA-256 of their RFC 8785 manifest
//! ([`canonical`], [`types::release_id`]), channels with rollback, backups ([`backup`]) and gc.
//! Must not depend on: HTTP servers, inference engines.
//!
//! Versions are bundles of a model directory's files ([`bundle`]).
//!
//! For serving, the server uses [`Registry::open`], [`Registry::channel_release`],
//! [`Registry::channel_revision`] and [`Registry::fetch_bundle`].

pub mod backup;
pub mod bundle;
pub mod canonical;
pub mod db;
pub mod error;
pub mod gc;
pub mod import;
pub mod refs;
mod registry;
mod release;
pub mod store;
pub mod types;

pub use backup::{backup_verify, BackupManifest, BackupVerifyReport, Snapshot};
pub use error::{RegistryError, Result};
pub use gc::{GcCandidate, GcOptions, GcReport};
pub use registry::{ConfigCheck, Registry, DEFAULT_PAGE};
pub use store::{digest_of, ArtifactStore, S3Overrides};
pub use types::*;

/// Default registry database URL (relative to the working directory).
pub const DEFAULT_REGISTRY_URL: &str = "sqlite://.herd/registry.db";
/// Default artifacts location (relative to the working directory).
pub const DEFAULT_ARTIFACTS_URL: &str = ".herd/artifacts";
