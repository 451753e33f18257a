//! Model bundles: a version is the files of a model directory (`model.onnx`, external data,
//! `config.toml`, `tokenizer.json` and the tokenizer's other files), each stored
//! content-addressed, plus a manifest (path -> digest, size) whose own digest is the version's
//! digest. The manifest is stored as an artifact too, so a fetch verifies it like any file.
//!
//! A version with only `model.onnx` is a one-file bundle stored exactly as before bundles
//! existed: its digest is the digest of `model.onnx` and it has no manifest. Old registries keep
//! working unchanged.
//!
//! Fetching materializes a bundle as a directory `<cache>/<model>/<hex of the version digest>/`:
//! every file is streamed into a scratch directory and checked against its digest, files and
//! directories are fsynced, then the scratch directory is renamed into place in one step, so a
//! reader sees either nothing or the whole verified bundle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::db::{dispatch, RowExt};
use crate::error::{RegistryError, Result};
use crate::registry::Registry;
use crate::store::{digest_hex, digest_of};
use crate::types::BundleFile;

/// The ONNX file every bundle has.
pub const MODEL_FILE: &str = "model.onnx";
/// The model's serving config inside a bundle (checked at push when a [`crate::ConfigCheck`] is installed).
pub const CONFIG_FILE: &str = "config.toml";
/// The manifest's format marker.
pub const BUNDLE_FORMAT: &str = "herd.bundle/v1";
/// Most files a bundle may hold.
pub const MAX_FILES: usize = 256;
/// Deepest path inside a bundle (`a/b/c/file`).
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ManifestFile {
    digest: String,
    size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    files: BTreeMap<String, ManifestFile>,
}

/// Checks a path inside a bundle: relative, `/`-separated components of letters, digits, `.`,
/// `_`, `-`, none starting with a dot, at most four deep.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(RegistryError::InvalidInput(format!(
            "bundle file '{path}' is not allowed: {why}"
        )))
    };
    if path.is_empty() || path.len() > 255 {
        return bad("paths are 1-255 characters");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return bad("at most 4 directory levels");
    }
    for p in parts {
        if p.is_empty() || p.starts_with('.') {
            return bad("components must be non-empty and not start with '.'");
        }
        if !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad("use letters, digits, '.', '_' and '-' only");
        }
    }
    Ok(())
}

/// The canonical manifest of `files` (sorted keys, no whitespace) and its digest.
pub fn manifest_of(files: &[BundleFile]) -> (Bytes, String) {
    let m = Manifest {
        format: BUNDLE_FORMAT.into(),
        files: files
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    ManifestFile {
                        digest: f.digest.clone(),
                        size: f.size,
                    },
                )
            })
            .collect(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&m).expect("a manifest serializes"));
    let digest = digest_of(&bytes);
    (bytes, digest)
}

/// Parses a manifest's bytes into its file list.
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<BundleFile>> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Integrity(format!("bundle manifest is not valid: {e}")))?;
    if m.format != BUNDLE_FORMAT {
        return Err(RegistryError::Integrity(format!(
            "bundle manifest has format '{}', this herd reads '{BUNDLE_FORMAT}'",
            m.format
        )));
    }
    Ok(m.files
        .into_iter()
        .map(|(path, f)| BundleFile {
            path,
            digest: f.digest,
            size: f.size,
        })
        .collect())
}

/// Reads a model directory as a bundle: every regular file below `dir` (hidden files and
/// directories skipped), paths relative to `dir`. `model.onnx` must be at the top.
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, 0, &mut out)?;
    if !out.contains_key(MODEL_FILE) {
        return Err(RegistryError::InvalidInput(format!(
            "{} has no {MODEL_FILE}; a model directory holds model.onnx and optionally \
             config.toml, tokenizer files and external data",
            dir.display()
        )));
    }
    Ok(out)
}

/// Reads what `herd model push NAME DIR` pushes: a flat model directory (`DIR/model.onnx` and
/// its neighbours), or a repository model directory (`DIR/<n>/model.onnx`, the highest `n`,
/// plus the files directly in `DIR` such as `config.toml` and `tokenizer.json`).
pub fn read_model_dir(dir: &Path) -> Result<BTreeMap<String, Bytes>> {
    if dir.join(MODEL_FILE).is_file() {
        return read_dir(dir);
    }
    let mut versions: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| RegistryError::io(format!("cannot read directory {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.parse().ok()?;
            e.path().join(MODEL_FILE).is_file().then_some((n, e.path()))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, v)) => read_model_version(dir, &v),
        None => Err(RegistryError::InvalidInput(format!(
            "{} has neither {MODEL_FILE} nor <version>/{MODEL_FILE}",
            dir.display()
        ))),
    }
}

