//! Where models come from. The core asks a [`ModelSource`] which models exist, which versions
//! are served, and where a version's file is: a directory repository ([`DirectorySource`]), or
//! a registry channel (`herd-server`'s `RegistrySource`, which materializes each bundle as a
//! directory and reads its config with [`read_config`], the same parser).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::ModelConfig;
use crate::CoreError;

/// A model as the source describes it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub name: String,
    /// Served versions, ascending; the last one answers requests that name no version.
    pub versions: Vec<String>,
    pub config: ModelConfig,
}

impl ModelEntry {
    pub fn default_version(&self) -> Option<&str> {
        self.versions.last().map(String::as_str)
    }
}

/// Where models come from. Methods may block briefly (disk); `artifact` may block for long
/// (download) and is only called on the loader pool. The core sees its source through
/// [`crate::overrides::Overlay`]: a new method here must be forwarded there too.
pub trait ModelSource: Send + Sync + 'static {
    /// Every model the source knows (for the repository index and pinned preloads).
    fn list(&self) -> Result<Vec<ModelEntry>, CoreError>;
    /// One model; `CoreError::ModelNotFound` if unknown.
    fn get(&self, name: &str) -> Result<ModelEntry, CoreError>;
    /// The local path of a served version's ONNX file (fetching it first if needed); for a
    /// LoRA adapter model (`base` + `adapter` in its config), the version's adapter file.
    fn artifact(&self, name: &str, version: &str) -> Result<PathBuf, CoreError>;
    /// A number that changes whenever the served set changes (e.g. a release switch). The core
    /// follows it itself: after a change it retires the versions the source no longer serves.
    fn generation(&self) -> u64 {
        0
    }
    /// Optional: a receiver woken on each new generation, so the core follows a switch at once
    /// rather than at its next request or poll.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Optional, for people (the dashboard): the registry channel and release this source
    /// serves now. `None` for a source that is not a channel (a directory).
    fn serving(&self) -> Option<Serving> {
        None
    }
}

/// What a channel source serves now ([`ModelSource::serving`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Serving {
    pub channel: String,
    /// The release's short id (its full id is the SHA-256 of its manifest).
    pub release: String,
    /// Models in the release.
    pub models: usize,
    pub release_note: Option<String>,
    pub release_created_at: String,
}

/// A Triton-style directory: `<root>/<model>/<version>/model.onnx`, optional
/// `<root>/<model>/config.toml`. Models may be added while the server runs: lookups go to the
/// disk, with a short cache so hot paths do not.
pub struct DirectorySource {
    root: PathBuf,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, ModelEntry)>>,
}

pub const MODEL_FILE: &str = "model.onnx";
pub const CONFIG_FILE: &str = "config.toml";

impl DirectorySource {
    pub fn new(root: impl Into<PathBuf>) -> Result<DirectorySource, CoreError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(CoreError::BadRepository(format!(
                "model repository {} is not a directory; create it or pass --repo DIR",
                root.display()
            )));
        }
        Ok(DirectorySource {
            root,
            ttl: Duration::from_secs(2),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn scan(&self, name: &str) -> Result<ModelEntry, CoreError> {
        if !valid_name(name) {
            return Err(CoreError::ModelNotFound(name.to_string()));
        }
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(CoreError::ModelNotFound(name.to_string()));
        }
        let config = read_config(name, &dir.join(CONFIG_FILE))?;
        let mut present: Vec<(u64, String)> = std::fs::read_dir(&dir)
            .map_err(|e| CoreError::BadRepository(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.to_string();
                let n: u64 = v.parse().ok()?;
                let file = config.adapter.as_deref().unwrap_or(MODEL_FILE);
                e.path().join(file).is_file().then_some((n, v))
            })
            .collect();
        present.sort();
        let versions = match &config.versions {
            Some(wanted) => {
                for v in wanted {
                    if !present.iter().any(|(_, p)| p == v) {
                        return Err(CoreError::BadConfig {
                            model: name.to_string(),
                            reason: format!(
                                "config.toml lists version {v}, but {}/{v}/{MODEL_FILE} does not exist",
                                dir.display()
                            ),
                        });
                    }
                }
                let mut w: Vec<String> = wanted.clone();
                w.sort_by_key(|v| v.parse::<u64>().unwrap_or(0));
                w
            }
            None => present
                .last()
                .map(|(_, v)| vec![v.clone()])
                .unwrap_or_default(),
        };
        if versions.is_empty() {
            return Err(CoreError::BadRepository(format!(
                "model '{name}' has no version: expected {}/<version>/{MODEL_FILE}",
                dir.display()
            )));
        }
        Ok(ModelEntry {
            name: name.to_string(),
            versions,
            config,
        })
    }
}

