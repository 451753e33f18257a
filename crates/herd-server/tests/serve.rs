//! Integration tests: a real server on port 0, real ONNX Runtime, real ONNX models written by
//! `herd-onnx` (whose outputs are checked against Python onnxruntime in herd-onnx's own tests;
//! the Python suite in tests/python compares the served outputs with onnxruntime directly).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_core::{Core, CoreConfig, DirectorySource, ModelState};
use herd_onnx::LinearClassifier;
use herd_runtime::OrtBackend;
use herd_server::auth::{hash_token, Auth};
use herd_server::AppState;
use serde_json::{json, Value};

const DIM: usize = 8;
const CLASSES: usize = 3;

fn backend() -> Arc<OrtBackend> {
    Arc::new(OrtBackend::new(None, 1, false).expect(
        "ONNX Runtime library not found: run `cargo run -p herd -- runtime install` (scripts/test.sh does)",
    ))
}

fn temp_repo() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "herd-serve-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_model(repo: &Path, name: &str, seed: u64) {
    let d = repo.join(name).join("1");
    std::fs::create_dir_all(&d).unwrap();
    let bytes = LinearClassifier::random(DIM, CLASSES, seed).to_onnx(name);
    std::fs::write(d.join("model.onnx"), bytes).unwrap();
}

fn write_config(repo: &Path, name: &str, text: &str) {
    std::fs::write(repo.join(name).join("config.toml"), text).unwrap();
}

struct Server {
    url: String,
    core: Arc<Core>,
    client: reqwest::Client,
}

async fn start(repo: &Path, cfg: CoreConfig, auth: Auth) -> Server {
    start_with_limit(repo, cfg, auth, 1 << 20).await
}

async fn start_with_limit(repo: &Path, cfg: CoreConfig, auth: Auth, max_body: usize) -> Server {
    let source = Arc::new(DirectorySource::new(repo).unwrap());
    serve_core(Core::new(cfg, source, backend()), auth, max_body).await
}

