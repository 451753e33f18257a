//! Acceptance for `herd k8s manifests`, as a new user would meet it:
//!
//! 1. the manifests are rendered by the real CLI, and `herd serve` is started with exactly the
//!    serving container's rendered arguments and environment (names and values: plain values,
//!    and `secretKeyRef`s resolved from the rendered Secret), with the Secret volumes written as
//!    files the way the kubelet mounts them and each `emptyDir` mapped to a temporary directory.
//!    The Secret's hosts are the local test services (PostgreSQL for the registry, the
//!    S3-compatible moto for artifacts). The release promoted with the registry CLI must be
//!    served, and a request without a token refused;
//! 2. every rendered object validates against the Kubernetes 1.31 and 1.33 JSON schemas in strict
//!    mode (unknown fields are errors) with `kubernetes-validate` (PyPI, schemas shipped in the
//!    package, no network); `kubectl apply --dry-run=client` runs in herd-scale's unit tests when
//!    kubectl reaches a cluster.
//!
//! Needs HERD_TEST_POSTGRES_URL / HERD_TEST_S3_ENDPOINT (`bash scripts/test-services.sh && source
//! .herd/test-env`), the ONNX Runtime library and `.venv` with kubernetes-validate
//! (`scripts/test-python.sh`). Under CI=true a missing piece fails; elsewhere it prints SKIPPED.
//!
//! Run: `cargo test -p herd --test k8s_install -- --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use herd_onnx::LinearClassifier;
use serde_json::Value;

mod support;
use support::{free_port, skip, unique, venv_bin, Kill, HERD};

/// Renders with the real CLI into `dir`; returns every object of every file.
fn render(dir: &Path, extra: &[&str]) -> Vec<(String, Value)> {
    let out = Command::new(HERD)
        .args(["k8s", "manifests", "--out"])
        .arg(dir)
        .args(extra)
        .env_remove("HERD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herd k8s manifests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut objects = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in text.split("---\n").filter(|d| !d.trim().is_empty()) {
            let v: Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            objects.push((name.clone(), v));
        }
    }
    objects
}

fn find<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

