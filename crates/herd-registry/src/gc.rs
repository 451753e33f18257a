//! Garbage collection of artifacts nobody needs.
//!
//! Kept: every digest named by a release, by an alias target, or by one of the last `keep_last`
//! versions of each model, and every object younger than `min_age` (a push uploads the artifact
//! before it records the version; the grace period keeps gc from deleting it in between). The
//! versions whose artifacts are deleted keep their metadata and get `artifact_deleted_at`.
//!
//! The files of a bundle are kept while their version's manifest is: once gc collected a
//! bundle's manifest (marking the version), its files become candidates of the next run.
//!
//! Races: each candidate is collected in a transaction that excludes pushes, alias changes and
//! release creation (`BEGIN IMMEDIATE` on SQLite, an advisory transaction lock on Postgres). It
//! re-checks that no release, alias or last-N version uses the digest, marks the versions, deletes
//! the object, then commits. Release creation and alias changes refuse a version marked meanwhile;
//! a push that finds its bytes collected meanwhile uploads them again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::db::{dispatch, now, RowExt, PG_GC_LOCK};
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
    /// Candidates that became referenced between planning and collection (kept).
    pub skipped: usize,
    pub freed_bytes: u64,
}

impl Registry {
    /// Collects unreferenced artifacts (see the module docs): [`Registry::gc_plan`], then (unless
    /// `dry_run`) [`Registry::gc_apply`].
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let plan = self.gc_plan(opts).await?;
        if opts.dry_run {
            return Ok(plan);
        }
        self.gc_apply(plan, opts.keep_last).await
    }

    /// What gc would delete now (nothing is changed).
    pub async fn gc_plan(&self, opts: &GcOptions) -> Result<GcReport> {
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
                 SELECT v.digest FROM aliases a JOIN versions v ON v.model = a.model AND v.version = a.version UNION \
                 SELECT f.digest FROM version_files f JOIN versions v ON v.model = f.model \
                 AND v.version = f.version WHERE v.artifact_deleted_at IS NULL",
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
            skipped: 0,
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
        Ok(report)
    }

    /// Deletes the candidates of `plan`, each re-checked under the gc lock: one that became
    /// referenced since the plan (a release, an alias, a new push of the same bytes) is kept and
    /// counted in `skipped`.
    pub async fn gc_apply(&self, mut plan: GcReport, keep_last: u64) -> Result<GcReport> {
        let mut report = {
            plan.dry_run = false;
            plan
        };
        for c in &report.candidates {
            if self.collect(c, keep_last).await? {
                report.deleted += 1;
                report.freed_bytes += c.size;
                metrics::counter!("herd_registry_gc_deleted_total").increment(1);
                metrics::counter!("herd_registry_gc_freed_bytes").increment(c.size);
                tracing::info!(digest = %c.digest, size = c.size, "artifact collected");
            } else {
                report.skipped += 1;
                tracing::info!(digest = %c.digest, "artifact became referenced meanwhile; kept");
            }
        }
        Ok(report)
    }

    /// Collects one candidate in a transaction that excludes concurrent pushes, alias changes and
    /// release creation: re-checks that nothing references the digest now, marks its versions,
    /// deletes the object, commits. Returns false (and changes nothing) when it became referenced.
    pub(crate) async fn collect(&self, c: &GcCandidate, keep_last: u64) -> Result<bool> {
        let at = now();
        let store = self.store.clone();
        dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            if begin == "BEGIN" {
                sqlx::query(PG_GC_LOCK).execute(&mut *tx).await?;
            }
            let pinned: i64 = sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM release_entries WHERE digest = $1) + \
                 (SELECT COUNT(*) FROM aliases a JOIN versions v ON v.model = a.model \
                  AND v.version = a.version WHERE v.digest = $1) + \
                 (SELECT COUNT(*) FROM versions v WHERE v.digest = $1 AND \
                  (SELECT COUNT(*) FROM versions w WHERE w.model = v.model AND w.version > v.version) < $2) + \
                 (SELECT COUNT(*) FROM version_files f JOIN versions v ON v.model = f.model \
                  AND v.version = f.version WHERE f.digest = $1 AND v.artifact_deleted_at IS NULL)",
            )
            .bind(&c.digest)
            .bind(keep_last as i64)
            .fetch_one(&mut *tx)
            .await?;
            if pinned > 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "UPDATE versions SET artifact_deleted_at = $1 WHERE digest = $2 AND artifact_deleted_at IS NULL",
            )
            .bind(&at)
            .bind(&c.digest)
            .execute(&mut *tx)
            .await?;
            // Deleted while the lock is held: a push that commits after us sees the mark and
            // uploads the bytes again; one that committed before us made the digest pinned.
            store.delete(&c.digest).await?;
            tx.commit().await?;
        });
        Ok(true)
    }
}
