//! Text pipelines: a model whose `config.toml` declares a `[pipeline]` table takes text and
//! answers embeddings or labels. The tokenizer, the model and the post-processing are one unit
//! to the cache (loaded, charged and evicted together): each instance of the ONNX model is
//! wrapped in a [`PipelineInstance`] that shares one tokenizer.
//!
//! Served signature:
//! - input `text`: BYTES `[-1]` (one UTF-8 text per row);
//! - embedding models: output `embedding` FP32 `[-1, hidden]`;
//! - classifiers: outputs `label` BYTES `[-1, k]` and `score` FP32 `[-1, k]`, best first;
//! - cross-encoders (rerankers): inputs `text` and `text_pair` BYTES `[-1]` (row i is the pair
//!   `(text[i], text_pair[i])`, e.g. a query and one document); outputs `score` FP32 `[-1]`
//!   (`sigmoid(logit)`, or the logit when `[pipeline.cross_encoder] sigmoid = false`) and `logit`
//!   FP32 `[-1]`;
//! - all: `token_count` INT64 `[-1]` (tokens after truncation, for usage accounting).
//!
//! Texts batched together are padded to the longest of the batch; the attention mask keeps the
//! padding out, so answers are the same as for each text alone. A batch of texts of very
//! different lengths (a merged dynamic batch) is run as a few groups of similar length
//! ([`herd_pipeline::length_groups`]): less padding computed, the same answers.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use herd_api::v2::{DataType, Tensor, TensorData, TensorMetadata};
use herd_api::{ErrorCode, HasErrorCode};
use herd_pipeline::{Binding, PipelineConfig, PipelineError, PipelineKind, Preprocessor};
use herd_runtime::{Cancel, Instance, RuntimeError, Signature};

pub const TEXT_INPUT: &str = "text";
/// The second text of each pair, for cross-encoders.
pub const TEXT_PAIR_INPUT: &str = "text_pair";

pub(crate) struct PipelineShared {
    cfg: PipelineConfig,
    pre: Preprocessor,
    binding: Binding,
    signature: Signature,
    /// The cost model that splits a batch into groups of similar length.
    cost: herd_pipeline::RunCost,
}

fn parse(table: &toml::Table) -> Result<PipelineConfig, String> {
    let cfg: PipelineConfig = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e| format!("invalid [pipeline] table: {e}"))?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The signature a pipeline serves, from its config and the model's own signature (no
/// tokenizer needed): what metadata shows whether the model is loaded or not.
pub(crate) fn signature_for(table: &toml::Table, inner: &Signature) -> Result<Signature, String> {
    let cfg = parse(table)?;
    let binding = cfg
        .bind(&inner.inputs, &inner.outputs)
        .map_err(|e| e.to_string())?;
    Ok(served_signature(&cfg, &binding))
}

fn served_signature(cfg: &PipelineConfig, binding: &Binding) -> Signature {
    let rows = |name: &str, datatype, shape| TensorMetadata {
        name: name.to_string(),
        datatype,
        shape,
    };
    let mut outputs = match cfg.kind() {
        PipelineKind::Embedding(_) => {
            let hidden = binding.output.shape.last().copied().unwrap_or(-1);
            vec![rows("embedding", DataType::F32, vec![-1, hidden])]
        }
        PipelineKind::Classifier => {
            let k = cfg.classifier.as_ref().map(|c| c.top_k as i64).unwrap_or(1);
            let classes = binding.output.shape.last().copied().unwrap_or(-1);
            let k = if classes > 0 { k.min(classes) } else { -1 };
            vec![
                rows("label", DataType::Bytes, vec![-1, k]),
                rows("score", DataType::F32, vec![-1, k]),
            ]
        }
        PipelineKind::CrossEncoder => vec![
            rows("score", DataType::F32, vec![-1]),
            rows("logit", DataType::F32, vec![-1]),
        ],
    };
    outputs.push(rows("token_count", DataType::I64, vec![-1]));
    let mut inputs = vec![rows(TEXT_INPUT, DataType::Bytes, vec![-1])];
    if cfg.kind() == PipelineKind::CrossEncoder {
        inputs.push(rows(TEXT_PAIR_INPUT, DataType::Bytes, vec![-1]));
    }
    Signature { inputs, outputs }
}