/// Serves `core` with `auth` on a loopback port (ready, metrics installed); the server runs
/// until the test ends.
async fn serve_core(core: Arc<Core>, auth: Auth, max_body: usize) -> Server {
    let state = AppState::new(
        core.clone(),
        Arc::new(auth),
        herd_server::telemetry::init_metrics(),
    );
    state.health.mark_started();
    let app = herd_server::app(state, max_body);
    let (addr, _h) = herd_server::spawn(app, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Server {
        url: format!("http://{addr}"),
        core,
        client: reqwest::Client::new(),
    }
}

/// Which model source a shared test body runs against: the `--repo` directory itself, or a
/// registry channel holding the same models (each `<model>/` pushed as a bundle with its
/// config.toml, released and promoted) served through `RegistrySource`.
#[derive(Clone, Copy, Debug)]
enum Src {
    Dir,
    Channel,
}

/// Runs a test body on both sources. `sized` bodies (assertions on measured model sizes) run
/// alone: they take [`LANE`] for writing, every other test takes it for reading.
macro_rules! both_sources {
    ($name:ident) => {
        both_sources!(@ $name, read);
    };
    (sized $name:ident) => {
        both_sources!(@ $name, write);
    };
    (@ $name:ident, $lock:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn directory() {
                let _lane = super::LANE.$lock().await;
                super::$name(super::Src::Dir).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn channel() {
                let _lane = super::LANE.$lock().await;
                super::$name(super::Src::Channel).await;
            }
        }
    };
}

async fn source_for(kind: Src, repo: &Path) -> Arc<dyn herd_core::ModelSource> {
    match kind {
        Src::Dir => Arc::new(DirectorySource::new(repo).unwrap()),
        Src::Channel => {
            let home = repo.with_extension("registry");
            let reg = herd_registry::Registry::open(
                &format!("sqlite://{}", home.join("r.db").display()),
                home.join("artifacts").to_str().unwrap(),
            )
            .await
            .unwrap();
            let mut entries = std::collections::BTreeMap::new();
            let mut names: Vec<PathBuf> = std::fs::read_dir(repo)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect();
            names.sort();
            for dir in names {
                let name = dir.file_name().unwrap().to_str().unwrap().to_string();
                let mut files = herd_registry::bundle::read_model_dir(&dir).unwrap();
                let bytes = files.remove("model.onnx").unwrap();
                let out = reg
                    .push(herd_registry::PushRequest {
                        model: name.clone(),
                        bytes,
                        files,
                        created_by: "test".into(),
                        create: Some(herd_registry::NewModel {
                            name: name.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                entries.insert(name, out.version.version.to_string());
            }
            let (release, _) = reg
                .create_release(&herd_registry::ReleaseSpec {
                    entries,
                    note: None,
                    created_by: "test".into(),
                })
                .await
                .unwrap();
            reg.promote("production", &release.id, "test")
                .await
                .unwrap();
            herd_server::serving::RegistrySource::open(
                Arc::new(reg),
                "production",
                home.join("cache"),
            )
            .await
            .unwrap()
        }
    }
}

async fn start_on(kind: Src, repo: &Path, cfg: CoreConfig, auth: Auth) -> Server {
    let source = source_for(kind, repo).await;
    serve_core(Core::new(cfg, source, backend()), auth, 1 << 20).await
}

/// The charge of one more model, measured on a probe core (the first load also pays the
/// runtime's one-time setup, so it is left out): the smallest of the loads' charges, since
/// other tests' allocations during a load can only inflate one (they run in parallel).
async fn per_model_charge(repo: &Path, names: &[&str]) -> u64 {
    let probe = Core::new(
        big_budget(),
        Arc::new(DirectorySource::new(repo).unwrap()),
        backend(),
    );
    probe.load_model(names[0]).await.unwrap();
    let mut least = u64::MAX;
    for n in &names[1..] {
        let before = probe.stats().used_bytes;
        probe.load_model(n).await.unwrap();
        least = least.min(probe.stats().used_bytes - before);
    }
    least
}

/// Tests whose assertions depend on measured model sizes run alone (write), all others share
/// (read): the allocation counters are process-wide, and other tests' traffic would blur the
/// measurements.
static LANE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn big_budget() -> CoreConfig {
    CoreConfig {
        memory_budget: 1 << 30,
        ..CoreConfig::default()
    }
}

fn x_for(seed: u64) -> Vec<f32> {
    (0..DIM)
        .map(|i| ((seed as f32) * 0.37 + i as f32 * 0.11).sin())
        .collect()
}

fn infer_body(x: &[f32]) -> Value {
    json!({"id": "r1", "inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32", "data": x}]})
}

impl Server {
    async fn post(&self, path: &str, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, v, headers)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn infer_ok(&self, model: &str, seed: u64, x: &[f32]) {
        let (status, v, _) = self
            .post(&format!("/v2/models/{model}/infer"), &infer_body(x))
            .await;
        assert_eq!(status, 200, "{model}: {v}");
        let (labels, probs) = LinearClassifier::random(DIM, CLASSES, seed).predict(x);
        let out = v["outputs"].as_array().unwrap();
        let label = out.iter().find(|o| o["name"] == "label").unwrap();
        assert_eq!(label["data"][0].as_i64(), Some(labels[0]), "{model}");
        let p = out.iter().find(|o| o["name"] == "probabilities").unwrap();
        for (got, want) in p["data"].as_array().unwrap().iter().zip(&probs) {
            assert!(
                (got.as_f64().unwrap() as f32 - want).abs() < 1e-5,
                "{model}: {got} vs {want}"
            );
        }
    }
}

async fn json_infer_matches_reference_and_metadata_describes_the_model(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "acme", 11);
    let s = start_on(kind, &repo, big_budget(), Auth::open()).await;
    let (status, live) = s.get("/v2/health/live").await;
    assert_eq!((status, live.as_str()), (200, r#"{"live":true}"#));
    let (status, ready) = s.get("/v2/health/ready").await;
    assert_eq!((status, ready.as_str()), (200, r#"{"ready":true}"#));
    let (status, meta) = s.get("/v2/models/acme").await;
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["inputs"][0]["name"], "input");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, DIM]));
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(meta["state"], "UNLOADED");
    // Not loaded yet but loadable: ready (the first inference loads it), the state says so.
    let (status, r) = s.get("/v2/models/acme/ready").await;
    assert_eq!(status, 200);
    let r: Value = serde_json::from_str(&r).unwrap();
    assert_eq!(
        r,
        json!({"name": "acme", "version": "1", "ready": true, "state": "UNLOADED"})
    );
    s.infer_ok("acme", 11, &x_for(1)).await;
    let (status, r) = s.get("/v2/models/acme/ready").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&r).unwrap()["state"], "READY");
    let meta: Value = serde_json::from_str(&s.get("/v2/models/acme").await.1).unwrap();
    assert_eq!(meta["state"], "READY");
    assert_eq!(s.get("/v2/models/acme/versions/1/ready").await.0, 200);
    // A batch of three rows answers three rows.
    let x: Vec<f32> = (0..3).flat_map(x_for).collect();
    let (status, v, h) = s
        .post(
            "/v2/models/acme/versions/1/infer",
            &json!({"inputs": [{"name": "input", "shape": [3, DIM], "datatype": "FP32", "data": x}],
                    "outputs": [{"name": "label"}]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["outputs"].as_array().unwrap().len(),
        1,
        "only the requested output"
    );
    assert_eq!(v["outputs"][0]["shape"], json!([3]));
    assert_eq!(v["model_version"], "1");
    for name in ["x-queue-time", "x-inference-time", "x-total-time"] {
        assert!(h.contains_key(name), "missing timing header {name}");
    }
}
both_sources!(json_infer_matches_reference_and_metadata_describes_the_model);

async fn binary_tensor_extension_round_trips(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "bin", 5);
    let s = start_on(kind, &repo, big_budget(), Auth::open()).await;
    let x = x_for(3);
    let raw: Vec<u8> = x.iter().flat_map(|f| f.to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label"}]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&raw);
    let r = s
        .client
        .post(format!("{}/v2/models/bin/infer", s.url))
        .header("Inference-Header-Content-Length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    let probs_out = head["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    assert_eq!(
        probs_out["parameters"]["binary_data_size"],
        json!(CLASSES * 4)
    );
    let got: Vec<f32> = bytes[n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (labels, want) = LinearClassifier::random(DIM, CLASSES, 5).predict(&x);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5);
    }
    let label_out = head["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(label_out["data"][0].as_i64(), Some(labels[0]));
}
both_sources!(binary_tensor_extension_round_trips);

async fn concurrent_first_requests_share_one_load(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "hot", 1);
    let s = Arc::new(start_on(kind, &repo, big_budget(), Auth::open()).await);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.infer_ok("hot", 1, &x_for(i)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let st = s.core.stats();
    assert_eq!(
        st.loads, 1,
        "32 concurrent first requests must cause exactly one load: {st:?}"
    );
    assert_eq!(st.hits + st.misses, 32);
    assert_eq!(st.misses, 1);
}
both_sources!(concurrent_first_requests_share_one_load);

async fn budget_holds_under_a_concurrent_workload_over_1000_models(kind: Src) {
    let repo = temp_repo();
    for i in 0..1000 {
        write_model(&repo, &format!("m{i:04}"), i);
    }
    // Measure one model's charge on a probe core, then give the server room for about 40.
    let per = per_model_charge(
        &repo,
        &["m0000", "m0001", "m0002", "m0003", "m0004", "m0005"],
    )
    .await;
    let budget = per * 40;
    let s = Arc::new(
        start_on(
            kind,
            &repo,
            CoreConfig {
                memory_budget: budget,
                ..CoreConfig::default()
            },
            Auth::open(),
        )
        .await,
    );
    let tasks: Vec<_> = (0..16u64)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                // Every worker sweeps a different stride over all 1000 models, then repeats hot ones.
                for k in 0..130u64 {
                    let m = if k % 2 == 0 {
                        (w * 61 + k * 7) % 1000
                    } else {
                        k % 5
                    };
                    s.infer_ok(&format!("m{m:04}"), m, &x_for(k)).await;
                    let used = s.core.stats().used_bytes;
                    assert!(
                        used <= budget + budget / 20,
                        "used {used} > budget {budget} + 5%"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let st = s.core.stats();
    assert!(st.peak_used_bytes <= budget + budget / 20, "{st:?}");
    assert!(
        st.evictions > 100,
        "the workload must force evictions: {st:?}"
    );
    assert!(
        st.loaded_models < 200,
        "the cache must not hold all 1000 models: {st:?}"
    );
}
both_sources!(sized budget_holds_under_a_concurrent_workload_over_1000_models);

async fn models_in_use_and_pinned_models_are_never_evicted(kind: Src) {
    // Models of 512 KiB of weights: their charge is dominated by the file, so the budget below
    // holds four to five of them whatever the measurement noise.
    let repo = temp_repo();
    for i in 0..12u64 {
        let d = repo.join(format!("m{i}")).join("1");
        std::fs::create_dir_all(&d).unwrap();
        let bytes = LinearClassifier::random(1024, 128, i).to_onnx("m");
        std::fs::write(d.join("model.onnx"), bytes).unwrap();
    }
    let file = std::fs::metadata(repo.join("m0/1/model.onnx"))
        .unwrap()
        .len();
    write_config(&repo, "m11", "pinned = true");
    let s = start_on(
        kind,
        &repo,
        CoreConfig {
            memory_budget: file * 6,
            ..CoreConfig::default()
        },
        Auth::open(),
    )
    .await;
    assert_eq!(s.core.preload_pinned().await, 1);
    // Hold m0 as a request in flight would.
    let guard = s.core.get("m0", None).await.unwrap();
    for i in 1..11 {
        if let Err(e) = s.core.get(&format!("m{i}"), None).await {
            let idx: Vec<_> = s
                .core
                .index()
                .unwrap()
                .into_iter()
                .filter(|e| e.charge > 0)
                .map(|e| (e.name, e.charge, e.shared_bytes))
                .collect();
            panic!(
                "m{i}: {e}; file {file}; stats {:?}; charges {idx:?}",
                s.core.stats()
            );
        }
    }
    let st = s.core.stats();
    // Room for four or five models, two of them held: most of the ten loads must evict.
    assert!(st.evictions >= 3, "{st:?}");
    assert!(st.peak_used_bytes <= file * 6 + file * 6 / 20, "{st:?}");
    assert_eq!(
        s.core.state_of("m0", "1"),
        ModelState::Ready,
        "in-flight model evicted"
    );
    assert_eq!(
        s.core.state_of("m11", "1"),
        ModelState::Ready,
        "pinned model evicted"
    );
    drop(guard);
    for i in 1..11 {
        s.core.get(&format!("m{i}"), None).await.unwrap();
    }
    assert_eq!(
        s.core.state_of("m0", "1"),
        ModelState::Unloaded,
        "idle m0 should have been evicted"
    );
    assert_eq!(
        s.core.state_of("m11", "1"),
        ModelState::Ready,
        "pinned model evicted"
    );
}
both_sources!(sized models_in_use_and_pinned_models_are_never_evicted);

/// Directory only: a registry refuses a file that is not ONNX at push (its signature is read),
/// so no channel can hold the corrupt model this test serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_model_is_a_clear_error_and_the_server_stays_up() {
    let _lane = LANE.read().await;
    let repo = temp_repo();
    write_model(&repo, "good", 2);
    std::fs::create_dir_all(repo.join("broken").join("1")).unwrap();
    std::fs::write(
        repo.join("broken/1/model.onnx"),
        b"this is not an onnx file at all",
    )
    .unwrap();
    let s = start(&repo, big_budget(), Auth::open()).await;
    let (status, v, _) = s
        .post("/v2/models/broken/infer", &infer_body(&x_for(0)))
        .await;
    assert_eq!(status, 500, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("broken") && msg.contains("failed to load"),
        "{msg}"
    );
    assert_eq!(v["code"], "model_load_failed");
    // The server still serves other models, and the index shows the failure with its reason.
    s.infer_ok("good", 2, &x_for(0)).await;
    let (status, idx, _) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200);
    let broken = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "UNAVAILABLE");
    // A model whose last load failed is not ready, and says why.
    let (status, r) = s.get("/v2/models/broken/ready").await;
    assert_eq!(status, 503, "{r}");
    let r: Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["ready"], false);
    assert!(
        r["error"].as_str().unwrap().contains("failed to load"),
        "{r}"
    );
    assert!(broken["reason"]
        .as_str()
        .unwrap()
        .contains("failed to load"));
    let good = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "good")
        .unwrap();
    assert_eq!(good["state"], "READY");
    // A model too large for the whole budget is refused with 507 and says so.
    let tiny = start(
        &repo,
        CoreConfig {
            memory_budget: 1000,
            ..CoreConfig::default()
        },
        Auth::open(),
    )
    .await;
    let (status, v, _) = tiny
        .post("/v2/models/good/infer", &infer_body(&x_for(0)))
        .await;
    assert_eq!(status, 507, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("memory budget"),
        "{v}"
    );
}

