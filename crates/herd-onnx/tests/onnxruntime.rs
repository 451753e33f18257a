//! Generated models checked by independent tools: the Python `onnx` checker (with shape
//! inference) and onnxruntime, whose outputs must equal `LinearClassifier::predict`.
//!
//! Needs the project venv (`scripts/test-python.sh` builds `/work/main/.venv`). Without it the
//! test fails when `CI` is set and prints a loud SKIPPED otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use herd_onnx::{read_signature, LinearClassifier};

fn python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing and CI is set: run scripts/test-python.sh to build the venv",
            py.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found; run scripts/test-python.sh to check generated models \
         against onnxruntime",
        py.display()
    );
    None
}

const SCRIPT: &str = r#"
import json, sys
import numpy as np
import onnx, onnxruntime as ort
path, xpath = sys.argv[1], sys.argv[2]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
spec = json.load(open(xpath))
x = np.array(spec["x"], dtype=np.float32).reshape(spec["batch"], spec["dim"])
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
probs, label = sess.run(["probabilities", "label"], {"input": x})
print(json.dumps({
    "probabilities": [float(v) for v in probs.reshape(-1)],
    "label": [int(v) for v in label.reshape(-1)],
    "label_dtype": str(label.dtype),
    "probs_shape": list(probs.shape),
}))
"#;

#[test]
fn onnxruntime_matches_predict() {
    let Some(py) = python() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("herd-onnx-ort");
    std::fs::create_dir_all(&dir).unwrap();

    for (dim, classes, seed, batch) in [
        (4usize, 3usize, 1u64, 5usize),
        (32, 10, 7, 17),
        (1, 2, 99, 1),
    ] {
        let m = LinearClassifier::random(dim, classes, seed);
        let bytes = m.to_onnx(&format!("customer-{seed}"));
        read_signature(&bytes).expect("own model must parse");
        let model_path = dir.join(format!("m{seed}.onnx"));
        std::fs::write(&model_path, &bytes).unwrap();

        // inputs in [-3, 3) from a different generator than the weights
        let x: Vec<f32> = LinearClassifier::random(batch * dim, 1, seed + 1000)
            .weights
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let x_path = dir.join(format!("x{seed}.json"));
        std::fs::write(
            &x_path,
            serde_json::json!({"x": x, "batch": batch, "dim": dim}).to_string(),
        )
        .unwrap();

        let out = Command::new(&py)
            .arg("-c")
            .arg(SCRIPT)
            .arg(&model_path)
            .arg(&x_path)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (labels, probs) = m.predict(&x);

        assert_eq!(got["label_dtype"], "int64");
        assert_eq!(got["probs_shape"], serde_json::json!([batch, classes]));
        let ort_labels: Vec<i64> = serde_json::from_value(got["label"].clone()).unwrap();
        assert_eq!(ort_labels, labels, "labels for dim={dim} classes={classes}");
        let ort_probs: Vec<f32> = serde_json::from_value(got["probabilities"].clone()).unwrap();
        assert_eq!(ort_probs.len(), probs.len());
        for (i, (a, b)) in ort_probs.iter().zip(&probs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5,
                "probability {i}: onnxruntime {a} vs predict {b}"
            );
        }
    }
}

/// `read_signature` agrees with the Python `onnx` package on every fixture of
/// `scripts/make_fixtures.py`, and calls the corrupt one "not an ONNX model".
#[test]
fn signatures_of_fixtures_match_python_onnx() {
    let Some(py) = python() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_fixtures.py");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("herd-onnx-fixtures");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&dir)
        .arg("--big-mb")
        .arg("1")
        .output()
        .expect("run make_fixtures.py");
    assert!(
        out.status.success(),
        "make_fixtures.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("references.json")).unwrap()).unwrap();
    let models = refs["models"].as_object().unwrap();
    assert!(
        models.len() >= 15,
        "expected all fixtures, got {}",
        models.len()
    );
    let mut checked = 0;
    for (name, r) in models {
        let bytes = std::fs::read(dir.join(name).join("1/model.onnx")).unwrap();
        let result = read_signature(&bytes);
        if name == "corrupt" {
            let err = result.unwrap_err();
            assert!(err.to_string().starts_with("not an ONNX model"), "{err}");
            continue;
        }
        let sig = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &r["signature"];
        assert_eq!(
            serde_json::to_value(&sig.inputs).unwrap(),
            want["inputs"],
            "{name} inputs"
        );
        assert_eq!(
            serde_json::to_value(&sig.outputs).unwrap(),
            want["outputs"],
            "{name} outputs"
        );
        checked += 1;
    }
    assert_eq!(checked, models.len() - 1);
}

const TEXT_SCRIPT: &str = r#"
import json, sys
import numpy as np
import onnx, onnxruntime as ort
path, xpath = sys.argv[1], sys.argv[2]
onnx.checker.check_model(onnx.load(path), full_check=True)
spec = json.load(open(xpath))
shape = (spec["batch"], spec["seq"])
feeds = {k: np.array(spec[k], dtype=np.int64).reshape(shape) for k in ("input_ids", "attention_mask")}
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
(logits,) = sess.run(["logits"], feeds)
print(json.dumps({"logits": [float(v) for v in logits.reshape(-1)], "shape": list(logits.shape)}))
"#;

#[test]
fn onnxruntime_matches_text_classifier_predict() {
    let Some(py) = python() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("herd-onnx-ort");
    std::fs::create_dir_all(&dir).unwrap();
    let m = herd_onnx::TextClassifier::random(1024, 16, 4, 3);
    let model_path = dir.join("text.onnx");
    std::fs::write(&model_path, m.to_onnx("intent")).unwrap();
    // 3 texts, right-padded to 6 tokens; ids beyond the bucket count and a fully padded row
    let (batch, seq) = (3usize, 6usize);
    let ids: Vec<i64> = vec![
        101, 7592, 2088, 102, 0, 0, //
        101, 30000, 1024, 2047, 5, 102, //
        0, 0, 0, 0, 0, 0,
    ];
    let mask: Vec<i64> = vec![1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
    let x_path = dir.join("text.json");
    std::fs::write(
        &x_path,
        serde_json::json!({"batch": batch, "seq": seq, "input_ids": ids, "attention_mask": mask})
            .to_string(),
    )
    .unwrap();
    let out = Command::new(&py)
        .arg("-c")
        .arg(TEXT_SCRIPT)
        .arg(&model_path)
        .arg(&x_path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["shape"], serde_json::json!([batch, 4]));
    let ort_logits: Vec<f32> = serde_json::from_value(got["logits"].clone()).unwrap();
    let want = m.predict(&ids, &mask, batch, seq).unwrap();
    assert_eq!(ort_logits.len(), want.len());
    for (i, (a, b)) in ort_logits.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "logit {i}: onnxruntime {a} vs predict {b}"
        );
    }
}
