//! The protocol-neutral service layer: the operations every dialect (KServe v2, Triton
//! extensions, OpenAI, later TEI, Infinity and gRPC) converts to and from. It takes a
//! transport-free caller identity ([`Caller`]) and typed requests and returns typed results plus
//! timings; auth, output selection, request metrics and statistics are computed here once, so an
//! HTTP route only decodes, calls one method and encodes.

mod health;
mod stats;
mod text;
mod triton;

use std::sync::Arc;
use std::time::Instant;

use herd_api::v2::{ModelMetadata, Tensor, TensorData};
use herd_api::{ApiError, ErrorCode, HasErrorCode};
use herd_core::pipeline::TEXT_INPUT;
use herd_core::{Core, InferRequest, ModelEntry, ModelState, Timing};

use crate::auth::{Auth, Principal};

pub use health::Health;
pub use stats::{Duration as StatDuration, InferStats, ModelStats, Stats};
pub use text::{
    Classified, Classify, PairScores, Ranked, Rerank, Reranked, ScorePairs, TextKind, TextModel,
};
pub use triton::{classification, parse_config};

/// Who calls, independent of the transport (HTTP bearer header, gRPC metadata, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Principal);

impl Caller {
    /// May this caller use a model owned by `tenant`?
    pub fn may_use(&self, tenant: Option<&str>) -> bool {
        match &self.0 {
            Principal::Open | Principal::Admin => true,
            Principal::Tenant(t) => tenant.is_none_or(|owner| owner == t),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.0, Principal::Open | Principal::Admin)
    }
}

/// One inference, as every dialect sees it.
#[derive(Debug)]
pub struct Infer {
    pub model: String,
    pub version: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs to return (all when `None`).
    pub outputs: Option<Vec<String>>,
}

/// Its answer.
#[derive(Debug)]
pub struct Inferred {
    pub model: String,
    pub version: String,
    pub outputs: Vec<Tensor>,
    pub timing: Timing,
    pub batch_rows: usize,
}

/// Texts to embed with a text pipeline.
#[derive(Debug)]
pub struct Embed {
    pub model: String,
    pub texts: Vec<String>,
    /// Shorten to this many dimensions (normalized embedding models only: truncate, renormalize).
    pub dimensions: Option<usize>,
}

#[derive(Debug)]
pub struct Embedded {
    pub model: String,
    pub version: String,
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens after truncation, all texts together.
    pub tokens: u64,
    pub timing: Timing,
}

/// A model the caller may use, for model lists (`GET /v1/models`).
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub versions: Vec<String>,
    pub tenant: Option<String>,
    /// Whether it has a `[pipeline]` table (takes text).
    pub text: bool,
}

/// Readiness of one model version.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub model: String,
    pub version: String,
    pub state: ModelState,
}

impl Readiness {
    /// Loaded, loading, or loadable on its first request.
    pub fn ready(&self) -> bool {
        !matches!(self.state, ModelState::Failed(_))
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn from<E: HasErrorCode>(e: E) -> ApiError {
    let code = e.code();
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "internal error");
    }
    ApiError::new(code, e.to_string())
}

/// The operations. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    core: Arc<Core>,
    auth: Arc<Auth>,
    health: Arc<Health>,
    stats: Arc<Stats>,
}