async fn bad_requests_get_400_or_404_saying_what_was_expected(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "m", 1);
    let s = start_on(kind, &repo, big_budget(), Auth::open()).await;
    let wrong_shape = json!({"inputs": [{"name": "input", "shape": [1, DIM + 1], "datatype": "FP32", "data": vec![0.0; DIM + 1]}]});
    let (status, v, _) = s.post("/v2/models/m/infer", &wrong_shape).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("expected shape [-1, {DIM}]")),
        "{v}"
    );
    let wrong_type = json!({"inputs": [{"name": "input", "shape": [1, DIM], "datatype": "INT64", "data": vec![0; DIM]}]});
    let (status, v, _) = s.post("/v2/models/m/infer", &wrong_type).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("expected datatype FP32, got INT64"),
        "{v}"
    );
    let wrong_count = json!({"inputs": [{"name": "input", "shape": [2, DIM], "datatype": "FP32", "data": vec![0.0; DIM]}]});
    assert_eq!(s.post("/v2/models/m/infer", &wrong_count).await.0, 400);
    let (status, v, _) = s
        .post("/v2/models/nope/infer", &infer_body(&x_for(0)))
        .await;
    assert_eq!(status, 404);
    assert!(
        v["error"].as_str().unwrap().contains("'nope' not found"),
        "{v}"
    );
    assert_eq!(
        s.post("/v2/models/m/versions/9/infer", &infer_body(&x_for(0)))
            .await
            .0,
        404
    );
    let r = s
        .client
        .post(format!("{}/v2/models/m/infer", s.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, v, _) = s.post("/v2/models/m/infer", &json!({"inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32", "data": vec!["a"; DIM]}]})).await;
    assert_eq!(status, 400, "{v}");
    let (status, v, _) = s.post("/v2/models/m/infer", &json!({"inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32", "data": vec![0.0; DIM]}], "outputs": [{"name": "nope"}]})).await;
    assert_eq!(status, 400, "{v}");
    // Body over the limit: 413, answered on the Content-Length header before any body byte is
    // read. (Sent by hand: a client still writing the body when the server answers and closes
    // can see a broken pipe instead of the answer, as reqwest once did here on a loaded machine.)
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = s.url.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v2/models/m/infer HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            (1 << 20) + 1024
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
            .await
            .expect("the 413 comes without the body being sent")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // The server is still fine.
    s.infer_ok("m", 1, &x_for(2)).await;
}
both_sources!(bad_requests_get_400_or_404_saying_what_was_expected);

