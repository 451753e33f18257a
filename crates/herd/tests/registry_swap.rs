//! Acceptance: `herd serve --channel production` switches releases of 1,000 models while clients
//! send requests continuously. Every request must succeed, and every answer must come from a
//! version in the old or the new release — checked by the version the server reports *and* by
//! comparing the returned probabilities with a reference computed here from that version's weights.
//!
//! Runs the real `herd` binary on 127.0.0.1 against a real SQLite registry and a local artifact
//! store, with the real ONNX Runtime (skipped with a message when the library is not installed:
//! `herd runtime install`). Prints timings for BENCHMARKS.md (never asserted).
//!
//! Run: `cargo test -p herd --test registry_swap -- --nocapture`

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_onnx::LinearClassifier;
use herd_registry::{NewModel, PushRequest, Registry, ReleaseSpec};
use serde_json::Value;

mod support;
use support::{free_port, runtime_available, Kill, HERD};
const MODELS: u64 = 1000;
const DIM: usize = 8;
const CLASSES: usize = 3;
const CLIENTS: usize = 8;

fn classifier(model: u64, version: i64) -> LinearClassifier {
    LinearClassifier::random(DIM, CLASSES, model * 10 + version as u64)
}

/// The version model `i` has in release 2.
fn served_in_r2(i: u64) -> i64 {
    if i & 1 == 0 {
        2
    } else {
        1
    }
}

fn name(i: u64) -> String {
    format!("tenant-{i:04}")
}

/// One client request's outcome.
struct Outcome {
    model: u64,
    status: u16,
    version: String,
    error: String,
    probs: Vec<f32>,
    started_after_swap: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_swap_of_1000_models_under_load_drops_nothing() {
    if !runtime_available() {
        let msg = "the ONNX Runtime library is not installed (run `herd runtime install`)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; the release swap acceptance test needs it");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("registry.db").display());
    let artifacts = dir.path().join("artifacts");
    let reg = Registry::open(&db, artifacts.to_str().unwrap())
        .await
        .unwrap();

