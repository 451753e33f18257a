//! What `herd model push PATH` and `herd model import DIR` send, read from the disk: a file (a
//! one-file bundle) or a model directory; a whole repository (`<model>.onnx` files, or
//! `<model>/<version>/model.onnx` with the model's config and tokenizer) pushed version by
//! version, models in parallel. The CLI only parses flags, shows progress and prints the
//! [`ImportReport`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::bundle::MODEL_FILE;
use crate::{NewModel, PushRequest, Registry, RegistryError, Result};

/// The bytes of `model.onnx` and the bundle's other files for PATH: a file (a one-file bundle)
/// or a model directory (see [`crate::bundle::read_model_dir`]).
pub fn read_push_path(path: &Path) -> Result<(Bytes, BTreeMap<String, Bytes>)> {
    if path.is_dir() {
        let mut files = crate::bundle::read_model_dir(path)?;
        let model = files.remove(MODEL_FILE).ok_or_else(|| {
            RegistryError::InvalidInput(format!("{} has no {MODEL_FILE}", path.display()))
        })?;
        Ok((model, files))
    } else {
        Ok((Registry::read_model_file(path)?, BTreeMap::new()))
    }
}

/// The files `herd model import DIR` pushes, in push order: (model, file).
pub fn import_plan(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let read = |d: &Path| {
        std::fs::read_dir(d)
            .map_err(|e| RegistryError::io(format!("cannot read directory {}", d.display()), e))
    };
    let mut plan = Vec::new();
    let mut paths: Vec<PathBuf> = read(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    for p in paths {
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        if p.is_file() && p.extension().is_some_and(|e| e == "onnx") {
            plan.push((stem, p));
        } else if p.is_dir() {
            let mut versions: Vec<(u64, PathBuf)> = read(&p)?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n: u64 = e.file_name().to_str()?.parse().ok()?;
                    let f = e.path().join(MODEL_FILE);
                    f.is_file().then_some((n, f))
                })
                .collect();
            versions.sort();
            let model = p
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            plan.extend(versions.into_iter().map(|(_, f)| (model.clone(), f)));
        }
    }
    Ok(plan)
}

/// Lineage and ownership given to every imported version.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub data_ref: Option<String>,
    pub code_ref: Option<String>,
    /// Tenant of the models the import creates.
    pub tenant: Option<String>,
    pub created_by: String,
    /// Models pushed at once (versions of one model go in order).
    pub jobs: usize,
}

/// One file that could not be imported.
#[derive(Debug, Clone, Serialize)]
pub struct ImportFailure {
    pub model: String,
    pub file: String,
    pub error: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub pushed: usize,
    pub unchanged: usize,
    pub failed: Vec<ImportFailure>,
    pub seconds: f64,
}