/// A backend whose inferences wait until the test opens a gate. It stands in for a slow model
/// so that the test can hold the model's only instance busy; what is tested is herd's queue.
struct GateBackend {
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

struct GateInstance {
    sig: herd_runtime::Signature,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    /// The load's own warm-up run (working-memory measurement) passes the gate.
    warmed: bool,
}

impl herd_runtime::Backend for GateBackend {
    fn platform(&self) -> &'static str {
        "gate"
    }
    fn load(
        &self,
        _path: &Path,
        _opts: &herd_runtime::LoadOptions,
    ) -> Result<Box<dyn herd_runtime::Instance>, herd_runtime::RuntimeError> {
        use herd_api::v2::{DataType, TensorMetadata};
        let t = |name: &str| TensorMetadata {
            name: name.into(),
            datatype: DataType::F32,
            shape: vec![-1, DIM as i64],
        };
        Ok(Box::new(GateInstance {
            sig: herd_runtime::Signature {
                inputs: vec![t("input")],
                outputs: vec![t("output")],
            },
            gate: self.gate.clone(),
            warmed: false,
        }))
    }
}

impl herd_runtime::Instance for GateInstance {
    fn signature(&self) -> &herd_runtime::Signature {
        &self.sig
    }
    fn run(
        &mut self,
        mut inputs: Vec<herd_api::v2::Tensor>,
    ) -> Result<Vec<herd_api::v2::Tensor>, herd_runtime::RuntimeError> {
        let (lock, cv) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open && self.warmed {
            open = cv.wait(open).unwrap();
        }
        drop(open);
        self.warmed = true;
        let mut t = inputs.remove(0);
        t.name = "output".into();
        Ok(vec![t])
    }
}

