//! Triton's extensions as protocol-neutral operations: the repository (index, load with a
//! configuration, unload) and classification (`class_count`: the top k of an output as
//! `"score:index[:label]"` strings).

use herd_api::v2::{Tensor, TensorData};
use herd_api::{ApiError, ErrorCode};
use herd_core::overrides::ConfigChange;
use herd_core::{IndexEntry, ModelConfig};
use serde_json::{Map, Value};

use super::{err, from, Caller, Inferred, Service};

impl Service {
    fn require_admin(&self, caller: &Caller) -> Result<(), ApiError> {
        match caller.is_admin() {
            true => Ok(()),
            false => Err(err(
                ErrorCode::Forbidden,
                "this operation needs an admin token",
            )),
        }
    }

    /// The repository index: every model with the state of each served version (admin only);
    /// `ready_only` keeps the loaded ones.
    pub async fn index(
        &self,
        caller: &Caller,
        ready_only: bool,
    ) -> Result<Vec<IndexEntry>, ApiError> {
        self.require_admin(caller)?;
        let core = self.core.clone();
        let entries = tokio::task::spawn_blocking(move || core.index())
            .await
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            .map_err(from)?;
        Ok(entries
            .into_iter()
            .filter(|e| !ready_only || e.state == herd_core::ModelState::Ready)
            .collect())
    }

    /// Loads a model (admin only). With a Triton model configuration (`parameters.config`),
    /// the keys herd can apply are applied ([`parse_config`]) and the model is reloaded with
    /// them; any other key is refused with a 400 naming it, and nothing changes. Returns the
    /// configuration now in effect.
    pub async fn load(
        &self,
        caller: &Caller,
        model: &str,
        config: Option<&Value>,
    ) -> Result<ModelConfig, ApiError> {
        self.require_admin(caller)?;
        let change = match config {
            None => None,
            Some(cfg) => {
                let current = self.model_config(caller, model, None).await?;
                Some(parse_config(model, cfg, &current)?)
            }
        };
        self.core.load_model_with(model, change).await.map_err(from)
    }

    /// Unloads every version of a model (admin only) and drops a configuration given at load.
    pub fn unload(&self, caller: &Caller, model: &str) -> Result<bool, ApiError> {
        self.require_admin(caller)?;
        self.core.unload_model_and_reset(model).map_err(from)
    }

    /// Replaces each output named in `wanted` by its top `k` classes (Triton's classification
    /// extension), labelled with the model's `labels` (or its classifier pipeline's).
    pub fn classify_outputs(
        &self,
        out: &mut Inferred,
        wanted: &[(String, usize)],
    ) -> Result<(), ApiError> {
        if wanted.is_empty() {
            return Ok(());
        }
        let cfg = self.core.source().get(&out.model).map_err(from)?.config;
        let labels = model_labels(&cfg);
        for (name, k) in wanted {
            let Some(t) = out.outputs.iter_mut().find(|t| &t.name == name) else {
                continue;
            };
            *t = classification(t, *k, labels.as_deref())?;
        }
        Ok(())
    }
}

