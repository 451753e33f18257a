//! Consistency checks, backups and restores.
//!
//! A backup is a directory with three files:
//! - `metadata.json`: every row of every table, read in one transaction (a consistent snapshot);
//! - `digests.txt`: the artifact digests the snapshot references, one per line;
//! - `MANIFEST.json`: format version, counts and the SHA-256 of the two files above.
//!
//! Artifacts are not copied (they are write-once and content-addressed; back up the object store
//! with its own tools). `verify` restores the snapshot into a scratch SQLite database and checks it
//! against the artifact store; `restore` loads it into an empty registry (SQLite or Postgres,
//! whichever the backup came from).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::{dispatch, RowExt};
use crate::error::{RegistryError, Result};
use crate::registry::{alias_event_from_row, alias_from_row, version_from_row, Registry};
use crate::release::{channel_event_from_row, channel_from_row};
use crate::store::ArtifactStore;
use crate::types::*;

pub const BACKUP_FORMAT: u32 = 1;
const METADATA: &str = "metadata.json";
const DIGESTS: &str = "digests.txt";
const MANIFEST: &str = "MANIFEST.json";
/// Copies of the referenced artifacts (`backup create --with-artifacts`).
const ARTIFACTS: &str = "artifacts";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    pub name: String,
    pub tenant: Option<String>,
    pub description: String,
    pub tags: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRow {
    pub id: String,
    pub manifest: String,
    pub model_count: i64,
    pub note: Option<String>,
    pub created_at: String,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseEntryRow {
    pub release_id: String,
    pub model: String,
    pub version: i64,
    pub digest: String,
}

/// Every row of the registry, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub created_at: String,
    pub models: Vec<ModelRow>,
    pub versions: Vec<ModelVersion>,
    pub aliases: Vec<Alias>,
    pub alias_history: Vec<AliasEvent>,
    pub releases: Vec<ReleaseRow>,
    pub release_entries: Vec<ReleaseEntryRow>,
    pub channels: Vec<Channel>,
    pub channel_history: Vec<ChannelEvent>,
    /// The files of multi-file bundles (absent in backups made before bundles).
    #[serde(default)]
    pub version_files: Vec<VersionFileRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionFileRow {
    pub model: String,
    pub version: i64,
    pub path: String,
    pub digest: String,
    pub size: u64,
}

impl Snapshot {
    /// Digests the snapshot needs: every release entry, every alias target, every version whose
    /// artifact was not garbage-collected.
    pub fn referenced_digests(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .release_entries
            .iter()
            .map(|e| e.digest.clone())
            .collect();
        let by_version: BTreeMap<(&str, i64), &ModelVersion> = self
            .versions
            .iter()
            .map(|v| ((v.model.as_str(), v.version), v))
            .collect();
        for a in &self.aliases {
            if let Some(v) = by_version.get(&(a.model.as_str(), a.version)) {
                out.insert(v.digest.clone());
            }
        }
        for v in &self.versions {
            if v.artifact_deleted_at.is_none() {
                out.insert(v.digest.clone());
            }
        }
        for f in &self.version_files {
            if by_version
                .get(&(f.model.as_str(), f.version))
                .is_some_and(|v| v.artifact_deleted_at.is_none())
            {
                out.insert(f.digest.clone());
            }
        }
        out
    }
}

/// `MANIFEST.json` of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub created_at: String,
    pub source_backend: String,
    pub metadata_sha256: String,
    pub digests_sha256: String,
    pub models: usize,
    pub versions: usize,
    pub aliases: usize,
    pub releases: usize,
    pub channels: usize,
    pub digests: usize,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupVerifyReport {
    pub manifest: Option<BackupManifest>,
    pub check: CheckReport,
}

impl BackupVerifyReport {
    pub fn ok(&self) -> bool {
        self.check.ok()
    }
}

/// Every row that `$sql` selects in the transaction `$tx`, each read by `$from_row`
/// (a `fn(&impl RowExt) -> Result<T>`); expands inside [`dispatch!`], once per backend.
macro_rules! read_all {
    ($tx:ident, $sql:expr, $from_row:expr) => {
        sqlx::query($sql)
            .fetch_all(&mut *$tx)
            .await?
            .iter()
            .map($from_row)
            .collect::<Result<Vec<_>>>()?
    };
}

/// Runs `$sql` in the transaction `$tx` once for every item `$x` of `$rows`, binding the
/// listed values in order; expands inside [`dispatch!`], once per backend.
macro_rules! insert_all {
    ($tx:ident, $sql:expr, $rows:expr, |$x:ident| [$($value:expr),+ $(,)?]) => {
        for $x in $rows {
            sqlx::query($sql)
                $(.bind($value))+
                .execute(&mut *$tx)
                .await?;
        }
    };
}

fn model_from_row(r: &impl RowExt) -> Result<ModelRow> {
    Ok(ModelRow {
        name: r.s("name")?,
        tenant: r.os("tenant")?,
        description: r.s("description")?,
        tags: r.s("tags")?,
        created_at: r.s("created_at")?,
    })
}

fn release_from_row(r: &impl RowExt) -> Result<ReleaseRow> {
    Ok(ReleaseRow {
        id: r.s("id")?,
        manifest: r.s("manifest")?,
        model_count: r.i("model_count")?,
        note: r.os("note")?,
        created_at: r.s("created_at")?,
        created_by: r.s("created_by")?,
    })
}

fn release_entry_from_row(r: &impl RowExt) -> Result<ReleaseEntryRow> {
    Ok(ReleaseEntryRow {
        release_id: r.s("release_id")?,
        model: r.s("model")?,
        version: r.i("version")?,
        digest: r.s("digest")?,
    })
}

fn version_file_from_row(r: &impl RowExt) -> Result<VersionFileRow> {
    Ok(VersionFileRow {
        model: r.s("model")?,
        version: r.i("version")?,
        path: r.s("path")?,
        digest: r.s("digest")?,
        size: r.i("size")?.max(0) as u64,
    })
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Registry {
    /// Reads every table in one read transaction (REPEATABLE READ on Postgres).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut s = dispatch!(&self.db, |pool, begin| {
            let start = if begin == "BEGIN" {
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            } else {
                "BEGIN"
            };
            let mut tx = pool.begin_with(start).await?;
            let s = Snapshot {
                models: read_all!(tx, "SELECT * FROM models ORDER BY name", model_from_row),
                versions: read_all!(
                    tx,
                    "SELECT * FROM versions ORDER BY model, version",
                    version_from_row
                ),
                aliases: read_all!(
                    tx,
                    "SELECT * FROM aliases ORDER BY model, name",
                    alias_from_row
                ),
                alias_history: read_all!(
                    tx,
                    "SELECT * FROM alias_history ORDER BY id",
                    alias_event_from_row
                ),
                releases: read_all!(
                    tx,
                    "SELECT * FROM releases ORDER BY created_at, id",
                    release_from_row
                ),
                release_entries: read_all!(
                    tx,
                    "SELECT * FROM release_entries ORDER BY release_id, model",
                    release_entry_from_row
                ),
                channels: read_all!(tx, "SELECT * FROM channels ORDER BY name", channel_from_row),
                channel_history: read_all!(
                    tx,
                    "SELECT * FROM channel_history ORDER BY id",
                    channel_event_from_row
                ),
                version_files: read_all!(
                    tx,
                    "SELECT * FROM version_files ORDER BY model, version, path",
                    version_file_from_row
                ),
                ..Snapshot::default()
            };
            tx.commit().await?;
            s
        });
        s.format = BACKUP_FORMAT;
        s.created_at = crate::db::now();
        Ok(s)
    }

    /// Writes a backup of the metadata into `dir` (which must not exist or be empty).
    pub async fn backup_create(&self, dir: &Path) -> Result<BackupManifest> {
        self.backup_create_with(dir, false).await
    }

    /// [`Registry::backup_create`]; with `artifacts`, also copies every artifact the snapshot
    /// references into `dir/artifacts/sha256/<hex>` (each read back through the store's digest
    /// check), so the backup restores without the original object store.
    pub async fn backup_create_with(&self, dir: &Path, artifacts: bool) -> Result<BackupManifest> {
        if dir.exists() {
            let non_empty = std::fs::read_dir(dir)
                .map_err(|e| RegistryError::io(format!("cannot read {}", dir.display()), e))?
                .next()
                .is_some();
            if non_empty {
                return Err(RegistryError::Conflict(format!(
                    "backup directory {} is not empty; pick a new directory",
                    dir.display()
                )));
            }
        }
        let snap = self.snapshot().await?;
        let metadata = serde_json::to_vec_pretty(&snap)
            .map_err(|e| RegistryError::Integrity(format!("cannot serialize snapshot: {e}")))?;
        let digests: BTreeSet<String> = snap.referenced_digests();
        let mut digests_text = String::new();
        for d in &digests {
            digests_text.push_str(d);
            digests_text.push('\n');
        }
        let manifest = BackupManifest {
            format: BACKUP_FORMAT,
            created_at: snap.created_at.clone(),
            source_backend: self.backend().to_string(),
            metadata_sha256: sha256_hex(&metadata),
            digests_sha256: sha256_hex(digests_text.as_bytes()),
            models: snap.models.len(),
            versions: snap.versions.len(),
            aliases: snap.aliases.len(),
            releases: snap.releases.len(),
            channels: snap.channels.len(),
            digests: digests.len(),
        };
        let manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| RegistryError::Integrity(format!("cannot serialize manifest: {e}")))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| RegistryError::io(format!("cannot create {}", dir.display()), e))?;
        if artifacts {
            let adir = dir.join(ARTIFACTS).join("sha256");
            std::fs::create_dir_all(&adir)
                .map_err(|e| RegistryError::io(format!("cannot create {}", adir.display()), e))?;
            for d in &digests {
                let hex = crate::store::digest_hex(d)?;
                let size = self.store.fetch_verified(d, &adir.join(hex)).await?;
                tracing::debug!(digest = %d, size, "artifact copied into backup");
            }
            crate::bundle::sync_dir(&adir)
                .map_err(|e| RegistryError::io(format!("cannot sync {}", adir.display()), e))?;
        }
        // The manifest is written last: a backup without one is visibly incomplete.
        write_atomic(&dir.join(METADATA), &metadata)?;
        write_atomic(&dir.join(DIGESTS), digests_text.as_bytes())?;
        write_atomic(&dir.join(MANIFEST), &manifest_bytes)?;
        tracing::info!(dir = %dir.display(), models = manifest.models, releases = manifest.releases, "backup written");
        Ok(manifest)
    }

    /// Checks the registry: aliases point at versions, release ids recompute, release entries
    /// match their versions, channels point at releases, and (when `artifacts`) every referenced
    /// artifact exists in the store.
    pub async fn check(&self, artifacts: bool) -> Result<CheckReport> {
        let snap = self.snapshot().await?;
        let mut report = check_snapshot(&snap);
        for r in &snap.releases {
            report.problems.extend(self.verify_release_id(&r.id).await?);
        }
        if artifacts {
            check_artifacts(&snap, &self.store, &mut report).await?;
        }
        Ok(report)
    }

    /// Loads `snapshot` into this registry, which must be empty unless `replace` (then every
    /// existing row is deleted first, in the same transaction).
    pub async fn restore_snapshot(&self, s: &Snapshot, replace: bool) -> Result<()> {
        dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let existing: i64 = sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM models) + (SELECT COUNT(*) FROM releases)",
            )
            .fetch_one(&mut *tx)
            .await?;
            if existing > 0 && !replace {
                return Err(RegistryError::Conflict(
                    "the target registry is not empty; restore into a new database, or pass \
                     --replace to delete its contents first"
                        .into(),
                ));
            }
            // A running server polls channel revisions: a restored channel must never go back to
            // a revision it has already seen, or the server would miss the next promote.
            let current: Vec<(String, i64)> = sqlx::query_as("SELECT name, revision FROM channels")
                .fetch_all(&mut *tx)
                .await?;
            let current: BTreeMap<String, i64> = current.into_iter().collect();
            for t in [
                "version_files",
                "channel_history",
                "channels",
                "release_entries",
                "releases",
                "alias_history",
                "aliases",
                "versions",
                "models",
            ] {
                sqlx::query(&format!("DELETE FROM {t}"))
                    .execute(&mut *tx)
                    .await?;
            }
            insert_all!(
                tx,
                "INSERT INTO models (name, tenant, description, tags, created_at) VALUES ($1, $2, $3, $4, $5)",
                &s.models,
                |m| [
                    &m.name,
                    &m.tenant,
                    &m.description,
                    &m.tags,
                    &m.created_at,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO versions (model, version, digest, size, framework, signature, metrics, \
                 data_ref, code_ref, created_at, created_by, artifact_deleted_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &s.versions,
                |v| [
                    &v.model,
                    v.version,
                    &v.digest,
                    v.size as i64,
                    &v.framework,
                    v.signature.to_string(),
                    serde_json::to_string(&v.metrics).unwrap_or_else(|_| "{}".into()),
                    &v.data_ref,
                    &v.code_ref,
                    &v.created_at,
                    &v.created_by,
                    &v.artifact_deleted_at,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO aliases (model, name, version, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5)",
                &s.aliases,
                |a| [
                    &a.model,
                    &a.alias,
                    a.version,
                    &a.updated_at,
                    &a.updated_by,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO alias_history (model, name, from_version, to_version, at, by_user) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &s.alias_history,
                |h| [
                    &h.model,
                    &h.alias,
                    h.from_version,
                    h.to_version,
                    &h.at,
                    &h.by,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO releases (id, manifest, model_count, note, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &s.releases,
                |r| [
                    &r.id,
                    &r.manifest,
                    r.model_count,
                    &r.note,
                    &r.created_at,
                    &r.created_by,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO release_entries (release_id, model, version, digest) VALUES ($1, $2, $3, $4)",
                &s.release_entries,
                |e| [
                    &e.release_id,
                    &e.model,
                    e.version,
                    &e.digest,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO channels (name, release_id, revision, updated_at, updated_by) \
                 VALUES ($1, $2, $3, $4, $5)",
                &s.channels,
                |c| [
                    &c.name,
                    &c.release_id,
                    match current.get(&c.name) {
                        Some(cur) => c.revision.max(cur + 1),
                        None => c.revision,
                    },
                    &c.updated_at,
                    &c.updated_by,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO version_files (model, version, path, digest, size) VALUES ($1, $2, $3, $4, $5)",
                &s.version_files,
                |f| [
                    &f.model,
                    f.version,
                    &f.path,
                    &f.digest,
                    f.size as i64,
                ]
            );
            insert_all!(
                tx,
                "INSERT INTO channel_history (channel, action, from_release, to_release, at, by_user) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &s.channel_history,
                |h| [
                    &h.channel,
                    &h.action,
                    &h.from_release,
                    &h.to_release,
                    &h.at,
                    &h.by,
                ]
            );
            tx.commit().await?;
        });
        Ok(())
    }

    /// Restores the backup in `dir` into this registry (see [`Registry::restore_snapshot`]).
    /// A backup whose checksums do not match is refused.
    pub async fn backup_restore(&self, dir: &Path, replace: bool) -> Result<BackupManifest> {
        let (manifest, snap, problems) = read_backup(dir)?;
        if let Some(p) = problems.first() {
            return Err(RegistryError::Integrity(format!(
                "backup {} is damaged ({}: {}); nothing was restored",
                dir.display(),
                p.kind,
                p.detail
            )));
        }
        // Artifacts first: once the metadata is in, servers may fetch what it names.
        let adir = dir.join(ARTIFACTS).join("sha256");
        if adir.is_dir() {
            let mut restored = 0usize;
            for d in snap.referenced_digests() {
                let hex = crate::store::digest_hex(&d)?;
                let path = adir.join(hex);
                if !path.is_file() {
                    continue;
                }
                if self.store.exists(&d).await? {
                    continue;
                }
                let bytes = std::fs::read(&path)
                    .map_err(|e| RegistryError::io(format!("cannot read {}", path.display()), e))?;
                let (got, _) = self.store.put(bytes.into(), &|_| {}).await?;
                if got != d {
                    return Err(RegistryError::Integrity(format!(
                        "backup artifact {} has digest {got}, not {d}; the backup is damaged",
                        path.display()
                    )));
                }
                restored += 1;
            }
            tracing::info!(restored, "artifacts restored from the backup");
        }
        self.restore_snapshot(&snap, replace).await?;
        tracing::info!(dir = %dir.display(), models = manifest.models, "backup restored");
        Ok(manifest)
    }
}

/// Verifies the backup in `dir`: checksums, then a restore into a scratch SQLite database, then
/// [`Registry::check`] against `artifacts` (every referenced artifact must exist there).
pub async fn backup_verify(dir: &Path, artifacts: &ArtifactStore) -> Result<BackupVerifyReport> {
    let (manifest, snap, mut problems) = read_backup(dir)?;
    let scratch_dir = tempfile::tempdir()
        .map_err(|e| RegistryError::io("cannot create a scratch directory", e))?;
    let url = format!(
        "sqlite://{}",
        scratch_dir.path().join("verify.db").display()
    );
    let scratch = Registry {
        db: crate::db::connect(&url).await?,
        store: artifacts.clone(),
        config_check: None,
    };
    let restore = scratch.restore_snapshot(&snap, false).await;
    let mut check = match restore {
        Ok(()) => scratch.check(true).await?,
        Err(e) => {
            let mut c = check_snapshot(&snap);
            c.problems.push(Problem {
                kind: "restore_failed".into(),
                subject: "metadata.json".into(),
                detail: format!("the snapshot does not load into a fresh database: {e}"),
            });
            check_artifacts(&snap, artifacts, &mut c).await?;
            c
        }
    };
    scratch.close().await;
    // The digest list must be what the snapshot references.
    let listed = std::fs::read_to_string(dir.join(DIGESTS)).unwrap_or_default();
    let listed: BTreeSet<String> = listed
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if listed != snap.referenced_digests() {
        problems.push(Problem {
            kind: "digest_list_mismatch".into(),
            subject: DIGESTS.into(),
            detail: "digests.txt does not list exactly the digests metadata.json references".into(),
        });
    }
    // Copies inside the backup (--with-artifacts) are checked by content, not existence.
    let adir = dir.join(ARTIFACTS).join("sha256");
    if adir.is_dir() {
        for d in snap.referenced_digests() {
            let hex = crate::store::digest_hex(&d)?;
            match std::fs::read(adir.join(hex)) {
                Ok(b) if crate::store::digest_of(&b) == d => {}
                Ok(_) => problems.push(Problem {
                    kind: "corrupt_artifact".into(),
                    subject: d.clone(),
                    detail: "the backup's copy of this artifact does not match its digest".into(),
                }),
                Err(_) => problems.push(Problem {
                    kind: "missing_artifact".into(),
                    subject: d.clone(),
                    detail: "the backup was made with artifacts but lacks this one".into(),
                }),
            }
        }
    }
    problems.append(&mut check.problems);
    check.problems = problems;
    Ok(BackupVerifyReport {
        manifest: Some(manifest),
        check,
    })
}

fn read_backup(dir: &Path) -> Result<(BackupManifest, Snapshot, Vec<Problem>)> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| {
            RegistryError::io(
                format!(
                    "cannot read {} (is {} a herd backup directory?)",
                    dir.join(name).display(),
                    dir.display()
                ),
                e,
            )
        })
    };
    let manifest: BackupManifest = serde_json::from_slice(&read(MANIFEST)?).map_err(|e| {
        RegistryError::Integrity(format!(
            "{} is not a herd backup manifest: {e}",
            dir.join(MANIFEST).display()
        ))
    })?;
    if manifest.format != BACKUP_FORMAT {
        return Err(RegistryError::InvalidInput(format!(
            "backup format {} is not supported by this herd (it reads format {BACKUP_FORMAT})",
            manifest.format
        )));
    }
    let metadata = read(METADATA)?;
    let digests = read(DIGESTS)?;
    let mut problems = Vec::new();
    if sha256_hex(&metadata) != manifest.metadata_sha256 {
        problems.push(Problem {
            kind: "checksum_mismatch".into(),
            subject: METADATA.into(),
            detail: "metadata.json does not match the checksum in MANIFEST.json".into(),
        });
    }
    if sha256_hex(&digests) != manifest.digests_sha256 {
        problems.push(Problem {
            kind: "checksum_mismatch".into(),
            subject: DIGESTS.into(),
            detail: "digests.txt does not match the checksum in MANIFEST.json".into(),
        });
    }
    let snap: Snapshot = serde_json::from_slice(&metadata).map_err(|e| {
        RegistryError::Integrity(format!(
            "{} is not a valid snapshot: {e}",
            dir.join(METADATA).display()
        ))
    })?;
    Ok((manifest, snap, problems))
}

/// Structural checks that need no database: dangling aliases, release entries that do not match
/// their versions, channels without a release.
fn check_snapshot(s: &Snapshot) -> CheckReport {
    let mut report = CheckReport {
        models: s.models.len(),
        versions: s.versions.len(),
        aliases: s.aliases.len(),
        releases: s.releases.len(),
        channels: s.channels.len(),
        ..Default::default()
    };
    let versions: BTreeMap<(&str, i64), &ModelVersion> = s
        .versions
        .iter()
        .map(|v| ((v.model.as_str(), v.version), v))
        .collect();
    for a in &s.aliases {
        match versions.get(&(a.model.as_str(), a.version)) {
            None => report.problems.push(Problem {
                kind: "dangling_alias".into(),
                subject: format!("{}:{}", a.model, a.alias),
                detail: format!(
                    "alias '{}' of model '{}' points to version {} which does not exist",
                    a.alias, a.model, a.version
                ),
            }),
            Some(v) if v.artifact_deleted_at.is_some() => report.problems.push(Problem {
                kind: "dangling_alias".into(),
                subject: format!("{}:{}", a.model, a.alias),
                detail: format!(
                    "alias '{}' of model '{}' points to version {} whose artifact was garbage-collected",
                    a.alias, a.model, a.version
                ),
            }),
            Some(_) => {}
        }
    }
    for e in &s.release_entries {
        match versions.get(&(e.model.as_str(), e.version)) {
            Some(v) if v.digest == e.digest => {}
            Some(v) => report.problems.push(Problem {
                kind: "release_entry_mismatch".into(),
                subject: format!(
                    "release {} {}@{}",
                    short_id(&e.release_id),
                    e.model,
                    e.version
                ),
                detail: format!(
                    "release says {} but the version's digest is {}",
                    e.digest, v.digest
                ),
            }),
            None => report.problems.push(Problem {
                kind: "release_entry_mismatch".into(),
                subject: format!(
                    "release {} {}@{}",
                    short_id(&e.release_id),
                    e.model,
                    e.version
                ),
                detail: "the release names a version that does not exist".into(),
            }),
        }
    }
    let releases: BTreeSet<&str> = s.releases.iter().map(|r| r.id.as_str()).collect();
    for c in &s.channels {
        if !releases.contains(c.release_id.as_str()) {
            report.problems.push(Problem {
                kind: "dangling_channel".into(),
                subject: c.name.clone(),
                detail: format!(
                    "channel points to release {} which does not exist",
                    c.release_id
                ),
            });
        }
    }
    report
}

async fn check_artifacts(
    s: &Snapshot,
    store: &ArtifactStore,
    report: &mut CheckReport,
) -> Result<()> {
    let present: BTreeSet<String> = store.list().await?.into_iter().map(|a| a.digest).collect();
    let mut users: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for v in &s.versions {
        users
            .entry(v.digest.as_str())
            .or_default()
            .push(format!("{}@{}", v.model, v.version));
    }
    for d in s.referenced_digests() {
        report.artifacts_checked += 1;
        if present.contains(&d) {
            // Present is not enough: the content must still have its digest.
            if let Err(RegistryError::Integrity(detail)) = store.get(&d).await {
                report.problems.push(Problem {
                    kind: "corrupt_artifact".into(),
                    subject: d.clone(),
                    detail,
                });
            }
        } else {
            let who = users
                .get(d.as_str())
                .map(|u| u.join(", "))
                .unwrap_or_default();
            report.problems.push(Problem {
                kind: "missing_artifact".into(),
                subject: d.clone(),
                detail: format!(
                    "artifact is missing from {} (used by {who}); restore it from the object store's backup or push those versions again",
                    store.url()
                ),
            });
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .map_err(|e| RegistryError::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| RegistryError::io(format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with a row in every table and a distinct value in every column, so a column
    /// read or bound in the wrong place shows.
    fn every_table() -> Snapshot {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        Snapshot {
            format: BACKUP_FORMAT,
            created_at: String::new(),
            models: vec![ModelRow {
                name: "m".into(),
                tenant: Some("acme".into()),
                description: "a model".into(),
                tags: r#"["t"]"#.into(),
                created_at: "2026-01-01T00:00:00.001Z".into(),
            }],
            versions: vec![ModelVersion {
                model: "m".into(),
                version: 3,
                digest: d('a'),
                size: 17,
                framework: "onnx".into(),
                signature: serde_json::json!({"inputs": [1]}),
                metrics: [("auc".to_string(), 0.5)].into_iter().collect(),
                data_ref: Some("data@1".into()),
                code_ref: Some("code@2".into()),
                created_at: "2026-01-01T00:00:00.002Z".into(),
                created_by: "ann".into(),
                artifact_deleted_at: Some("2026-01-01T00:00:00.003Z".into()),
                files: Vec::new(),
            }],
            aliases: vec![Alias {
                model: "m".into(),
                alias: "prod".into(),
                version: 3,
                updated_at: "2026-01-01T00:00:00.004Z".into(),
                updated_by: "bob".into(),
            }],
            alias_history: vec![AliasEvent {
                model: "m".into(),
                alias: "prod".into(),
                from_version: Some(2),
                to_version: 3,
                at: "2026-01-01T00:00:00.005Z".into(),
                by: "cy".into(),
            }],
            releases: vec![ReleaseRow {
                id: "r1".into(),
                manifest: r#"{"m":{}}"#.into(),
                model_count: 1,
                note: Some("first".into()),
                created_at: "2026-01-01T00:00:00.006Z".into(),
                created_by: "dee".into(),
            }],
            release_entries: vec![ReleaseEntryRow {
                release_id: "r1".into(),
                model: "m".into(),
                version: 3,
                digest: d('b'),
            }],
            channels: vec![Channel {
                name: "stable".into(),
                release_id: "r1".into(),
                revision: 4,
                updated_at: "2026-01-01T00:00:00.007Z".into(),
                updated_by: "eve".into(),
            }],
            channel_history: vec![ChannelEvent {
                channel: "stable".into(),
                action: "promote".into(),
                from_release: Some("r0".into()),
                to_release: "r1".into(),
                at: "2026-01-01T00:00:00.008Z".into(),
                by: "fay".into(),
            }],
            version_files: vec![VersionFileRow {
                model: "m".into(),
                version: 3,
                path: "model.onnx".into(),
                digest: d('c'),
                size: 5,
            }],
        }
    }

    /// restore_snapshot writes every column where snapshot reads it back from (SQLite; the
    /// PostgreSQL arm is the same text, expanded by `dispatch!`).
    #[tokio::test]
    async fn restore_then_snapshot_gives_back_every_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let artifacts = dir.path().join("artifacts");
        let reg = Registry::open(&url, artifacts.to_str().unwrap())
            .await
            .unwrap();
        let want = every_table();
        reg.restore_snapshot(&want, false).await.unwrap();
        let mut got = reg.snapshot().await.unwrap();
        got.created_at = String::new();
        assert_eq!(got, want);
    }
}