async fn full_queue_answers_429_with_retry_after_and_nothing_hangs(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "busy", 1);
    write_config(&repo, "busy", "max_batch_size = 1");
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let source = source_for(kind, &repo).await;
    let core = Core::new(
        CoreConfig {
            queue_capacity: 2,
            ..big_budget()
        },
        source,
        Arc::new(GateBackend { gate: gate.clone() }),
    );
    let s = Arc::new(serve_core(core.clone(), Auth::open(), 1 << 20).await);
    let send = |s: Arc<Server>| {
        tokio::spawn(async move {
            s.post("/v2/models/busy/infer", &infer_body(&x_for(0)))
                .await
        })
    };
    // One request runs (blocked at the gate), two wait: the queue is full.
    let running = send(s.clone());
    let mut waiting = vec![];
    for _ in 0..2 {
        waiting.push(send(s.clone()));
    }
    let depth = || core.queue_depths().iter().map(|(_, d)| *d).sum::<usize>();
    for _ in 0..500 {
        if depth() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        depth(),
        2,
        "two requests should wait behind the running one"
    );
    let (status, v, h) = s
        .post("/v2/models/busy/infer", &infer_body(&x_for(0)))
        .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["code"], "overloaded");
    assert_eq!(h["retry-after"], "1");
    // Open the gate: everything admitted finishes; nothing hangs.
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for t in std::iter::once(running).chain(waiting) {
        let (status, v, _) = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("hung")
            .unwrap();
        assert_eq!(status, 200, "{v}");
    }
}
both_sources!(full_queue_answers_429_with_retry_after_and_nothing_hangs);

