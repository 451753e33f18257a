//! The registry: models, versions, aliases (this file), releases and channels (`release.rs`),
//! backups (`backup.rs`) and gc (`gc.rs`) over one metadata database and one artifact store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;

use crate::bundle::MODEL_FILE;
use crate::db::{dispatch, is_unique_violation, now, Db, RowExt, PG_GC_LOCK};
use crate::error::{RegistryError, Result};
use crate::refs::{validate_lineage_ref, validate_name, NameKind, RefKind};
use crate::store::{digest_of, ArtifactStore};
use crate::types::*;

/// Default page size of list calls; the maximum is 1000.
pub const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 1000;

/// A registry: metadata database + artifact store.
#[derive(Debug, Clone)]
pub struct Registry {
    pub(crate) db: Db,
    pub(crate) store: ArtifactStore,
    /// Checks a bundle's `config.toml` at push (see [`ConfigCheck`]).
    pub(crate) config_check: Option<CheckFn>,
}

#[derive(Clone)]
pub(crate) struct CheckFn(ConfigCheck);

impl std::fmt::Debug for CheckFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigCheck")
    }
}

/// Checks the text of a bundle's `config.toml` for a model at push: `Err(reason)` refuses the
/// push (400). The registry does not know the serving config's keys; whoever opens it for
/// pushes (the CLI, the server) installs the serving core's parser with
/// [`Registry::with_config_check`], so a bad config fails at push, not when a server opens the
/// channel.
pub type ConfigCheck =
    std::sync::Arc<dyn Fn(&str, &str) -> std::result::Result<(), String> + Send + Sync>;

impl Registry {
    /// Opens (creating and migrating if needed) the registry at `registry_url`
    /// (`sqlite://path` or `postgres://...`) with artifacts at `artifacts_url`
    /// (a directory or `s3://bucket/prefix`).
    pub async fn open(registry_url: &str, artifacts_url: &str) -> Result<Registry> {
        let store = ArtifactStore::open(artifacts_url)?;
        let db = crate::db::connect(registry_url).await?;
        tracing::debug!(
            registry = %crate::db::redact_url(registry_url),
            artifacts = artifacts_url,
            backend = db.backend(),
            "registry opened"
        );
        Ok(Registry {
            db,
            store,
            config_check: None,
        })
    }

    /// Opens the metadata database at `registry_url` with an already opened artifact store.
    pub async fn open_with_store(registry_url: &str, store: ArtifactStore) -> Result<Registry> {
        let db = crate::db::connect(registry_url).await?;
        Ok(Registry {
            db,
            store,
            config_check: None,
        })
    }

    /// Validates every pushed bundle's `config.toml` with `check` (see [`ConfigCheck`]).
    pub fn with_config_check(mut self, check: ConfigCheck) -> Registry {
        self.config_check = Some(CheckFn(check));
        self
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.store
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.db.backend()
    }

    pub async fn close(&self) {
        self.db.close().await
    }

    /// Copies an artifact into `cache_dir` (verifying its digest, atomic rename, reused when
    /// present) and returns the local path. Timed as `herd_registry_fetch_seconds`.
    pub async fn fetch_artifact(&self, digest: &str, cache_dir: &Path) -> Result<PathBuf> {
        self.store.fetch_to_cache(digest, cache_dir).await
    }

    // ----- models -------------------------------------------------------------------------

