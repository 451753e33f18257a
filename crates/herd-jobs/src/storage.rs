//! Where job inputs and results live: a plain path, `file:///abs/path`, or `s3://bucket/key`
//! (any S3-compatible store, through the `object_store` crate the registry uses; settings from
//! the `AWS_*` environment: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`). Remote objects are streamed to and from local files (never held whole in
//! memory): a worker downloads a remote input to a temp file, writes its results to a local
//! staging folder and uploads them at the end, the outcome last (its presence means "done").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};

use crate::JobsError;

/// A location, resolved.
#[derive(Clone)]
pub enum Place {
    Local(PathBuf),
    Remote {
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        url: String,
    },
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local(p) => write!(f, "Local({})", p.display()),
            Place::Remote { url, .. } => write!(f, "Remote({url})"),
        }
    }
}

/// Whether `url` names an object store (not a local path).
pub fn is_remote(url: &str) -> bool {
    url.contains("://") && !url.starts_with("file://")
}

/// `url` + `/name`.
pub fn join(url: &str, name: &str) -> String {
    format!(
        "{}/{}",
        url.trim_end_matches('/'),
        name.trim_start_matches('/')
    )
}

fn err(url: &str, e: object_store::Error) -> JobsError {
    let not_found = matches!(e, object_store::Error::NotFound { .. });
    JobsError::Io {
        path: url.to_string(),
        source: std::io::Error::new(
            if not_found {
                std::io::ErrorKind::NotFound
            } else {
                std::io::ErrorKind::Other
            },
            e.to_string(),
        ),
    }
}

/// Resolves `url`: `s3://bucket/key`, `file:///path` or a plain path.
pub fn place(url: &str) -> Result<Place, JobsError> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(JobsError::InvalidArgument(format!(
                "'{url}' has no bucket: use s3://<bucket>/<key>"
            )));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"))
        {
            if ep.starts_with("http://") {
                b = b.with_allow_http(true);
            }
            b = b.with_endpoint(ep);
        }
        let store = b.build().map_err(|e| {
            JobsError::InvalidArgument(format!(
                "cannot open '{url}': {e}; set AWS_ENDPOINT_URL (for an S3-compatible store), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ))
        })?;
        return Ok(Place::Remote {
            store: Arc::new(store),
            path: ObjectPath::from(key.trim_matches('/')),
            url: url.to_string(),
        });
    }
    if is_remote(url) {
        return Err(JobsError::InvalidArgument(format!(
            "unsupported location '{url}': use a path, file:///path or s3://bucket/key"
        )));
    }
    Ok(Place::Local(PathBuf::from(
        url.strip_prefix("file://").unwrap_or(url),
    )))
}

/// The bytes at `url` as a stream (for serving results).
pub async fn read_stream(
    url: &str,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, JobsError> {
    match place(url)? {
        Place::Local(p) => {
            let f = tokio::fs::File::open(&p)
                .await
                .map_err(|e| JobsError::io(&p, e))?;
            let s = futures::stream::try_unfold(f, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 * 1024];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), f)))
            });
            Ok(s.boxed())
        }
        Place::Remote { store, path, url } => {
            let got = store.get(&path).await.map_err(|e| err(&url, e))?;
            Ok(got
                .into_stream()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .boxed())
        }
    }
}

/// A small object (an outcome file) or `None` when it does not exist.
pub async fn read_small(url: &str) -> Result<Option<Vec<u8>>, JobsError> {
    match place(url)? {
        Place::Local(p) => match tokio::fs::read(&p).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JobsError::io(&p, e)),
        },
        Place::Remote { store, path, url } => match store.get(&path).await {
            Ok(g) => Ok(Some(g.bytes().await.map_err(|e| err(&url, e))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(&url, e)),
        },
    }
}

/// Writes a small object (an outcome file): a local file atomically (temp + rename), or one
/// S3 PUT.
pub async fn write_small(url: &str, bytes: Vec<u8>) -> Result<(), JobsError> {
    match place(url)? {
        Place::Local(p) => {
            tokio::task::spawn_blocking(move || crate::run::write_atomic(&p, &bytes))
                .await
                .map_err(|e| JobsError::Corrupt(format!("writer: {e}")))?
        }
        Place::Remote { store, path, url } => store
            .put(&path, object_store::PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| err(&url, e)),
    }
}