async fn request_timeout_answers_504(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "slow", 1);
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let core = Core::new(
        CoreConfig {
            request_timeout: Duration::from_millis(200),
            ..big_budget()
        },
        source_for(kind, &repo).await,
        Arc::new(GateBackend { gate: gate.clone() }),
    );
    let s = serve_core(core, Auth::open(), 1 << 20).await;
    let r = s
        .client
        .post(format!("{}/v2/models/slow/infer", s.url))
        .json(&infer_body(&x_for(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("timed out"), "{v}");
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}
both_sources!(request_timeout_answers_504);

async fn dynamic_batching_merges_requests_and_keeps_answers_apart(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "b", 4);
    write_config(&repo, "b", "max_batch_size = 64\nmax_queue_delay_ms = 30");
    let s = Arc::new(start_on(kind, &repo, big_budget(), Auth::open()).await);
    s.infer_ok("b", 4, &x_for(0)).await;
    // The window is waited only while another request runs, so on a loaded machine one burst
    // can arrive spread out; a few bursts give it the chance (a batcher that never merges fails
    // all of them).
    let mut max_rows = 0;
    for _burst in 0..5 {
        let tasks: Vec<_> = (0..24u64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let x = x_for(100 + i);
                    let (status, v, h) = s.post("/v2/models/b/infer", &infer_body(&x)).await;
                    assert_eq!(status, 200);
                    let (labels, _) = LinearClassifier::random(DIM, CLASSES, 4).predict(&x);
                    let label = v["outputs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|o| o["name"] == "label")
                        .unwrap()
                        .clone();
                    assert_eq!(label["data"][0].as_i64(), Some(labels[0]));
                    h["x-batch-rows"]
                        .to_str()
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            max_rows = max_rows.max(t.await.unwrap());
        }
        if max_rows > 1 {
            break;
        }
    }
    assert!(
        max_rows > 1,
        "5 bursts of 24 concurrent requests with a 30 ms window never shared a batch"
    );
}
both_sources!(dynamic_batching_merges_requests_and_keeps_answers_apart);

async fn tokens_gate_tenants_and_the_repository_api(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "acme-model", 1);
    write_config(&repo, "acme-model", "tenant = \"acme\"");
    let text = format!(
        "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n[[token]]\nsha256 = \"{}\"\ntenant = \"globex\"\n[[token]]\nsha256 = \"{}\"\nadmin = true\n",
        hash_token("acme-token"),
        hash_token("globex-token"),
        hash_token("admin-token")
    );
    let s = start_on(kind, &repo, big_budget(), Auth::from_toml(&text).unwrap()).await;
    let send = |token: Option<&str>, path: &str| {
        let mut r = s
            .client
            .post(format!("{}{path}", s.url))
            .json(&infer_body(&x_for(0)));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let m = "/v2/models/acme-model/infer";
    let index = "/v2/repository/index";
    for (token, path, want) in [
        (None, m, 401),
        (Some("wrong"), m, 401),
        (Some("globex-token"), m, 403),
        (Some("acme-token"), m, 200),
        (Some("admin-token"), m, 200),
        (Some("acme-token"), index, 403),
        (Some("admin-token"), index, 200),
    ] {
        let got = send(token, path).await.unwrap().status();
        assert_eq!(got, want, "token {token:?} on {path}");
    }
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
}
both_sources!(tokens_gate_tenants_and_the_repository_api);

/// Directory only: it adds a model to the directory while the server runs (a channel changes
/// by a promote instead, tested in `serving::registry_source` and tests/python/test_channel.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repository_api_loads_unloads_and_sees_new_models() {
    let _lane = LANE.read().await;
    let repo = temp_repo();
    write_model(&repo, "a", 1);
    let s = start(&repo, big_budget(), Auth::open()).await;
    let (status, idx, _) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(idx.as_array().unwrap().len(), 1);
    assert_eq!(idx[0]["state"], "UNLOADED");
    assert_eq!(
        s.post("/v2/repository/models/a/load", &json!({})).await.0,
        200
    );
    assert_eq!(s.get("/v2/models/a/ready").await.0, 200);
    assert_eq!(
        s.post("/v2/repository/models/a/unload", &json!({})).await.0,
        200
    );
    // Unloaded but loadable on demand: still ready; the index shows it is not loaded.
    assert_eq!(s.get("/v2/models/a/ready").await.0, 200);
    let (_, idx, _) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(idx[0]["state"], "UNLOADED");
    assert_eq!(
        s.post("/v2/repository/models/nope/load", &json!({}))
            .await
            .0,
        404
    );
    // Added while running.
    write_model(&repo, "late", 9);
    s.infer_ok("late", 9, &x_for(1)).await;
    let (_, idx, _) = s
        .post("/v2/repository/index", &json!({"ready": true}))
        .await;
    let names: Vec<&str> = idx
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["late"]);
    // Metrics carry the cache and request series.
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "herd_infer_requests_total",
        "herd_cache_memory_used_bytes",
        "herd_cache_memory_budget_bytes",
        "herd_cache_loaded_models",
        "herd_model_load_duration_seconds",
        "herd_queue_depth",
    ] {
        assert!(text.contains(name), "metric {name} missing");
    }
}