/// One version of a repository model as a bundle: the regular files directly in `model_dir`
/// (`config.toml`, tokenizer files), overlaid by everything in `version_dir`.
pub fn read_model_version(model_dir: &Path, version_dir: &Path) -> Result<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(model_dir).map_err(|e| {
        RegistryError::io(format!("cannot read directory {}", model_dir.display()), e)
    })?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().is_file() {
            continue;
        }
        validate_path(&name)?;
        let bytes = std::fs::read(e.path())
            .map_err(|err| RegistryError::io(format!("cannot read {}", e.path().display()), err))?;
        out.insert(name, Bytes::from(bytes));
    }
    out.extend(read_dir(version_dir)?);
    Ok(out)
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut BTreeMap<String, Bytes>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| RegistryError::io(format!("cannot read directory {}", dir.display()), e))?;
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let meta = std::fs::metadata(&path)
            .map_err(|err| RegistryError::io(format!("cannot read {}", path.display()), err))?;
        if meta.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                return Err(RegistryError::InvalidInput(format!(
                    "{} is nested too deep for a bundle (at most 4 levels)",
                    path.display()
                )));
            }
            walk(root, &path, depth + 1, out)?;
        } else if meta.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("walked below root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            validate_path(&rel)?;
            if out.len() >= MAX_FILES {
                return Err(RegistryError::InvalidInput(format!(
                    "{} has more than {MAX_FILES} files; a bundle holds at most {MAX_FILES}",
                    root.display()
                )));
            }
            let bytes = std::fs::read(&path)
                .map_err(|err| RegistryError::io(format!("cannot read {}", path.display()), err))?;
            out.insert(rel, Bytes::from(bytes));
        }
    }
    Ok(())
}

