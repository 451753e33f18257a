//! Per-model configuration: `<repo>/<model>/config.toml`, all fields optional.
//!
//! ```toml
//! versions = ["2"]            # versions to serve; default: the highest numeric version
//! max_batch_size = 32         # dynamic batching: most rows per batch (1 = no batching)
//! max_queue_delay_ms = 0      # how long a batch may wait for more requests (only while others
//!                             # run, or the last batch's clients have not yet come back)
//! instances = 1               # runnable copies of the model (concurrent inferences)
//! threads = 0                 # threads one run of an instance uses (0 = the server's shared
//!                             # pool, --threads); with N > 0 each instance has its own N threads
//! solo = true                 # with threads > 0: a run that has the model to itself runs on
//!                             # the shared pool instead, on every core (default: on when
//!                             # instances > 1 and threads > 0; one more session, same weights)
//! pinned = false              # preload at start, never evict
//! warmup = false              # (every load now runs one inference at the largest shape)
//! warmup_interval_secs = 0    # and again every N seconds while loaded (0 = never)
//! tenant = "acme"             # owner; bearer tokens of other tenants get 403
//! labels = ["cat", "dog"]     # names for the class indices of `label_output`
//! label_output = "label"      # INT64 output holding class indices (default "label")
//! # request limits; each defaults to the server's (--max-rows-per-request, ...)
//! max_rows_per_request = 8192    # rows (batch dimension) of one request
//! max_texts_per_request = 2048   # texts of one request to a text pipeline
//! max_chars_per_text = 32768     # longer texts are cut before tokenizing (refused without truncation)
//! max_tokens_per_request = 300000 # tokens of all texts of one request
//! max_dynamic_dim = 512          # tensor models: dynamic dims besides the batch are warmed at
//!                                # this size (charged) and 413 beyond it; unset: warmed at 1, no limit
//! # a LoRA adapter over another model (issue 13): runs on the base's session with this
//! # adapter activated per run; each version directory holds the adapter file, not a model
//! base = "encoder"                 # the base model's name (its served default version)
//! adapter = "adapter.onnx_adapter" # the adapter file in each version directory
//! ```

use serde::{Deserialize, Serialize};

use crate::CoreError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub versions: Option<Vec<String>>,
    pub max_batch_size: usize,
    pub max_queue_delay_ms: u64,
    pub instances: usize,
    /// Threads one run of an instance may use inside an operator: 0 = the server's shared pool
    /// (`--threads`), N = each instance gets its own pool of N threads (e.g. `instances = 2`,
    /// `threads = 1` on two cores: two runs side by side, none waiting on the other's threads).
    pub threads: usize,
    /// With `threads > 0`: one more instance on the server's shared pool, used by a run that
    /// has the model to itself (no other run of it in progress), so a lone request gets every
    /// core while concurrent ones run side by side on their own threads. Unset: on when
    /// `instances > 1` (see [`ModelConfig::solo_instance`]).
    pub solo: Option<bool>,
    pub pinned: bool,
    pub warmup: bool,
    pub warmup_interval_secs: u64,
    pub tenant: Option<String>,
    pub labels: Option<Vec<String>>,
    pub label_output: String,
    pub max_rows_per_request: Option<usize>,
    pub max_texts_per_request: Option<usize>,
    pub max_chars_per_text: Option<usize>,
    pub max_tokens_per_request: Option<usize>,
    /// Largest size of a tensor model's dynamic dimensions other than the batch: the load's
    /// warm-up runs at it (so the charge covers it) and a request beyond it is 413. Unset:
    /// warmed at 1 and not limited (the body limit bounds it).
    pub max_dynamic_dim: Option<usize>,
    /// Opaque pre/post-processing section, interpreted by the pipeline layer.
    pub pipeline: Option<toml::Table>,
    /// A LoRA adapter model: the base model it runs on (with `adapter`).
    pub base: Option<String>,
    /// The adapter file (ONNX Runtime's `.onnx_adapter`) in each version directory.
    pub adapter: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            versions: None,
            max_batch_size: 32,
            max_queue_delay_ms: 0,
            instances: 1,
            threads: 0,
            solo: None,
            pinned: false,
            warmup: false,
            warmup_interval_secs: 0,
            tenant: None,
            labels: None,
            label_output: "label".to_string(),
            max_rows_per_request: None,
            max_texts_per_request: None,
            max_chars_per_text: None,
            max_tokens_per_request: None,
            max_dynamic_dim: None,
            pipeline: None,
            base: None,
            adapter: None,
        }
    }
}