async fn server_is_ready_only_after_pinned_preloads_and_not_while_draining(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "pinned", 3);
    write_config(&repo, "pinned", "pinned = true\n");
    let source = source_for(kind, &repo).await;
    let core = Core::new(big_budget(), source, backend());
    let state = AppState::new(core.clone(), Arc::new(Auth::open()), None);
    let health = state.health.clone();
    let app = herd_server::app(state.clone(), 1 << 20);
    let (addr, _h) = herd_server::spawn(app, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{addr}");
    let get = |p: &'static str| {
        let url = format!("{url}{p}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Live at once; not ready before the preload ran.
    assert_eq!(get("/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(
        get("/v2/health/ready").await,
        (503, json!({"ready": false}))
    );
    state.start().await.unwrap();
    assert_eq!(core.state_of("pinned", "1"), ModelState::Ready);
    assert_eq!(get("/v2/health/ready").await, (200, json!({"ready": true})));
    // Shutdown began (what the signal handler of `serve` does first): not ready, still live,
    // and requests on the still-open listener are served.
    health.begin_drain();
    assert_eq!(
        get("/v2/health/ready").await,
        (503, json!({"ready": false}))
    );
    assert_eq!(get("/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(get("/v2/models/pinned/ready").await.0, 200);
}
both_sources!(server_is_ready_only_after_pinned_preloads_and_not_while_draining);

async fn statistics_and_openai_errors_and_model_list_follow_tenants(kind: Src) {
    let repo = temp_repo();
    write_model(&repo, "mine", 1);
    write_config(&repo, "mine", "tenant = \"acme\"\n");
    write_model(&repo, "theirs", 2);
    write_config(&repo, "theirs", "tenant = \"other\"\n");
    write_model(&repo, "shared", 3);
    let text = format!(
        "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n",
        hash_token("acme-secret")
    );
    let s = start_on(kind, &repo, big_budget(), Auth::from_toml(&text).unwrap()).await;
    let get = |path: &str| {
        s.client
            .get(format!("{}{path}", s.url))
            .bearer_auth("acme-secret")
            .send()
    };
    let post = |path: &str, body: Value| {
        s.client
            .post(format!("{}{path}", s.url))
            .bearer_auth("acme-secret")
            .json(&body)
            .send()
    };
    // Two requests of 1 and 2 rows, one failure (wrong shape).
    for rows in [1usize, 2] {
        let x: Vec<f32> = (0..rows as u64).flat_map(x_for).collect();
        let r = post(
            "/v2/models/mine/infer",
            json!({"inputs": [{"name": "input", "shape": [rows, DIM], "datatype": "FP32", "data": x}]}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = post(
        "/v2/models/mine/infer",
        json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = get("/v2/models/mine/stats")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let st = &v["model_stats"][0];
    assert_eq!(st["name"], "mine");
    assert_eq!(st["version"], "1");
    assert_eq!(st["inference_count"], 3);
    assert_eq!(st["execution_count"], 2);
    assert_eq!(st["inference_stats"]["success"]["count"], 2);
    assert_eq!(st["inference_stats"]["fail"]["count"], 1);
    assert!(
        st["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(st["last_inference"].as_u64().unwrap() > 0);
    assert!(!st["batch_stats"].as_array().unwrap().is_empty());
    let v: Value = get("/v2/models/mine/versions/1/stats")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["model_stats"].as_array().unwrap().len(), 1);
    // All statistics: only the caller's models.
    let v: Value = get("/v2/models/stats").await.unwrap().json().await.unwrap();
    let names: Vec<&str> = v["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mine"]);
    assert_eq!(get("/v2/models/theirs/stats").await.unwrap().status(), 403);

    // OpenAI: the caller's models only; errors as OpenAI error objects.
    let v: Value = get("/v1/models").await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["mine", "shared"]);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["owned_by"], "acme");
    let r = get("/v1/models/nope").await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e,
        json!({"error": {"message": "model 'nope' not found in the repository",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
    );
    let r = post("/v1/embeddings", json!({"model": "theirs", "input": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "permission_error");
    assert_eq!(e["error"]["code"], "forbidden");
    let r = post("/v1/embeddings", json!({"model": "mine", "input": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a text pipeline"),
        "{e}"
    );
    let r = post(
        "/v1/embeddings",
        json!({"model": "mine", "input": [[100_256]]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "input");
    let r = s
        .client
        .get(format!("{}/v1/embeddings", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = get("/v1/no-such-thing").await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "not_found");
    // Without a token: 401 as an OpenAI authentication error.
    let r = s
        .client
        .get(format!("{}/v1/models", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error");
}
both_sources!(statistics_and_openai_errors_and_model_list_follow_tenants);
