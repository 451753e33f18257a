//! Content-addressed artifacts in an object store.
//!
//! An artifact lives at `<prefix>/sha256/<hex>`; its digest is written `sha256:<hex>`. Objects are
//! write-once: putting bytes whose digest already exists is a success that writes nothing.
//! Locations: a local directory (default) or `s3://bucket/prefix`, configured from the usual
//! `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_DEFAULT_REGION`; plain `http://` endpoints are allowed for loopback test servers).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{RegistryError, Result};

/// Uploads at or above this size go through a multipart upload, reporting progress per part.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
const PART_SIZE: usize = 8 * 1024 * 1024;

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The 64-hex part of a digest, accepting `sha256:<hex>` or a bare `<hex>`.
pub fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(hex)
    } else {
        Err(RegistryError::InvalidInput(format!(
            "'{digest}' is not an artifact digest; expected sha256:<64 lowercase hex>"
        )))
    }
}

/// S3 settings that override the `AWS_*` environment (tests, embedding).
#[derive(Debug, Clone, Default)]
pub struct S3Overrides {
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
}

/// An artifact as listed by the store.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub digest: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// The artifact store: a local directory or an S3-compatible bucket.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    /// The directory of a local store: its objects are fsynced (file and directory) after a put.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("url", &self.url)
            .finish()
    }
}

