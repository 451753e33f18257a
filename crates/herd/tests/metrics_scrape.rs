//! The autoscaler's `/metrics` scrape against a real `herd serve` that runs with a tokens file
//! (as the rendered Kubernetes install does): with a token of the `metrics` scope (read from a
//! file, as `herd autoscale --metrics-token-file` does) it reads the invocation and memory
//! numbers; without a token, or with a token that may not read /metrics, it gets
//! `ScaleError::MetricsAuth` whose message names the flag to set, never an empty (zero-load)
//! observation.
//!
//! Runs the real `herd` binary on 127.0.0.1 port 0 with the real ONNX Runtime (skipped with a
//! message outside CI when the library is not installed: `herd runtime install`; fails under CI=true).
//!
//! Run: `cargo test -p herd --test metrics_scrape -- --nocapture`

use herd_scale::metrics_text::{read_token_file, scrape};
use herd_scale::ScaleError;
use serde_json::json;

mod support;
use support::{require_runtime, serve};

fn hash(t: &str) -> String {
    herd_server::auth::hash_token(t)
}

#[tokio::test]
async fn the_scrape_reads_a_token_protected_metrics_page_and_names_the_flag_when_refused() {
    if !require_runtime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    let m = repo.join("m0").join("1");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("model.onnx"),
        herd_onnx::LinearClassifier::random(4, 2, 7).to_onnx("m0"),
    )
    .unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nsha256 = \"{}\"\nadmin = true\n\
             [[token]]\nsha256 = \"{}\"\nscopes = [\"metrics\"]\n\
             [[token]]\nsha256 = \"{}\"\ntenant = \"t1\"\n",
            hash("root-token"),
            hash("scraper-token"),
            hash("tenant-token"),
        ),
    )
    .unwrap();
    // What `herd autoscale --metrics-token-file` reads: trimmed.
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "  scraper-token\n").unwrap();
    let token = read_token_file(&token_file).unwrap();
    assert_eq!(token, "scraper-token");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    assert!(matches!(
        read_token_file(&empty),
        Err(ScaleError::MetricsToken { .. })
    ));

    let (_server, base) = serve(
        &[
            "--repo",
            repo.to_str().unwrap(),
            "--no-auto-install",
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    let metrics = format!("{base}/metrics");
    let http = reqwest::Client::new();

    // Two inferences, so the model is loaded (memory) and counted (invocations).
    for _ in 0..2 {
        let r = http
            .post(format!("{base}/v2/models/m0/infer"))
            .bearer_auth("root-token")
            .json(&json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    let obs = scrape(&http, "s1", &metrics, Some(&token)).await.unwrap();
    assert_eq!(obs.id, "s1");
    assert!(
        obs.requests_total.unwrap_or(0.0) >= 2.0,
        "invocations: {obs:?}"
    );
    assert!(
        obs.memory_used_bytes.unwrap_or(0.0) > 0.0,
        "memory: {obs:?}"
    );
    assert!(
        obs.memory_budget_bytes.unwrap_or(0.0) > 0.0,
        "budget: {obs:?}"
    );
    println!("with the metrics token: {obs:?}");

    // No token: the clear error, naming the flag, not an empty observation.
    let e = scrape(&http, "s1", &metrics, None).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ScaleError::MetricsAuth { status: 401, .. }),
        "{msg}"
    );
    assert!(msg.contains("--metrics-token-file"), "{msg}");
    assert!(msg.contains("HERD_METRICS_TOKEN_FILE"), "{msg}");
    println!("without a token: {msg}");
    // An unknown token, and a known token without the scope.
    let e = scrape(&http, "s1", &metrics, Some("nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ScaleError::MetricsAuth { status: 401, .. }),
        "{e}"
    );
    let e = scrape(&http, "s1", &metrics, Some("tenant-token"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ScaleError::MetricsAuth { status: 403, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("scopes = [\"metrics\"]"), "{e}");
}