/// Downloads `url` to the local file `to`, streaming.
pub async fn download(url: &str, to: &Path) -> Result<(), JobsError> {
    use tokio::io::AsyncWriteExt;
    let mut s = read_stream(url).await?;
    let mut f = tokio::fs::File::create(to)
        .await
        .map_err(|e| JobsError::io(to, e))?;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| JobsError::Io {
            path: url.to_string(),
            source: e,
        })?;
        f.write_all(&chunk)
            .await
            .map_err(|e| JobsError::io(to, e))?;
    }
    f.flush().await.map_err(|e| JobsError::io(to, e))?;
    Ok(())
}

/// Uploads the local file `from` to the remote `url`, streaming (multipart for large files).
/// An S3 object appears whole or not at all.
pub async fn upload(from: &Path, url: &str) -> Result<(), JobsError> {
    use tokio::io::AsyncReadExt;
    let Place::Remote { store, path, url } = place(url)? else {
        return Err(JobsError::InvalidArgument(format!(
            "upload target '{url}' is not an object store URL"
        )));
    };
    let mut f = tokio::fs::File::open(from)
        .await
        .map_err(|e| JobsError::io(from, e))?;
    let upload = store.put_multipart(&path).await.map_err(|e| err(&url, e))?;
    let mut w = WriteMultipart::new(upload);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| JobsError::io(from, e))?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(4).await.map_err(|e| err(&url, e))?;
        w.write(&buf[..n]);
    }
    w.finish().await.map_err(|e| err(&url, e))?;
    Ok(())
}

/// A temp file path for a job's downloaded input, removed on drop.
pub(crate) struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(job_id: &str, name_hint: &str) -> TempFile {
        let ext = Path::new(name_hint)
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let r: u32 = rand::random();
        TempFile(std::env::temp_dir().join(format!("herd-{job_id}-{r:08x}{ext}")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A local staging folder for a job whose results go to an object store, removed on drop.
pub(crate) struct StagingDir(pub PathBuf);

impl StagingDir {
    pub fn new(job_id: &str) -> Result<StagingDir, JobsError> {
        let r: u32 = rand::random();
        let p = std::env::temp_dir().join(format!("herd-results-{job_id}-{r:08x}"));
        std::fs::create_dir_all(&p).map_err(|e| JobsError::io(&p, e))?;
        Ok(StagingDir(p))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip through the S3-compatible test endpoint (moto from scripts/test-services.sh):
    /// upload, download, small read/write, a missing object is `None`.
    #[tokio::test]
    async fn s3_round_trip_through_the_test_endpoint() {
        let Ok(endpoint) = std::env::var("HERD_TEST_S3_ENDPOINT") else {
            assert!(
                std::env::var("CI").is_err(),
                "HERD_TEST_S3_ENDPOINT is not set under CI: run scripts/test-services.sh"
            );
            eprintln!("SKIPPED: HERD_TEST_S3_ENDPOINT not set");
            return;
        };
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        let bucket = format!("herd-jobs-{:08x}", rand::random::<u32>());
        let r = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        let dir = std::env::temp_dir().join(format!("herd-s3-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let local = dir.join("in.jsonl");
        let body: Vec<u8> = (0..50_000)
            .flat_map(|i| format!("[{i}, 1]\n").into_bytes())
            .collect();
        std::fs::write(&local, &body).unwrap();
        let url = format!("s3://{bucket}/acme/in.jsonl");
        upload(&local, &url).await.unwrap();
        let back = dir.join("back.jsonl");
        download(&url, &back).await.unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), body);
        let small = format!("s3://{bucket}/acme/results/j1.json");
        assert_eq!(read_small(&small).await.unwrap(), None);
        write_small(&small, b"{}".to_vec()).await.unwrap();
        assert_eq!(read_small(&small).await.unwrap(), Some(b"{}".to_vec()));
        let missing = download(&format!("s3://{bucket}/nope.jsonl"), &back).await;
        assert!(
            matches!(&missing, Err(JobsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "{missing:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