/// Reads the `[pipeline]` table, loads the tokenizer (from the version directory, else the
/// model directory) and binds the config to the model's own signature.
pub(crate) fn prepare(
    table: &toml::Table,
    model_file: &Path,
    inner: &Signature,
) -> Result<Arc<PipelineShared>, String> {
    let cfg = parse(table)?;
    let version_dir = model_file.parent().unwrap_or(Path::new("."));
    let model_dir = version_dir.parent().unwrap_or(version_dir);
    let dir = match cfg.tokenizer_path(version_dir) {
        Ok(p) if p.is_file() => version_dir,
        _ => model_dir,
    };
    let pre = Preprocessor::load(dir, &cfg).map_err(|e| e.to_string())?;
    let binding = cfg
        .bind(&inner.inputs, &inner.outputs)
        .map_err(|e| e.to_string())?;
    let signature = served_signature(&cfg, &binding);
    // An embedding model's output is [batch, seq, hidden] or [batch, hidden]; other kinds
    // answer classes or logits there, and get the default hidden size.
    let hidden = match cfg.kind() {
        PipelineKind::Embedding(_) => binding.output.shape.last().copied().unwrap_or(0),
        _ => 0,
    };
    let hidden = usize::try_from(hidden).unwrap_or(0);
    Ok(Arc::new(PipelineShared {
        cfg,
        pre,
        binding,
        signature,
        cost: herd_pipeline::RunCost::for_hidden(hidden),
    }))
}

impl PipelineShared {
    pub(crate) fn pre(&self) -> &Preprocessor {
        &self.pre
    }
}

/// The inner model's inputs for `rows` texts of `max_length` tokens: the largest run of a
/// pipeline (for measuring its working memory).
pub(crate) fn warmup_tensors(p: &PipelineShared, rows: usize) -> Vec<Tensor> {
    let rows = rows.max(1);
    let len = p.pre.max_length();
    let n = rows * len;
    let enc = herd_pipeline::Encoded {
        batch: rows,
        seq_len: len,
        input_ids: vec![0; n],
        attention_mask: vec![1; n],
        token_type_ids: vec![0; n],
    };
    enc.to_tensors(&p.binding)
}

/// Whether a `[pipeline]` table truncates long texts (its `truncation`, default true). Read
/// from the config before the model is loaded, so text limits run before any work.
pub(crate) fn truncates(table: &toml::Table) -> bool {
    table
        .get("truncation")
        .and_then(toml::Value::as_bool)
        .unwrap_or(true)
}

/// Records the post-processing time when dropped (every return path of `run`).
struct PostTimer(Instant);

impl Drop for PostTimer {
    fn drop(&mut self) {
        metrics::histogram!("herd_pipeline_stage_seconds", "stage" => "post")
            .record(self.0.elapsed().as_secs_f64());
    }
}

pub(crate) struct PipelineInstance {
    inner: Box<dyn Instance>,
    shared: Arc<PipelineShared>,
}

impl PipelineInstance {
    pub(crate) fn new(inner: Box<dyn Instance>, shared: Arc<PipelineShared>) -> Self {
        PipelineInstance { inner, shared }
    }
}

fn request_error(e: PipelineError) -> RuntimeError {
    if e.code() == ErrorCode::InvalidInput {
        RuntimeError::InvalidInput(e.to_string())
    } else {
        RuntimeError::Run(e.to_string())
    }
}

impl Instance for PipelineInstance {
    fn signature(&self) -> &Signature {
        &self.shared.signature
    }

