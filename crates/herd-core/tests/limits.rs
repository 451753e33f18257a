//! Request limits and chunking through the real core: real ONNX Runtime, a real text pipeline
//! (a `herd_onnx::TextClassifier` model and a small WordPiece tokenizer), a real directory
//! repository. Requests just under each limit succeed and match one unchunked run; requests
//! over it get 413 naming the limit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herd_api::v2::{Tensor, TensorData};
use herd_api::{ErrorCode, HasErrorCode};
use herd_core::{Core, CoreConfig, DirectorySource, InferRequest, RequestLimits};
use herd_onnx::{LinearClassifier, TextClassifier};
use herd_runtime::OrtBackend;

const TOKENIZER: &str = include_str!("../../herd-pipeline/testdata/tiny-tokenizer.json");

fn backend() -> Arc<OrtBackend> {
    Arc::new(OrtBackend::new(None, 1, false).expect(
        "ONNX Runtime library not found: run `cargo run -p herd -- runtime install` (scripts/test.sh does)",
    ))
}

fn temp_repo() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "herd-core-limits-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A text classifier pipeline named `name` with the given extra config lines.
fn write_pipeline(repo: &Path, name: &str, config: &str) {
    let d = repo.join(name).join("1");
    std::fs::create_dir_all(&d).unwrap();
    let m = TextClassifier::random(64, 8, 3, 7);
    std::fs::write(d.join("model.onnx"), m.to_onnx(name)).unwrap();
    std::fs::write(repo.join(name).join("tokenizer.json"), TOKENIZER).unwrap();
    std::fs::write(
        repo.join(name).join("config.toml"),
        format!(
            "{config}\n[pipeline]\nmax_length = 16\n\n[pipeline.classifier]\nsoftmax = true\ntop_k = 3\n"
        ),
    )
    .unwrap();
}

fn core(repo: &Path, limits: RequestLimits) -> Arc<Core> {
    let source = Arc::new(DirectorySource::new(repo).unwrap());
    Core::new(
        CoreConfig {
            limits,
            ..CoreConfig::default()
        },
        source,
        backend(),
    )
}

fn texts_req(model: &str, texts: &[String]) -> InferRequest {
    InferRequest {
        model: model.into(),
        version: None,
        inputs: vec![Tensor::new(
            "text",
            vec![texts.len() as i64],
            TensorData::Bytes(texts.iter().map(|t| t.as_bytes().to_vec()).collect()),
        )],
        outputs: None,
    }
}