    /// Creates a model. An existing model with the same name is a conflict.
    pub async fn create_model(&self, m: &NewModel) -> Result<Model> {
        validate_new_model(m)?;
        let created_at = now();
        let tags = serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into());
        let res = dispatch!(&self.db, |pool, _b| {
            sqlx::query(
                "INSERT INTO models (name, tenant, description, tags, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&m.name)
            .bind(&m.tenant)
            .bind(&m.description)
            .bind(&tags)
            .bind(&created_at)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(RegistryError::Conflict(format!(
                    "model '{}' already exists; push a version with `herd model push {} FILE`",
                    m.name, m.name
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.model(&m.name).await
    }

    /// One model, or NotFound with a hint.
    pub async fn model(&self, name: &str) -> Result<Model> {
        let page = self
            .list_models_inner(Some(name), &ModelFilter::default())
            .await?;
        page.items
            .into_iter()
            .next()
            .ok_or_else(|| unknown_model(name))
    }

    /// Lists models matching `filter`, ordered by name.
    pub async fn list_models(&self, filter: &ModelFilter) -> Result<Page<Model>> {
        self.list_models_inner(None, filter).await
    }

    async fn list_models_inner(&self, exact: Option<&str>, f: &ModelFilter) -> Result<Page<Model>> {
        let limit = f.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let offset = f.offset.unwrap_or(0);
        let like = f.name_contains.as_ref().map(|s| format!("%{s}%"));
        // Tags are matched exactly in Rust after a coarse LIKE in SQL.
        let tag_like = f.tag.as_ref().map(|t| format!("%\"{t}\"%"));
        let sql = "SELECT m.name, m.tenant, m.description, m.tags, m.created_at, \
                   (SELECT MAX(v.version) FROM versions v WHERE v.model = m.name) AS latest, \
                   (SELECT COUNT(*) FROM versions v WHERE v.model = m.name) AS n \
                   FROM models m \
                   WHERE ($1 IS NULL OR m.name = $1) AND ($2 IS NULL OR m.tenant = $2) \
                   AND ($3 IS NULL OR m.name LIKE $3) AND ($4 IS NULL OR m.tags LIKE $4) \
                   ORDER BY m.name LIMIT $5 OFFSET $6";
        let mut items: Vec<Model> = dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(sql)
                .bind(exact)
                .bind(&f.tenant)
                .bind(&like)
                .bind(&tag_like)
                .bind((limit + 1) as i64)
                .bind(offset as i64)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(model_from_row)
                .collect::<Result<Vec<_>>>()?
        });
        let next_offset = if items.len() as u64 > limit {
            items.truncate(limit as usize);
            Some(offset + limit)
        } else {
            None
        };
        if let Some(t) = &f.tag {
            items.retain(|m| m.tags.iter().any(|x| x == t));
        }
        Ok(Page { items, next_offset })
    }

    // ----- versions -----------------------------------------------------------------------

    /// Pushes a new version: checks the file is ONNX and the lineage is immutable, uploads the
    /// artifact, then records the version (next number for the model) in one transaction.
    /// Nothing is written to the database when any check fails.
    pub async fn push(&self, req: PushRequest) -> Result<PushOutcome> {
        self.push_with_progress(req, &|_| {}).await
    }

    /// [`Registry::push`] reporting upload progress (bytes sent so far).
    pub async fn push_with_progress(
        &self,
        req: PushRequest,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PushOutcome> {
        let started = Instant::now();
        validate_name(NameKind::Model, &req.model)?;
        let data_ref = req
            .data_ref
            .as_deref()
            .map(|r| validate_lineage_ref(RefKind::Data, r))
            .transpose()?;
        let code_ref = req
            .code_ref
            .as_deref()
            .map(|r| validate_lineage_ref(RefKind::Code, r))
            .transpose()?;
        for (k, v) in &req.metrics {
            if k.is_empty() || !v.is_finite() {
                return Err(RegistryError::InvalidInput(format!(
                    "metric '{k}'={v} is invalid: names must be non-empty and values finite numbers"
                )));
            }
        }
        let signature = herd_onnx::read_signature(&req.bytes).map_err(|e| {
            RegistryError::InvalidInput(format!("cannot push to model '{}': {e}", req.model))
        })?;
        let signature = serde_json::to_value(&signature)
            .map_err(|e| RegistryError::Integrity(format!("signature is not JSON: {e}")))?;
        let exists = match self.model(&req.model).await {
            Ok(_) => true,
            Err(RegistryError::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        if !exists {
            match &req.create {
                Some(new) => {
                    let mut new = new.clone();
                    new.name = req.model.clone();
                    validate_new_model(&new)?;
                }
                None => {
                    return Err(RegistryError::NotFound(format!(
                        "model '{}' does not exist; create it with `herd model create {}` or \
                         push with --create",
                        req.model, req.model
                    )))
                }
            }
        }
        if let (Some(t), true) = (&req.as_tenant, exists) {
            // Early refusal (re-checked inside the write transaction).
            let m = self.model(&req.model).await?;
            check_tenant(&req.model, m.tenant.as_deref(), t)?;
        }
        if let Some(text) = req.files.get(crate::bundle::CONFIG_FILE) {
            let text = std::str::from_utf8(text).map_err(|_| {
                RegistryError::InvalidInput(format!(
                    "cannot push to model '{}': its {} is not UTF-8 text",
                    req.model,
                    crate::bundle::CONFIG_FILE
                ))
            })?;
            if let Some(CheckFn(check)) = &self.config_check {
                check(&req.model, text).map_err(|reason| {
                    RegistryError::InvalidInput(format!(
                        "cannot push to model '{}': its {} is invalid: {reason}",
                        req.model,
                        crate::bundle::CONFIG_FILE
                    ))
                })?;
            }
        }
        // The bundle: model.onnx plus the other files, each content-addressed.
        let mut contents: Vec<(String, Bytes)> = vec![(MODEL_FILE.to_string(), req.bytes.clone())];
        for (path, bytes) in &req.files {
            if path == MODEL_FILE {
                return Err(RegistryError::InvalidInput(format!(
                    "bundle of '{}' lists {MODEL_FILE} twice",
                    req.model
                )));
            }
            crate::bundle::validate_path(path)?;
            contents.push((path.clone(), bytes.clone()));
        }
        if contents.len() > crate::bundle::MAX_FILES {
            return Err(RegistryError::InvalidInput(format!(
                "a bundle holds at most {} files; '{}' has {}",
                crate::bundle::MAX_FILES,
                req.model,
                contents.len()
            )));
        }
        let files: Vec<BundleFile> = if contents.len() == 1 {
            Vec::new()
        } else {
            contents
                .iter()
                .map(|(path, b)| BundleFile {
                    path: path.clone(),
                    digest: digest_of(b),
                    size: b.len() as u64,
                })
                .collect()
        };
        let manifest = (!files.is_empty()).then(|| crate::bundle::manifest_of(&files));
        let digest = match &manifest {
            Some((_, d)) => d.clone(),
            None => digest_of(&req.bytes),
        };
        // Every object the version row will name (the manifest last).
        let mut objects: Vec<Bytes> = if files.is_empty() {
            vec![req.bytes.clone()]
        } else {
            contents.iter().map(|(_, b)| b.clone()).collect()
        };
        if let Some((m, _)) = &manifest {
            objects.push(m.clone());
        }
        // Idempotent re-push: same bytes and lineage as the latest version -> that version.
        if exists {
            if let Some(latest) = self.latest_version(&req.model).await? {
                if latest.digest == digest
                    && latest.data_ref == data_ref
                    && latest.code_ref == code_ref
                    && latest.artifact_deleted_at.is_none()
                    && self.store.exists(&digest).await?
                    && (req.as_tenant.is_none()
                        || self.model(&req.model).await?.tenant == req.as_tenant)
                {
                    let mut latest = latest;
                    latest.files = self.version_files(&req.model, latest.version).await?;
                    return Ok(PushOutcome {
                        version: latest,
                        created: false,
                        uploaded: false,
                    });
                }
            }
        }
        let size: u64 = contents.iter().map(|(_, b)| b.len() as u64).sum();
        let mut uploaded = false;
        let total = size;
        let mut sent = 0u64;
        for (i, b) in objects.iter().enumerate() {
            let base = sent;
            let (_, new) = self
                .store
                .put(b.clone(), &|n| progress((base + n).min(total)))
                .await?;
            uploaded |= new;
            if i < contents.len() {
                sent += b.len() as u64;
            }
        }
        let signature_text = signature.to_string();
        let metrics_text = serde_json::to_string(&req.metrics).unwrap_or_else(|_| "{}".into());
        let created_at = now();
        let by = if req.created_by.is_empty() {
            "unknown".to_string()
        } else {
            req.created_by.clone()
        };
        let create = req.create.clone().filter(|_| !exists);
        let store = self.store.clone();
        // A concurrent push may take the same number: retry on a unique violation.
        let mut attempt = 0;
        let version = loop {
            attempt += 1;
            let res: Result<i64> = dispatch!(&self.db, |pool, begin| {
                async {
                    let mut tx = pool.begin_with(begin).await?;
                    if begin == "BEGIN" {
                        sqlx::query(PG_GC_LOCK).execute(&mut *tx).await?;
                    }
                    if let Some(new) = &create {
                        let tags = serde_json::to_string(&new.tags).unwrap_or_else(|_| "[]".into());
                        sqlx::query(
                            "INSERT INTO models (name, tenant, description, tags, created_at) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                        )
                        .bind(&req.model)
                        .bind(&new.tenant)
                        .bind(&new.description)
                        .bind(&tags)
                        .bind(&created_at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    // The tenant as it stands inside this transaction (a concurrent create or
                    // tenant change cannot slip in between the check and the insert).
                    if let Some(t) = &req.as_tenant {
                        let owner: Option<Option<String>> =
                            sqlx::query_scalar("SELECT tenant FROM models WHERE name = $1")
                                .bind(&req.model)
                                .fetch_optional(&mut *tx)
                                .await?;
                        match owner {
                            Some(owner) => check_tenant(&req.model, owner.as_deref(), t)?,
                            None => return Err(unknown_model(&req.model)),
                        }
                    }
                    let next: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE model = $1",
                    )
                    .bind(&req.model)
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO versions (model, version, digest, size, framework, signature, \
                         metrics, data_ref, code_ref, created_at, created_by) \
                         VALUES ($1, $2, $3, $4, 'onnx', $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(&req.model)
                    .bind(next)
                    .bind(&digest)
                    .bind(size as i64)
                    .bind(&signature_text)
                    .bind(&metrics_text)
                    .bind(&data_ref)
                    .bind(&code_ref)
                    .bind(&created_at)
                    .bind(&by)
                    .execute(&mut *tx)
                    .await?;
                    for f in &files {
                        sqlx::query(
                            "INSERT INTO version_files (model, version, path, digest, size) \
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(&req.model)
                        .bind(next)
                        .bind(&f.path)
                        .bind(&f.digest)
                        .bind(f.size as i64)
                        .execute(&mut *tx)
                        .await?;
                    }
                    // gc deletes objects only while holding the lock this transaction holds, so
                    // what exists now still exists when the row commits. An object gc took
                    // between our upload and here (e.g. an orphan this push re-used) is put
                    // back before the version can name it.
                    for b in &objects {
                        let d = digest_of(b);
                        if !store.exists(&d).await? {
                            store.put(b.clone(), &|_| {}).await?;
                        }
                    }
                    tx.commit().await?;
                    Ok(next)
                }
                .await
            });
            match res {
                Ok(v) => break v,
                Err(RegistryError::Database(e)) if is_unique_violation(&e) && attempt < 10 => {
                    continue
                }
                Err(e) => return Err(e),
            }
        };
        metrics::counter!("herd_registry_push_total").increment(1);
        metrics::counter!("herd_registry_push_bytes").increment(size);
        metrics::histogram!("herd_registry_push_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(model = %req.model, version, %digest, size, uploaded, "version pushed");
        Ok(PushOutcome {
            version: self.version(&req.model, version).await?,
            created: true,
            uploaded,
        })
    }

    /// One version, or NotFound.
    pub async fn version(&self, model: &str, version: i64) -> Result<ModelVersion> {
        let row = dispatch!(&self.db, |pool, _b| {
            let row = sqlx::query("SELECT * FROM versions WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(version_from_row).transpose()?
        });
        match row {
            Some(mut v) => {
                v.files = self.version_files(model, version).await?;
                Ok(v)
            }
            None => {
                self.model(model).await?;
                Err(RegistryError::NotFound(format!(
                    "model '{model}' has no version {version}; see `herd model show {model}`"
                )))
            }
        }
    }

    /// The highest version of a model, if any.
    pub async fn latest_version(&self, model: &str) -> Result<Option<ModelVersion>> {
        dispatch!(&self.db, |pool, _b| {
            let row = sqlx::query(
                "SELECT * FROM versions WHERE model = $1 ORDER BY version DESC LIMIT 1",
            )
            .bind(model)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(version_from_row).transpose()
        })
    }

    /// Lists versions matching `filter`, by model then newest first.
    pub async fn list_versions(&self, f: &VersionFilter) -> Result<Page<ModelVersion>> {
        let limit = f.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let offset = f.offset.unwrap_or(0);
        if let Some(m) = &f.model {
            self.model(m).await?;
        }
        let sql = "SELECT * FROM versions WHERE ($1 IS NULL OR model = $1) \
                   AND ($2 IS NULL OR data_ref = $2) AND ($3 IS NULL OR code_ref = $3) \
                   AND ($4 IS NULL OR digest = $4) \
                   ORDER BY model, version DESC LIMIT $5 OFFSET $6";
        let mut items = dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(sql)
                .bind(&f.model)
                .bind(&f.data_ref)
                .bind(&f.code_ref)
                .bind(&f.digest)
                .bind((limit + 1) as i64)
                .bind(offset as i64)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(version_from_row)
                .collect::<Result<Vec<_>>>()?
        });
        let next_offset = if items.len() as u64 > limit {
            items.truncate(limit as usize);
            Some(offset + limit)
        } else {
            None
        };
        Ok(Page { items, next_offset })
    }

    /// Resolves a version selector: a number, `latest`, or an alias name.
    pub async fn resolve(&self, model: &str, selector: &str) -> Result<ModelVersion> {
        let selector = selector.trim();
        if let Ok(n) = selector.parse::<i64>() {
            return self.version(model, n).await;
        }
        if selector == "latest" {
            return self.latest_version(model).await?.ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "model '{model}' has no versions yet; push one with `herd model push {model} FILE`"
                ))
            });
        }
        validate_name(NameKind::Alias, selector)?;
        match self.alias(model, selector).await? {
            Some(a) => self.version(model, a.version).await.map_err(|_| {
                RegistryError::Integrity(format!(
                    "alias '{selector}' of model '{model}' points to version {} which does not \
                     exist; set it again with `herd alias set {model} {selector} VERSION`",
                    a.version
                ))
            }),
            None => {
                self.model(model).await?;
                Err(RegistryError::NotFound(format!(
                    "model '{model}' has no version or alias '{selector}'; use a version number, \
                     'latest' or an alias (see `herd model show {model}`)"
                )))
            }
        }
    }

    // ----- aliases ------------------------------------------------------------------------

    /// Points `alias` of `model` at `version` and records the change in the history.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: i64,
        by: &str,
    ) -> Result<AliasEvent> {
        self.set_alias_as(model, alias, version, by, None).await
    }

    /// [`Registry::set_alias`] for a caller that is the tenant `as_tenant` (None: admin or no
    /// auth), checked inside the write transaction like a push.
    pub async fn set_alias_as(
        &self,
        model: &str,
        alias: &str,
        version: i64,
        by: &str,
        as_tenant: Option<&str>,
    ) -> Result<AliasEvent> {
        validate_name(NameKind::Alias, alias)?;
        if alias == "latest" {
            return Err(RegistryError::InvalidInput(
                "'latest' always means the highest version and cannot be an alias; pick another name".into(),
            ));
        }
        let v = self.version(model, version).await?;
        if v.artifact_deleted_at.is_some() {
            return Err(RegistryError::InvalidInput(format!(
                "version {version} of '{model}' was garbage-collected (its artifact is gone); \
                 push it again to use it"
            )));
        }
        let at = now();
        let by = if by.is_empty() { "unknown" } else { by };
        let from: Option<i64> = dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            if begin == "BEGIN" {
                sqlx::query(PG_GC_LOCK).execute(&mut *tx).await?;
            }
            if let Some(t) = as_tenant {
                let owner: Option<Option<String>> =
                    sqlx::query_scalar("SELECT tenant FROM models WHERE name = $1")
                        .bind(model)
                        .fetch_optional(&mut *tx)
                        .await?;
                match owner {
                    Some(owner) => check_tenant(model, owner.as_deref(), t)?,
                    None => return Err(unknown_model(model)),
                }
            }
            let usable: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM versions WHERE model = $1 AND version = $2 AND artifact_deleted_at IS NULL",
            )
            .bind(model)
            .bind(version)
            .fetch_one(&mut *tx)
            .await?;
            if usable == 0 {
                return Err(RegistryError::Conflict(format!(
                    "version {version} of '{model}' was garbage-collected meanwhile; push it again to use it"
                )));
            }
            let from: Option<i64> =
                sqlx::query_scalar("SELECT version FROM aliases WHERE model = $1 AND name = $2")
                    .bind(model)
                    .bind(alias)
                    .fetch_optional(&mut *tx)
                    .await?;
            sqlx::query(
                "INSERT INTO aliases (model, name, version, updated_at, updated_by) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model, name) DO UPDATE SET \
                 version = excluded.version, updated_at = excluded.updated_at, \
                 updated_by = excluded.updated_by",
            )
            .bind(model)
            .bind(alias)
            .bind(version)
            .bind(&at)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO alias_history (model, name, from_version, to_version, at, by_user) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(model)
            .bind(alias)
            .bind(from)
            .bind(version)
            .bind(&at)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            from
        });
        tracing::info!(model, alias, ?from, to = version, "alias set");
        Ok(AliasEvent {
            model: model.into(),
            alias: alias.into(),
            from_version: from,
            to_version: version,
            at,
            by: by.into(),
        })
    }

    /// The alias as it stands, if set.
    pub async fn alias(&self, model: &str, alias: &str) -> Result<Option<Alias>> {
        dispatch!(&self.db, |pool, _b| {
            let row = sqlx::query("SELECT * FROM aliases WHERE model = $1 AND name = $2")
                .bind(model)
                .bind(alias)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(alias_from_row).transpose()
        })
    }

    /// Aliases of one model, or of every model when `model` is None (optionally one alias name).
    pub async fn aliases(&self, model: Option<&str>, name: Option<&str>) -> Result<Vec<Alias>> {
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(
                "SELECT * FROM aliases WHERE ($1 IS NULL OR model = $1) AND ($2 IS NULL OR name = $2) \
                 ORDER BY model, name",
            )
            .bind(model)
            .bind(name)
            .fetch_all(pool)
            .await?;
            rows.iter().map(alias_from_row).collect()
        })
    }

