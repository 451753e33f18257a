//! Releases (immutable sets of model versions, id = SHA-256 of the RFC 8785 manifest) and
//! channels (a name such as `production` pointing at a release, with history for rollback).

use std::collections::BTreeMap;

use crate::db::{dispatch, now, RowExt, PG_GC_LOCK};
use crate::error::{RegistryError, Result};
use crate::refs::{validate_name, NameKind};
use crate::registry::{entries_from_versions, version_from_row, Registry};
use crate::types::*;

/// Release refs shorter than this are refused (too ambiguous to type safely).
const MIN_PREFIX: usize = 4;

impl Registry {
    /// Creates a release from `spec` (each selector resolved to a concrete version). Every entry
    /// is checked before anything is written; all problems are reported together. Creating a set
    /// that already exists returns the existing release with `created = false`.
    pub async fn create_release(&self, spec: &ReleaseSpec) -> Result<(Release, bool)> {
        if spec.entries.is_empty() {
            return Err(RegistryError::InvalidInput(
                "a release needs at least one model; pass entries like model=version".into(),
            ));
        }
        let mut versions = Vec::with_capacity(spec.entries.len());
        let mut problems = Vec::new();
        // Numeric selectors are looked up in batches; the rest (aliases, `latest`) and misses
        // go through `resolve`, which also words the error.
        let numeric: Vec<(String, i64)> = spec
            .entries
            .iter()
            .filter_map(|(m, s)| s.trim().parse::<i64>().ok().map(|v| (m.clone(), v)))
            .collect();
        let found = self.versions_batch(&numeric).await?;
        for (model, selector) in &spec.entries {
            let hit = selector
                .trim()
                .parse::<i64>()
                .ok()
                .and_then(|v| found.get(&(model.clone(), v)).cloned());
            let resolved = match hit {
                Some(v) => Ok(v),
                None => self.resolve(model, selector).await,
            };
            match resolved {
                Ok(v) if v.artifact_deleted_at.is_some() => problems.push(format!(
                    "{model}@{}: its artifact was garbage-collected",
                    v.version
                )),
                Ok(v) => versions.push(v),
                Err(e @ (RegistryError::NotFound(_) | RegistryError::InvalidInput(_)))
                | Err(e @ RegistryError::Integrity(_)) => problems.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        if !problems.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "cannot create the release, nothing was written: {}",
                problems.join("; ")
            )));
        }
        self.insert_release(entries_from_versions(&versions), spec)
            .await
    }

    /// Looks up many (model, version) pairs with a few queries.
    async fn versions_batch(
        &self,
        pairs: &[(String, i64)],
    ) -> Result<std::collections::HashMap<(String, i64), ModelVersion>> {
        let mut out = std::collections::HashMap::with_capacity(pairs.len());
        for chunk in pairs.chunks(400) {
            let mut sql = String::from("SELECT * FROM versions WHERE (model, version) IN (VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
            }
            sql.push(')');
            let rows: Vec<ModelVersion> = dispatch!(&self.db, |pool, _b| {
                let mut q = sqlx::query(&sql);
                for (m, v) in chunk {
                    q = q.bind(m).bind(*v);
                }
                let rows = q.fetch_all(pool).await?;
                rows.iter()
                    .map(version_from_row)
                    .collect::<Result<Vec<_>>>()?
            });
            for v in rows {
                out.insert((v.model.clone(), v.version), v);
            }
        }
        Ok(out)
    }

    /// Entries for "every model's alias `alias`" (e.g. all `production` aliases).
    pub async fn spec_from_alias(&self, alias: &str) -> Result<BTreeMap<String, String>> {
        validate_name(NameKind::Alias, alias)?;
        let aliases = self.aliases(None, Some(alias)).await?;
        if aliases.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "no model has an alias '{alias}'; set one with `herd alias set MODEL {alias} VERSION`"
            )));
        }
        Ok(aliases
            .into_iter()
            .map(|a| (a.model, a.version.to_string()))
            .collect())
    }

    async fn insert_release(
        &self,
        entries: BTreeMap<String, ReleaseEntry>,
        spec: &ReleaseSpec,
    ) -> Result<(Release, bool)> {
        let manifest = release_manifest(&entries);
        let id = release_id(&entries);
        let at = now();
        let by = if spec.created_by.is_empty() {
            "unknown"
        } else {
            &spec.created_by
        };
        let digests: Vec<&String> = entries.values().map(|e| &e.digest).collect();
        let created: bool = dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            if begin == "BEGIN" {
                sqlx::query(PG_GC_LOCK).execute(&mut *tx).await?;
            }
            // gc may have collected an entry's artifact since the versions were resolved.
            for chunk in digests.chunks(500) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                // Gone = every version with the digest is marked (gc marks them all; a later push
                // of the same bytes adds an unmarked one and uploads them again).
                let sql = format!(
                    "SELECT digest FROM versions WHERE digest IN ({}) GROUP BY digest \
                     HAVING COUNT(*) = COUNT(artifact_deleted_at)",
                    marks.join(",")
                );
                let mut q = sqlx::query_scalar::<_, String>(&sql);
                for d in chunk {
                    q = q.bind(*d);
                }
                let gone = q.fetch_all(&mut *tx).await?;
                if !gone.is_empty() {
                    return Err(RegistryError::Conflict(format!(
                        "cannot create the release, nothing was written: artifacts {} were \
                         garbage-collected meanwhile; push those versions again",
                        gone.join(", ")
                    )));
                }
            }
            let inserted = sqlx::query(
                "INSERT INTO releases (id, manifest, model_count, note, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&id)
            .bind(&manifest)
            .bind(entries.len() as i64)
            .bind(&spec.note)
            .bind(&at)
            .bind(by)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                // Multi-row inserts: one statement per 200 entries.
                let all: Vec<(&String, &ReleaseEntry)> = entries.iter().collect();
                for chunk in all.chunks(200) {
                    let mut sql = String::from(
                        "INSERT INTO release_entries (release_id, model, version, digest) VALUES ",
                    );
                    for i in 0..chunk.len() {
                        if i > 0 {
                            sql.push(',');
                        }
                        sql.push_str(&format!(
                            "(${}, ${}, ${}, ${})",
                            4 * i + 1,
                            4 * i + 2,
                            4 * i + 3,
                            4 * i + 4
                        ));
                    }
                    let mut q = sqlx::query(&sql);
                    for (model, e) in chunk {
                        q = q.bind(&id).bind(*model).bind(e.version).bind(&e.digest);
                    }
                    q.execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            inserted
        });
        if created {
            metrics::counter!("herd_registry_releases_created_total").increment(1);
            tracing::info!(
                release = short_id(&id),
                models = entries.len(),
                "release created"
            );
        }
        Ok((self.release_by_id(&id).await?, created))
    }

    /// Finds a release by full id, unique prefix (>= 4 hex), or `@channel`.
    pub async fn release(&self, reference: &str) -> Result<Release> {
        let id = self.resolve_release_id(reference).await?;
        self.release_by_id(&id).await
    }

    /// Resolves a release reference to its full id.
    pub async fn resolve_release_id(&self, reference: &str) -> Result<String> {
        let r = reference.trim();
        if let Some(channel) = r.strip_prefix('@') {
            return match self.channel(channel).await? {
                Some(c) => Ok(c.release_id),
                None => Err(RegistryError::NotFound(format!(
                    "channel '{channel}' has no release; promote one with `herd release promote ID --channel {channel}`"
                ))),
            };
        }
        let r = r.to_ascii_lowercase();
        if r.len() < MIN_PREFIX || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::InvalidInput(format!(
                "'{reference}' is not a release reference; use an id (at least {MIN_PREFIX} hex \
                 characters, e.g. the 12-character short id) or @channel"
            )));
        }
        let pattern = format!("{r}%");
        let ids: Vec<String> = dispatch!(&self.db, |pool, _b| {
            sqlx::query_scalar("SELECT id FROM releases WHERE id LIKE $1 ORDER BY id LIMIT 2")
                .bind(&pattern)
                .fetch_all(pool)
                .await?
        });
        match ids.len() {
            0 => Err(RegistryError::NotFound(format!(
                "no release with id '{reference}'; list releases with `herd release list`"
            ))),
            1 => Ok(ids.into_iter().next().unwrap_or_default()),
            _ => Err(RegistryError::InvalidInput(format!(
                "release id prefix '{reference}' is ambiguous; type more characters"
            ))),
        }
    }

    async fn release_by_id(&self, id: &str) -> Result<Release> {
        let (head, entries) = dispatch!(&self.db, |pool, _b| {
            let head = sqlx::query("SELECT * FROM releases WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            let head = match head {
                Some(r) => (r.os("note")?, r.s("created_at")?, r.s("created_by")?),
                None => {
                    return Err(RegistryError::NotFound(format!(
                        "no release with id '{id}'; list releases with `herd release list`"
                    )))
                }
            };
            let rows = sqlx::query(
                "SELECT model, version, digest FROM release_entries WHERE release_id = $1 ORDER BY model",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut entries = BTreeMap::new();
            for r in &rows {
                entries.insert(
                    r.s("model")?,
                    ReleaseEntry {
                        version: r.i("version")?,
                        digest: r.s("digest")?,
                    },
                );
            }
            (head, entries)
        });
        Ok(Release {
            id: id.to_string(),
            short_id: short_id(id).to_string(),
            entries,
            note: head.0,
            created_at: head.1,
            created_by: head.2,
        })
    }

    /// Releases, newest first.
    pub async fn list_releases(
        &self,
        limit: Option<u64>,
        offset: Option<u64>,
    ) -> Result<Page<ReleaseSummary>> {
        let limit = limit
            .unwrap_or(crate::registry::DEFAULT_PAGE)
            .clamp(1, 1000);
        let offset = offset.unwrap_or(0);
        let channels = self.channels().await?;
        let mut items: Vec<ReleaseSummary> = dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(
                "SELECT * FROM releases ORDER BY created_at DESC, id LIMIT $1 OFFSET $2",
            )
            .bind((limit + 1) as i64)
            .bind(offset as i64)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let id = r.s("id")?;
                    Ok(ReleaseSummary {
                        short_id: short_id(&id).to_string(),
                        channels: channels
                            .iter()
                            .filter(|c| c.release_id == id)
                            .map(|c| c.name.clone())
                            .collect(),
                        id,
                        model_count: r.i("model_count")?,
                        note: r.os("note")?,
                        created_at: r.s("created_at")?,
                        created_by: r.s("created_by")?,
                    })
                })
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

    /// `to - from` between two release references.
    pub async fn diff_releases(&self, from: &str, to: &str) -> Result<ReleaseDiff> {
        let a = self.release(from).await?;
        let b = self.release(to).await?;
        let mut d = diff_entries(&a.entries, &b.entries);
        d.from = a.id;
        d.to = b.id;
        Ok(d)
    }

    /// Recomputes the id of one release (or all when `reference` is None) from its stored
    /// entries and compares with the stored id and manifest. Returns the problems found.
    pub async fn verify_releases(&self, reference: Option<&str>) -> Result<(usize, Vec<Problem>)> {
        let ids: Vec<String> = match reference {
            Some(r) => vec![self.resolve_release_id(r).await?],
            None => dispatch!(&self.db, |pool, _b| {
                sqlx::query_scalar("SELECT id FROM releases ORDER BY id")
                    .fetch_all(pool)
                    .await?
            }),
        };
        let mut problems = Vec::new();
        for id in &ids {
            problems.extend(self.verify_release_id(id).await?);
        }
        Ok((ids.len(), problems))
    }

    pub(crate) async fn verify_release_id(&self, id: &str) -> Result<Vec<Problem>> {
        let release = self.release_by_id(id).await?;
        let (manifest, count): (String, i64) = dispatch!(&self.db, |pool, _b| {
            let r = sqlx::query("SELECT manifest, model_count FROM releases WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
            (r.s("manifest")?, r.i("model_count")?)
        });
        let mut problems = Vec::new();
        let computed = release.computed_id();
        if computed != id {
            problems.push(Problem {
                kind: "release_id_mismatch".into(),
                subject: format!("release {}", short_id(id)),
                detail: format!(
                    "entries hash to {} but the release is stored as {id}; its entries were changed after creation",
                    short_id(&computed)
                ),
            });
        }
        if manifest != release_manifest(&release.entries) || count != release.entries.len() as i64 {
            problems.push(Problem {
                kind: "release_entry_mismatch".into(),
                subject: format!("release {}", short_id(id)),
                detail: "the stored manifest does not match the stored entries".into(),
            });
        }
        Ok(problems)
    }

    // ----- channels -----------------------------------------------------------------------

    /// A channel, if it was ever promoted.
    pub async fn channel(&self, name: &str) -> Result<Option<Channel>> {
        validate_name(NameKind::Channel, name)?;
        dispatch!(&self.db, |pool, _b| {
            let row = sqlx::query("SELECT * FROM channels WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(channel_from_row).transpose()
        })
    }

    /// All channels.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query("SELECT * FROM channels ORDER BY name")
                .fetch_all(pool)
                .await?;
            rows.iter().map(channel_from_row).collect()
        })
    }

    /// The release a channel serves now (what `herd serve --channel` loads).
    pub async fn channel_release(&self, channel: &str) -> Result<Option<Release>> {
        match self.channel(channel).await? {
            Some(c) => Ok(Some(self.release_by_id(&c.release_id).await?)),
            None => Ok(None),
        }
    }

    /// The channel's revision (bumped on every promote/rollback); one indexed read, for polling.
    /// None when the channel was never promoted.
    pub async fn channel_revision(&self, channel: &str) -> Result<Option<i64>> {
        dispatch!(&self.db, |pool, _b| {
            Ok(
                sqlx::query_scalar("SELECT revision FROM channels WHERE name = $1")
                    .bind(channel)
                    .fetch_optional(pool)
                    .await?,
            )
        })
    }

    /// The channel's history, oldest first.
    pub async fn channel_history(&self, channel: &str) -> Result<Vec<ChannelEvent>> {
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query("SELECT * FROM channel_history WHERE channel = $1 ORDER BY id")
                .bind(channel)
                .fetch_all(pool)
                .await?;
            rows.iter().map(channel_event_from_row).collect()
        })
    }

    /// Points `channel` at a release. Promoting the release it already serves changes nothing.
    pub async fn promote(&self, channel: &str, release: &str, by: &str) -> Result<ChannelEvent> {
        validate_name(NameKind::Channel, channel)?;
        let id = self.resolve_release_id(release).await?;
        self.set_channel(channel, Target::Release(&id), "promote", by)
            .await
    }

    /// Moves `channel` back to the release it served before the current one (undoing the last
    /// promote; repeated rollbacks walk further back).
    pub async fn rollback(&self, channel: &str, by: &str) -> Result<ChannelEvent> {
        // The history is read and the channel written in one transaction: a concurrent promote
        // lands either before (and is the one undone) or after (on top of the rollback).
        self.set_channel(channel, Target::Previous, "rollback", by)
            .await
    }

    /// Rolls back one model in `channel`: a new release equal to the current one except `model`,
    /// which goes to `to` (a version selector) or, when None, to the version it had in the most
    /// recent earlier release of the channel that differs. The new release is promoted.
    pub async fn rollback_model(
        &self,
        channel: &str,
        model: &str,
        to: Option<&str>,
        by: &str,
    ) -> Result<(Release, ChannelEvent)> {
        let current = self.channel_release(channel).await?.ok_or_else(|| {
            RegistryError::NotFound(format!("channel '{channel}' has no release yet"))
        })?;
        let Some(cur_entry) = current.entries.get(model).cloned() else {
            return Err(RegistryError::NotFound(format!(
                "model '{model}' is not in channel '{channel}' (release {})",
                current.short_id
            )));
        };
        let target_version = match to {
            Some(sel) => self.resolve(model, sel).await?.version,
            None => {
                let stack = self.channel_stack(channel).await?;
                let mut found = None;
                for id in stack.iter().rev().skip(1) {
                    let r = self.release_by_id(id).await?;
                    if let Some(e) = r.entries.get(model) {
                        if *e != cur_entry {
                            found = Some(e.version);
                            break;
                        }
                    }
                }
                found.ok_or_else(|| {
                    RegistryError::NotFound(format!(
                        "no earlier release of channel '{channel}' has another version of \
                         '{model}'; pass the version to go back to with --to-version"
                    ))
                })?
            }
        };
        let mut entries: BTreeMap<String, String> = current
            .entries
            .iter()
            .map(|(m, e)| (m.clone(), e.version.to_string()))
            .collect();
        entries.insert(model.to_string(), target_version.to_string());
        let spec = ReleaseSpec {
            entries,
            note: Some(format!(
                "roll back {model} from {} to {target_version} (from release {})",
                cur_entry.version, current.short_id
            )),
            created_by: by.to_string(),
        };
        let (release, _) = self.create_release(&spec).await?;
        let event = self
            .set_channel(channel, Target::Release(&release.id), "rollback-model", by)
            .await?;
        Ok((release, event))
    }

    /// The channel's effective stack of releases (promotes push, rollbacks pop), oldest first.
    async fn channel_stack(&self, channel: &str) -> Result<Vec<String>> {
        Ok(stack_of(
            self.channel_history(channel)
                .await?
                .into_iter()
                .map(|e| (e.action, e.to_release))
                .collect(),
        ))
    }

    async fn set_channel(
        &self,
        channel: &str,
        target: Target<'_>,
        action: &str,
        by: &str,
    ) -> Result<ChannelEvent> {
        let at = now();
        let by = if by.is_empty() { "unknown" } else { by };
        let (from, id): (Option<String>, String) = dispatch!(&self.db, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            if begin == "BEGIN" {
                // Serializes channel writers on Postgres (SQLite: BEGIN IMMEDIATE already does).
                sqlx::query(PG_GC_LOCK).execute(&mut *tx).await?;
            }
            let id: String = match target {
                Target::Release(id) => id.to_string(),
                Target::Previous => {
                    let rows: Vec<(String, String)> = sqlx::query_as(
                        "SELECT action, to_release FROM channel_history WHERE channel = $1 ORDER BY id",
                    )
                    .bind(channel)
                    .fetch_all(&mut *tx)
                    .await?;
                    let stack = stack_of(rows);
                    if stack.len() < 2 {
                        return Err(RegistryError::NotFound(format!(
                            "channel '{channel}' has no previous release to roll back to; promote a release \
                             explicitly with `herd release promote ID --channel {channel}`"
                        )));
                    }
                    stack[stack.len() - 2].clone()
                }
            };
            let id = id.as_str();
            let from: Option<String> =
                sqlx::query_scalar("SELECT release_id FROM channels WHERE name = $1")
                    .bind(channel)
                    .fetch_optional(&mut *tx)
                    .await?;
            if from.as_deref() != Some(id) {
                sqlx::query(
                    "INSERT INTO channels (name, release_id, revision, updated_at, updated_by) \
                     VALUES ($1, $2, 1, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                     release_id = excluded.release_id, revision = channels.revision + 1, \
                     updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                )
                .bind(channel)
                .bind(id)
                .bind(&at)
                .bind(by)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO channel_history (channel, action, from_release, to_release, at, by_user) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(channel)
                .bind(action)
                .bind(&from)
                .bind(id)
                .bind(&at)
                .bind(by)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            (from, id.to_string())
        });
        let id = id.as_str();
        if from.as_deref() == Some(id) {
            tracing::info!(
                channel,
                release = short_id(id),
                "channel already serves this release"
            );
        } else {
            metrics::counter!("herd_registry_channel_changes_total", "action" => action.to_string())
                .increment(1);
            tracing::info!(channel, action, from = ?from.as_deref().map(short_id), to = short_id(id), "channel changed");
        }
        Ok(ChannelEvent {
            channel: channel.to_string(),
            action: if from.as_deref() == Some(id) {
                "unchanged".to_string()
            } else {
                action.to_string()
            },
            from_release: from,
            to_release: id.to_string(),
            at,
            by: by.to_string(),
        })
    }
}

/// Where [`Registry::set_channel`] points the channel.
enum Target<'a> {
    Release(&'a str),
    /// The release before the current one on the channel's stack, read in the write transaction.
    Previous,
}

/// The effective stack of `(action, to_release)` history rows: promotes push, rollbacks pop.
fn stack_of(history: Vec<(String, String)>) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    for (action, to) in history {
        if action == "rollback" {
            stack.pop();
        } else {
            stack.push(to);
        }
    }
    stack
}

pub(crate) fn channel_from_row(r: &impl RowExt) -> Result<Channel> {
    Ok(Channel {
        name: r.s("name")?,
        release_id: r.s("release_id")?,
        revision: r.i("revision")?,
        updated_at: r.s("updated_at")?,
        updated_by: r.s("updated_by")?,
    })
}

/// A `channel_history` row.
pub(crate) fn channel_event_from_row(r: &impl RowExt) -> Result<ChannelEvent> {
    Ok(ChannelEvent {
        channel: r.s("channel")?,
        action: r.s("action")?,
        from_release: r.os("from_release")?,
        to_release: r.s("to_release")?,
        at: r.s("at")?,
        by: r.s("by_user")?,
    })
}
