//! Serving a registry channel: a [`ModelSource`] whose model set is the channel's release.
//!
//! Serving a channel is serving a directory: every entry's bundle is fetched into the local disk
//! cache as `<cache>/<model>/<hex of the version digest>/` (each file verified, the directory made
//! visible atomically, see `herd_registry::bundle`), its `config.toml` is read by the same parser
//! as a `--repo` model (`herd_core::source::read_config`), and the model file handed to the core
//! is the bundle's `model.onnx`, so the tokenizer and the rest of the pipeline are found next to
//! it exactly as in a repository version directory. Batching, instances, pins, warm-up, labels,
//! pipelines and `/v1/embeddings` therefore behave the same for both sources. The tenant is the
//! registry model's (the bundle's `tenant` applies only when the registry model has none); the
//! bundle's `versions` key is ignored (a channel serves exactly the release's version).
//!
//! The served set lives in memory (`list`/`get` never touch the database, so request paths stay
//! fast). A watcher polls the channel's revision; on a change it loads the new release, fetches
//! the bundles of changed entries first, then swaps the set in one step and calls `on_swap`.
//! Requests already running keep their loaded instance; a version that left the release can
//! still be loaded by a request that resolved it just before the swap, because every
//! (model, version) ever served keeps its digest here (its bundle is fetched again if the cache
//! lost it).
//!
//! The disk cache is pruned after each switch ([`RegistrySource::prune_cache`]): a bundle
//! directory is removed only when no channel's current release names it, the core holds no
//! version of it (loaded, loading, or retired but still running requests), and it left this
//! source's set more than a grace period ago (the request timeout: a request that resolved it
//! just before the switch has finished by then). Removal renames the directory away first, so a
//! fetch never sees a half-deleted bundle.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herd_core::{CoreError, ModelEntry, ModelSource};
use herd_registry::{short_id, ModelFilter, Registry, Release};
use parking_lot::RwLock;

use super::ServeError;

/// How many bundles are fetched at once when a new release arrives.
const PREFETCH_CONCURRENCY: usize = 8;

struct Served {
    release: Release,
    revision: i64,
    /// model -> entry handed to the core
    entries: BTreeMap<String, ModelEntry>,
}

/// A channel of the registry as a model source.
pub struct RegistrySource {
    registry: Arc<Registry>,
    channel: String,
    cache_dir: PathBuf,
    handle: tokio::runtime::Handle,
    served: RwLock<Arc<Served>>,
    /// (model, version) -> digest of everything served since start.
    digests: RwLock<HashMap<(String, String), String>>,
    generation: AtomicU64,
    /// Wakes the core on each new generation (`ModelSource::changes`).
    changes: tokio::sync::watch::Sender<u64>,
    /// Bundles (model, hex) that left the served set, and when (for the prune's grace).
    left: parking_lot::Mutex<HashMap<(String, String), Instant>>,
    /// Whether the cache should be looked at on the next tick (at start: leftovers of earlier
    /// runs; after a switch; while bundles wait out their grace).
    prune_due: std::sync::atomic::AtomicBool,
}

