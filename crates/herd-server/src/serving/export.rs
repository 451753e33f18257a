//! `herd release export REF DIR`: a self-contained model repository of exactly one release, for
//! container images tagged with the release's short id (`deploy/Containerfile`).
//!
//! Layout (what `herd serve --repo DIR` reads):
//! - `<model>/<version>/model.onnx` and the bundle's other files (tokenizer, external data);
//! - `<model>/config.toml`: the bundle's config with `versions = ["<version>"]`;
//! - `release.json`: `{id, short_id, entries: {model: {version, digest}}, lineage: {model:
//!   {data_ref, code_ref, created_at, created_by, metrics}}}`.
//!
//! Every file is verified against its digest on the way (it goes through the bundle fetch), the
//! repository is assembled in a scratch directory next to `DIR` and renamed into place last.

use std::collections::BTreeMap;
use std::path::Path;

use herd_registry::Registry;
use serde::{Deserialize, Serialize};

use super::ServeError;

/// What an export wrote (also the content of `release.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportReport {
    pub id: String,
    pub short_id: String,
    pub entries: BTreeMap<String, herd_registry::ReleaseEntry>,
    pub lineage: BTreeMap<String, Lineage>,
}

/// Where a version came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lineage {
    pub data_ref: Option<String>,
    pub code_ref: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub metrics: BTreeMap<String, f64>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ServeError {
    move |error| ServeError::Io { context, error }
}

/// Exports release `reference` (id, short id, prefix or `@channel`) into `dir`, which must not
/// exist or be empty.
pub async fn export_release(
    registry: &Registry,
    reference: &str,
    dir: &Path,
) -> Result<ExportReport, ServeError> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(io(format!("cannot read {}", dir.display())))?
            .next()
            .is_some()
    {
        return Err(ServeError::Config(format!(
            "{} is not empty; export into a new directory",
            dir.display()
        )));
    }
    let release = registry.release(reference).await?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix(".herd-export-")
        .tempdir_in(parent)
        .map_err(io(format!(
            "cannot create a directory in {}",
            parent.display()
        )))?;
    let root = scratch.path();
    let bundles = root.join(".bundles");
    let mut lineage = BTreeMap::new();
    for (model, e) in &release.entries {
        let v = registry.version(model, e.version).await?;
        lineage.insert(
            model.clone(),
            Lineage {
                data_ref: v.data_ref,
                code_ref: v.code_ref,
                created_at: v.created_at,
                created_by: v.created_by,
                metrics: v.metrics,
            },
        );
        let fetched = registry.fetch_bundle(model, &e.digest, &bundles).await?;
        let model_dir = root.join(model);
        std::fs::create_dir_all(&model_dir)
            .map_err(io(format!("cannot create {}", model_dir.display())))?;
        let version_dir = model_dir.join(e.version.to_string());
        std::fs::rename(&fetched, &version_dir)
            .map_err(io(format!("cannot create {}", version_dir.display())))?;
        let cfg_path = version_dir.join(herd_core::source::CONFIG_FILE);
        let mut cfg: toml::Table = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => {
                std::fs::remove_file(&cfg_path)
                    .map_err(io(format!("cannot move {}", cfg_path.display())))?;
                text.parse().map_err(|err| {
                    ServeError::Config(format!("config.toml of {model}@{}: {err}", e.version))
                })?
            }
            Err(_) => toml::Table::new(),
        };
        cfg.insert(
            "versions".into(),
            toml::Value::Array(vec![toml::Value::String(e.version.to_string())]),
        );
        let text = toml::to_string(&cfg)
            .map_err(|err| ServeError::Config(format!("config.toml of {model}: {err}")))?;
        // The exported config must load exactly as the server will read it.
        herd_core::ModelConfig::parse(model, &text)?;
        std::fs::write(model_dir.join(herd_core::source::CONFIG_FILE), text)
            .map_err(io(format!("cannot write config of {model}")))?;
    }
    let _ = std::fs::remove_dir_all(&bundles);
    let report = ExportReport {
        id: release.id.clone(),
        short_id: release.short_id.clone(),
        entries: release.entries.clone(),
        lineage,
    };
    let json = serde_json::to_vec_pretty(&report).expect("the report serializes");
    std::fs::write(root.join("release.json"), json)
        .map_err(io("cannot write release.json".into()))?;
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io(format!("cannot replace {}", dir.display())))?;
    }
    let kept = scratch.keep();
    std::fs::rename(&kept, dir).map_err(io(format!("cannot create {}", dir.display())))?;
    tracing::info!(release = %report.short_id, dir = %dir.display(), models = report.entries.len(), "release exported");
    Ok(report)
}
