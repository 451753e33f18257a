//! The `[pipeline]` table of a model's `config.toml`.
//!
//! ```toml
//! [pipeline]
//! tokenizer = "tokenizer.json"   # beside the model; a relative path inside the model directory
//! max_length = 256               # tokens, special tokens included
//! truncation = true              # longer texts are cut to max_length (false: they are an error)
//! padding = "longest"            # a batch is padded to its longest text
//! length_groups = true           # texts of very different lengths run as groups of similar
//!                                # length, each padded to its longest (false: one run)
//! pooling = "mean"               # embedding models: "mean" | "cls" | "max"
//! normalize = true               # embedding models: L2-normalise the pooled vector
//! # output = "last_hidden_state" # the ONNX output to post-process (default: the first)
//!
//! # [pipeline.inputs]            # ONNX input names, if the model uses other names
//! # input_ids = "input_ids"
//! # attention_mask = "attention_mask"
//! # token_type_ids = "token_type_ids"
//!
//! # classifiers declare this table instead of pooling/normalize:
//! # [pipeline.classifier]
//! # softmax = true
//! # top_k = 3
//! # labels = ["billing", "bug", "other"]
//!
//! # cross-encoders (rerankers: a query-document pair in, one relevance logit out) declare:
//! # [pipeline.cross_encoder]
//! # sigmoid = true               # score = sigmoid(logit); false: score = the raw logit
//! ```

use std::path::{Component, Path, PathBuf};

use herd_api::v2::{DataType, TensorMetadata};
use serde::{Deserialize, Serialize};

use crate::PipelineError;

/// Longest `max_length` accepted; far above any BERT-style position table, low enough that a typo
/// (an extra zero) cannot make one request allocate gigabytes.
pub const MAX_LENGTH_LIMIT: usize = 32_768;

/// The `[pipeline]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Path of the tokenizer file, relative to the model directory.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// Maximum tokens per text, special tokens included.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Cut longer texts to `max_length` (true) or reject them (false).
    #[serde(default = "default_true")]
    pub truncation: bool,
    #[serde(default)]
    pub padding: Padding,
    /// Run a batch of texts of very different lengths as groups of similar length (less
    /// padding computed; see [`crate::length_groups`]); false: always one run.
    #[serde(default = "default_true")]
    pub length_groups: bool,
    /// Pooling of an embedding model's token vectors; `None` for classifiers.
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// L2-normalise embeddings.
    #[serde(default)]
    pub normalize: bool,
    /// The ONNX output to post-process; `None` means the model's first output.
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub inputs: InputNames,
    /// Present for classifiers.
    #[serde(default)]
    pub classifier: Option<ClassifierConfig>,
    /// Present for cross-encoders (sequence-pair classifiers with one logit per pair).
    #[serde(default)]
    pub cross_encoder: Option<CrossEncoderConfig>,
}

fn default_tokenizer() -> String {
    "tokenizer.json".into()
}
fn default_max_length() -> usize {
    256
}
fn default_true() -> bool {
    true
}

/// How a batch of texts is padded. Only `"longest"` (pad to the longest text in the batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    #[default]
    Longest,
}

/// Reduction of `[seq, hidden]` token vectors to one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the tokens whose attention mask is 1.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the tokens whose attention mask is 1.
    Max,
}

/// The ONNX input names the encoded tensors are bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputNames {
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    #[serde(default = "default_attention_mask")]
    pub attention_mask: String,
    #[serde(default = "default_token_type_ids")]
    pub token_type_ids: String,
}

fn default_input_ids() -> String {
    "input_ids".into()
}
fn default_attention_mask() -> String {
    "attention_mask".into()
}
fn default_token_type_ids() -> String {
    "token_type_ids".into()
}

impl Default for InputNames {
    fn default() -> Self {
        InputNames {
            input_ids: default_input_ids(),
            attention_mask: default_attention_mask(),
            token_type_ids: default_token_type_ids(),
        }
    }
}