/// The class names of a model: `labels` in its config.toml, else `[pipeline.classifier] labels`.
fn model_labels(cfg: &ModelConfig) -> Option<Vec<String>> {
    if let Some(l) = &cfg.labels {
        return Some(l.clone());
    }
    let table = cfg.pipeline.as_ref()?.get("classifier")?.get("labels")?;
    table
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The top `k` (at most the class count) of `t` as `"score:index[:label]"` BYTES, highest
/// first, per row: a tensor of rank 2 or more is a batch (first dimension) of rows whose other
/// dimensions are the classes, answered as `[rows, k]`; rank 0 or 1 as `[k]`. Scores are
/// printed as Triton does (six decimals); ties keep the lower index first.
pub fn classification(t: &Tensor, k: usize, labels: Option<&[String]>) -> Result<Tensor, ApiError> {
    let values: Vec<f64> = match &t.data {
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::F64(v) => v.clone(),
        TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I16(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::U16(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::U32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::U64(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::Bool(_) | TensorData::Bytes(_) => {
            return Err(err(
                ErrorCode::InvalidInput,
                format!(
                    "output '{}' is {}; classification needs a numeric output",
                    t.name,
                    t.data.datatype()
                ),
            ))
        }
    };
    if k == 0 {
        return Err(err(
            ErrorCode::InvalidInput,
            format!("output '{}': classification must be at least 1", t.name),
        ));
    }
    let (rows, batched) = match t.shape.len() {
        0 | 1 => (1, false),
        _ => (t.shape[0].max(0) as usize, true),
    };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(per_row);
    let mut strings = Vec::with_capacity(rows * k);
    for row in values.chunks(per_row.max(1)).take(rows) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in idx.iter().take(k) {
            let mut s = format!("{:.6}:{i}", row[i]);
            if let Some(label) = labels.and_then(|l| l.get(i)) {
                s.push(':');
                s.push_str(label);
            }
            strings.push(s.into_bytes());
        }
    }
    let shape = match batched {
        true => vec![rows as i64, k as i64],
        false => vec![k as i64],
    };
    Ok(Tensor::new(
        t.name.clone(),
        shape,
        TensorData::Bytes(strings),
    ))
}

/// Reads a Triton model configuration (`load`'s `parameters.config`, a JSON object or a string
/// of one) into the change herd applies:
///
/// - `max_batch_size` -> `max_batch_size` (0 only for a model without a batch dimension, where
///   it changes nothing);
/// - `dynamic_batching.max_queue_delay_microseconds` -> `max_queue_delay_ms` (whole
///   milliseconds; an empty `dynamic_batching` means no delay);
/// - `instance_group[].count` (kind `KIND_CPU` or `KIND_AUTO`) -> `instances` (their sum);
/// - `name`, `platform`, `backend`, `version_policy`, `input` and `output` are accepted when
///   they say what `current` (the model's configuration as `GET .../config` answers) says:
///   herd reads them from the model, they cannot change.
///
/// Anything else is a 400 that names every key it cannot apply.
pub fn parse_config(model: &str, cfg: &Value, current: &Value) -> Result<ConfigChange, ApiError> {
    let parsed;
    let obj: &Map<String, Value> = match cfg {
        Value::Object(o) => o,
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|e| {
                err(
                    ErrorCode::InvalidInput,
                    format!("parameters.config is not JSON: {e}"),
                )
            })?;
            parsed.as_object().ok_or_else(|| {
                err(
                    ErrorCode::InvalidInput,
                    "parameters.config must be a JSON object (a Triton model configuration)",
                )
            })?
        }
        _ => {
            return Err(err(
                ErrorCode::InvalidInput,
                "parameters.config must be a JSON object (a Triton model configuration)",
            ))
        }
    };
    let mut change = ConfigChange::default();
    let mut unsupported: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let batched = current
        .get("max_batch_size")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        > 0;
    for (key, v) in obj {
        match key.as_str() {
            "max_batch_size" => match v.as_u64() {
                Some(0) if !batched => {}
                Some(0) => problems.push(format!(
                    "max_batch_size 0 (no batch dimension) does not fit model '{model}', whose inputs and outputs have a dynamic first dimension; send 1 for no batching"
                )),
                Some(_) if !batched => problems.push(format!(
                    "model '{model}' has a fixed first dimension, so it cannot batch: max_batch_size must be 0"
                )),
                Some(n) => change.max_batch_size = Some(n as usize),
                None => problems.push("max_batch_size must be a non-negative integer".into()),
            },
            "dynamic_batching" => match v.as_object() {
                None => problems.push("dynamic_batching must be an object".into()),
                Some(db) => {
                    change.max_queue_delay_ms = Some(0);
                    for (k, dv) in db {
                        match k.as_str() {
                            "max_queue_delay_microseconds" => {
                                let us = dv
                                    .as_u64()
                                    .or_else(|| dv.as_str().and_then(|s| s.parse().ok()));
                                match us {
                                    Some(us) if us % 1000 == 0 => {
                                        change.max_queue_delay_ms = Some(us / 1000)
                                    }
                                    Some(us) => problems.push(format!(
                                        "dynamic_batching.max_queue_delay_microseconds must be a whole number of milliseconds (a multiple of 1000; herd batches with millisecond delays), not {us}"
                                    )),
                                    None => problems.push(
                                        "dynamic_batching.max_queue_delay_microseconds must be a non-negative integer".into(),
                                    ),
                                }
                            }
                            other => unsupported.push(format!("dynamic_batching.{other}")),
                        }
                    }
                }
            },
            "instance_group" => match v.as_array() {
                None => problems.push("instance_group must be an array".into()),
                Some(groups) => {
                    let mut total = 0u64;
                    for (i, g) in groups.iter().enumerate() {
                        let Some(g) = g.as_object() else {
                            problems.push(format!("instance_group[{i}] must be an object"));
                            continue;
                        };
                        for (k, gv) in g {
                            match k.as_str() {
                                "count" => match gv.as_u64() {
                                    Some(n) => total += n,
                                    None => problems.push(format!(
                                        "instance_group[{i}].count must be a non-negative integer"
                                    )),
                                },
                                "kind" => match gv.as_str() {
                                    Some("KIND_CPU") | Some("KIND_AUTO") => {}
                                    _ => problems.push(format!(
                                        "instance_group[{i}].kind {gv} is not supported: herd runs models on the CPU (KIND_CPU)"
                                    )),
                                },
                                "name" => {}
                                other => unsupported.push(format!("instance_group[{i}].{other}")),
                            }
                        }
                        if !g.contains_key("count") {
                            total += 1;
                        }
                    }
                    change.instances = Some(total as usize);
                }
            },
            "name" => {
                if v.as_str() != Some(model) {
                    problems.push(format!("name {v} is not the model's name '{model}'"));
                }
            }
            "platform" | "backend" | "version_policy" | "input" | "output" => {
                if current.get(key) != Some(v) {
                    problems.push(format!(
                        "{key} cannot be changed (herd reads it from the model); it is {}",
                        current.get(key).cloned().unwrap_or(Value::Null)
                    ));
                }
            }
            other => unsupported.push(other.to_string()),
        }
    }
    if !unsupported.is_empty() {
        problems.insert(
            0,
            format!(
                "these model configuration keys are not supported: {}; herd applies max_batch_size, dynamic_batching.max_queue_delay_microseconds and instance_group[].count (and accepts name, platform, backend, version_policy, input and output when unchanged)",
                unsupported.join(", ")
            ),
        );
    }
    if !problems.is_empty() {
        return Err(err(
            ErrorCode::InvalidInput,
            format!(
                "load of '{model}' with parameters.config refused: {}",
                problems.join("; ")
            ),
        ));
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn current() -> Value {
        json!({
            "name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "version_policy": {"specific": {"versions": ["1"]}}, "max_batch_size": 32,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
            "instance_group": [{"name": "m", "kind": "KIND_CPU", "count": 1}],
        })
    }

    #[test]
    fn the_answer_of_config_round_trips_with_changes() {
        let mut cfg = current();
        cfg["max_batch_size"] = json!(8);
        cfg["instance_group"] = json!([{"kind": "KIND_CPU", "count": 2}, {"count": 1}]);
        cfg["dynamic_batching"] = json!({"max_queue_delay_microseconds": 3000});
        let c = parse_config("m", &Value::String(cfg.to_string()), &current()).unwrap();
        assert_eq!(
            c,
            ConfigChange {
                max_batch_size: Some(8),
                max_queue_delay_ms: Some(3),
                instances: Some(3)
            }
        );
        let c = parse_config("m", &json!({"dynamic_batching": {}}), &current()).unwrap();
        assert_eq!(c.max_queue_delay_ms, Some(0));
    }

    #[test]
    fn unsupported_keys_are_named_together() {
        let cfg = json!({
            "max_batch_size": 4, "sequence_batching": {}, "parameters": {},
            "dynamic_batching": {"preferred_batch_size": [4]},
            "instance_group": [{"count": 1, "kind": "KIND_GPU", "gpus": [0]}],
            "input": [{"name": "z", "data_type": "TYPE_FP32", "dims": [4]}],
        });
        let e = parse_config("m", &cfg, &current()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        for want in [
            "sequence_batching",
            "parameters",
            "dynamic_batching.preferred_batch_size",
            "instance_group[0].gpus",
            "KIND_GPU",
            "input cannot be changed",
        ] {
            assert!(e.error.contains(want), "{want}: {}", e.error);
        }
        let e = parse_config("m", &json!({"max_batch_size": 0}), &current()).unwrap_err();
        assert!(e.error.contains("send 1"), "{}", e.error);
        let e = parse_config(
            "m",
            &json!({"dynamic_batching": {"max_queue_delay_microseconds": 100}}),
            &current(),
        )
        .unwrap_err();
        assert!(e.error.contains("multiple of 1000"), "{}", e.error);
        assert!(parse_config("m", &json!("not json"), &current()).is_err());
        assert!(parse_config("m", &json!({"name": "other"}), &current()).is_err());
    }

    #[test]
    fn top_k_classes_with_labels_per_row() {
        let t = Tensor::new(
            "logits",
            vec![2, 3],
            TensorData::F32(vec![0.1, 0.7, 0.2, 3.0, -1.0, 3.0]),
        );
        let labels = vec!["a".to_string(), "b".to_string()];
        let c = classification(&t, 2, Some(&labels)).unwrap();
        assert_eq!(c.shape, vec![2, 2]);
        let s: Vec<String> = match &c.data {
            TensorData::Bytes(v) => v
                .iter()
                .map(|b| String::from_utf8(b.clone()).unwrap())
                .collect(),
            other => panic!("{other:?}"),
        };
        // Ties keep the lower index first; index 2 has no label.
        assert_eq!(
            s,
            ["0.700000:1:b", "0.200000:2", "3.000000:0:a", "3.000000:2"]
        );
        // k is capped at the class count; a 1-D output gives [k].
        let one = Tensor::new("p", vec![3], TensorData::I64(vec![5, 9, 1]));
        let c = classification(&one, 10, None).unwrap();
        assert_eq!(c.shape, vec![3]);
        assert_eq!(
            c.data,
            TensorData::Bytes(vec![
                b"9.000000:1".to_vec(),
                b"5.000000:0".to_vec(),
                b"1.000000:2".to_vec()
            ])
        );
        let s = Tensor::new("s", vec![1], TensorData::Bytes(vec![b"x".to_vec()]));
        assert!(classification(&s, 1, None).is_err());
        assert!(classification(&one, 0, None).is_err());
    }
}