    /// Full history of a model's aliases (optionally one alias), oldest first.
    pub async fn alias_history(&self, model: &str, alias: Option<&str>) -> Result<Vec<AliasEvent>> {
        self.model(model).await?;
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(
                "SELECT * FROM alias_history WHERE model = $1 AND ($2 IS NULL OR name = $2) ORDER BY id",
            )
            .bind(model)
            .bind(alias)
            .fetch_all(pool)
            .await?;
            rows.iter().map(alias_event_from_row).collect()
        })
    }

    /// Reads a model file from disk (helper for the CLI and tests).
    pub fn read_model_file(path: &Path) -> Result<Bytes> {
        std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| RegistryError::io(format!("cannot read model file {}", path.display()), e))
    }
}

/// A tenant may write only its own tenant's models; a model without a tenant is shared and
/// only admins may write it.
pub(crate) fn check_tenant(model: &str, owner: Option<&str>, caller: &str) -> Result<()> {
    match owner {
        Some(o) if o == caller => Ok(()),
        Some(_) => Err(RegistryError::Forbidden(format!(
            "model '{model}' belongs to another tenant"
        ))),
        None => Err(RegistryError::Forbidden(format!(
            "model '{model}' has no tenant: it is shared, and only an admin token may change it"
        ))),
    }
}