    fn sharing(&self) -> herd_runtime::shared::Sharing {
        self.inner.sharing()
    }

    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_cancellable(inputs, &Cancel::new())
    }

    fn run_cancellable(
        &mut self,
        inputs: Vec<Tensor>,
        cancel: &Cancel,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        let s = self.shared.clone();
        let kind = s.cfg.kind();
        let mut text = None;
        let mut pair = None;
        for t in inputs {
            match t.name.as_str() {
                TEXT_INPUT => text = Some(t),
                TEXT_PAIR_INPUT => pair = Some(t),
                _ => {}
            }
        }
        let text = text.ok_or_else(|| {
            RuntimeError::InvalidInput(format!("send the texts as input '{TEXT_INPUT}'"))
        })?;
        let texts =
            herd_pipeline::texts_from_tensor(TEXT_INPUT, &text.data).map_err(request_error)?;
        let pairs = match (kind, pair) {
            (PipelineKind::CrossEncoder, Some(p)) => {
                let p = herd_pipeline::texts_from_tensor(TEXT_PAIR_INPUT, &p.data)
                    .map_err(request_error)?;
                if p.len() != texts.len() {
                    return Err(RuntimeError::InvalidInput(format!(
                        "'{TEXT_INPUT}' has {} texts but '{TEXT_PAIR_INPUT}' has {}; send one \
                         second text per pair",
                        texts.len(),
                        p.len()
                    )));
                }
                p
            }
            (PipelineKind::CrossEncoder, None) => {
                return Err(RuntimeError::InvalidInput(format!(
                    "a cross-encoder takes pairs: send the second texts as input \
                     '{TEXT_PAIR_INPUT}'"
                )))
            }
            _ => Vec::new(),
        };
        let n = texts.len();
        if n == 0 {
            return Ok(s
                .signature
                .outputs
                .iter()
                .map(|o| {
                    let mut shape = o.shape.clone();
                    shape[0] = 0;
                    for d in shape.iter_mut().skip(1) {
                        *d = (*d).max(0);
                    }
                    Tensor::new(
                        o.name.clone(),
                        shape,
                        TensorData::empty(o.datatype).unwrap_or(TensorData::F32(vec![])),
                    )
                })
                .collect());
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let enc = if kind == PipelineKind::CrossEncoder {
            let pairs: Vec<(&str, &str)> = refs
                .iter()
                .zip(&pairs)
                .map(|(a, b)| (*a, b.as_str()))
                .collect();
            s.pre.encode_pairs(&pairs)
        } else {
            s.pre.encode(&refs)
        }
        .map_err(request_error)?;
        let t1 = Instant::now();
        metrics::histogram!("herd_pipeline_stage_seconds", "stage" => "tokenize")
            .record(t1.duration_since(t0).as_secs_f64());
        let lengths = enc.lengths();
        // Texts of very different lengths (a merged dynamic batch) run as groups of similar
        // length: less padding computed. One group is the batch as it is.
        // (`length_groups = false` in [pipeline]: always one run.)
        let groups = if s.cfg.length_groups {
            herd_pipeline::length_groups(&lengths, &s.cost)
        } else {
            vec![(0..n).collect()]
        };
        let answer = if groups.len() == 1 {
            self.run_group(&enc, cancel)?
        } else {
            metrics::counter!("herd_pipeline_length_groups_total").increment(groups.len() as u64);
            let mut parts = Vec::with_capacity(groups.len());
            for g in groups {
                if cancel.is_cancelled() {
                    return Err(RuntimeError::Cancelled);
                }
                let len = g.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                let answer = self.run_group(&enc.select(&g, len), cancel)?;
                parts.push((g, answer));
            }
            Answer::scatter(parts, n)?
        };
        let tokens = Tensor::new(
            "token_count",
            vec![n as i64],
            TensorData::I64(lengths.into_iter().map(|l| l as i64).collect()),
        );
        Ok(answer.into_tensors(n, tokens))
    }
}

/// The post-processed answers of some texts, one entry per text.
enum Answer {
    /// Cross-encoders: one logit per pair (scores are computed from them).
    Logits {
        logits: Vec<f32>,
        sigmoid: bool,
    },
    Embeddings(Vec<Vec<f32>>),
    /// Classifiers: the top-k `(label, score)` of each text.
    Labels(Vec<Vec<(String, f32)>>),
}

impl Answer {
    fn len(&self) -> usize {
        match self {
            Answer::Logits { logits, .. } => logits.len(),
            Answer::Embeddings(v) => v.len(),
            Answer::Labels(v) => v.len(),
        }
    }