impl Service {
    pub fn new(core: Arc<Core>, auth: Arc<Auth>, health: Arc<Health>) -> Service {
        Service {
            core,
            auth,
            health,
            stats: Arc::new(Stats::default()),
        }
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Who is calling, from a bearer token (`None` when the request carried none).
    pub fn identify(&self, bearer: Option<&str>) -> Result<Caller, ApiError> {
        self.auth.identify(bearer).map(Caller).map_err(|e| e.0)
    }

    /// Resolves a model the caller may use: 404 when unknown, 403 when another tenant's.
    pub fn authorize(
        &self,
        caller: &Caller,
        model: &str,
        version: Option<&str>,
    ) -> Result<(ModelEntry, String), ApiError> {
        let (entry, v) = self.core.resolve(model, version).map_err(from)?;
        if !caller.may_use(entry.config.tenant.as_deref()) {
            return Err(err(
                ErrorCode::Forbidden,
                format!("model '{model}' belongs to another tenant"),
            ));
        }
        Ok((entry, v))
    }

    /// Runs one inference; records request metrics and statistics whatever the outcome.
    pub async fn infer(&self, caller: &Caller, req: Infer) -> Result<Inferred, ApiError> {
        let started = Instant::now();
        let model = req.model.clone();
        let result = match self.authorize(caller, &req.model, req.version.as_deref()) {
            Err(e) => Err(e),
            Ok((_, version)) => {
                let rows = req
                    .inputs
                    .first()
                    .and_then(|t| t.shape.first())
                    .map(|&r| r.max(0) as u64)
                    .unwrap_or(0);
                let r = self
                    .core
                    .infer(InferRequest {
                        model: req.model,
                        // The caller's own choice, not the version resolved above: a release
                        // switch between the two must not turn "the served version" into a
                        // version that just left (404 during a swap).
                        version: req.version,
                        inputs: req.inputs,
                        outputs: req.outputs,
                    })
                    .await
                    .map_err(from);
                match &r {
                    Ok(o) => {
                        self.stats
                            .success(&o.model, &o.version, rows, &o.timing, o.batch_rows)
                    }
                    Err(_) => self.stats.failure(&model, &version, started.elapsed()),
                }
                r.map(|out| Inferred {
                    model: out.model,
                    version: out.version,
                    outputs: out.outputs,
                    timing: out.timing,
                    batch_rows: out.batch_rows,
                })
            }
        };
        let status = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        // Unknown model names are not used as label values (they are unbounded).
        let label = match &result {
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::ModelNotFound | ErrorCode::Unauthorized | ErrorCode::Forbidden
                ) =>
            {
                "_unknown".to_string()
            }
            _ => model,
        };
        metrics::counter!("herd_infer_requests_total", "model" => label.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("herd_infer_request_duration_seconds", "model" => label)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Embeds texts with a text pipeline of kind embedding.
    pub async fn embed(&self, caller: &Caller, req: Embed) -> Result<Embedded, ApiError> {
        if req.texts.is_empty() {
            return Err(err(
                ErrorCode::InvalidInput,
                "input must hold at least one text",
            ));
        }
        let (entry, _) = self.authorize(caller, &req.model, None)?;
        let pipeline = entry.config.pipeline.as_ref().ok_or_else(|| {
            err(
                ErrorCode::InvalidInput,
                format!(
                    "model '{}' is not a text pipeline: declare a [pipeline] table with pooling in its config.toml",
                    req.model
                ),
            )
        })?;
        let normalized = pipeline
            .get("normalize")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        let n = req.texts.len();
        let out = self
            .infer(
                caller,
                Infer {
                    model: req.model.clone(),
                    version: None,
                    inputs: vec![Tensor::new(
                        TEXT_INPUT,
                        vec![n as i64],
                        TensorData::Bytes(req.texts.into_iter().map(String::into_bytes).collect()),
                    )],
                    outputs: None,
                },
            )
            .await?;
        let emb = out
            .outputs
            .iter()
            .find(|t| t.name == "embedding")
            .ok_or_else(|| {
                err(
                    ErrorCode::InvalidInput,
                    format!(
                        "model '{}' is a classifier pipeline, not an embedding model",
                        req.model
                    ),
                )
            })?;
        let TensorData::F32(values) = &emb.data else {
            return Err(err(ErrorCode::Internal, "embedding output is not FP32"));
        };
        let dim = emb.shape.get(1).copied().unwrap_or(0).max(0) as usize;
        let mut vectors: Vec<Vec<f32>> = values
            .chunks(dim.max(1))
            .take(n)
            .map(<[f32]>::to_vec)
            .collect();
        if let Some(d) = req.dimensions {
            if d == 0 || d > dim {
                return Err(err(
                    ErrorCode::InvalidInput,
                    format!(
                        "dimensions must be between 1 and {dim} for model '{}'",
                        req.model
                    ),
                ));
            }
            if d < dim {
                if !normalized {
                    return Err(err(
                        ErrorCode::InvalidInput,
                        format!(
                            "model '{}' does not normalize its embeddings ([pipeline] normalize = false), so they cannot be shortened to {d} dimensions; omit dimensions",
                            req.model
                        ),
                    ));
                }
                for v in &mut vectors {
                    v.truncate(d);
                    herd_pipeline::l2_normalize(v);
                }
            }
        }
        let tokens = match out
            .outputs
            .iter()
            .find(|t| t.name == "token_count")
            .map(|t| &t.data)
        {
            Some(TensorData::I64(v)) => v.iter().map(|&t| t.max(0) as u64).sum(),
            _ => 0,
        };
        Ok(Embedded {
            model: out.model,
            version: out.version,
            vectors,
            tokens,
            timing: out.timing,
        })
    }

    /// The models this caller may use, by name.
    pub fn list_models(&self, caller: &Caller) -> Result<Vec<Listed>, ApiError> {
        let mut out: Vec<Listed> = self
            .core
            .source()
            .list()
            .map_err(from)?
            .into_iter()
            .filter(|m| !m.versions.is_empty() && caller.may_use(m.config.tenant.as_deref()))
            .map(|m| Listed {
                text: m.config.pipeline.is_some(),
                tenant: m.config.tenant.clone(),
                name: m.name,
                versions: m.versions,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Model metadata (signature read from the file when not loaded) with its state.
    pub async fn metadata(
        &self,
        caller: &Caller,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, ApiError> {
        let (entry, v) = self.authorize(caller, model, version)?;
        let sig = self.core.signature(model, &v).await.map_err(from)?;
        Ok(ModelMetadata {
            name: model.to_string(),
            versions: entry.versions.clone(),
            platform: self.core.platform().to_string(),
            inputs: sig.inputs,
            outputs: sig.outputs,
            state: Some(self.core.state_of(model, &v).as_str().to_string()),
        })
    }

    /// The model's configuration as Triton's model configuration JSON
    /// (`GET /v2/models/{m}/config`): max batch size, inputs/outputs without the batch
    /// dimension, instance group, dynamic batching, served versions.
    pub async fn model_config(
        &self,
        caller: &Caller,
        model: &str,
        version: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        use serde_json::json;
        let (entry, v) = self.authorize(caller, model, version)?;
        let sig = self.core.signature(model, &v).await.map_err(from)?;
        let cfg = &entry.config;
        // Triton batches along a first dimension that every input and output leaves dynamic.
        let batched = sig
            .inputs
            .iter()
            .chain(&sig.outputs)
            .all(|t| t.shape.first() == Some(&-1));
        let max_batch = if batched { cfg.max_batch_size } else { 0 };
        let tensors = |ts: &[herd_api::v2::TensorMetadata]| -> Vec<serde_json::Value> {
            ts.iter()
                .map(|t| {
                    let dt = match t.datatype {
                        herd_api::v2::DataType::Bytes => "STRING".to_string(),
                        other => other.as_str().to_string(),
                    };
                    let dims: Vec<i64> = if batched {
                        t.shape.iter().skip(1).copied().collect()
                    } else {
                        t.shape.clone()
                    };
                    json!({"name": t.name, "data_type": format!("TYPE_{dt}"), "dims": dims})
                })
                .collect()
        };
        let mut out = json!({
            "name": model,
            "platform": self.core.platform(),
            "backend": "onnxruntime",
            "version_policy": {"specific": {"versions": entry.versions}},
            "max_batch_size": max_batch,
            "input": tensors(&sig.inputs),
            "output": tensors(&sig.outputs),
            "instance_group": [{"name": model, "kind": "KIND_CPU", "count": cfg.instances}],
        });
        if max_batch > 1 {
            out["dynamic_batching"] =
                json!({"max_queue_delay_microseconds": cfg.max_queue_delay_ms * 1000});
        }
        Ok(out)
    }

    pub fn model_ready(
        &self,
        caller: &Caller,
        model: &str,
        version: Option<&str>,
    ) -> Result<Readiness, ApiError> {
        let (_, v) = self.authorize(caller, model, version)?;
        Ok(Readiness {
            model: model.to_string(),
            state: self.core.state_of(model, &v),
            version: v,
        })
    }

    /// Statistics of the versions the caller may use: all that served a request or are loaded
    /// (`model` narrows to one model, `version` to one version of it).
    pub fn statistics(
        &self,
        caller: &Caller,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<ModelStats>, ApiError> {
        let mut keys: Vec<(String, String)> = match model {
            Some(m) => {
                let (entry, v) = self.authorize(caller, m, version)?;
                match version {
                    Some(_) => vec![(m.to_string(), v)],
                    None => entry
                        .versions
                        .iter()
                        .map(|v| (m.to_string(), v.clone()))
                        .collect(),
                }
            }
            None => {
                let mut keys = self.stats.keys();
                for e in self.core.index().map_err(from)? {
                    if let (Some(v), ModelState::Ready) = (&e.version, &e.state) {
                        keys.push((e.name.clone(), v.clone()));
                    }
                }
                keys.sort();
                keys.dedup();
                keys.into_iter()
                    .filter(|(m, _)| {
                        self.core
                            .source()
                            .get(m)
                            .map(|e| caller.may_use(e.config.tenant.as_deref()))
                            .unwrap_or(false)
                    })
                    .collect()
            }
        };
        keys.dedup();
        Ok(keys
            .into_iter()
            .map(|(m, v)| self.stats.get(&m, &v))
            .collect())
    }
}