impl RegistrySource {
    /// Loads the channel's current release. Fails when the channel has none yet. Must be called
    /// inside a tokio runtime (its handle is kept for blocking artifact fetches).
    pub async fn open(
        registry: Arc<Registry>,
        channel: &str,
        cache_dir: PathBuf,
    ) -> Result<Arc<RegistrySource>, ServeError> {
        let revision = registry.channel_revision(channel).await?;
        let release = registry.channel_release(channel).await?;
        let (Some(revision), Some(release)) = (revision, release) else {
            return Err(ServeError::Config(format!(
                "channel '{channel}' has no release; create one with `herd release create ... \
                 --promote {channel}`"
            )));
        };
        let all: Vec<(String, String)> = release
            .entries
            .iter()
            .map(|(m, e)| (m.clone(), e.digest.clone()))
            .collect();
        prefetch(&registry, &cache_dir, &all).await?;
        let served = build_served(&registry, &cache_dir, release, revision).await?;
        let digests = digest_map(&served.release);
        tracing::info!(
            channel,
            release = %served.release.short_id,
            models = served.entries.len(),
            revision,
            "serving registry channel"
        );
        Ok(Arc::new(RegistrySource {
            registry,
            channel: channel.to_string(),
            cache_dir,
            handle: tokio::runtime::Handle::current(),
            served: RwLock::new(Arc::new(served)),
            digests: RwLock::new(digests),
            generation: AtomicU64::new(1),
            changes: tokio::sync::watch::channel(1).0,
            left: parking_lot::Mutex::new(HashMap::new()),
            prune_due: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// The registry this source reads (the server also mounts its REST API on it).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The release being served now.
    pub fn release(&self) -> Release {
        self.served.read().release.clone()
    }

    /// Checks the channel once; when its revision changed, prefetches and swaps. Returns whether
    /// the served set changed.
    pub async fn refresh(&self) -> Result<bool, ServeError> {
        let current = self.served.read().revision;
        let Some(revision) = self.registry.channel_revision(&self.channel).await? else {
            return Ok(false);
        };
        if revision == current {
            return Ok(false);
        }
        let Some(release) = self.registry.channel_release(&self.channel).await? else {
            return Ok(false);
        };
        let started = Instant::now();
        let old = self.served.read().clone();
        if release.id == old.release.id {
            // A rollback-and-forward that ended on the same set: nothing to swap.
            let mut s = (*old).clone_shallow();
            s.revision = revision;
            *self.served.write() = Arc::new(s);
            return Ok(false);
        }
        // Fetch changed bundles before the swap so new requests find them on disk.
        let changed: Vec<(String, String)> = release
            .entries
            .iter()
            .filter(|(m, e)| old.release.entries.get(*m) != Some(*e))
            .map(|(m, e)| (m.clone(), e.digest.clone()))
            .collect();
        prefetch(&self.registry, &self.cache_dir, &changed).await?;
        let served = build_served(&self.registry, &self.cache_dir, release, revision).await?;
        {
            let mut digests = self.digests.write();
            digests.extend(digest_map(&served.release));
        }
        let (from, to, models) = (
            old.release.short_id.clone(),
            served.release.short_id.clone(),
            served.entries.len(),
        );
        {
            let now = Instant::now();
            let mut left = self.left.lock();
            for (m, e) in &old.release.entries {
                if served.release.entries.get(m) != Some(e) {
                    left.insert((m.clone(), hex_of(&e.digest).to_string()), now);
                }
            }
        }
        self.prune_due.store(true, Ordering::SeqCst);
        *self.served.write() = Arc::new(served);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.changes.send_replace(generation);
        let secs = started.elapsed().as_secs_f64();
        metrics::histogram!("herd_registry_swap_seconds").record(secs);
        metrics::counter!("herd_registry_swaps_total").increment(1);
        tracing::info!(
            channel = %self.channel,
            from = %from,
            to = %to,
            models,
            changed = changed.len(),
            seconds = secs,
            "release switched"
        );
        Ok(true)
    }

    /// Removes the cached bundles nothing needs any more (see the module docs): not in any
    /// channel's current release, not in `resident` (the (model, version)s the core holds), and
    /// out of this source's set for longer than `grace`. Returns how many were removed.
    pub async fn prune_cache(
        &self,
        resident: &[(String, String)],
        grace: Duration,
    ) -> Result<usize, ServeError> {
        self.prune_due.store(false, Ordering::SeqCst);
        let mut keep: std::collections::HashSet<(String, String)> = Default::default();
        for e in self.served.read().release.entries.iter() {
            keep.insert((e.0.clone(), hex_of(&e.1.digest).to_string()));
        }
        {
            let digests = self.digests.read();
            for k in resident {
                if let Some(d) = digests.get(k) {
                    keep.insert((k.0.clone(), hex_of(d).to_string()));
                }
            }
        }
        for (k, at) in self.left.lock().iter() {
            if at.elapsed() < grace {
                keep.insert(k.clone());
                // Look again once the grace has passed.
                self.prune_due.store(true, Ordering::SeqCst);
            }
        }
        // Other servers may share this cache: what any channel serves stays.
        for ch in self.registry.channels().await? {
            if let Ok(r) = self.registry.release(&ch.release_id).await {
                for (m, e) in &r.entries {
                    keep.insert((m.clone(), hex_of(&e.digest).to_string()));
                }
            }
        }
        let cache = self.cache_dir.clone();
        let removed = tokio::task::spawn_blocking(move || prune_dirs(&cache, &keep))
            .await
            .map_err(|e| ServeError::Config(format!("the cache prune task failed: {e}")))?
            .map_err(|error| ServeError::Io {
                context: "pruning the bundle cache".into(),
                error,
            })?;
        if !removed.is_empty() {
            let mut left = self.left.lock();
            for k in &removed {
                left.remove(k);
            }
            metrics::counter!("herd_registry_bundles_pruned_total").increment(removed.len() as u64);
            tracing::info!(channel = %self.channel, removed = removed.len(), "pruned the bundle cache");
        }
        Ok(removed.len())
    }

    /// Polls the channel every `every`; after a swap calls `on_swap`, then prunes the bundle
    /// cache of what nothing needs (`resident`: what the core holds; `grace`: see
    /// [`RegistrySource::prune_cache`]). Errors are logged and the current set keeps being
    /// served.
    pub fn spawn_watch(
        self: &Arc<Self>,
        every: Duration,
        grace: Duration,
        resident: impl Fn() -> Vec<(String, String)> + Send + Sync + 'static,
        on_swap: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The same failure is logged once (at warn) until it changes or clears.
            let mut last_error: Option<String> = None;
            loop {
                tick.tick().await;
                match me.refresh().await {
                    Ok(swapped) => {
                        if last_error.take().is_some() {
                            tracing::info!(channel = %me.channel, "channel refresh works again");
                        }
                        if swapped {
                            on_swap();
                        }
                        if me.prune_due.load(Ordering::SeqCst) {
                            if let Err(e) = me.prune_cache(&resident(), grace).await {
                                tracing::warn!(channel = %me.channel, error = %e, "cannot prune the bundle cache");
                            }
                        }
                    }
                    Err(e) => {
                        metrics::counter!("herd_registry_refresh_errors_total").increment(1);
                        let msg = format!("{e:#}");
                        if last_error.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(channel = %me.channel, error = %msg, "cannot switch to the channel's new release; still serving the previous one");
                            last_error = Some(msg);
                        }
                    }
                }
            }
        })
    }
}

impl Served {
    fn clone_shallow(&self) -> Served {
        Served {
            release: self.release.clone(),
            revision: self.revision,
            entries: self.entries.clone(),
        }
    }
}

/// Fetches the bundles `(model, digest)` into the cache, a few at a time.
async fn prefetch(
    registry: &Arc<Registry>,
    cache_dir: &std::path::Path,
    bundles: &[(String, String)],
) -> Result<(), ServeError> {
    let fetched = futures::stream::iter(bundles.iter().cloned())
        .map(|(m, d)| {
            let reg = registry.clone();
            let dir = cache_dir.to_path_buf();
            async move { reg.fetch_bundle(&m, &d, &dir).await }
        })
        .buffer_unordered(PREFETCH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for r in fetched {
        r?;
    }
    Ok(())
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Removes `<cache>/<model>/<hex>/` bundle directories not in `keep`; each is renamed to a
/// dot-name first (fetches ignore those), then deleted. Returns the removed (model, hex).
fn prune_dirs(
    cache: &std::path::Path,
    keep: &std::collections::HashSet<(String, String)>,
) -> std::io::Result<Vec<(String, String)>> {
    let mut removed = Vec::new();
    let models = match std::fs::read_dir(cache) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for m in models.flatten() {
        let Some(model) = m.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if model.starts_with('.') || !m.path().is_dir() {
            continue;
        }
        for b in std::fs::read_dir(m.path())?.flatten() {
            let Some(hex) = b.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let is_bundle = hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit());
            if !is_bundle || keep.contains(&(model.clone(), hex.clone())) {
                continue;
            }
            let trash = m
                .path()
                .join(format!(".{hex}.pruned.{}", std::process::id()));
            if std::fs::rename(b.path(), &trash).is_ok() {
                let _ = std::fs::remove_dir_all(&trash);
                removed.push((model.clone(), hex));
            }
        }
    }
    Ok(removed)
}

/// The directory a bundle is materialized in (see `Registry::fetch_bundle`).
fn bundle_dir(cache_dir: &std::path::Path, model: &str, digest: &str) -> PathBuf {
    cache_dir.join(model).join(hex_of(digest))
}

async fn build_served(
    registry: &Registry,
    cache_dir: &std::path::Path,
    release: Release,
    revision: i64,
) -> Result<Served, ServeError> {
    // Tenants for the auth rules: one paged scan of the models table.
    let mut tenants: HashMap<String, Option<String>> = HashMap::new();
    let mut offset = 0;
    loop {
        let page = registry
            .list_models(&ModelFilter {
                limit: Some(1000),
                offset: Some(offset),
                ..Default::default()
            })
            .await?;
        for m in page.items {
            tenants.insert(m.name, m.tenant);
        }
        match page.next_offset {
            Some(n) => offset = n,
            None => break,
        }
    }
    let mut entries = BTreeMap::new();
    for (model, e) in &release.entries {
        let dir = bundle_dir(cache_dir, model, &e.digest);
        let mut config =
            herd_core::source::read_config(model, &dir.join(herd_core::source::CONFIG_FILE))?;
        // The channel serves exactly the release's version.
        config.versions = None;
        if let Some(Some(t)) = tenants.get(model) {
            config.tenant = Some(t.clone());
        }
        entries.insert(
            model.clone(),
            ModelEntry {
                name: model.clone(),
                versions: vec![e.version.to_string()],
                config,
            },
        );
    }
    Ok(Served {
        release,
        revision,
        entries,
    })
}

fn digest_map(r: &Release) -> HashMap<(String, String), String> {
    r.entries
        .iter()
        .map(|(m, e)| ((m.clone(), e.version.to_string()), e.digest.clone()))
        .collect()
}

impl ModelSource for RegistrySource {
    fn list(&self) -> Result<Vec<ModelEntry>, CoreError> {
        Ok(self.served.read().entries.values().cloned().collect())
    }

    fn get(&self, name: &str) -> Result<ModelEntry, CoreError> {
        self.served
            .read()
            .entries
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::ModelNotFound(name.to_string()))
    }

    fn artifact(&self, name: &str, version: &str) -> Result<PathBuf, CoreError> {
        let digest = self
            .digests
            .read()
            .get(&(name.to_string(), version.to_string()))
            .cloned()
            .ok_or_else(|| CoreError::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            })?;
        // Called on the loader pool (a blocking thread), so blocking on the runtime is allowed.
        self.handle
            .block_on(self.registry.fetch_bundle(name, &digest, &self.cache_dir))
            .map(|dir| dir.join(herd_core::source::MODEL_FILE))
            .map_err(|e| CoreError::LoadFailed {
                model: name.to_string(),
                version: version.to_string(),
                reason: format!("cannot fetch bundle {digest} from the registry: {e}"),
            })
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn serving(&self) -> Option<herd_core::Serving> {
        let r = self.release();
        Some(herd_core::Serving {
            channel: self.channel.clone(),
            release: r.short_id,
            models: r.entries.len(),
            release_note: r.note,
            release_created_at: r.created_at,
        })
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.served.read();
        f.debug_struct("RegistrySource")
            .field("channel", &self.channel)
            .field("release", &short_id(&s.release.id))
            .field("models", &s.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_onnx::LinearClassifier;
    use herd_registry::{NewModel, PushRequest, ReleaseSpec};

    async fn push(reg: &Registry, model: &str, seed: u64) {
        reg.push(PushRequest {
            model: model.into(),
            bytes: LinearClassifier::random(4, 2, seed).to_onnx(model).into(),
            created_by: "t".into(),
            create: Some(NewModel {
                name: model.into(),
                tenant: Some(format!("tenant-of-{model}")),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    async fn release(reg: &Registry, entries: &[(&str, i64)]) -> Release {
        reg.create_release(&ReleaseSpec {
            entries: entries
                .iter()
                .map(|(m, v)| (m.to_string(), v.to_string()))
                .collect(),
            note: None,
            created_by: "t".into(),
        })
        .await
        .unwrap()
        .0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_the_channel_and_swaps_on_promote() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(
            Registry::open(
                &format!("sqlite://{}", dir.path().join("r.db").display()),
                dir.path().join("a").to_str().unwrap(),
            )
            .await
            .unwrap(),
        );
        for (m, seeds) in [("a", [1, 2]), ("b", [3, 4])] {
            for s in seeds {
                push(&reg, m, s).await;
            }
        }
        let cache = dir.path().join("cache");
        assert!(
            RegistrySource::open(reg.clone(), "production", cache.clone())
                .await
                .is_err()
        );
        let r1 = release(&reg, &[("a", 1), ("b", 1)]).await;
        reg.promote("production", &r1.id, "t").await.unwrap();
        let src = RegistrySource::open(reg.clone(), "production", cache.clone())
            .await
            .unwrap();
        assert_eq!(src.list().unwrap().len(), 2);
        let a = src.get("a").unwrap();
        assert_eq!(a.versions, ["1"]);
        assert_eq!(a.config.tenant.as_deref(), Some("tenant-of-a"));
        assert!(matches!(src.get("zzz"), Err(CoreError::ModelNotFound(_))));
        let gen0 = src.generation();

        // Nothing changed: no swap.
        assert!(!src.refresh().await.unwrap());

        // First use fetches a verified copy (artifact() blocks, so call it off the runtime).
        let s2 = src.clone();
        let path = tokio::task::spawn_blocking(move || s2.artifact("a", "1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            herd_registry::digest_of(&std::fs::read(&path).unwrap()),
            r1.entries["a"].digest
        );

        // Promote a release where b changes: the swap prefetches b@2 and switches.
        let r2 = release(&reg, &[("a", 1), ("b", 2)]).await;
        reg.promote("production", &r2.short_id, "t").await.unwrap();
        assert!(src.refresh().await.unwrap());
        assert!(src.generation() > gen0);
        assert_eq!(src.get("b").unwrap().versions, ["2"]);
        assert_eq!(
            src.get("a").unwrap().versions,
            ["1"],
            "unchanged entry stays"
        );
        assert_eq!(src.release().id, r2.id);
        let b2 = bundle_dir(&cache, "b", &r2.entries["b"].digest).join("model.onnx");
        assert!(
            b2.is_file(),
            "changed artifact was prefetched before the swap"
        );
        // A request that resolved b@1 just before the swap can still load it.
        let s3 = src.clone();
        tokio::task::spawn_blocking(move || s3.artifact("b", "1"))
            .await
            .unwrap()
            .unwrap();
        // Never served: refused.
        let s4 = src.clone();
        assert!(tokio::task::spawn_blocking(move || s4.artifact("a", "2"))
            .await
            .unwrap()
            .is_err());

        // The cache is pruned of b@1 only when nothing needs it: not while the core holds it,
        // not within the grace, and never what a channel serves.
        let b1 = bundle_dir(&cache, "b", &r1.entries["b"].digest);
        assert!(b1.is_dir());
        let held = [("b".to_string(), "1".to_string())];
        assert_eq!(src.prune_cache(&held, Duration::ZERO).await.unwrap(), 0);
        assert_eq!(
            src.prune_cache(&[], Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert!(b1.is_dir());
        // Another channel serving r1 keeps b@1 for its server (which may share the cache).
        reg.promote("staging", &r1.id, "t").await.unwrap();
        assert_eq!(src.prune_cache(&[], Duration::ZERO).await.unwrap(), 0);
        assert!(b1.is_dir());
        let r3 = release(&reg, &[("a", 2), ("b", 2)]).await;
        reg.promote("staging", &r3.id, "t").await.unwrap();
        assert_eq!(src.prune_cache(&[], Duration::ZERO).await.unwrap(), 1);
        assert!(!b1.exists(), "b@1 left every release and nothing holds it");
        assert!(b2.is_file(), "the served bundle stays");
        assert!(bundle_dir(&cache, "a", &r1.entries["a"].digest).is_dir());

        // Rollback goes back: b@1 is fetched again before the swap.
        reg.rollback("production", "t").await.unwrap();
        assert!(src.refresh().await.unwrap());
        assert_eq!(src.get("b").unwrap().versions, ["1"]);
        assert!(b1.join("model.onnx").is_file());
    }
}
