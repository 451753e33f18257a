//! Configuration changes applied at run time (Triton's `load` with `parameters.config`): kept
//! per model in memory on top of what the [`ModelSource`] says, until the next explicit load or
//! unload of that model. The core sees every model through an [`Overlay`], so the change reaches
//! everything that reads a model's configuration (loads, batching, limits, metadata).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::ModelConfig;
use crate::source::{ModelEntry, ModelSource};
use crate::CoreError;

/// The keys of a model's configuration that may change at run time. `None` keeps the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_ms: Option<u64>,
    pub instances: Option<usize>,
}

impl ConfigChange {
    pub fn is_empty(&self) -> bool {
        self == &ConfigChange::default()
    }

    /// `cfg` with the change applied, validated like a config file (`model` names it in errors).
    pub fn apply(&self, model: &str, cfg: &ModelConfig) -> Result<ModelConfig, CoreError> {
        let mut out = cfg.clone();
        if let Some(v) = self.max_batch_size {
            out.max_batch_size = v;
        }
        if let Some(v) = self.max_queue_delay_ms {
            out.max_queue_delay_ms = v;
        }
        if let Some(v) = self.instances {
            out.instances = v;
        }
        out.validate(model)?;
        Ok(out)
    }
}

/// A source with run-time configuration changes on top.
pub struct Overlay {
    inner: Arc<dyn ModelSource>,
    changes: RwLock<HashMap<String, ConfigChange>>,
}

impl Overlay {
    pub fn new(inner: Arc<dyn ModelSource>) -> Overlay {
        Overlay {
            inner,
            changes: RwLock::new(HashMap::new()),
        }
    }

    /// Sets (or, with `None` or an empty change, removes) the change for `model`. Returns the
    /// configuration it results in; an invalid change is refused and nothing is kept.
    pub fn set(&self, model: &str, change: Option<ConfigChange>) -> Result<ModelConfig, CoreError> {
        let base = self.inner.get(model)?;
        match change.filter(|c| !c.is_empty()) {
            Some(c) => {
                let cfg = c.apply(model, &base.config).map_err(|e| match e {
                    CoreError::BadConfig { model, reason } => CoreError::InvalidInput(format!(
                        "model '{model}': the configuration given to load is invalid: {reason}"
                    )),
                    other => other,
                })?;
                self.changes.write().insert(model.to_string(), c);
                Ok(cfg)
            }
            None => {
                self.changes.write().remove(model);
                Ok(base.config)
            }
        }
    }

    /// The change in effect for `model`, if any.
    pub fn change(&self, model: &str) -> Option<ConfigChange> {
        self.changes.read().get(model).cloned()
    }

    fn overlay(&self, mut e: ModelEntry) -> ModelEntry {
        if let Some(c) = self.changes.read().get(&e.name) {
            // Checked when set; a source whose config changed since may make it invalid,
            // in which case the source's config stands.
            if let Ok(cfg) = c.apply(&e.name, &e.config) {
                e.config = cfg;
            }
        }
        e
    }
}

impl ModelSource for Overlay {
    fn list(&self) -> Result<Vec<ModelEntry>, CoreError> {
        Ok(self
            .inner
            .list()?
            .into_iter()
            .map(|e| self.overlay(e))
            .collect())
    }

    fn get(&self, name: &str) -> Result<ModelEntry, CoreError> {
        self.inner.get(name).map(|e| self.overlay(e))
    }

    fn artifact(&self, name: &str, version: &str) -> Result<PathBuf, CoreError> {
        self.inner.artifact(name, version)
    }

    // Every method of the trait is forwarded, the defaulted ones too (the core only sees the
    // source through this overlay).
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.changes()
    }

    fn serving(&self) -> Option<crate::source::Serving> {
        self.inner.serving()
    }
}

