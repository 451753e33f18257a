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
    /// Runs that saw their cancellation while running.
    pub stopped: AtomicUsize,
    /// Long runs (first value -1) that have started.
    pub long_started: AtomicUsize,
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
    /// A run whose first value is -1 runs until it is cancelled (at most 20 s), like a long
    /// ONNX Runtime run stopped by its terminate flag.
    fn run_cancellable(
        &mut self,
        inputs: Vec<Tensor>,
        cancel: &herd_runtime::Cancel,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        let long = matches!(&inputs[0].data, TensorData::F32(v) if v.first() == Some(&-1.0));
        if long {
            self.seen.long_started.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            cancel.on_cancel(move || {
                let _ = tx.send(());
            });
            if rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok() {
                self.seen.stopped.fetch_add(1, Ordering::SeqCst);
                self.seen.runs.lock().push(inputs[0].shape[0] as usize);
                return Err(RuntimeError::Cancelled);
            }
        }
        self.run(inputs)
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
    // The load's warm-up at the largest shape (max_batch_size rows), then the three chunks.
    assert_eq!(*seen.runs.lock(), vec![4, 4, 4, 2]);
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
    // The refused requests never ran (32: each load's warm-up at max_batch_size rows).
    assert_eq!(*seen.runs.lock(), vec![32, 8, 32, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_covers_the_weights_and_what_the_instances_hold() {
    let one_mib = 1 << 20;
    let two = ModelConfig {
        instances: 2,
        ..ModelConfig::default()
    };
    let (core, _) = core_with(
        CoreConfig::default(),
        &[
            ("file", 3 * one_mib, ModelConfig::default()),
            ("held", 1000, two),
        ],
        0,
        "charge",
    );
    // The fake backend allocates nothing for "file": its charge is still its file's bytes.
    let m = core.get("file", None).await.unwrap();
    assert!(m.charge >= 3 * one_mib as u64, "charge {}", m.charge);
    drop(m);
    let (core, _) = core_with(
        CoreConfig::default(),
        &[(
            "held",
            1000,
            ModelConfig {
                instances: 2,
                ..ModelConfig::default()
            },
        )],
        4 * one_mib,
        "charge-held",
    );
    let m = core.get("held", None).await.unwrap();
    // Two instances holding 4 MiB each (measured as allocation growth).
    assert!(m.charge >= 8 * one_mib as u64, "charge {}", m.charge);
    assert_eq!(core.stats().used_bytes, m.charge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_larger_than_the_budget_is_refused_before_loading() {
    let (core, seen) = core_with(
        CoreConfig {
            memory_budget: 1 << 20,
            ..CoreConfig::default()
        },
        &[("big", 2 << 20, ModelConfig::default())],
        0,
        "toolarge",
    );
    let e = core.infer(req("big", x(1))).await.unwrap_err();
    assert!(matches!(e, CoreError::TooLarge { .. }), "{e}");
    assert_eq!(e.code().http_status(), 507);
    assert_eq!(seen.loads.load(Ordering::SeqCst), 0, "loaded anyway");
    assert_eq!(core.stats().used_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_data_files_are_charged_and_checked_before_loading() {
    use herd_onnx::proto::{ModelProto, StringStringEntryProto};
    use prost::Message;
    let source = FakeSource::new("external");
    // A real ONNX file whose weights live in weights.data (3 MiB).
    let mut m =
        ModelProto::decode(&herd_onnx::LinearClassifier::random(4, 2, 1).to_onnx("m")[..]).unwrap();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        t.raw_data = None;
        t.external_data = vec![StringStringEntryProto::new("location", "weights.data")];
        t.data_location = Some(1);
    }
    std::fs::create_dir_all(source.dir.join("ext")).unwrap();
    source.add("ext/model.onnx", 0, ModelConfig::default());
    std::fs::write(source.dir.join("ext/model.onnx"), m.encode_to_vec()).unwrap();
    std::fs::write(source.dir.join("ext/weights.data"), vec![0u8; 3 << 20]).unwrap();
    let seen = Arc::new(Seen::default());
    let backend = FakeBackend {
        seen: seen.clone(),
        held: 0,
    };
    let core = Core::new(
        CoreConfig {
            memory_budget: 2 << 20,
            ..CoreConfig::default()
        },
        Arc::new(source),
        Arc::new(backend),
    );
    let e = core.get("ext/model.onnx", None).await.err().unwrap();
    assert!(
        matches!(e, CoreError::TooLarge { needed, .. } if needed >= 3 << 20),
        "{e}"
    );
    assert_eq!(seen.loads.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_stops_its_run_and_queued_requests_are_dropped() {
    let (core, seen) = core_with(
        CoreConfig {
            request_timeout: std::time::Duration::from_millis(300),
            ..CoreConfig::default()
        },
        &[("m", 100, ModelConfig::default())],
        0,
        "cancel",
    );
    core.get("m", None).await.unwrap();
    seen.runs.lock().clear();
    let long = vec![Tensor::new(
        "x",
        vec![1, 2],
        TensorData::F32(vec![-1.0, 0.0]),
    )];
    // One long run holds the only instance; a second request queues behind it.
    let c1 = core.clone();
    let first = tokio::spawn(async move { c1.infer(req("m", long)).await });
    // The second request is sent once the long run has started, so the batcher cannot merge the
    // two into one run (on a loaded machine both could otherwise be queued before either ran).
    for _ in 0..20_000 {
        if seen.long_started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(
        seen.long_started.load(Ordering::SeqCst),
        1,
        "the long run never started"
    );
    let c2 = core.clone();
    let second = tokio::spawn(async move { c2.infer(req("m", x(3))).await });
    // When the second is queued, its client goes away (the task is dropped, as axum drops the
    // handler of a closed connection).
    for _ in 0..20_000 {
        if core.queue_depths().iter().any(|(_, d)| *d == 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    second.abort();
    // On a loaded machine this task may be scheduled only after the queued request has already
    // timed out itself; both ways its caller is gone and it must never run.
    match second.await {
        Err(e) => assert!(e.is_cancelled(), "{e}"),
        Ok(r) => assert!(
            matches!(r, Err(CoreError::Timeout { .. })),
            "the queued request answered {r:?}"
        ),
    }
    let e = first.await.unwrap().unwrap_err();
    assert!(matches!(e, CoreError::Timeout { .. }), "{e}");
    // The long run was stopped by the timeout (not after 20 s), and the queued request, whose
    // caller is gone, never ran. A later request runs normally on the freed instance.
    let out = core.infer(req("m", x(2))).await.unwrap();
    assert_eq!(out.outputs[0].shape, vec![2, 2]);
    assert_eq!(seen.stopped.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.runs.lock(),
        vec![1, 2],
        "the queued 3-row request ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_queue_while_a_batch_waits_for_the_instance_join_that_batch() {
    let (core, seen) = core_with(
        CoreConfig::default(),
        &[("m", 100, ModelConfig::default())],
        0,
        "topup",
    );
    core.get("m", None).await.unwrap();
    seen.runs.lock().clear();
    let started = seen.long_started.load(Ordering::SeqCst);
    // A long run holds the only instance (until its caller goes away).
    let long = vec![Tensor::new(
        "x",
        vec![1, 2],
        TensorData::F32(vec![-1.0, 0.0]),
    )];
    let c = core.clone();
    let first = tokio::spawn(async move { c.infer(req("m", long)).await });
    while seen.long_started.load(Ordering::SeqCst) == started {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // The next request becomes a batch of its own that waits for the instance...
    let c = core.clone();
    let second = tokio::spawn(async move { c.infer(req("m", x(1))).await });
    for _ in 0..20_000 {
        if core.queue_depths().iter().any(|(_, d)| *d == 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // ...and two more come while it waits.
    let more: Vec<_> = (0..2)
        .map(|_| {
            let c = core.clone();
            tokio::spawn(async move { c.infer(req("m", x(2))).await })
        })
        .collect();
    for _ in 0..20_000 {
        if core.queue_depths().iter().any(|(_, d)| *d == 3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // The long run's caller goes away: its run stops and the instance is free.
    first.abort();
    let out = second.await.unwrap().unwrap();
    assert_eq!(out.outputs[0].data, TensorData::F32(vec![0.0, 2.0]));
    for m in more {
        let out = m.await.unwrap().unwrap();
        assert_eq!(
            out.outputs[0].data,
            TensorData::F32(vec![0.0, 2.0, 4.0, 6.0])
        );
        assert_eq!(out.batch_rows, 5);
    }
    assert_eq!(out.batch_rows, 5);
    // The stopped long run, then one run of all three waiting requests (1 + 2 + 2 rows).
    assert_eq!(*seen.runs.lock(), vec![1, 5]);
}

/// One model `m` whose served versions switch like a registry channel's release: each switch
/// bumps the generation (and wakes `changes()`). Loads of versions in `gated` wait until the
/// gate opens.
struct SwitchSource {
    file: PathBuf,
    versions: Mutex<Vec<String>>,
    generation: std::sync::atomic::AtomicU64,
    tx: tokio::sync::watch::Sender<u64>,
    gated: Mutex<Vec<String>>,
    open: std::sync::atomic::AtomicBool,
}

impl SwitchSource {
    fn new(tag: &str, version: &str) -> Arc<SwitchSource> {
        let src = FakeSource::new(tag);
        src.add("m", 1000, ModelConfig::default());
        Arc::new(SwitchSource {
            file: src.dir.join("m"),
            versions: Mutex::new(vec![version.to_string()]),
            generation: std::sync::atomic::AtomicU64::new(1),
            tx: tokio::sync::watch::channel(1).0,
            gated: Mutex::new(Vec::new()),
            open: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn switch_to(&self, version: &str) {
        *self.versions.lock() = vec![version.to_string()];
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.tx.send_replace(g);
    }
}

impl ModelSource for SwitchSource {
    fn list(&self) -> Result<Vec<ModelEntry>, CoreError> {
        Ok(vec![self.get("m")?])
    }
    fn get(&self, name: &str) -> Result<ModelEntry, CoreError> {
        if name != "m" {
            return Err(CoreError::ModelNotFound(name.to_string()));
        }
        Ok(ModelEntry {
            name: name.to_string(),
            versions: self.versions.lock().clone(),
            config: ModelConfig::default(),
        })
    }
    fn artifact(&self, _name: &str, version: &str) -> Result<PathBuf, CoreError> {
        if self.gated.lock().iter().any(|v| v == version) {
            // Runs on the loader pool (a blocking thread).
            while !self.open.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(self.file.clone())
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.tx.subscribe())
    }
}

fn switch_core(src: &Arc<SwitchSource>, held: usize) -> Arc<Core> {
    let backend = FakeBackend {
        seen: Arc::new(Seen::default()),
        held,
    };
    Core::new(CoreConfig::default(), src.clone(), Arc::new(backend))
}

/// Polls (bounded, no wall-clock assertion) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_leaves_the_served_set_is_charged_until_its_last_request_ends() {
    let src = SwitchSource::new("retire-refcount", "1");
    let core = switch_core(&src, 256 << 10);
    // A request running on version 1 (what `infer` holds while it runs).
    let old = core.get("m", None).await.unwrap();
    assert_eq!(old.model.version, "1");
    let c1 = old.charge;
    assert_eq!(core.stats().used_bytes, c1);

    // The release switches; the next request follows the new generation itself: version 1
    // leaves the cache but stays charged while `old` runs; version 2 loads next to it.
    src.switch_to("2");
    let out = core.infer(req("m", x(1))).await.unwrap();
    assert_eq!(out.version, "2");
    assert_eq!(core.state_of("m", "1"), ModelState::Unloaded);
    let c2 = core.peek("m", "2").unwrap().charge;
    assert_eq!(core.retiring_bytes(), c1);
    assert_eq!(
        core.stats().used_bytes,
        c1 + c2,
        "old version uncharged early"
    );
    assert!(core.resident().contains(&("m".into(), "1".into())));
    // A second holder of the old version keeps the charge until it goes too.
    let old2 = old.clone();
    drop(old);
    assert_eq!(core.stats().used_bytes, c1 + c2);
    drop(old2);
    // The last request on version 1 finished: its charge goes with it (the load task's answer
    // channel may hold the last clone a moment longer, hence the bounded wait).
    eventually("v1 uncharged", || core.retiring_bytes() == 0).await;
    assert_eq!(core.stats().used_bytes, c2);
    assert!(!core.resident().contains(&("m".into(), "1".into())));

    // A model nobody holds is uncharged when it leaves (no ticket needed): unload it.
    assert!(core.unload_model("m").unwrap());
    assert_eq!(core.stats().used_bytes, 0);
    // Unload while a request holds it: charged until the request ends.
    let held = core.get("m", None).await.unwrap();
    assert!(core.unload_model("m").unwrap());
    assert_eq!(core.stats().used_bytes, held.charge);
    drop(held);
    eventually("unloaded model uncharged", || core.stats().used_bytes == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_of_an_old_version_in_progress_at_the_switch_leaves_the_cache_when_done() {
    let src = SwitchSource::new("retire-loading", "1");
    src.gated.lock().push("1".into());
    let core = switch_core(&src, 0);
    let c = core.clone();
    let loading = tokio::spawn(async move { c.get("m", None).await });
    eventually("v1 loading", || {
        core.state_of("m", "1") == ModelState::Loading
    })
    .await;
    src.switch_to("2");
    // The core follows the switch while version 1 still loads: nothing retired yet.
    assert_eq!(core.follow_source(), 0);
    src.open.store(true, Ordering::SeqCst);
    // The waiter gets its answer on version 1, which then is not kept in the cache.
    let served = loading.await.unwrap().unwrap();
    assert_eq!(served.model.version, "1");
    assert_eq!(core.state_of("m", "1"), ModelState::Unloaded);
    assert_eq!(core.stats().used_bytes, served.charge);
    drop(served);
    eventually("late load uncharged", || core.stats().used_bytes == 0).await;
    assert_eq!(core.stats().loaded_models, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_follows_a_new_generation_without_a_request() {
    let src = SwitchSource::new("follow", "1");
    let core = switch_core(&src, 0);
    let follower = core.spawn_follow_source();
    core.get("m", None).await.unwrap();
    assert_eq!(core.state_of("m", "1"), ModelState::Ready);
    src.switch_to("2");
    // No request, no watcher calling in: the core's own follower retires version 1.
    eventually("v1 retired", || {
        core.state_of("m", "1") == ModelState::Unloaded
    })
    .await;
    assert_eq!(core.stats().used_bytes, 0);
    assert_eq!(core.stats().loaded_models, 0);
    follower.abort();
}

/// `y = x` with input `x` FP32 `[-1, -1]` (a dynamic dimension besides the batch); records the
/// shape of every run.
struct DynBackend(Arc<Mutex<Vec<Vec<i64>>>>);

struct DynInstance(Signature, Arc<Mutex<Vec<Vec<i64>>>>);

impl Backend for DynBackend {
    fn platform(&self) -> &'static str {
        "fake"
    }
    fn load(&self, _path: &Path, _opts: &LoadOptions) -> Result<Box<dyn Instance>, RuntimeError> {
        let m = |n: &str| TensorMetadata {
            name: n.into(),
            datatype: DataType::F32,
            shape: vec![-1, -1],
        };
        Ok(Box::new(DynInstance(
            Signature {
                inputs: vec![m("x")],
                outputs: vec![m("y")],
            },
            self.0.clone(),
        )))
    }
}

impl Instance for DynInstance {
    fn signature(&self) -> &Signature {
        &self.0
    }
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        self.1.lock().push(inputs[0].shape.clone());
        Ok(vec![Tensor::new(
            "y",
            inputs[0].shape.clone(),
            inputs[0].data.clone(),
        )])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_dims_are_warmed_at_max_dynamic_dim_and_refused_beyond_it() {
    let source = FakeSource::new("dyn");
    let limited = ModelConfig {
        max_batch_size: 4,
        max_dynamic_dim: Some(16),
        ..ModelConfig::default()
    };
    source.add("limited", 100, limited);
    source.add(
        "open",
        100,
        ModelConfig {
            max_batch_size: 4,
            ..ModelConfig::default()
        },
    );
    let shapes = Arc::new(Mutex::new(Vec::new()));
    let core = Core::new(
        CoreConfig::default(),
        Arc::new(source),
        Arc::new(DynBackend(shapes.clone())),
    );
    let x = |rows: usize, cols: usize| {
        vec![Tensor::new(
            "x",
            vec![rows as i64, cols as i64],
            TensorData::F32(vec![0.5; rows * cols]),
        )]
    };
    // Just at the limit: answered; the load's warm-up ran at max_batch_size x max_dynamic_dim.
    let out = core.infer(req("limited", x(2, 16))).await.unwrap();
    assert_eq!(out.outputs[0].shape, vec![2, 16]);
    assert!(shapes.lock().contains(&vec![4, 16]), "{:?}", shapes.lock());
    // Beyond it: 413 naming the limit and where it is set, before any run.
    let runs = shapes.lock().len();
    let e = core.infer(req("limited", x(1, 17))).await.unwrap_err();
    assert_eq!(e.code().http_status(), 413);
    let msg = e.to_string();
    assert!(
        msg.contains("max_dynamic_dim = 16")
            && msg.contains("dimension 1 of input 'x'")
            && msg.contains("config.toml"),
        "{msg}"
    );
    assert_eq!(shapes.lock().len(), runs, "a refused request ran");
    // Without the key: warmed at 1 along the dynamic dimension, and not limited by it.
    core.infer(req("open", x(1, 64))).await.unwrap();
    assert!(shapes.lock().contains(&vec![4, 1]), "{:?}", shapes.lock());
}
