//! Unit tests of the cache with a fake backend: accounting, limits, chunking, cancellation.
//! No ONNX Runtime, no network.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use herd_api::v2::{DataType, Tensor, TensorData, TensorMetadata};
use herd_api::HasErrorCode;
use herd_runtime::{Backend, Instance, LoadOptions, RuntimeError, Signature};
use parking_lot::Mutex;

use super::*;
use crate::source::{ModelEntry, ModelSource};

/// What the fake backend saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// Rows of every run, in order.
    pub runs: Mutex<Vec<usize>>,
    pub loads: AtomicUsize,
}

/// A model `y = 2 * x` with input `x` FP32 `[-1, 2]` and output `y` FP32 `[-1, 2]`; each
/// instance holds `held` bytes (to test accounting).
pub(crate) struct FakeBackend {
    pub seen: Arc<Seen>,
    pub held: usize,
}

struct FakeInstance {
    sig: Signature,
    seen: Arc<Seen>,
    _held: Vec<u8>,
}

fn meta(name: &str) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: DataType::F32,
        shape: vec![-1, 2],
    }
}

impl Backend for FakeBackend {
    fn platform(&self) -> &'static str {
        "fake"
    }
    fn load(&self, _path: &Path, _opts: &LoadOptions) -> Result<Box<dyn Instance>, RuntimeError> {
        self.seen.loads.fetch_add(1, Ordering::SeqCst);
        // Touch every page so the allocation is real.
        let held = vec![1u8; self.held];
        Ok(Box::new(FakeInstance {
            sig: Signature {
                inputs: vec![meta("x")],
                outputs: vec![meta("y")],
            },
            seen: self.seen.clone(),
            _held: held,
        }))
    }
}

impl Instance for FakeInstance {
    fn signature(&self) -> &Signature {
        &self.sig
    }
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let x = &inputs[0];
        self.seen.runs.lock().push(x.shape[0] as usize);
        let TensorData::F32(v) = &x.data else {
            return Err(RuntimeError::Run("not f32".into()));
        };
        Ok(vec![Tensor::new(
            "y",
            x.shape.clone(),
            TensorData::F32(v.iter().map(|a| a * 2.0).collect()),
        )])
    }
}

/// Models named in a map, each one file on disk of `file_bytes` bytes.
pub(crate) struct FakeSource {
    pub dir: PathBuf,
    pub models: Mutex<HashMap<String, ModelConfig>>,
}

impl FakeSource {
    pub fn new(tag: &str) -> FakeSource {
        let dir = std::env::temp_dir().join(format!("herd-core-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakeSource {
            dir,
            models: Mutex::new(HashMap::new()),
        }
    }

    pub fn add(&self, name: &str, file_bytes: usize, cfg: ModelConfig) {
        std::fs::write(self.dir.join(name), vec![0u8; file_bytes]).unwrap();
        self.models.lock().insert(name.to_string(), cfg);
    }
}

impl ModelSource for FakeSource {
    fn list(&self) -> Result<Vec<ModelEntry>, CoreError> {
        let names: Vec<String> = self.models.lock().keys().cloned().collect();
        names.iter().map(|n| self.get(n)).collect()
    }
    fn get(&self, name: &str) -> Result<ModelEntry, CoreError> {
        let cfg = self
            .models
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::ModelNotFound(name.to_string()))?;
        Ok(ModelEntry {
            name: name.to_string(),
            versions: vec!["1".to_string()],
            config: cfg,
        })
    }
    fn artifact(&self, name: &str, _version: &str) -> Result<PathBuf, CoreError> {
        Ok(self.dir.join(name))
    }
}

pub(crate) fn core_with(
    cfg: CoreConfig,
    models: &[(&str, usize, ModelConfig)],
    held: usize,
    tag: &str,
) -> (Arc<Core>, Arc<Seen>) {
    let source = FakeSource::new(tag);
    for (n, b, c) in models {
        source.add(n, *b, c.clone());
    }
    let seen = Arc::new(Seen::default());
    let backend = FakeBackend {
        seen: seen.clone(),
        held,
    };
    (Core::new(cfg, Arc::new(source), Arc::new(backend)), seen)
}

fn x(rows: usize) -> Vec<Tensor> {
    vec![Tensor::new(
        "x",
        vec![rows as i64, 2],
        TensorData::F32((0..rows * 2).map(|v| v as f32).collect()),
    )]
}

fn req(model: &str, inputs: Vec<Tensor>) -> InferRequest {
    InferRequest {
        model: model.into(),
        version: None,
        inputs,
        outputs: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_above_max_batch_size_run_in_chunks_with_the_same_answer() {
    let cfg = ModelConfig {
        max_batch_size: 4,
        ..ModelConfig::default()
    };
    let (core, seen) = core_with(CoreConfig::default(), &[("m", 100, cfg)], 0, "chunks");
    let out = core.infer(req("m", x(10))).await.unwrap();
    assert_eq!(*seen.runs.lock(), vec![4, 4, 2]);
    let want: Vec<f32> = (0..20).map(|v| v as f32 * 2.0).collect();
    assert_eq!(out.outputs[0].shape, vec![10, 2]);
    assert_eq!(out.outputs[0].data, TensorData::F32(want));
    assert_eq!(out.batch_rows, 4);
    // Exactly max_batch_size rows: one run.
    seen.runs.lock().clear();
    core.infer(req("m", x(4))).await.unwrap();
    assert_eq!(*seen.runs.lock(), vec![4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_limit_is_checked_before_any_run_with_per_model_override() {
    let limited = ModelConfig {
        max_rows_per_request: Some(5),
        ..ModelConfig::default()
    };
    let (core, seen) = core_with(
        CoreConfig {
            limits: RequestLimits {
                max_rows_per_request: 8,
                ..RequestLimits::default()
            },
            ..CoreConfig::default()
        },
        &[("m", 100, ModelConfig::default()), ("small", 100, limited)],
        0,
        "rows",
    );
    core.infer(req("m", x(8))).await.unwrap();
    let e = core.infer(req("m", x(9))).await.unwrap_err();
    assert_eq!(e.code(), herd_api::ErrorCode::LimitExceeded);
    assert_eq!(e.code().http_status(), 413);
    assert!(e.to_string().contains("max_rows_per_request = 8"), "{e}");
    core.infer(req("small", x(5))).await.unwrap();
    let e = core.infer(req("small", x(6))).await.unwrap_err();
    assert!(e.to_string().contains("max_rows_per_request = 5"), "{e}");
    // The refused requests never ran.
    assert_eq!(*seen.runs.lock(), vec![8, 5]);
}