impl crate::Core {
    /// Triton's `load` with a configuration: applies `change` to `name` (validated; an invalid
    /// one is refused and nothing changes), unloads the versions loaded with the old
    /// configuration (requests running on them finish there) and loads them again with the new
    /// one. `None` returns to the source's configuration: a model that had a change is
    /// reloaded, one that had none is loaded if it is not (as [`crate::Core::load_model`]).
    pub async fn load_model_with(
        self: &Arc<Self>,
        name: &str,
        change: Option<ConfigChange>,
    ) -> Result<ModelConfig, CoreError> {
        let change = change.filter(|c| !c.is_empty());
        let had = self.overlay().change(name);
        let cfg = self.overlay().set(name, change.clone())?;
        if had != change {
            self.unload_model(name)?;
        }
        self.load_model(name).await?;
        Ok(cfg)
    }

    /// Unloads a model and drops any run-time configuration change of it: the next load (on
    /// demand or explicit) reads the source's configuration again.
    pub fn unload_model_and_reset(self: &Arc<Self>, name: &str) -> Result<bool, CoreError> {
        let unloaded = self.unload_model(name)?;
        self.overlay().set(name, None)?;
        Ok(unloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(ModelConfig);

    impl ModelSource for One {
        fn list(&self) -> Result<Vec<ModelEntry>, CoreError> {
            Ok(vec![self.get("m")?])
        }
        fn get(&self, name: &str) -> Result<ModelEntry, CoreError> {
            match name {
                "m" => Ok(ModelEntry {
                    name: "m".into(),
                    versions: vec!["1".into()],
                    config: self.0.clone(),
                }),
                other => Err(CoreError::ModelNotFound(other.into())),
            }
        }
        fn artifact(&self, _: &str, _: &str) -> Result<PathBuf, CoreError> {
            Ok(PathBuf::from("/nonexistent"))
        }
    }

    struct Channel(tokio::sync::watch::Sender<u64>);

    impl ModelSource for Channel {
        fn list(&self) -> Result<Vec<ModelEntry>, CoreError> {
            Ok(vec![])
        }
        fn get(&self, name: &str) -> Result<ModelEntry, CoreError> {
            Err(CoreError::ModelNotFound(name.into()))
        }
        fn artifact(&self, _: &str, _: &str) -> Result<PathBuf, CoreError> {
            Ok(PathBuf::from("/nonexistent"))
        }
        fn generation(&self) -> u64 {
            7
        }
        fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
            Some(self.0.subscribe())
        }
        fn serving(&self) -> Option<crate::source::Serving> {
            Some(crate::source::Serving {
                channel: "production".into(),
                release: "abc".into(),
                models: 0,
                release_note: None,
                release_created_at: "now".into(),
            })
        }
    }

    #[test]
    fn the_overlay_forwards_generation_changes_and_serving() {
        let (tx, _rx) = tokio::sync::watch::channel(0);
        let o = Overlay::new(Arc::new(Channel(tx)));
        assert_eq!(o.generation(), 7);
        assert!(o.changes().is_some());
        assert_eq!(o.serving().map(|s| s.channel), Some("production".into()));
    }

    #[test]
    fn a_change_applies_until_removed_and_invalid_ones_are_refused() {
        let o = Overlay::new(Arc::new(One(ModelConfig::default())));
        let c = ConfigChange {
            max_batch_size: Some(4),
            instances: Some(2),
            ..Default::default()
        };
        let cfg = o.set("m", Some(c.clone())).unwrap();
        assert_eq!((cfg.max_batch_size, cfg.instances), (4, 2));
        let e = o.get("m").unwrap();
        assert_eq!((e.config.max_batch_size, e.config.instances), (4, 2));
        assert_eq!(o.list().unwrap()[0].config.max_batch_size, 4);
        assert_eq!(o.change("m"), Some(c));
        // Invalid: refused, and the earlier change stays.
        let bad = ConfigChange {
            instances: Some(0),
            ..Default::default()
        };
        let e = o.set("m", Some(bad)).unwrap_err();
        assert!(matches!(e, CoreError::InvalidInput(_)), "{e:?}");
        assert!(e.to_string().contains("instances"), "{e}");
        assert_eq!(o.get("m").unwrap().config.instances, 2);
        // Removed: the source's config again.
        o.set("m", None).unwrap();
        assert_eq!(o.get("m").unwrap().config, ModelConfig::default());
        assert!(o.set("nope", None).is_err());
    }
}