/// `[pipeline.classifier]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Turn logits into probabilities.
    #[serde(default = "default_true")]
    pub softmax: bool,
    /// How many (label, score) pairs to answer, best first; capped at the number of classes.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Class names by index; classes without a name are answered as their index ("3").
    #[serde(default)]
    pub labels: Vec<String>,
}

fn default_top_k() -> usize {
    1
}

/// `[pipeline.cross_encoder]`: a sequence-pair classifier (a reranker) whose output is one logit
/// per (query, document) pair, `[batch, 1]` or `[batch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossEncoderConfig {
    /// The default score is `sigmoid(logit)` (sentence-transformers' `CrossEncoder` with one
    /// label); `false` makes the raw logit the default score. Clients may still ask for either.
    #[serde(default = "default_true")]
    pub sigmoid: bool,
}

/// What the pipeline produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    Embedding(Pooling),
    Classifier,
    /// Text pairs in, one relevance score per pair out.
    CrossEncoder,
}

/// Where the encoded tensors go in one model, as found by [`PipelineConfig::bind`].
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub input_ids: TensorMetadata,
    pub attention_mask: Option<TensorMetadata>,
    pub token_type_ids: Option<TensorMetadata>,
    pub output: TensorMetadata,
}

#[derive(Deserialize)]
struct ConfigFile {
    pipeline: Option<toml::Value>,
}

impl PipelineConfig {
    /// The `[pipeline]` table of a whole `config.toml`, validated; `Ok(None)` when the file
    /// declares no pipeline (the model stays tensors in, tensors out). Other tables of the file
    /// are left to their owners.
    pub fn from_config_toml(text: &str) -> Result<Option<PipelineConfig>, PipelineError> {
        let file: ConfigFile = toml::from_str(text)
            .map_err(|e| PipelineError::Config(format!("config.toml is not valid TOML: {e}")))?;
        match file.pipeline {
            None => Ok(None),
            Some(toml::Value::Table(table)) => Self::from_table(table).map(Some),
            Some(other) => Err(PipelineError::Config(format!(
                "pipeline must be a table ([pipeline]), not a {}",
                other.type_str()
            ))),
        }
    }