pub(crate) fn unknown_model(name: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "model '{name}' does not exist; list models with `herd model list`"
    ))
}

fn validate_new_model(m: &NewModel) -> Result<()> {
    validate_name(NameKind::Model, &m.name)?;
    if let Some(t) = &m.tenant {
        validate_name(NameKind::Tenant, t)?;
    }
    for t in &m.tags {
        if t.is_empty() || t.len() > 64 || t.contains('"') || t.contains('%') {
            return Err(RegistryError::InvalidInput(format!(
                "invalid tag '{t}': use 1-64 characters without quotes or '%'"
            )));
        }
    }
    Ok(())
}

pub(crate) fn model_from_row(r: &impl RowExt) -> Result<Model> {
    Ok(Model {
        name: r.s("name")?,
        tenant: r.os("tenant")?,
        description: r.s("description")?,
        tags: serde_json::from_str(&r.s("tags")?).unwrap_or_default(),
        created_at: r.s("created_at")?,
        latest_version: r.oi("latest")?,
        version_count: r.i("n")?,
    })
}

pub(crate) fn version_from_row(r: &impl RowExt) -> Result<ModelVersion> {
    Ok(ModelVersion {
        model: r.s("model")?,
        version: r.i("version")?,
        digest: r.s("digest")?,
        size: r.i("size")?.max(0) as u64,
        framework: r.s("framework")?,
        signature: serde_json::from_str(&r.s("signature")?).unwrap_or(serde_json::Value::Null),
        metrics: serde_json::from_str(&r.s("metrics")?).unwrap_or_default(),
        data_ref: r.os("data_ref")?,
        code_ref: r.os("code_ref")?,
        created_at: r.s("created_at")?,
        created_by: r.s("created_by")?,
        artifact_deleted_at: r.os("artifact_deleted_at")?,
        files: Vec::new(),
    })
}

pub(crate) fn alias_from_row(r: &impl RowExt) -> Result<Alias> {
    Ok(Alias {
        model: r.s("model")?,
        alias: r.s("name")?,
        version: r.i("version")?,
        updated_at: r.s("updated_at")?,
        updated_by: r.s("updated_by")?,
    })
}

/// An `alias_history` row.
pub(crate) fn alias_event_from_row(r: &impl RowExt) -> Result<AliasEvent> {
    Ok(AliasEvent {
        model: r.s("model")?,
        alias: r.s("name")?,
        from_version: r.oi("from_version")?,
        to_version: r.i("to_version")?,
        at: r.s("at")?,
        by: r.s("by_user")?,
    })
}

/// Makes `BTreeMap<String, ReleaseEntry>` from versions (helper used by release creation).
pub(crate) fn entries_from_versions(versions: &[ModelVersion]) -> BTreeMap<String, ReleaseEntry> {
    versions
        .iter()
        .map(|v| {
            (
                v.model.clone(),
                ReleaseEntry {
                    version: v.version,
                    digest: v.digest.clone(),
                },
            )
        })
        .collect()
}