    // 1,000 models, two versions each; release 1 = all v1, release 2 = all v2.
    let t = Instant::now();
    for i in 0..MODELS {
        for v in 1..=2 {
            reg.push(PushRequest {
                model: name(i),
                bytes: classifier(i, v).to_onnx(&name(i)).into(),
                created_by: "e2e".into(),
                create: Some(NewModel {
                    name: name(i),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    let push_s = t.elapsed().as_secs_f64();
    // Release 1: every model at version 1. Release 2: even models move to version 2, odd ones
    // stay at 1 (they must stay loaded through the switch).
    let spec = |changed: bool| ReleaseSpec {
        entries: (0..MODELS)
            .map(|i| {
                (
                    name(i),
                    if changed { served_in_r2(i) } else { 1 }.to_string(),
                )
            })
            .collect(),
        note: None,
        created_by: "e2e".into(),
    };
    let (r1, _) = reg.create_release(&spec(false)).await.unwrap();
    let (r2, _) = reg.create_release(&spec(true)).await.unwrap();
    reg.promote("production", &r1.id, "e2e").await.unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Kill(
        Command::new(HERD)
            .args([
                "serve",
                "--channel",
                "production",
                "--registry",
                &db,
                "--artifacts",
                artifacts.to_str().unwrap(),
                "--artifact-cache",
                dir.path().join("cache").to_str().unwrap(),
                "--channel-poll-ms",
                "100",
                // Old versions are retired one request timeout after the switch.
                "--request-timeout",
                "2",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--no-auto-install",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/v2/health/ready")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < ready_by, "herd serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cold path: object store -> disk cache -> memory -> first answer, then a warm request.
    let x: Vec<f32> = (0..DIM).map(|d| d as f32 * 0.25 - 1.0).collect();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, DIM], "data": x}]
    });
    let t = Instant::now();
    let r = http
        .post(format!("{base}/v2/models/{}/infer", name(999)))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    http.post(format!("{base}/v2/models/{}/infer", name(999)))
        .json(&body)
        .send()
        .await
        .unwrap();
    let warm_ms = t.elapsed().as_secs_f64() * 1000.0;

    // Clients: continuous requests to models spread over all 1,000.
    let stop = Arc::new(AtomicBool::new(false));
    let swapped = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, base, body, stop, swapped) = (
            http.clone(),
            base.clone(),
            body.clone(),
            stop.clone(),
            swapped.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = c as u64;
            while !stop.load(Ordering::SeqCst) {
                let model = (i * 7919) % MODELS;
                i += CLIENTS as u64;
                let started_after_swap = swapped.load(Ordering::SeqCst);
                let resp = http
                    .post(format!("{base}/v2/models/{}/infer", name(model)))
                    .json(&body)
                    .send()
                    .await;
                let (status, json) = match resp {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        (s, r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Err(_) => (0, Value::Null),
                };
                let probs = json["outputs"]
                    .as_array()
                    .and_then(|o| o.iter().find(|t| t["name"] == "probabilities"))
                    .and_then(|t| t["data"].as_array())
                    .map(|d| {
                        d.iter()
                            .filter_map(|v| v.as_f64())
                            .map(|v| v as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Outcome {
                    model,
                    status,
                    version: json["model_version"].as_str().unwrap_or("").to_string(),
                    error: json["error"].as_str().unwrap_or("").to_string(),
                    probs,
                    started_after_swap,
                });
            }
            out
        }));
    }

    // Let traffic run on release 1, then promote release 2 and wait until a probe sees it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ready_before = ready_models(&http, &base).await;
    let t = Instant::now();
    reg.promote("production", &r2.id, "e2e").await.unwrap();
    let switch_by = Instant::now() + Duration::from_secs(60);
    loop {
        let m: Value = http
            .get(format!("{base}/v2/models/{}", name(0)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["versions"] == serde_json::json!(["2"]) {
            // tenant-0000 is even: it moves to version 2
            break;
        }
        assert!(
            Instant::now() < switch_by,
            "the server never switched to release 2"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let visible_ms = t.elapsed().as_secs_f64() * 1000.0;
    swapped.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.unwrap());
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let swap_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("herd_registry_swap_seconds_sum")
                || l.starts_with("herd_registry_swap_seconds{quantile=\"1\"}")
        })
        .unwrap_or("herd_registry_swap_seconds: not exported")
        .to_string();

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        *by_version.entry(o.version.clone()).or_default() += 1;
    }
    println!(
        "BENCH swap: {} requests by {CLIENTS} clients, by version {by_version:?}, {} failed; \
         promote -> visible {visible_ms:.0} ms; {swap_line}; cold first answer {cold_ms:.1} ms, \
         warm {warm_ms:.1} ms; push of {} versions {push_s:.1}s",
        outcomes.len(),
        failed.len(),
        MODELS * 2
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {} status {}: {}",
        failed.len(),
        outcomes.len(),
        name(failed[0].model),
        failed[0].status,
        failed[0].error
    );
    // Each answer is from version 1 or 2 of the model asked, and its numbers are that version's.
    for o in &outcomes {
        let v: i64 = match o.version.as_str() {
            "1" => 1,
            "2" => 2,
            other => panic!(
                "{}: answer from version '{other}', not in either release",
                name(o.model)
            ),
        };
        let (_, want) = classifier(o.model, v).predict(&x);
        assert_eq!(o.probs.len(), want.len());
        for (a, b) in o.probs.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{}@{v}: {a} vs {b}", name(o.model));
        }
        if o.model % 2 == 1 {
            assert_eq!(
                v,
                1,
                "{}: unchanged model answered with version {v}",
                name(o.model)
            );
        }
        if o.started_after_swap {
            assert_eq!(
                v,
                served_in_r2(o.model),
                "{}: a request sent after the switch got the old version",
                name(o.model)
            );
        }
    }
    assert!(
        by_version.get("1").copied().unwrap_or(0) > 0,
        "no traffic before the switch"
    );
    assert!(
        by_version.get("2").copied().unwrap_or(0) > 0,
        "no traffic after the switch"
    );

    // Models whose version did not change were not reloaded: every odd model that was loaded
    // before the switch is still loaded, at version 1.
    let ready_after = ready_models(&http, &base).await;
    let kept: Vec<&String> = ready_before
        .iter()
        .filter(|(m, v)| {
            m.trim_start_matches("tenant-").parse::<u64>().unwrap_or(0) % 2 == 1
                && v.as_str() == "1"
        })
        .map(|(m, _)| m)
        .collect();
    assert!(
        !kept.is_empty(),
        "no unchanged model was loaded before the switch"
    );
    for m in &kept {
        assert!(
            ready_after.contains(&(m.to_string(), "1".to_string())),
            "{m} was unloaded by the switch although its version did not change"
        );
    }

    // Once no request can wait for them, the versions that left the release are unloaded: the
    // loaded count falls to the loaded entries of release 2 (the index lists only those).
    let retire_by = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let loaded = text
            .lines()
            .find(|l| l.starts_with("herd_cache_loaded_models"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as usize);
        let in_release = ready_models(&http, &base).await.len();
        if loaded == Some(in_release) {
            break;
        }
        assert!(
            Instant::now() < retire_by,
            "old versions were not retired: {loaded:?} loaded, {in_release} of them in release 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (model, version) pairs the repository index shows as READY (only the served release's).
async fn ready_models(
    http: &reqwest::Client,
    base: &str,
) -> std::collections::BTreeSet<(String, String)> {
    let index: Value = http
        .post(format!("{base}/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    index
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "READY")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["version"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}