/// Reads a bundle sent as a tar archive (ustar; pax headers are skipped, directories ignored):
/// path -> content. The REST push takes this with `content-type: application/x-tar`.
pub fn read_tar(data: &[u8]) -> Result<BTreeMap<String, Bytes>> {
    let bad = |why: String| RegistryError::InvalidInput(format!("bundle tar archive: {why}"));
    let mut out = BTreeMap::new();
    let mut at = 0usize;
    while at + 512 <= data.len() {
        let h = &data[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let field = |a: usize, b: usize| {
            let f = &h[a..b];
            let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let size_text = field(124, 136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .map_err(|_| bad(format!("bad size field '{}'", size_text.trim())))?
            as usize;
        let kind = h[156];
        let mut name = field(0, 100);
        if &h[257..262] == b"ustar" {
            let prefix = field(345, 500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let body = at + 512;
        let end = body
            .checked_add(size)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad(format!("entry '{name}' runs past the end of the archive")))?;
        match kind {
            b'0' | 0 => {
                let path = name.trim_start_matches("./").to_string();
                validate_path(&path)?;
                if out.len() >= MAX_FILES {
                    return Err(bad(format!("more than {MAX_FILES} files")));
                }
                out.insert(path, Bytes::copy_from_slice(&data[body..end]));
            }
            b'5' | b'x' | b'g' => {}
            other => {
                return Err(bad(format!(
                    "entry '{name}' has type '{}'; only regular files and directories are allowed",
                    other as char
                )))
            }
        }
        at = body + size.div_ceil(512) * 512;
    }
    if !out.contains_key(MODEL_FILE) {
        return Err(bad(format!("no {MODEL_FILE} at the top of the archive")));
    }
    Ok(out)
}

/// fsyncs a directory (its entries are durable once this returns).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Registry {
    /// The files of a version's bundle; empty for a one-file bundle.
    pub async fn version_files(&self, model: &str, version: i64) -> Result<Vec<BundleFile>> {
        dispatch!(&self.db, |pool, _b| {
            let rows = sqlx::query(
                "SELECT path, digest, size FROM version_files WHERE model = $1 AND version = $2 \
                 ORDER BY path",
            )
            .bind(model)
            .bind(version)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(BundleFile {
                        path: r.s("path")?,
                        digest: r.s("digest")?,
                        size: r.i("size")?.max(0) as u64,
                    })
                })
                .collect()
        })
    }

    /// Materializes the bundle of `model`'s version whose digest is `digest` as the directory
    /// `<cache_dir>/<model>/<hex>/` (see the module docs) and returns it; a directory already
    /// there is reused. Each file is verified against its digest; a one-file bundle becomes a
    /// directory with just `model.onnx`.
    pub async fn fetch_bundle(
        &self,
        model: &str,
        digest: &str,
        cache_dir: &Path,
    ) -> Result<PathBuf> {
        crate::refs::validate_name(crate::refs::NameKind::Model, model)?;
        let hex = digest_hex(digest)?.to_string();
        let parent = cache_dir.join(model);
        let target = parent.join(&hex);
        if tokio::fs::try_exists(target.join(MODEL_FILE))
            .await
            .unwrap_or(false)
        {
            metrics::counter!("herd_registry_bundle_fetch_total", "result" => "cached")
                .increment(1);
            return Ok(target);
        }
        let files = self.bundle_files_of(model, digest).await?;
        tokio::fs::create_dir_all(&parent).await.map_err(|e| {
            RegistryError::io(
                format!("cannot create bundle cache {}", parent.display()),
                e,
            )
        })?;
        let scratch = parent.join(format!(
            ".{hex}.{}.{}.tmp",
            std::process::id(),
            crate::store::rand_suffix()
        ));
        let result = async {
            tokio::fs::create_dir_all(&scratch).await.map_err(|e| {
                RegistryError::io(format!("cannot create {}", scratch.display()), e)
            })?;
            for f in &files {
                validate_path(&f.path)?;
                let dest = scratch.join(&f.path);
                if let Some(d) = dest.parent() {
                    tokio::fs::create_dir_all(d).await.map_err(|e| {
                        RegistryError::io(format!("cannot create {}", d.display()), e)
                    })?;
                }
                let size = self.store.fetch_verified(&f.digest, &dest).await?;
                if size != f.size {
                    return Err(RegistryError::Integrity(format!(
                        "bundle file {} of '{model}' has {size} bytes, the manifest says {}",
                        f.path, f.size
                    )));
                }
            }
            let scratch2 = scratch.clone();
            tokio::task::spawn_blocking(move || sync_tree(&scratch2))
                .await
                .map_err(|e| RegistryError::Integrity(format!("sync task failed: {e}")))?
                .map_err(|e| RegistryError::io(format!("cannot sync {}", scratch.display()), e))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_dir_all(&scratch).await;
            metrics::counter!("herd_registry_bundle_fetch_total", "result" => "error").increment(1);
            return Err(e);
        }
        match tokio::fs::rename(&scratch, &target).await {
            Ok(()) => {}
            // Another fetch of the same bundle won the race: its copy is as good as ours.
            Err(_) if target.join(MODEL_FILE).is_file() => {
                let _ = tokio::fs::remove_dir_all(&scratch).await;
                return Ok(target);
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&scratch).await;
                return Err(RegistryError::io(
                    format!("cannot move bundle into {}", target.display()),
                    e,
                ));
            }
        }
        let _ = sync_dir(&parent);
        metrics::counter!("herd_registry_bundle_fetch_total", "result" => "fetched").increment(1);
        tracing::debug!(
            model,
            digest,
            files = files.len(),
            "bundle fetched into cache"
        );
        Ok(target)
    }

    /// The file list of the bundle with `digest`: the verified manifest artifact when the
    /// database lists files for a version with that digest, else a one-file bundle.
    async fn bundle_files_of(&self, model: &str, digest: &str) -> Result<Vec<BundleFile>> {
        let rows: i64 = dispatch!(&self.db, |pool, _b| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM version_files f JOIN versions v ON v.model = f.model \
                 AND v.version = f.version WHERE v.model = $1 AND v.digest = $2",
            )
            .bind(model)
            .bind(digest)
            .fetch_one(pool)
            .await?
        });
        if rows == 0 {
            let size = dispatch!(&self.db, |pool, _b| {
                sqlx::query_scalar::<_, i64>(
                    "SELECT size FROM versions WHERE model = $1 AND digest = $2 LIMIT 1",
                )
                .bind(model)
                .bind(digest)
                .fetch_optional(pool)
                .await?
            });
            let Some(size) = size else {
                return Err(RegistryError::NotFound(format!(
                    "model '{model}' has no version with digest {digest}"
                )));
            };
            return Ok(vec![BundleFile {
                path: MODEL_FILE.into(),
                digest: digest.to_string(),
                size: size.max(0) as u64,
            }]);
        }
        let manifest = self.store.get(digest).await?;
        parse_manifest(&manifest)
    }
}

/// fsyncs every file and directory below `root`, then `root`.
fn sync_tree(root: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["model.onnx", "tokenizer.json", "a/b.txt", "model.onnx_data"] {
            validate_path(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "/abs",
            "a//b",
            ".hidden",
            "a/.b",
            "a b",
            "a/b/c/d/e",
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_round_trips_and_is_canonical() {
        let files = vec![
            BundleFile {
                path: "tokenizer.json".into(),
                digest: digest_of(b"t"),
                size: 1,
            },
            BundleFile {
                path: "model.onnx".into(),
                digest: digest_of(b"m"),
                size: 1,
            },
        ];
        let (bytes, digest) = manifest_of(&files);
        let mut rev = files.clone();
        rev.reverse();
        assert_eq!(manifest_of(&rev).1, digest, "order does not matter");
        let mut back = parse_manifest(&bytes).unwrap();
        back.sort();
        let mut want = files;
        want.sort();
        assert_eq!(back, want);
        assert!(parse_manifest(b"{\"format\":\"x\",\"files\":{}}").is_err());
    }
}
