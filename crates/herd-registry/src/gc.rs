//! Garbage collection of artifacts nobody needs.
//!
//! Kept: every digest named by a release, by an alias target, or by one of the last `keep_last`
//! versions of each model, and every object younger than `min_age` (a push uploads the artifact
//! before it records the version; the grace period keeps gc from deleting it in between). The
//! versions whose artifacts are deleted keep their metadata and get `artifact_deleted_at`.
//!
//! Known race: a release created *while* gc runs, naming an old version that gc has already
//! chosen (not in a release, not aliased, not among the last N), can end up pointing at a deleted
//! artifact; `herd backup verify` / `Registry::check` report it as `missing_artifact`. Run gc when
//! nobody is creating releases from old versions, or keep `--keep-last` generous.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::db::{dispatch, now, RowExt};
use crate::error::Result;
use crate::registry::Registry;

/// What to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Keep the artifacts of each model's newest `keep_last` versions.
    pub keep_last: u64,
    /// Never delete objects younger than this.
    pub min_age: std::time::Duration,
    /// Only report what would be deleted.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_last: 3,
            min_age: std::time::Duration::from_secs(3600),
            dry_run: true,
        }
    }
}

/// One artifact gc deleted (or would delete).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcCandidate {
    pub digest: String,
    pub size: u64,
    /// Versions that used it (`model@version`).
    pub used_by: Vec<String>,
}

/// The outcome of a gc run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub stored: usize,
    pub referenced: usize,
    /// Unreferenced but younger than `min_age`.
    pub too_young: usize,
    pub candidates: Vec<GcCandidate>,
    pub deleted: usize,
    pub freed_bytes: u64,
}

impl Registry {
    /// Collects unreferenced artifacts (see the module docs).
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        // Versions newest first per model.
        let rows: Vec<(String, i64, String)> = dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(
                "SELECT model, version, digest FROM versions ORDER BY model, version DESC",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.s("model")?, r.i("version")?, r.s("digest")?)))
                .collect::<Result<Vec<_>>>()?
        });
        let pinned: Vec<String> = dispatch!(&self.db, |pool, _b| {
            sqlx::query_scalar(
                "SELECT digest FROM release_entries UNION \
                 SELECT v.digest FROM aliases a JOIN versions v ON v.model = a.model AND v.version = a.version",
            )
            .fetch_all(pool)
            .await?
        });
        let mut referenced: BTreeSet<String> = pinned.into_iter().collect();
        let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
        let mut users: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (model, version, digest) in &rows {
            let n = seen.entry(model.as_str()).or_insert(0);
            if *n < opts.keep_last {
                referenced.insert(digest.clone());
            }
            *n += 1;
            users
                .entry(digest.as_str())
                .or_default()
                .push(format!("{model}@{version}"));
        }
        let stored = self.store.list().await?;
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(opts.min_age).unwrap_or(chrono::Duration::MAX);
        let mut report = GcReport {
            dry_run: opts.dry_run,
            stored: stored.len(),
            referenced: referenced.len(),
            too_young: 0,
            candidates: Vec::new(),
            deleted: 0,
            freed_bytes: 0,
        };
        for a in stored {
            if referenced.contains(&a.digest) {
                continue;
            }
            if a.last_modified > cutoff {
                report.too_young += 1;
                continue;
            }
            report.candidates.push(GcCandidate {
                used_by: users.get(a.digest.as_str()).cloned().unwrap_or_default(),
                digest: a.digest,
                size: a.size,
            });
        }
        if opts.dry_run {
            return Ok(report);
        }
        for c in &report.candidates {
            // Record first: a version marked deleted whose bytes survive is harmless; the reverse
            // would leave versions that look usable but are not.
            let at = now();
            dispatch!(&self.db, |pool, _b| {
                sqlx::query("UPDATE versions SET artifact_deleted_at = $1 WHERE digest = $2 AND artifact_deleted_at IS NULL")
                    .bind(&at)
                    .bind(&c.digest)
                    .execute(pool)
                    .await?;
            });
            self.store.delete(&c.digest).await?;
            report.deleted += 1;
            report.freed_bytes += c.size;
            metrics::counter!("herd_registry_gc_deleted_total").increment(1);
            metrics::counter!("herd_registry_gc_freed_bytes").increment(c.size);
            tracing::info!(digest = %c.digest, size = c.size, "artifact collected");
        }
        Ok(report)
    }
}