    /// The answers of `n` texts from those of groups of them (`(rows, answer)`: `answer`'s
    /// entry k is text `rows[k]`'s), back in the texts' order.
    fn scatter(parts: Vec<(Vec<usize>, Answer)>, n: usize) -> Result<Answer, RuntimeError> {
        fn place<T>(slots: &mut [Option<T>], rows: &[usize], values: Vec<T>) {
            for (&r, v) in rows.iter().zip(values) {
                slots[r] = Some(v);
            }
        }
        let mut sigmoid = true;
        let mut logits: Vec<Option<f32>> = Vec::new();
        let mut embeddings: Vec<Option<Vec<f32>>> = Vec::new();
        let mut labels: Vec<Option<Vec<(String, f32)>>> = Vec::new();
        let mut kind = None;
        for (rows, answer) in parts {
            if answer.len() != rows.len() {
                return Err(RuntimeError::Run(format!(
                    "the model answered {} rows for a group of {}",
                    answer.len(),
                    rows.len()
                )));
            }
            match answer {
                Answer::Logits {
                    logits: l,
                    sigmoid: sg,
                } => {
                    sigmoid = sg;
                    logits.resize(n, None);
                    place(&mut logits, &rows, l);
                    kind = Some(0);
                }
                Answer::Embeddings(e) => {
                    embeddings.resize(n, None);
                    place(&mut embeddings, &rows, e);
                    kind = Some(1);
                }
                Answer::Labels(l) => {
                    labels.resize(n, None);
                    place(&mut labels, &rows, l);
                    kind = Some(2);
                }
            }
        }
        fn all<T>(slots: Vec<Option<T>>) -> Result<Vec<T>, RuntimeError> {
            slots
                .into_iter()
                .enumerate()
                .map(|(i, v)| v.ok_or_else(|| RuntimeError::Run(format!("text {i} got no answer"))))
                .collect()
        }
        Ok(match kind {
            Some(0) => Answer::Logits {
                logits: all(logits)?,
                sigmoid,
            },
            Some(1) => Answer::Embeddings(all(embeddings)?),
            Some(2) => Answer::Labels(all(labels)?),
            _ => return Err(RuntimeError::Run("no group answered".into())),
        })
    }

    /// The served outputs of `n` texts, `tokens` (their `token_count`) last.
    fn into_tensors(self, n: usize, tokens: Tensor) -> Vec<Tensor> {
        match self {
            Answer::Logits { logits, sigmoid } => {
                let scores: Vec<f32> = if sigmoid {
                    logits.iter().map(|&l| herd_pipeline::sigmoid(l)).collect()
                } else {
                    logits.clone()
                };
                vec![
                    Tensor::new("score", vec![n as i64], TensorData::F32(scores)),
                    Tensor::new("logit", vec![n as i64], TensorData::F32(logits)),
                    tokens,
                ]
            }
            Answer::Embeddings(vecs) => {
                let dim = vecs.first().map(Vec::len).unwrap_or(0);
                let flat: Vec<f32> = vecs.into_iter().flatten().collect();
                vec![
                    Tensor::new(
                        "embedding",
                        vec![n as i64, dim as i64],
                        TensorData::F32(flat),
                    ),
                    tokens,
                ]
            }
            Answer::Labels(rows) => {
                let k = rows.first().map(Vec::len).unwrap_or(0);
                let mut labels = Vec::with_capacity(n * k);
                let mut scores = Vec::with_capacity(n * k);
                for row in rows {
                    for (l, sc) in row {
                        labels.push(l.into_bytes());
                        scores.push(sc);
                    }
                }
                let shape = vec![n as i64, k as i64];
                vec![
                    Tensor::new("label", shape.clone(), TensorData::Bytes(labels)),
                    Tensor::new("score", shape, TensorData::F32(scores)),
                    tokens,
                ]
            }
        }
    }
}

impl PipelineInstance {
    /// Runs the model on one padded batch and post-processes its output: one answer per row.
    fn run_group(
        &mut self,
        enc: &herd_pipeline::Encoded,
        cancel: &Cancel,
    ) -> Result<Answer, RuntimeError> {
        let s = &self.shared;
        let t1 = Instant::now();
        let outputs = self
            .inner
            .run_cancellable(enc.to_tensors(&s.binding), cancel)?;
        metrics::histogram!("herd_pipeline_stage_seconds", "stage" => "model")
            .record(t1.elapsed().as_secs_f64());
        let _post = PostTimer(Instant::now());
        let out = outputs
            .iter()
            .find(|o| o.name == s.binding.output.name)
            .ok_or_else(|| {
                RuntimeError::Run(format!(
                    "the model did not produce '{}'",
                    s.binding.output.name
                ))
            })?;
        let (values, shape) = herd_pipeline::f32_output(out).map_err(request_error)?;
        Ok(match s.cfg.kind() {
            PipelineKind::CrossEncoder => Answer::Logits {
                logits: herd_pipeline::pair_logits(values, &shape).map_err(request_error)?,
                sigmoid: s.cfg.cross_encoder.as_ref().is_none_or(|c| c.sigmoid),
            },
            PipelineKind::Embedding(pooling) => Answer::Embeddings(
                herd_pipeline::embeddings(
                    values,
                    &shape,
                    &enc.attention_mask,
                    pooling,
                    s.cfg.normalize,
                )
                .map_err(request_error)?,
            ),
            PipelineKind::Classifier => {
                let cc = s
                    .cfg
                    .classifier
                    .as_ref()
                    .ok_or_else(|| RuntimeError::Run("classifier settings missing".into()))?;
                Answer::Labels(herd_pipeline::classify(values, &shape, cc).map_err(request_error)?)
            }
        })
    }
}