    /// The already-parsed `[pipeline]` table (e.g. herd-core's `ModelConfig::pipeline`), validated.
    pub fn from_table(table: toml::Table) -> Result<PipelineConfig, PipelineError> {
        let cfg: PipelineConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e| PipelineError::Config(format!("[pipeline]: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values that serde cannot; every message says what to change.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |m: String| Err(PipelineError::Config(format!("[pipeline]: {m}")));
        if self.max_length < 1 || self.max_length > MAX_LENGTH_LIMIT {
            return bad(format!(
                "max_length = {} is out of range; use 1..={MAX_LENGTH_LIMIT} (256 suits MiniLM/BERT)",
                self.max_length
            ));
        }
        self.tokenizer_relative_path()?;
        let declared = [
            self.pooling.is_some(),
            self.classifier.is_some(),
            self.cross_encoder.is_some(),
        ];
        match declared.iter().filter(|&&d| d).count() {
            0 => {
                return bad(
                    "declare pooling = \"mean\" | \"cls\" | \"max\" for an embedding \
                            model, a [pipeline.classifier] table for a classifier, or a \
                            [pipeline.cross_encoder] table for a reranker"
                        .into(),
                )
            }
            1 => {}
            _ => {
                return bad(
                    "pooling, [pipeline.classifier] and [pipeline.cross_encoder] are exclusive: \
                            an embedding model sets pooling, a classifier sets \
                            [pipeline.classifier], a reranker sets [pipeline.cross_encoder]"
                        .into(),
                )
            }
        }
        if self.normalize && self.pooling.is_none() {
            return bad("normalize applies to embedding models; remove it from a \
                        classifier or cross-encoder"
                .into());
        }
        if let Some(c) = &self.classifier {
            if c.top_k == 0 {
                return bad("classifier.top_k must be at least 1".into());
            }
            if let Some(i) = c.labels.iter().position(|l| l.is_empty()) {
                return bad(format!("classifier.labels[{i}] is empty; name every class"));
            }
        }
        let names = [
            &self.inputs.input_ids,
            &self.inputs.attention_mask,
            &self.inputs.token_type_ids,
        ];
        if names.iter().any(|n| n.is_empty()) {
            return bad("[pipeline.inputs] names must not be empty".into());
        }
        if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
            return bad(
                "[pipeline.inputs] input_ids, attention_mask and token_type_ids must \
                        name three different ONNX inputs"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn kind(&self) -> PipelineKind {
        match (self.pooling, &self.cross_encoder) {
            (Some(p), _) => PipelineKind::Embedding(p),
            (None, Some(_)) => PipelineKind::CrossEncoder,
            (None, None) => PipelineKind::Classifier,
        }
    }

    /// `tokenizer` as a path that stays inside the model directory.
    fn tokenizer_relative_path(&self) -> Result<&Path, PipelineError> {
        let p = Path::new(&self.tokenizer);
        let inside = !self.tokenizer.is_empty()
            && p.components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if inside {
            Ok(p)
        } else {
            Err(PipelineError::Config(format!(
                "[pipeline]: tokenizer = {:?} must be a relative path inside the model directory \
                 (for example \"tokenizer.json\")",
                self.tokenizer
            )))
        }
    }

    /// The tokenizer file of a model stored in `model_dir`.
    pub fn tokenizer_path(&self, model_dir: &Path) -> Result<PathBuf, PipelineError> {
        Ok(model_dir.join(self.tokenizer_relative_path()?))
    }

    /// Matches the configured names against the model's signature: `input_ids` must exist,
    /// `attention_mask` and `token_type_ids` are bound when the model declares them, every other
    /// model input is an error (the pipeline could not fill it), and the output must exist with
    /// a shape the post-processing can use.
    pub fn bind(
        &self,
        inputs: &[TensorMetadata],
        outputs: &[TensorMetadata],
    ) -> Result<Binding, PipelineError> {
        let find = |name: &str| inputs.iter().find(|t| t.name == name).cloned();
        let declared = || {
            inputs
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let input_ids = find(&self.inputs.input_ids).ok_or_else(|| {
            PipelineError::Signature(format!(
                "the model has no input '{}' for the token ids (it declares: {}); set \
                 [pipeline.inputs] input_ids to one of them",
                self.inputs.input_ids,
                declared()
            ))
        })?;
        let known = [
            &self.inputs.input_ids,
            &self.inputs.attention_mask,
            &self.inputs.token_type_ids,
        ];
        if let Some(other) = inputs.iter().find(|t| !known.contains(&&t.name)) {
            return Err(PipelineError::Signature(format!(
                "the model input '{}' is not one the pipeline fills (input_ids '{}', \
                 attention_mask '{}', token_type_ids '{}'); rename them in [pipeline.inputs]",
                other.name,
                self.inputs.input_ids,
                self.inputs.attention_mask,
                self.inputs.token_type_ids
            )));
        }
        let binding = Binding {
            attention_mask: find(&self.inputs.attention_mask),
            token_type_ids: find(&self.inputs.token_type_ids),
            output: match &self.output {
                Some(name) => outputs
                    .iter()
                    .find(|t| &t.name == name)
                    .cloned()
                    .ok_or_else(|| {
                        PipelineError::Signature(format!(
                        "[pipeline] output = '{name}' is not an output of the model (it has: {})",
                        outputs
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    })?,
                None => outputs
                    .first()
                    .cloned()
                    .ok_or_else(|| PipelineError::Signature("the model has no outputs".into()))?,
            },
            input_ids,
        };
        for t in [
            Some(&binding.input_ids),
            binding.attention_mask.as_ref(),
            binding.token_type_ids.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !matches!(t.datatype, DataType::I64 | DataType::I32) {
                return Err(PipelineError::Signature(format!(
                    "the model input '{}' is {}, but token inputs must be INT64 or INT32",
                    t.name, t.datatype
                )));
            }
        }
        let out = &binding.output;
        if !matches!(out.datatype, DataType::F32) {
            return Err(PipelineError::Signature(format!(
                "the pipeline output '{}' is {}; post-processing needs FP32",
                out.name, out.datatype
            )));
        }
        let rank_ok = out.shape.is_empty() // unknown rank: checked per request
            || match self.kind() {
                PipelineKind::Embedding(_) => matches!(out.shape.len(), 2 | 3),
                PipelineKind::Classifier => out.shape.len() == 2,
                PipelineKind::CrossEncoder => match out.shape.as_slice() {
                    [_] => true,
                    [_, classes] => *classes == 1 || *classes < 0,
                    _ => false,
                },
            };
        if !rank_ok {
            return Err(PipelineError::Signature(format!(
                "the pipeline output '{}' has shape {:?}; an embedding model needs [batch, seq, \
                 hidden] (or already pooled [batch, hidden]), a classifier [batch, classes], a \
                 cross-encoder one logit per pair ([batch, 1] or [batch])",
                out.name, out.shape
            )));
        }
        if let (Some(c), PipelineKind::Classifier) = (&self.classifier, self.kind()) {
            let classes = out.shape.get(1).copied().unwrap_or(-1);
            if classes > 0 && !c.labels.is_empty() && c.labels.len() as i64 != classes {
                return Err(PipelineError::Signature(format!(
                    "classifier.labels has {} names but the model's output '{}' has {classes} \
                     classes",
                    c.labels.len(),
                    out.name
                )));
            }
        }
        Ok(binding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::{ErrorCode, HasErrorCode};

    fn err(toml: &str) -> String {
        let e = PipelineConfig::from_config_toml(toml).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ModelLoadFailed);
        e.to_string()
    }

    fn t(name: &str, datatype: DataType, shape: &[i64]) -> TensorMetadata {
        TensorMetadata {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn defaults_load() {
        let c = PipelineConfig::from_config_toml("[pipeline]\npooling = \"cls\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.tokenizer, "tokenizer.json");
        assert_eq!(c.max_length, 256);
        assert!(c.truncation);
        assert_eq!(c.padding, Padding::Longest);
        assert!(!c.normalize);
        assert_eq!(c.inputs, InputNames::default());
        assert_eq!(c.kind(), PipelineKind::Embedding(Pooling::Cls));
    }

    #[test]
    fn the_documented_example_parses() {
        let text = "[model]\nplatform = \"onnx\"\n\n[pipeline]\ntokenizer = \"tok/tokenizer.json\"\n\
                    max_length = 64\ntruncation = false\npadding = \"longest\"\n\n\
                    [pipeline.inputs]\ninput_ids = \"ids\"\n\n\
                    [pipeline.classifier]\nsoftmax = true\ntop_k = 3\nlabels = [\"a\", \"b\", \"c\"]\n";
        let c = PipelineConfig::from_config_toml(text).unwrap().unwrap();
        assert_eq!(c.kind(), PipelineKind::Classifier);
        assert_eq!(c.inputs.input_ids, "ids");
        assert_eq!(c.inputs.attention_mask, "attention_mask");
        let cl = c.classifier.clone().unwrap();
        assert_eq!((cl.top_k, cl.labels.len()), (3, 3));
        assert_eq!(
            c.tokenizer_path(Path::new("/m")).unwrap(),
            PathBuf::from("/m/tok/tokenizer.json")
        );
    }

    #[test]
    fn from_table_takes_the_parsed_section() {
        let file: toml::Table =
            toml::from_str("max_batch_size = 8\n[pipeline]\npooling = \"max\"\nmax_length = 32\n")
                .unwrap();
        let Some(toml::Value::Table(t)) = file.get("pipeline").cloned() else {
            panic!("no table")
        };
        let c = PipelineConfig::from_table(t).unwrap();
        assert_eq!((c.pooling, c.max_length), (Some(Pooling::Max), 32));
        assert!(err("pipeline = 3\n").contains("must be a table"));
        let bad: toml::Table = toml::from_str("pooling = \"mean\"\nmax_length = 0\n").unwrap();
        assert!(PipelineConfig::from_table(bad).is_err());
    }

    #[test]
    fn no_pipeline_table_means_plain_model() {
        assert_eq!(PipelineConfig::from_config_toml("").unwrap(), None);
        assert_eq!(
            PipelineConfig::from_config_toml("[model]\nmax_batch = 8\n").unwrap(),
            None
        );
    }

    #[test]
    fn bad_configs_say_what_to_change() {
        assert!(err("[pipeline\n").contains("not valid TOML"));
        assert!(err("[pipeline]\npoling = \"mean\"\n").contains("unknown field `poling`"));
        assert!(err("[pipeline]\npooling = \"median\"\n").contains("mean"));
        assert!(
            err("[pipeline]\npooling = \"mean\"\npadding = \"max_length\"\n").contains("longest")
        );
        assert!(err("[pipeline]\n").contains("declare pooling"));
        assert!(
            err("[pipeline]\npooling = \"mean\"\n[pipeline.classifier]\n").contains("exclusive")
        );
        assert!(
            err("[pipeline]\n[pipeline.classifier]\n[pipeline.cross_encoder]\n")
                .contains("exclusive")
        );
        assert!(
            err("[pipeline]\nnormalize = true\n[pipeline.cross_encoder]\n").contains("normalize")
        );
        assert!(err("[pipeline]\n[pipeline.cross_encoder]\nsigmod = true\n").contains("sigmod"));
        assert!(err("[pipeline]\npooling = \"mean\"\nmax_length = 0\n").contains("max_length = 0"));
        assert!(err("[pipeline]\npooling = \"mean\"\nmax_length = -3\n").contains("max_length"));
        assert!(
            err("[pipeline]\npooling = \"mean\"\ntokenizer = \"../other/tokenizer.json\"\n")
                .contains("inside the model directory")
        );
        assert!(
            err("[pipeline]\npooling = \"mean\"\ntokenizer = \"/etc/passwd\"\n")
                .contains("inside the model directory")
        );
        assert!(err("[pipeline]\nnormalize = true\n[pipeline.classifier]\n").contains("normalize"));
        assert!(err("[pipeline]\n[pipeline.classifier]\ntop_k = 0\n").contains("top_k"));
        assert!(
            err("[pipeline]\n[pipeline.classifier]\nlabels = [\"a\", \"\"]\n")
                .contains("labels[1]")
        );
        assert!(err(
            "[pipeline]\npooling = \"mean\"\n[pipeline.inputs]\nattention_mask = \"input_ids\"\n"
        )
        .contains("three different"));
    }

    fn minilm_inputs() -> Vec<TensorMetadata> {
        vec![
            t("input_ids", DataType::I64, &[-1, -1]),
            t("attention_mask", DataType::I64, &[-1, -1]),
            t("token_type_ids", DataType::I64, &[-1, -1]),
        ]
    }

    #[test]
    fn bind_finds_inputs_and_output() {
        let c = PipelineConfig::from_config_toml("[pipeline]\npooling = \"mean\"\n")
            .unwrap()
            .unwrap();
        let outs = [t("last_hidden_state", DataType::F32, &[-1, -1, 384])];
        let b = c.bind(&minilm_inputs(), &outs).unwrap();
        assert_eq!(b.output.name, "last_hidden_state");
        assert!(b.attention_mask.is_some() && b.token_type_ids.is_some());
        // token_type_ids is optional (DistilBERT-style models do not take it)
        let b = c.bind(&minilm_inputs()[..2], &outs).unwrap();
        assert!(b.token_type_ids.is_none());
    }

    #[test]
    fn bind_rejects_what_does_not_fit() {
        let c = PipelineConfig::from_config_toml(
            "[pipeline]\npooling = \"mean\"\n[pipeline.inputs]\ninput_ids = \"ids\"\n",
        )
        .unwrap()
        .unwrap();
        let outs = [t("h", DataType::F32, &[-1, -1, 8])];
        let e = c.bind(&minilm_inputs(), &outs).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ModelLoadFailed);
        let msg = e.to_string();
        assert!(
            msg.contains("no input 'ids'") && msg.contains("input_ids, attention_mask"),
            "{msg}"
        );

        let c = PipelineConfig::from_config_toml(
            "[pipeline]\npooling = \"mean\"\noutput = \"pooled\"\n",
        )
        .unwrap()
        .unwrap();
        let msg = c.bind(&minilm_inputs(), &outs).unwrap_err().to_string();
        assert!(msg.contains("output = 'pooled' is not an output"), "{msg}");

        let c = PipelineConfig::from_config_toml("[pipeline]\npooling = \"mean\"\n")
            .unwrap()
            .unwrap();
        let mut extra = minilm_inputs();
        extra.push(t("position_ids", DataType::I64, &[-1, -1]));
        let msg = c.bind(&extra, &outs).unwrap_err().to_string();
        assert!(
            msg.contains("'position_ids' is not one the pipeline fills"),
            "{msg}"
        );
        let floats = [t("input_ids", DataType::F32, &[-1, -1])];
        assert!(c
            .bind(&floats, &outs)
            .unwrap_err()
            .to_string()
            .contains("INT64 or INT32"));
        let rank4 = [t("h", DataType::F32, &[1, 2, 3, 4])];
        assert!(c.bind(&minilm_inputs(), &rank4).is_err());
        let ints = [t("h", DataType::I64, &[-1, 8])];
        assert!(c.bind(&minilm_inputs(), &ints).is_err());

        let c = PipelineConfig::from_config_toml(
            "[pipeline]\n[pipeline.classifier]\nlabels = [\"a\", \"b\"]\n",
        )
        .unwrap()
        .unwrap();
        let logits3 = [t("logits", DataType::F32, &[-1, 3])];
        let msg = c.bind(&minilm_inputs(), &logits3).unwrap_err().to_string();
        assert!(
            msg.contains("2 names") && msg.contains("3 classes"),
            "{msg}"
        );
        let logits2 = [t("logits", DataType::F32, &[-1, 2])];
        assert!(c.bind(&minilm_inputs(), &logits2).is_ok());
    }

    #[test]
    fn cross_encoder_binds_one_logit_per_pair() {
        let c = PipelineConfig::from_config_toml("[pipeline]\n[pipeline.cross_encoder]\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.kind(), PipelineKind::CrossEncoder);
        assert!(c.cross_encoder.as_ref().unwrap().sigmoid);
        for ok in [&[-1i64, 1][..], &[-1], &[-1, -1]] {
            let outs = [t("logits", DataType::F32, ok)];
            assert!(c.bind(&minilm_inputs(), &outs).is_ok(), "{ok:?}");
        }
        let two = [t("logits", DataType::F32, &[-1, 2])];
        let msg = c.bind(&minilm_inputs(), &two).unwrap_err().to_string();
        assert!(msg.contains("one logit per pair"), "{msg}");
        let raw = PipelineConfig::from_config_toml(
            "[pipeline]\n[pipeline.cross_encoder]\nsigmoid = false\n",
        )
        .unwrap()
        .unwrap();
        assert!(!raw.cross_encoder.unwrap().sigmoid);
    }
}