impl Registry {
    /// Imports the repository at `dir` ([`import_plan`]); `progress` is called once per file.
    /// A repository version is pushed as a bundle with its model's config and tokenizer; a
    /// loose `<model>.onnx` as a one-file bundle. Failures are collected, not fatal.
    pub async fn import_repository(
        &self,
        dir: &Path,
        opts: &ImportOptions,
        progress: &(dyn Fn() + Send + Sync),
    ) -> Result<ImportReport> {
        let plan = import_plan(dir)?;
        if plan.is_empty() {
            return Err(RegistryError::InvalidInput(format!(
                "nothing to import in {}: expected <model>.onnx files or <model>/<version>/model.onnx",
                dir.display()
            )));
        }
        let started = std::time::Instant::now();
        let mut by_model: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for (m, f) in plan {
            by_model.entry(m).or_default().push(f);
        }
        let results: Vec<Vec<(String, PathBuf, Result<bool>)>> =
            futures::stream::iter(by_model.into_iter().map(|(model, files)| async move {
                let mut out = Vec::new();
                for f in files {
                    let r = self.import_one(&model, &f, opts).await;
                    progress();
                    out.push((model.clone(), f, r));
                }
                out
            }))
            .buffer_unordered(opts.jobs.max(1))
            .collect()
            .await;
        let mut report = ImportReport {
            pushed: 0,
            unchanged: 0,
            failed: Vec::new(),
            seconds: 0.0,
        };
        for (model, file, r) in results.into_iter().flatten() {
            match r {
                Ok(true) => report.pushed += 1,
                Ok(false) => report.unchanged += 1,
                Err(e) => report.failed.push(ImportFailure {
                    model,
                    file: file.display().to_string(),
                    error: e.to_string(),
                }),
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Pushes one file of an import; whether a new version was created.
    async fn import_one(&self, model: &str, f: &Path, opts: &ImportOptions) -> Result<bool> {
        let in_repo = f
            .parent()
            .and_then(|v| v.parent())
            .is_some_and(|m| m.file_name().and_then(|n| n.to_str()) == Some(model));
        let (bytes, files) = match (in_repo, f.parent(), f.parent().and_then(|v| v.parent())) {
            (true, Some(vdir), Some(mdir)) => {
                let mut files = crate::bundle::read_model_version(mdir, vdir)?;
                let bytes = files.remove(MODEL_FILE).ok_or_else(|| {
                    RegistryError::InvalidInput(format!("{} has no {MODEL_FILE}", vdir.display()))
                })?;
                (bytes, files)
            }
            _ => (Registry::read_model_file(f)?, BTreeMap::new()),
        };
        let o = self
            .push(PushRequest {
                model: model.to_string(),
                bytes,
                metrics: BTreeMap::new(),
                data_ref: opts.data_ref.clone(),
                code_ref: opts.code_ref.clone(),
                created_by: opts.created_by.clone(),
                create: Some(NewModel {
                    name: model.to_string(),
                    tenant: opts.tenant.clone(),
                    description: String::new(),
                    tags: Vec::new(),
                }),
                files,
                as_tenant: None,
            })
            .await?;
        Ok(o.created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_plan_orders_versions() {
        let dir = std::env::temp_dir().join(format!("herd-import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for v in ["10", "2", "x"] {
            std::fs::create_dir_all(dir.join("b").join(v)).unwrap();
            std::fs::write(dir.join("b").join(v).join("model.onnx"), b"m").unwrap();
        }
        std::fs::write(dir.join("a.onnx"), b"m").unwrap();
        std::fs::write(dir.join("notes.txt"), b"m").unwrap();
        let plan = import_plan(&dir).unwrap();
        let got: Vec<(String, String)> = plan
            .iter()
            .map(|(m, f)| {
                (
                    m.clone(),
                    f.strip_prefix(&dir).unwrap().display().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_string(), "a.onnx".to_string()),
                ("b".to_string(), "b/2/model.onnx".to_string()),
                ("b".to_string(), "b/10/model.onnx".to_string()),
            ]
        );
        assert!(import_plan(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn imports_a_repository_with_its_configs() {
        let dir = std::env::temp_dir().join(format!("herd-import-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let repo = dir.join("repo");
        for (m, v, seed) in [("a", "1", 1), ("a", "2", 2), ("b", "1", 3)] {
            let d = repo.join(m).join(v);
            std::fs::create_dir_all(&d).unwrap();
            let bytes = herd_onnx::LinearClassifier::random(4, 2, seed).to_onnx(m);
            std::fs::write(d.join(MODEL_FILE), bytes).unwrap();
        }
        std::fs::write(repo.join("a").join("config.toml"), "max_batch_size = 4\n").unwrap();
        let reg = Registry::open(
            &format!("sqlite://{}", dir.join("r.db").display()),
            dir.join("art").to_str().unwrap(),
        )
        .await
        .unwrap();
        let opts = ImportOptions {
            created_by: "t".into(),
            jobs: 2,
            ..Default::default()
        };
        let ticks = std::sync::atomic::AtomicUsize::new(0);
        let tick = || {
            ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let r = reg.import_repository(&repo, &opts, &tick).await.unwrap();
        assert_eq!((r.pushed, r.unchanged, r.failed.len()), (3, 0, 0), "{r:?}");
        assert_eq!(ticks.load(std::sync::atomic::Ordering::Relaxed), 3);
        // Each repository version is a bundle with its model's config.
        let files = reg.version_files("a", 2).await.unwrap();
        assert!(files.iter().any(|f| f.path == "config.toml"), "{files:?}");
        // Again: a push is deduplicated against the model's latest version, so b (one version)
        // is unchanged, while a's versions 1 and 2 become versions 3 and 4.
        let r = reg.import_repository(&repo, &opts, &tick).await.unwrap();
        assert_eq!((r.pushed, r.unchanged), (2, 1));
        assert!(reg
            .import_repository(&dir.join("empty-nothing"), &opts, &tick)
            .await
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