/// A text pipeline's tokenizer, for the tokenize / decode operations (TEI's `/tokenize` and
/// `/decode`). The model is loaded (or kept loaded) for as long as the tokenizer is used.
impl crate::Core {
    async fn pipeline_of(
        self: &Arc<Self>,
        model: &str,
    ) -> Result<(Arc<crate::cache::Served>, Arc<PipelineShared>), crate::CoreError> {
        let served = self.get(model, None).await?;
        let p = served.pipeline.clone().ok_or_else(|| {
            crate::CoreError::InvalidInput(format!(
                "model '{model}' is not a text pipeline (no [pipeline] table): it has no tokenizer"
            ))
        })?;
        Ok((served, p))
    }

    /// The tokens of each text, with offsets, by the model's own tokenizer and truncation.
    pub async fn tokenize(
        self: &Arc<Self>,
        model: &str,
        texts: Vec<String>,
        add_special: bool,
    ) -> Result<Vec<Vec<herd_pipeline::Token>>, crate::CoreError> {
        let (entry, _) = self.resolve(model, None)?;
        let limits = self.config().limits.for_model(&entry.config);
        let truncation = entry.config.pipeline.as_ref().is_none_or(truncates);
        let mut t = Tensor::new(
            TEXT_INPUT,
            vec![texts.len() as i64],
            TensorData::Bytes(texts.into_iter().map(String::into_bytes).collect()),
        );
        crate::limits::limit_texts(model, &limits, truncation, &mut t)?;
        let TensorData::Bytes(texts) = t.data else {
            return Ok(Vec::new());
        };
        let (served, p) = self.pipeline_of(model).await?;
        tokio::task::spawn_blocking(move || {
            let _keep = served;
            texts
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let text = std::str::from_utf8(b).map_err(|e| {
                        crate::CoreError::InvalidInput(format!("text {i} is not UTF-8: {e}"))
                    })?;
                    p.pre()
                        .tokenize(text, add_special)
                        .map_err(|e| crate::CoreError::InvalidInput(format!("text {i}: {e}")))
                })
                .collect()
        })
        .await
        .map_err(|_| crate::CoreError::ShuttingDown)?
    }

    /// Token ids back to text, one string per id list, by the model's own tokenizer.
    pub async fn decode(
        self: &Arc<Self>,
        model: &str,
        ids: Vec<Vec<u32>>,
        skip_special: bool,
    ) -> Result<Vec<String>, crate::CoreError> {
        let (entry, _) = self.resolve(model, None)?;
        let limits = self.config().limits.for_model(&entry.config);
        if ids.len() > limits.max_texts_per_request {
            return Err(crate::limits::exceeded(
                model,
                "max_texts_per_request",
                limits.max_texts_per_request,
                ids.len(),
                "id lists in one request",
            ));
        }
        let total: usize = ids.iter().map(Vec::len).sum();
        if total > limits.max_tokens_per_request {
            return Err(crate::limits::exceeded(
                model,
                "max_tokens_per_request",
                limits.max_tokens_per_request,
                total,
                "token ids in one request",
            ));
        }
        let (served, p) = self.pipeline_of(model).await?;
        tokio::task::spawn_blocking(move || {
            let _keep = served;
            ids.iter()
                .enumerate()
                .map(|(i, v)| {
                    p.pre()
                        .decode(v, skip_special)
                        .map_err(|e| crate::CoreError::InvalidInput(format!("ids {i}: {e}")))
                })
                .collect()
        })
        .await
        .map_err(|_| crate::CoreError::ShuttingDown)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A tiny BERT-style tokenizer: lower-casing, WordPiece, `[CLS] text [SEP]`, pad id 0.
    const TOKENIZER: &str = include_str!("../../herd-pipeline/testdata/tiny-tokenizer.json");

    /// A token-level "encoder": token t of a row becomes `[id, position of t, 1]`, so mean
    /// pooling depends on every real token and on nothing else. Records the `[batch, seq]`
    /// of every run.
    struct Encoder {
        sig: Signature,
        runs: Runs,
    }

    impl Instance for Encoder {
        fn signature(&self) -> &Signature {
            &self.sig
        }
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
            let ids = &inputs[0];
            let (b, l) = (ids.shape[0] as usize, ids.shape[1] as usize);
            self.runs.lock().push((b, l));
            let TensorData::I64(v) = &ids.data else {
                return Err(RuntimeError::Run("ids not i64".into()));
            };
            let mut out = Vec::with_capacity(b * l * 3);
            for (k, &id) in v.iter().enumerate() {
                out.extend([id as f32, (k % l) as f32, 1.0]);
            }
            Ok(vec![Tensor::new(
                "last_hidden_state",
                vec![b as i64, l as i64, 3],
                TensorData::F32(out),
            )])
        }
    }

    /// The `[batch, seq]` of every run, in order.
    type Runs = Arc<Mutex<Vec<(usize, usize)>>>;

    fn pipeline(extra: &str) -> (PipelineInstance, Runs) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herd-core-pipeline-groups-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let version = dir.join("1");
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
        let i64_rows = |name: &str| TensorMetadata {
            name: name.into(),
            datatype: DataType::I64,
            shape: vec![-1, -1],
        };
        let sig = Signature {
            inputs: vec![i64_rows("input_ids"), i64_rows("attention_mask")],
            outputs: vec![TensorMetadata {
                name: "last_hidden_state".into(),
                datatype: DataType::F32,
                shape: vec![-1, -1, 3],
            }],
        };
        let table: toml::Table =
            toml::from_str(&format!("max_length = 64\npooling = \"mean\"\n{extra}")).unwrap();
        let shared = prepare(&table, &version.join("model.onnx"), &sig).unwrap();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let inner = Encoder {
            sig,
            runs: runs.clone(),
        };
        (PipelineInstance::new(Box::new(inner), shared), runs)
    }

    fn texts(t: &[String]) -> Vec<Tensor> {
        vec![Tensor::new(
            TEXT_INPUT,
            vec![t.len() as i64],
            TensorData::Bytes(t.iter().map(|s| s.clone().into_bytes()).collect()),
        )]
    }

    #[test]
    fn a_batch_of_short_and_long_texts_runs_as_length_groups_with_the_answers_of_each_alone() {
        // Six 1-word texts and two 40-word texts, mixed: one run would pad all eight to 42
        // tokens.
        let long = ["the cat"; 20].join(" ");
        let batch: Vec<String> = [
            "hello", "world", &long, "cat", "the", &long, "hello", "cats",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (mut p, runs) = pipeline("");
        let out = p.run(texts(&batch)).unwrap();
        // Two runs: the six short texts at their own length, the two long ones at theirs.
        let mut seen = runs.lock().clone();
        seen.sort_unstable();
        assert_eq!(seen, vec![(2, 42), (6, 4)], "{seen:?}");
        // Each text's embedding and token count are those of the text alone, in the order
        // sent.
        let TensorData::F32(emb) = &out[0].data else {
            panic!("embedding not f32");
        };
        assert_eq!(out[0].shape, vec![8, 3]);
        assert_eq!(out[1].name, "token_count");
        let mut want_tokens = Vec::new();
        for (i, t) in batch.iter().enumerate() {
            let alone = p.run(texts(std::slice::from_ref(t))).unwrap();
            let TensorData::F32(a) = &alone[0].data else {
                panic!("embedding not f32");
            };
            assert_eq!(&emb[i * 3..(i + 1) * 3], a.as_slice(), "text {i}");
            let TensorData::I64(n) = &alone[1].data else {
                panic!("token_count not i64");
            };
            want_tokens.push(n[0]);
        }
        assert_eq!(out[1].data, TensorData::I64(want_tokens));

        // length_groups = false: one run padded to the longest, the same answers.
        let (mut q, runs) = pipeline("length_groups = false\n");
        let one = q.run(texts(&batch)).unwrap();
        assert_eq!(*runs.lock(), vec![(8, 42)]);
        assert_eq!(one, out);
    }

    #[test]
    fn texts_of_similar_length_stay_one_run() {
        let batch: Vec<String> = ["hello world", "the cat", "cats, the", "world hello"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (mut p, runs) = pipeline("");
        let out = p.run(texts(&batch)).unwrap();
        assert_eq!(*runs.lock(), vec![(4, 6)]);
        assert_eq!(out[0].shape, vec![4, 3]);
    }
}