/// A fresh schema in the test PostgreSQL, selected by the URL's search_path.
fn postgres_url(base: &str) -> String {
    let schema = unique("herd_k8s_");
    let psql = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let out = Command::new(psql)
        .arg(base)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE SCHEMA {schema}"),
        ])
        .output()
        .expect("psql (Debian's postgresql package) runs");
    assert!(
        out.status.success(),
        "create schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options[search_path]={schema}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_serving_pod_serves_the_promoted_release_and_refuses_without_a_token() {
    let (Ok(pg), Ok(s3)) = (
        std::env::var("HERD_TEST_POSTGRES_URL"),
        std::env::var("HERD_TEST_S3_ENDPOINT"),
    ) else {
        skip("HERD_TEST_POSTGRES_URL / HERD_TEST_S3_ENDPOINT (scripts/test-services.sh)");
        return;
    };
    let runtime = Command::new(HERD)
        .args(["runtime", "path"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !runtime {
        skip("the ONNX Runtime library (herd runtime install)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = postgres_url(&pg);
    let bucket = unique("herd-k8s-").replace('_', "-");
    let client = reqwest::Client::new();
    let r = client.put(format!("{s3}/{bucket}")).send().await.unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let artifacts = format!("s3://{bucket}/models");
    let (key, secret) = ("testing", "testing");

    // The registry CLI, as an operator would use it: push two models, release, promote.
    let cli = |args: &[&str]| {
        let out = Command::new(HERD)
            .args(args)
            .env("HERD_REGISTRY", &registry)
            .env("HERD_ARTIFACTS", &artifacts)
            .env("AWS_ENDPOINT_URL", &s3)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("HERD_USER", "ops")
            .env_remove("HERD_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "herd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let weights = |m: u64, v: u64| LinearClassifier::random(8, 3, m * 10 + v);
    for m in 0..2u64 {
        for v in 1..=2u64 {
            let f = tmp.path().join(format!("m{m}v{v}.onnx"));
            std::fs::write(&f, weights(m, v).to_onnx("m")).unwrap();
            let name = format!("tenant-{m}");
            let mut args = vec!["model", "push", &name, f.to_str().unwrap()];
            if v == 1 {
                args.push("--create");
            }
            cli(&args);
        }
    }
    // The release: tenant-0 at v2, tenant-1 at v1.
    cli(&[
        "release",
        "create",
        "--set",
        "tenant-0=2",
        "--set",
        "tenant-1=1",
        "--promote",
        "production",
    ]);

    // A tokens file with one admin token, as the operator passes it to `herd k8s manifests`.
    let token = "herd_k8s_install_test_token_0123456789";
    let tokens = tmp.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nsha256 = \"{}\"\nadmin = true\n",
            herd_server::auth::hash_token(token)
        ),
    )
    .unwrap();

    let out_dir = tmp.path().join("manifests");
    let objects = render(
        &out_dir,
        &[
            "--serving-pool",
            "web",
            "--channel",
            "production",
            "--registry-url",
            &registry,
            "--artifacts-url",
            &artifacts,
            "--s3-endpoint",
            &s3,
            "--s3-access-key-id",
            key,
            "--s3-secret-access-key",
            secret,
            "--tokens",
            tokens.to_str().unwrap(),
            "--serve-memory-budget",
            "256MiB",
        ],
    );
    let dep = find(&objects, "Deployment", "herd-serve-web");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let conn = find(&objects, "Secret", "herd-connections");

    // Environment: exactly the rendered names and values.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let r = &e["valueFrom"]["secretKeyRef"];
            let secret = find(&objects, "Secret", r["name"].as_str().unwrap());
            secret["stringData"][r["key"].as_str().unwrap()]
                .as_str()
                .unwrap_or_else(|| panic!("secret key {r} missing"))
                .to_string()
        };
        env.insert(name, value);
    }
    assert_eq!(env["HERD_REGISTRY"], registry);
    assert_eq!(env["HERD_ARTIFACTS"], artifacts);
    assert_eq!(conn["stringData"]["AWS_ENDPOINT_URL"], s3.as_str());

    // Volumes: Secrets written as files (as the kubelet does), emptyDirs as fresh directories.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in c["volumeMounts"].as_array().unwrap() {
        let vname = m["name"].as_str().unwrap();
        let path = m["mountPath"].as_str().unwrap().to_string();
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vname)
            .unwrap();
        let local = tmp.path().join("volumes").join(vname);
        std::fs::create_dir_all(&local).unwrap();
        if let Some(sname) = vol["secret"]["secretName"].as_str() {
            let s = find(&objects, "Secret", sname);
            for (k, v) in s["stringData"].as_object().unwrap() {
                std::fs::write(local.join(k), v.as_str().unwrap()).unwrap();
            }
        } else {
            assert!(vol.get("emptyDir").is_some(), "unexpected volume {vol}");
        }
        mounts.push((path, local));
    }
    // Arguments: exactly the rendered ones, with mount paths mapped and the listener on loopback.
    let port = free_port();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap().to_string();
            if a == "0.0.0.0:8080" {
                return format!("127.0.0.1:{port}");
            }
            for (path, local) in &mounts {
                if let Some(rest) = a.strip_prefix(path.as_str()) {
                    return format!("{}{rest}", local.display());
                }
            }
            a
        })
        .collect();
    assert_eq!(args[0], "serve");
    println!("herd {}", args.join(" "));
    println!("env: {:?}", env.keys().cloned().collect::<Vec<String>>());
    let mut cmd = Command::new(HERD);
    cmd.args(&args)
        .env_clear()
        .envs(&env)
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("serve.log")).unwrap());
    // HOME and PATH as a container has them: HOME finds the ONNX Runtime library installed by
    // `herd runtime install` (the image sets HERD_ORT_LIB instead).
    for k in ["HOME", "PATH"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    let _server = Kill(cmd.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let ready_path = c["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    let mut ready = false;
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}{ready_path}")).send().await {
            if r.status().is_success() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "the rendered serving pod never became ready; log:\n{}",
        std::fs::read_to_string(tmp.path().join("serve.log")).unwrap_or_default()
    );

    let x: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) / 2.0).collect();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": x}]
    });
    // No token: refused.
    let r = client
        .post(format!("{base}/v2/models/tenant-0/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{}", r.text().await.unwrap_or_default());
    let r = client
        .post(format!("{base}/v2/models/tenant-0/infer"))
        .bearer_auth("herd_wrong_token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // With the token: the promoted release's versions answer, checked against references.
    for (m, v) in [(0u64, 2u64), (1, 1)] {
        let r = client
            .post(format!("{base}/v2/models/tenant-{m}/infer"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "tenant-{m}: {}", r.status());
        let out: Value = r.json().await.unwrap();
        assert_eq!(out["model_version"], v.to_string(), "{out}");
        let (labels, probs) = weights(m, v).predict(&x);
        let got: Vec<f64> = out["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probabilities")
            .map(|o| {
                o["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        if !got.is_empty() {
            for (a, b) in got.iter().zip(&probs) {
                assert!(
                    (a - *b as f64).abs() < 1e-4,
                    "tenant-{m}: {got:?} vs {probs:?}"
                );
            }
        }
        let label = out["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap()["data"][0]
            .as_i64();
        assert_eq!(label, labels.first().copied(), "tenant-{m}");
    }
    println!("served the promoted release (tenant-0 v2, tenant-1 v1); no token -> 401");
}

#[test]
fn every_rendered_object_validates_against_kubernetes_schemas_in_strict_mode() {
    let kv = venv_bin("kubernetes-validate");
    if !kv.exists() {
        skip("kubernetes-validate in .venv (scripts/test-python.sh installs scripts/requirements-test.txt)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (i, extra) in [
        vec![],
        vec![
            "--instance",
            "canary",
            "--queue",
            "default",
            "--queue",
            "nightly",
            "--serving-pool",
            "web",
            "--serving-pool",
            "batch",
            "--s3-endpoint",
            "http://minio.storage:9000",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("v{i}"));
        let objects = render(&dir, &extra);
        assert!(objects.len() > 20, "{}", objects.len());
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with("kustomization.yaml"))
            .collect();
        for version in ["1.31.0", "1.33.0"] {
            let out = Command::new(&kv)
                .args(["--strict", "--quiet", "-k", version])
                .args(&files)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubernetes-validate --strict -k {version} refused the manifests:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!(
            "variant {i}: {} objects valid against the 1.31 and 1.33 schemas (strict)",
            objects.len()
        );
    }
    // The validator can fail: an unknown field is an error in strict mode.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  portz: []\n",
    )
    .unwrap();
    let out = Command::new(&kv)
        .args(["--strict", "--quiet", "-k", "1.31.0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "strict mode must refuse unknown fields"
    );
}