fn sample_texts(n: usize) -> Vec<String> {
    let words = ["hello", "world", "the", "cats", "cat", ",", "zebra"];
    (0..n)
        .map(|i| {
            (0..(i % 13))
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn scores(out: &herd_core::InferOutput) -> Vec<f32> {
    let t = out.outputs.iter().find(|t| t.name == "score").unwrap();
    match &t.data {
        TensorData::F32(v) => v.clone(),
        other => panic!("score is {other:?}"),
    }
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_are_chunked_by_max_batch_size_with_the_answers_of_one_run() {
    let repo = temp_repo();
    write_pipeline(&repo, "chunked", "max_batch_size = 4");
    write_pipeline(&repo, "whole", "max_batch_size = 64");
    let core = core(&repo, RequestLimits::default());
    let texts = sample_texts(37);
    let a = core.infer(texts_req("chunked", &texts)).await.unwrap();
    let b = core.infer(texts_req("whole", &texts)).await.unwrap();
    assert_eq!(a.batch_rows, 4, "chunks of at most max_batch_size rows");
    assert_eq!(b.batch_rows, 37);
    close(&scores(&a), &scores(&b));
    let labels = |o: &herd_core::InferOutput| {
        o.outputs
            .iter()
            .find(|t| t.name == "label")
            .unwrap()
            .clone()
    };
    assert_eq!(labels(&a), labels(&b));
    let tokens = |o: &herd_core::InferOutput| {
        o.outputs
            .iter()
            .find(|t| t.name == "token_count")
            .unwrap()
            .clone()
    };
    assert_eq!(tokens(&a), tokens(&b));
    assert_eq!(tokens(&a).shape, vec![37]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_limits_answer_413_naming_the_limit_and_just_under_succeeds() {
    let repo = temp_repo();
    write_pipeline(&repo, "p", "");
    write_pipeline(&repo, "few", "max_texts_per_request = 3");
    let limits = RequestLimits {
        max_texts_per_request: 10,
        max_chars_per_text: 1000,
        max_tokens_per_request: 100,
        ..RequestLimits::default()
    };
    let core = core(&repo, limits);
    // Texts per request: server default, and a model's override.
    core.infer(texts_req("p", &vec!["hello".to_string(); 10]))
        .await
        .unwrap();
    let e = core
        .infer(texts_req("p", &vec!["hello".to_string(); 11]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    assert_eq!(e.code().http_status(), 413);
    assert!(e.to_string().contains("max_texts_per_request = 10"), "{e}");
    core.infer(texts_req("few", &vec!["hello".to_string(); 3]))
        .await
        .unwrap();
    let e = core
        .infer(texts_req("few", &vec!["hello".to_string(); 4]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_texts_per_request = 3"), "{e}");

    // Total tokens: 10 texts of "hello world" = 4 tokens each = 40 tokens; max_length 16 caps
    // each long text at 16: 6 x 16 = 96 <= 100 passes, 7 x 16 = 112 does not.
    let long = "hello world the cat ".repeat(2); // 8 words + 2 specials = 10 tokens
    let longer = "hello ".repeat(40); // truncated to 16 tokens
    assert_eq!(long.len(), 40);
    let ok: Vec<String> = vec![longer.clone(); 6];
    let out = core.infer(texts_req("p", &ok)).await.unwrap();
    let TensorData::I64(counts) = &out
        .outputs
        .iter()
        .find(|t| t.name == "token_count")
        .unwrap()
        .data
    else {
        panic!()
    };
    assert_eq!(counts, &vec![16; 6]);
    let e = core
        .infer(texts_req("p", &vec![longer.clone(); 7]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("max_tokens_per_request = 100"),
        "{e}"
    );
    assert!(e.to_string().contains("112 tokens"), "{e}");
    // The upper bound alone (7 x 16) is over the limit here, but the exact count is not.
    let short: Vec<String> = vec![long; 9];
    core.infer(texts_req("p", &short)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_text_is_cut_before_tokenizing_and_answers_like_its_prefix() {
    let repo = temp_repo();
    write_pipeline(&repo, "p", "");
    write_pipeline(&repo, "strict", "max_chars_per_text = 20");
    let limits = RequestLimits {
        max_chars_per_text: 20,
        ..RequestLimits::default()
    };
    let core = core(&repo, limits);
    // Six megabytes of text: cut to 20 characters, so it answers like those 20.
    let huge = "cats hello the world ".repeat(300_000);
    let prefix = huge.chars().take(20).collect::<String>();
    let a = core
        .infer(texts_req("p", std::slice::from_ref(&huge)))
        .await
        .unwrap();
    let b = core.infer(texts_req("p", &[prefix])).await.unwrap();
    close(&scores(&a), &scores(&b));
    // A pipeline that does not truncate refuses it instead.
    std::fs::write(
        repo.join("strict").join("config.toml"),
        "max_chars_per_text = 20\n[pipeline]\nmax_length = 16\ntruncation = false\n\n[pipeline.classifier]\nsoftmax = true\ntop_k = 3\n",
    )
    .unwrap();
    let core = self::core(&repo, limits);
    let e = core
        .infer(texts_req("strict", &["hello world cats".to_string(), huge]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    assert!(e.to_string().contains("max_chars_per_text = 20"), "{e}");
    assert!(e.to_string().contains("text 1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_rows_are_chunked_and_bounded() {
    let repo = temp_repo();
    let d = repo.join("lin").join("1");
    std::fs::create_dir_all(&d).unwrap();
    let m = LinearClassifier::random(4, 3, 5);
    std::fs::write(d.join("model.onnx"), m.to_onnx("lin")).unwrap();
    std::fs::write(repo.join("lin").join("config.toml"), "max_batch_size = 8\n").unwrap();
    let core = core(
        &repo,
        RequestLimits {
            max_rows_per_request: 100,
            ..RequestLimits::default()
        },
    );
    let rows = 100;
    let x: Vec<f32> = (0..rows * 4)
        .map(|i| ((i * 37) % 11) as f32 / 7.0)
        .collect();
    let req = |n: usize| InferRequest {
        model: "lin".into(),
        version: None,
        inputs: vec![Tensor::new(
            "input",
            vec![n as i64, 4],
            TensorData::F32(x[..n * 4].to_vec()),
        )],
        outputs: None,
    };
    let out = core.infer(req(rows)).await.unwrap();
    assert_eq!(out.batch_rows, 8);
    let reference = m.predict(&x);
    let probs = out
        .outputs
        .iter()
        .find(|t| t.name == "probabilities")
        .expect("probabilities output");
    assert_eq!(probs.shape, vec![rows as i64, 3]);
    let TensorData::F32(p) = &probs.data else {
        panic!()
    };
    close(p, &reference.1);
    let big = InferRequest {
        model: "lin".into(),
        version: None,
        inputs: vec![Tensor::new(
            "input",
            vec![101, 4],
            TensorData::F32(vec![0.0; 404]),
        )],
        outputs: None,
    };
    let e = core.infer(big).await.unwrap_err();
    assert!(e.to_string().contains("max_rows_per_request = 100"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_the_same_loaded_or_not_and_does_not_load() {
    let repo = temp_repo();
    write_pipeline(&repo, "p", "");
    let core = core(&repo, RequestLimits::default());
    let before = core.signature("p", "1").await.unwrap();
    assert_eq!(core.state_of("p", "1"), herd_core::ModelState::Unloaded);
    assert_eq!(before.inputs.len(), 1);
    assert_eq!(before.inputs[0].name, "text");
    core.infer(texts_req("p", &["hello".to_string()]))
        .await
        .unwrap();
    let after = core.signature("p", "1").await.unwrap();
    assert_eq!(before, after);
}