impl ModelConfig {
    /// Parses and validates a config file's text. `model` names the model in errors.
    pub fn parse(model: &str, text: &str) -> Result<ModelConfig, CoreError> {
        let cfg: ModelConfig = toml::from_str(text).map_err(|e| CoreError::BadConfig {
            model: model.to_string(),
            reason: e.to_string(),
        })?;
        cfg.validate(model)?;
        Ok(cfg)
    }

    /// Whether the model gets a solo instance on the shared pool besides its `instances`.
    pub fn solo_instance(&self) -> bool {
        self.threads > 0 && self.solo.unwrap_or(self.instances > 1)
    }

    pub fn validate(&self, model: &str) -> Result<(), CoreError> {
        let bad = |reason: &str| CoreError::BadConfig {
            model: model.to_string(),
            reason: reason.to_string(),
        };
        if self.instances == 0 || self.instances > 64 {
            return Err(bad("instances must be between 1 and 64"));
        }
        if self.threads > 256 {
            return Err(bad(
                "threads must be at most 256 (0 = the server's shared pool)",
            ));
        }
        if self.solo == Some(true) && self.threads == 0 {
            return Err(bad(
                "solo = true needs threads > 0 (with threads = 0 every run already uses the \
                 shared pool)",
            ));
        }
        if self.max_batch_size == 0 {
            return Err(bad("max_batch_size must be at least 1"));
        }
        if self.max_queue_delay_ms > 10_000 {
            return Err(bad("max_queue_delay_ms must be at most 10000"));
        }
        for (key, v) in [
            ("max_rows_per_request", self.max_rows_per_request),
            ("max_texts_per_request", self.max_texts_per_request),
            ("max_chars_per_text", self.max_chars_per_text),
            ("max_tokens_per_request", self.max_tokens_per_request),
            ("max_dynamic_dim", self.max_dynamic_dim),
        ] {
            if v == Some(0) {
                return Err(bad(&format!("{key} must be at least 1")));
            }
        }
        if let Some(v) = &self.versions {
            if v.is_empty() {
                return Err(bad("versions must list at least one version"));
            }
        }
        match (&self.base, &self.adapter) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => return Err(bad(
                "base and adapter go together: base names the model the adapter file applies to",
            )),
            (Some(base), Some(file)) => {
                if base == model {
                    return Err(bad("base names this model itself"));
                }
                let plain = !file.is_empty()
                    && file != "."
                    && file != ".."
                    && !file.contains(['/', '\\'])
                    && file.ends_with(".onnx_adapter");
                if !plain {
                    return Err(bad(
                        "adapter must be a file name in the version directory ending in .onnx_adapter",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_from_empty_file() {
        assert_eq!(ModelConfig::parse("m", "").unwrap(), ModelConfig::default());
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_model() {
        let e = ModelConfig::parse("m1", "max_batch = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m1") && e.contains("max_batch"), "{e}");
    }

    #[test]
    fn an_adapter_names_its_base_and_a_plain_adapter_file() {
        let c = ModelConfig::parse("t", "base = \"b\"\nadapter = \"a.onnx_adapter\"").unwrap();
        assert_eq!(c.base.as_deref(), Some("b"));
        for bad in [
            "base = \"b\"",
            "adapter = \"a.onnx_adapter\"",
            "base = \"t\"\nadapter = \"a.onnx_adapter\"",
            "base = \"b\"\nadapter = \"../x.onnx_adapter\"",
            "base = \"b\"\nadapter = \"a.onnx\"",
        ] {
            let e = ModelConfig::parse("t", bad).unwrap_err().to_string();
            assert!(e.contains("'t'"), "{bad}: {e}");
        }
    }

    #[test]
    fn zero_instances_rejected() {
        assert!(ModelConfig::parse("m", "instances = 0").is_err());
    }

    #[test]
    fn a_solo_instance_comes_with_several_instances_on_their_own_threads() {
        let solo = |t: &str| ModelConfig::parse("m", t).unwrap().solo_instance();
        assert!(!solo(""));
        assert!(!solo("instances = 2"));
        assert!(!solo("threads = 1"));
        assert!(solo("instances = 2\nthreads = 1"));
        assert!(!solo("instances = 2\nthreads = 1\nsolo = false"));
        assert!(solo("threads = 1\nsolo = true"));
        let e = ModelConfig::parse("m", "solo = true").unwrap_err();
        assert!(
            e.to_string().contains("solo = true needs threads > 0"),
            "{e}"
        );
    }

    #[test]
    fn threads_default_to_the_shared_pool_and_are_bounded() {
        assert_eq!(ModelConfig::parse("m", "").unwrap().threads, 0);
        assert_eq!(ModelConfig::parse("m", "threads = 1").unwrap().threads, 1);
        let e = ModelConfig::parse("m", "threads = 100000").unwrap_err();
        assert!(e.to_string().contains("threads must be at most 256"), "{e}");
    }
}