impl ArtifactStore {
    /// Opens `url`: `s3://bucket[/prefix]`, `file:///abs/dir`, or a plain directory path
    /// (created if missing). S3 settings come from the `AWS_*` environment variables.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &S3Overrides::default())
    }

    /// [`ArtifactStore::open`] with explicit S3 settings that win over the environment.
    pub fn open_with(url: &str, o: &S3Overrides) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(RegistryError::Config(format!(
                    "artifacts URL '{url}' has no bucket; use s3://<bucket>[/<prefix>]"
                )));
            }
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            let endpoint = o.endpoint.clone().or_else(|| {
                std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok()
            });
            if let Some(ep) = &endpoint {
                builder = builder.with_endpoint(ep);
                if ep.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
            }
            if let Some(k) = &o.access_key_id {
                builder = builder.with_access_key_id(k);
            }
            if let Some(k) = &o.secret_access_key {
                builder = builder.with_secret_access_key(k);
            }
            if let Some(r) = &o.region {
                builder = builder.with_region(r);
            }
            let store = builder.build().map_err(|e| {
                RegistryError::Config(format!(
                    "cannot configure S3 artifacts store '{url}': {e}; set AWS_ENDPOINT_URL, \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ))
            })?;
            return Ok(ArtifactStore {
                store: Arc::new(store),
                prefix: ObjectPath::from(prefix.trim_matches('/')),
                url: url.to_string(),
                local_root: None,
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(RegistryError::Config(format!(
                "unsupported artifacts URL '{url}'; use a directory path, file:///dir or s3://bucket/prefix"
            )));
        }
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        if dir.as_os_str().is_empty() {
            return Err(RegistryError::Config(
                "artifacts location is empty; pass --artifacts DIR or s3://bucket/prefix".into(),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            RegistryError::io(
                format!("cannot create artifacts directory {}", dir.display()),
                e,
            )
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
        Ok(ArtifactStore {
            store: Arc::new(store),
            prefix: ObjectPath::default(),
            url: url.to_string(),
            local_root: Some(dir),
        })
    }

    /// The URL this store was opened with (no credentials are ever part of it).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path_of(&self, digest: &str) -> Result<ObjectPath> {
        let hex = digest_hex(digest)?;
        Ok(self.prefix.child("sha256").child(hex))
    }

    /// Whether the artifact with `digest` exists.
    pub async fn exists(&self, digest: &str) -> Result<bool> {
        match self.store.head(&self.path_of(digest)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `bytes` under their digest; returns `(digest, newly_written)`. `progress` is called
    /// with the number of bytes uploaded so far.
    pub async fn put(
        &self,
        bytes: Bytes,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(String, bool)> {
        let digest = digest_of(&bytes);
        // Durable even when another writer put it and had not synced yet; gc may delete it
        // between the check and the sync, then it is written again below.
        if self.exists(&digest).await? && self.sync_local(&digest).await? {
            progress(bytes.len() as u64);
            return Ok((digest, false));
        }
        let path = self.path_of(&digest)?;
        let started = Instant::now();
        if bytes.len() < MULTIPART_THRESHOLD {
            self.store
                .put(&path, PutPayload::from(bytes.clone()))
                .await?;
            progress(bytes.len() as u64);
        } else {
            let upload = self.store.put_multipart(&path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut done = 0u64;
            for chunk in bytes.chunks(PART_SIZE) {
                if let Err(e) = writer.wait_for_capacity(4).await {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
                writer.write(chunk);
                done += chunk.len() as u64;
                progress(done);
            }
            writer.finish().await?;
        }
        if !self.sync_local(&digest).await? {
            return Err(RegistryError::Integrity(format!(
                "artifact {digest} vanished right after it was written to {}",
                self.url
            )));
        }
        metrics::counter!("herd_registry_upload_bytes").increment(bytes.len() as u64);
        metrics::histogram!("herd_registry_upload_seconds").record(started.elapsed().as_secs_f64());
        Ok((digest, true))
    }

    /// On a local store, fsyncs the object's file and its directory, so a version row committed
    /// after this never names bytes a crash could lose. A no-op on S3 (durable when the PUT
    /// answers). Returns false when the object does not exist (locally).
    pub async fn sync_local(&self, digest: &str) -> Result<bool> {
        let Some(root) = &self.local_root else {
            return Ok(true);
        };
        let dir = root.join("sha256");
        let file = dir.join(digest_hex(digest)?);
        tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            match std::fs::File::open(&file) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            }
            crate::bundle::sync_dir(&dir)?;
            Ok(true)
        })
        .await
        .map_err(|e| RegistryError::Integrity(format!("sync task failed: {e}")))?
        .map_err(|e| RegistryError::io(format!("cannot sync artifact {digest}"), e))
    }

    /// Streams the artifact into `dest` (created or replaced), checking its digest and fsyncing
    /// the file; returns its size. The caller makes `dest` visible atomically (a scratch
    /// directory renamed into place).
    pub async fn fetch_verified(&self, digest: &str, dest: &Path) -> Result<u64> {
        let hex = digest_hex(digest)?.to_string();
        self.stream_into(digest, &hex, dest).await
    }

    /// Reads the whole artifact and checks its digest.
    pub async fn get(&self, digest: &str) -> Result<Bytes> {
        let bytes = self
            .store
            .get(&self.path_of(digest)?)
            .await?
            .bytes()
            .await?;
        let actual = digest_of(&bytes);
        if actual != digest_full(digest) {
            return Err(RegistryError::Integrity(format!(
                "artifact {digest} in {} has content with digest {actual}; the store is corrupt, \
                 push the model again",
                self.url
            )));
        }
        Ok(bytes)
    }

    /// Deletes the artifact; deleting a missing one is not an error.
    pub async fn delete(&self, digest: &str) -> Result<()> {
        match self.store.delete(&self.path_of(digest)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every artifact in the store. Objects whose names are not digests are ignored.
    pub async fn list(&self) -> Result<Vec<StoredArtifact>> {
        let base = self.prefix.child("sha256");
        let mut stream = self.store.list(Some(&base));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if digest_hex(name).is_err() {
                continue;
            }
            out.push(StoredArtifact {
                digest: format!("sha256:{name}"),
                size: meta.size,
                last_modified: meta.last_modified,
            });
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Copies the artifact into `cache_dir/<hex>.onnx` (streamed, digest-checked, atomic rename)
    /// and returns that path; a file already there is reused without touching the store.
    pub async fn fetch_to_cache(&self, digest: &str, cache_dir: &Path) -> Result<PathBuf> {
        let hex = digest_hex(digest)?.to_string();
        let target = cache_dir.join(format!("{hex}.onnx"));
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            metrics::counter!("herd_registry_fetch_total", "result" => "cached").increment(1);
            return Ok(target);
        }
        let started = Instant::now();
        tokio::fs::create_dir_all(cache_dir).await.map_err(|e| {
            RegistryError::io(
                format!("cannot create artifact cache {}", cache_dir.display()),
                e,
            )
        })?;
        let tmp = cache_dir.join(format!(
            ".{hex}.{}.{}.tmp",
            std::process::id(),
            rand_suffix()
        ));
        let result = self.stream_into(digest, &hex, &tmp).await;
        match result {
            Ok(size) => {
                tokio::fs::rename(&tmp, &target).await.map_err(|e| {
                    RegistryError::io(format!("cannot move artifact into {}", target.display()), e)
                })?;
                metrics::counter!("herd_registry_fetch_total", "result" => "fetched").increment(1);
                metrics::counter!("herd_registry_fetch_bytes").increment(size);
                metrics::histogram!("herd_registry_fetch_seconds")
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(digest, size, "artifact fetched into cache");
                Ok(target)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                metrics::counter!("herd_registry_fetch_total", "result" => "error").increment(1);
                Err(e)
            }
        }
    }

    async fn stream_into(&self, digest: &str, hex: &str, tmp: &Path) -> Result<u64> {
        let mut stream = self
            .store
            .get(&self.path_of(digest)?)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => RegistryError::NotFound(format!(
                    "artifact {digest} is missing from {}; push the model version again or \
                     restore the artifact store",
                    self.url
                )),
                e => e.into(),
            })?
            .into_stream();
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| RegistryError::io(format!("cannot create {}", tmp.display()), e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| RegistryError::io(format!("cannot write {}", tmp.display()), e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| RegistryError::io(format!("cannot sync {}", tmp.display()), e))?;
        let actual = hex::encode(hasher.finalize());
        if actual != hex {
            return Err(RegistryError::Integrity(format!(
                "artifact {digest} fetched from {} has digest sha256:{actual}; the store is \
                 corrupt, push the model again",
                self.url
            )));
        }
        Ok(size)
    }
}

fn digest_full(digest: &str) -> String {
    if digest.starts_with("sha256:") {
        digest.to_string()
    } else {
        format!("sha256:{digest}")
    }
}

pub(crate) fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = digest_of(b"abc");
        assert_eq!(
            d,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest_hex(&d).unwrap().len(), 64);
        assert!(digest_hex("sha256:xyz").is_err());
        assert!(digest_hex("../../etc/passwd").is_err());
    }

    #[tokio::test]
    async fn local_put_is_write_once_and_fetch_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().join("a").to_str().unwrap()).unwrap();
        let (d, new) = store
            .put(Bytes::from_static(b"hello"), &|_| {})
            .await
            .unwrap();
        assert!(new);
        let (d2, new2) = store
            .put(Bytes::from_static(b"hello"), &|_| {})
            .await
            .unwrap();
        assert_eq!(d, d2);
        assert!(!new2);
        assert_eq!(store.get(&d).await.unwrap(), Bytes::from_static(b"hello"));
        let cache = dir.path().join("cache");
        let p = store.fetch_to_cache(&d, &cache).await.unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        // Reused: deleting from the store does not break a cached fetch.
        store.delete(&d).await.unwrap();
        assert!(!store.exists(&d).await.unwrap());
        assert_eq!(store.fetch_to_cache(&d, &cache).await.unwrap(), p);
        // A missing artifact is a clear NotFound and leaves no temp file behind.
        let missing = digest_of(b"nope");
        let e = store.fetch_to_cache(&missing, &cache).await.unwrap_err();
        assert!(matches!(e, RegistryError::NotFound(_)), "{e}");
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn corrupt_object_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a");
        let store = ArtifactStore::open(root.to_str().unwrap()).unwrap();
        let (d, _) = store
            .put(Bytes::from_static(b"good"), &|_| {})
            .await
            .unwrap();
        let file = root.join("sha256").join(digest_hex(&d).unwrap());
        std::fs::write(&file, b"evil").unwrap();
        assert!(matches!(
            store.get(&d).await,
            Err(RegistryError::Integrity(_))
        ));
        let cache = dir.path().join("cache");
        assert!(matches!(
            store.fetch_to_cache(&d, &cache).await,
            Err(RegistryError::Integrity(_))
        ));
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn multipart_upload_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        let data: Vec<u8> = (0..(MULTIPART_THRESHOLD + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        let seen = std::sync::Mutex::new(Vec::new());
        let (d, _) = store
            .put(Bytes::from(data.clone()), &|n| seen.lock().unwrap().push(n))
            .await
            .unwrap();
        let seen = seen.into_inner().unwrap();
        assert!(seen.len() >= 3, "{seen:?}");
        assert_eq!(*seen.last().unwrap(), data.len() as u64);
        assert_eq!(store.get(&d).await.unwrap().len(), data.len());
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    #[test]
    fn bad_urls() {
        assert!(matches!(
            ArtifactStore::open("gs://x"),
            Err(RegistryError::Config(_))
        ));
        assert!(matches!(
            ArtifactStore::open("s3://"),
            Err(RegistryError::Config(_))
        ));
        assert!(matches!(
            ArtifactStore::open(""),
            Err(RegistryError::Config(_))
        ));
    }
}