/// Reads a model's `config.toml` at `path` (defaults when the file does not exist). The one
/// parser for a directory repository and a registry bundle materialized on disk.
pub fn read_config(model: &str, path: &Path) -> Result<ModelConfig, CoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => ModelConfig::parse(model, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelConfig::default()),
        Err(e) => Err(CoreError::BadConfig {
            model: model.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ModelSource for DirectorySource {
    fn list(&self) -> Result<Vec<ModelEntry>, CoreError> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(|e| CoreError::BadRepository(format!("{}: {e}", self.root.display())))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| valid_name(n) && !n.starts_with('.'))
            .collect();
        names.sort();
        // Entries with a broken config are still listed (with defaults) so the index shows them;
        // the error surfaces when the model is used.
        Ok(names
            .into_iter()
            .map(|n| {
                self.get(&n).unwrap_or(ModelEntry {
                    name: n,
                    versions: vec![],
                    config: ModelConfig::default(),
                })
            })
            .collect())
    }

    fn get(&self, name: &str) -> Result<ModelEntry, CoreError> {
        let now = Instant::now();
        if let Some((at, entry)) = self.cache.lock().get(name) {
            if now.duration_since(*at) < self.ttl {
                return Ok(entry.clone());
            }
        }
        let entry = self.scan(name);
        // Only found models are cached: a model added after a miss is seen at once.
        if let Ok(found) = &entry {
            let mut cache = self.cache.lock();
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(name.to_string(), (now, found.clone()));
        }
        entry
    }

    fn artifact(&self, name: &str, version: &str) -> Result<PathBuf, CoreError> {
        if !valid_name(name) || !valid_name(version) {
            return Err(CoreError::ModelNotFound(name.to_string()));
        }
        let mut p = self.root.join(name).join(version).join(MODEL_FILE);
        if !p.is_file() {
            // A LoRA adapter model's version holds its adapter file.
            if let Some(file) = self.get(name).ok().and_then(|e| e.config.adapter) {
                p = self.root.join(name).join(version).join(file);
            }
        }
        if p.is_file() {
            Ok(p)
        } else {
            Err(CoreError::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "herd-src-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(root: &Path, model: &str, version: &str) {
        let d = root.join(model).join(version);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(MODEL_FILE), b"x").unwrap();
    }

    #[test]
    fn latest_numeric_version_is_default() {
        let r = repo();
        touch(&r, "m", "2");
        touch(&r, "m", "10");
        let s = DirectorySource::new(&r).unwrap();
        assert_eq!(s.get("m").unwrap().default_version(), Some("10"));
    }

    #[test]
    fn config_pins_versions_and_checks_them() {
        let r = repo();
        touch(&r, "m", "1");
        touch(&r, "m", "2");
        std::fs::write(r.join("m").join(CONFIG_FILE), "versions = [\"1\"]").unwrap();
        let s = DirectorySource::new(&r).unwrap();
        assert_eq!(s.get("m").unwrap().versions, vec!["1"]);
        std::fs::write(r.join("m").join(CONFIG_FILE), "versions = [\"7\"]").unwrap();
        let s = DirectorySource::new(&r).unwrap();
        let e = s.get("m").unwrap_err().to_string();
        assert!(e.contains("version 7"), "{e}");
    }

    #[test]
    fn unknown_and_hostile_names_are_not_found() {
        let r = repo();
        let s = DirectorySource::new(&r).unwrap();
        assert!(matches!(s.get("nope"), Err(CoreError::ModelNotFound(_))));
        assert!(matches!(s.get(".."), Err(CoreError::ModelNotFound(_))));
        assert!(matches!(
            s.artifact("../x", "1"),
            Err(CoreError::ModelNotFound(_))
        ));
    }

    #[test]
    fn models_added_while_running_are_found() {
        let r = repo();
        let s = DirectorySource::new(&r).unwrap();
        assert!(s.get("late").is_err());
        touch(&r, "late", "1");
        assert!(s.get("late").is_ok());
        assert_eq!(s.list().unwrap().len(), 1);
    }
}
