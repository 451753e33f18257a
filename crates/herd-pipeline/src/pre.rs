//! Pre-processing: texts -> padded `input_ids`, `attention_mask`, `token_type_ids`.

use std::path::{Path, PathBuf};

use herd_api::v2::{DataType, Tensor, TensorData};
use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::{Binding, PipelineConfig, PipelineError};

/// A batch of encoded texts, row-major `[batch, seq_len]`, right-padded to the longest text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl Encoded {
    /// The number of real (unpadded) tokens of each text.
    pub fn lengths(&self) -> Vec<usize> {
        self.attention_mask
            .chunks(self.seq_len.max(1))
            .take(self.batch)
            .map(|row| row.iter().filter(|&&m| m != 0).count())
            .collect()
    }

    /// Total real tokens in the batch (for usage counts).
    pub fn total_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }

    /// The model inputs for this batch, named and typed as `binding` says: `input_ids`, then
    /// `attention_mask` and `token_type_ids` when the model declares them; each `[batch, seq_len]`,
    /// INT64 or INT32 as the model input is. Token ids are below 2^31 in every real vocabulary.
    pub fn to_tensors(&self, binding: &Binding) -> Vec<Tensor> {
        let shape = vec![self.batch as i64, self.seq_len as i64];
        let tensor = |meta: &herd_api::v2::TensorMetadata, values: &[i64]| {
            let data = match meta.datatype {
                DataType::I32 => TensorData::I32(values.iter().map(|&v| v as i32).collect()),
                _ => TensorData::I64(values.to_vec()),
            };
            Tensor::new(meta.name.clone(), shape.clone(), data)
        };
        let mut out = vec![tensor(&binding.input_ids, &self.input_ids)];
        if let Some(m) = &binding.attention_mask {
            out.push(tensor(m, &self.attention_mask));
        }
        if let Some(t) = &binding.token_type_ids {
            out.push(tensor(t, &self.token_type_ids));
        }
        out
    }
}

/// A loaded tokenizer with the pipeline's length rules.
pub struct Preprocessor {
    tokenizer: Tokenizer,
    path: PathBuf,
    max_length: usize,
    truncation: bool,
    pad_id: i64,
    pad_type_id: i64,
    /// Special tokens the tokenizer adds to every text.
    specials: usize,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("path", &self.path)
            .field("max_length", &self.max_length)
            .field("truncation", &self.truncation)
            .finish()
    }
}

impl Preprocessor {
    /// Loads `cfg.tokenizer` from `model_dir`. The file's own truncation and padding settings are
    /// replaced by the pipeline's (`max_length`, `truncation`, padding to the longest text); its
    /// pad token id is kept (`[PAD]`'s id, or 0, when the file has no padding settings).
    pub fn load(model_dir: &Path, cfg: &PipelineConfig) -> Result<Self, PipelineError> {
        cfg.validate()?;
        let path = cfg.tokenizer_path(model_dir)?;
        if !path.is_file() {
            return Err(PipelineError::TokenizerMissing { path });
        }
        let mut tokenizer =
            Tokenizer::from_file(&path).map_err(|e| PipelineError::TokenizerInvalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let (pad_id, pad_type_id) = match tokenizer.get_padding() {
            Some(p) => (i64::from(p.pad_id), i64::from(p.pad_type_id)),
            None => (
                tokenizer.token_to_id("[PAD]").map(i64::from).unwrap_or(0),
                0,
            ),
        };
        tokenizer.with_padding(None);
        let specials = tokenizer
            .get_post_processor()
            .map(|pp| tokenizers::PostProcessor::added_tokens(pp, false))
            .unwrap_or(0);
        if cfg.max_length <= specials {
            return Err(PipelineError::Config(format!(
                "[pipeline]: max_length = {} leaves no room for text: the tokenizer adds {specials} \
                 special tokens to every text; use a larger max_length",
                cfg.max_length
            )));
        }
        let truncation = cfg.truncation.then_some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: cfg.max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        });
        tokenizer
            .with_truncation(truncation)
            .map_err(|e| PipelineError::TokenizerInvalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        tracing::debug!(path = %path.display(), max_length = cfg.max_length, "tokenizer loaded");
        Ok(Preprocessor {
            tokenizer,
            path,
            max_length: cfg.max_length,
            truncation: cfg.truncation,
            pad_id,
            pad_type_id,
            specials,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Whether texts longer than `max_length` are cut (else refused).
    pub fn truncation(&self) -> bool {
        self.truncation
    }

    /// Special tokens added to every text (`[CLS]`, `[SEP]`, ...).
    pub fn specials(&self) -> usize {
        self.specials
    }

    /// Tokens of each text after truncation, without building the padded batch. Used to check a
    /// request's total tokens before any inference.
    pub fn token_counts(&self, texts: &[&str]) -> Result<Vec<usize>, PipelineError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                self.tokenizer
                    .encode_fast(*text, true)
                    .map(|e| e.len())
                    .map_err(|e| PipelineError::Tokenize {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// Encodes `texts` (with special tokens) and pads them to the longest. Texts longer than
    /// `max_length` are truncated, or rejected with [`PipelineError::TooLong`] when truncation is
    /// off. An empty batch gives an empty `Encoded` (`batch = seq_len = 0`).
    pub fn encode(&self, texts: &[&str]) -> Result<Encoded, PipelineError> {
        self.encode_inputs(texts.iter().map(|t| EncodeInput::from(*t)))
    }

    /// Encodes text pairs as a sequence-pair model takes them (`[CLS] a [SEP] b [SEP]` for BERT,
    /// `token_type_ids` 0 then 1, as the tokenizer's pair template says), padded to the longest.
    /// A pair longer than `max_length` is cut longest-first (the longer text loses tokens
    /// first, as Hugging Face `tokenizers` and TEI do), or rejected when truncation is off.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<Encoded, PipelineError> {
        self.encode_inputs(pairs.iter().map(|&(a, b)| EncodeInput::from((a, b))))
    }

    /// Tokens of each pair after truncation (see [`Preprocessor::token_counts`]).
    pub fn pair_token_counts(&self, pairs: &[(&str, &str)]) -> Result<Vec<usize>, PipelineError> {
        pairs
            .iter()
            .enumerate()
            .map(|(index, &(a, b))| {
                self.tokenizer
                    .encode_fast((a, b), true)
                    .map(|e| e.len())
                    .map_err(|e| PipelineError::Tokenize {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// The tokens of one text with their byte offsets into it (what TEI's `/tokenize` answers),
    /// after the pipeline's truncation. Special tokens have no offsets.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>, PipelineError> {
        let enc =
            self.tokenizer
                .encode(text, add_special)
                .map_err(|e| PipelineError::Tokenize {
                    index: 0,
                    reason: e.to_string(),
                })?;
        if !self.truncation && enc.len() > self.max_length {
            return Err(PipelineError::TooLong {
                index: 0,
                tokens: enc.len(),
                max_length: self.max_length,
            });
        }
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .zip(enc.get_special_tokens_mask())
            .zip(enc.get_tokens())
            .map(|(((&id, &(start, stop)), &special), token)| {
                if special == 1 {
                    Token {
                        id,
                        text: token.clone(),
                        special: true,
                        start: None,
                        stop: None,
                    }
                } else {
                    let bytes = text.as_bytes().get(start..stop).unwrap_or_default();
                    Token {
                        id,
                        text: String::from_utf8_lossy(bytes).into_owned(),
                        special: false,
                        start: Some(start),
                        stop: Some(stop),
                    }
                }
            })
            .collect())
    }

    /// Token ids back to text; ids outside the vocabulary are an error naming the first one.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, PipelineError> {
        let vocab = self.tokenizer.get_vocab_size(true) as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(PipelineError::Tokenize {
                index: 0,
                reason: format!("token id {bad} is outside the vocabulary (size {vocab})"),
            });
        }
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| PipelineError::Tokenize {
                index: 0,
                reason: e.to_string(),
            })
    }

    fn encode_inputs<'s>(
        &self,
        inputs: impl ExactSizeIterator<Item = EncodeInput<'s>>,
    ) -> Result<Encoded, PipelineError> {
        let mut rows = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.enumerate() {
            let enc =
                self.tokenizer
                    .encode_fast(input, true)
                    .map_err(|e| PipelineError::Tokenize {
                        index,
                        reason: e.to_string(),
                    })?;
            if !self.truncation && enc.len() > self.max_length {
                return Err(PipelineError::TooLong {
                    index,
                    tokens: enc.len(),
                    max_length: self.max_length,
                });
            }
            rows.push(enc);
        }
        let seq_len = rows.iter().map(|e| e.len()).max().unwrap_or(0);
        let n = rows.len() * seq_len;
        let mut out = Encoded {
            batch: rows.len(),
            seq_len,
            input_ids: Vec::with_capacity(n),
            attention_mask: Vec::with_capacity(n),
            token_type_ids: Vec::with_capacity(n),
        };
        for enc in &rows {
            let pad = seq_len - enc.len();
            out.input_ids
                .extend(enc.get_ids().iter().map(|&v| i64::from(v)));
            out.input_ids.extend(std::iter::repeat_n(self.pad_id, pad));
            out.attention_mask
                .extend(enc.get_attention_mask().iter().map(|&v| i64::from(v)));
            out.attention_mask.extend(std::iter::repeat_n(0, pad));
            out.token_type_ids
                .extend(enc.get_type_ids().iter().map(|&v| i64::from(v)));
            out.token_type_ids
                .extend(std::iter::repeat_n(self.pad_type_id, pad));
        }
        Ok(out)
    }
}

/// One token of [`Preprocessor::tokenize`]: its id, its text (the input's bytes `start..stop`,
/// or the token itself for a special token) and whether it is special.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// The texts of a v2 BYTES tensor, each checked to be UTF-8. Any other datatype is an error that
/// tells the client to send text.
pub fn texts_from_tensor(input: &str, data: &TensorData) -> Result<Vec<String>, PipelineError> {
    let TensorData::Bytes(items) = data else {
        return Err(PipelineError::NotText {
            input: input.to_string(),
            got: data.datatype().to_string(),
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(index, b)| {
            String::from_utf8(b.clone()).map_err(|e| PipelineError::NotUtf8 {
                input: input.to_string(),
                index,
                reason: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Pooling;
    use herd_api::{ErrorCode, HasErrorCode};

    /// A tiny BERT-style tokenizer: lower-casing, WordPiece, `[CLS] text [SEP]`, pad id 0.
    pub(crate) const TINY_TOKENIZER: &str = include_str!("../testdata/tiny-tokenizer.json");

    /// A fresh directory under the target dir holding `tokenizer.json` (if given).
    pub(crate) fn model_dir(name: &str, tokenizer: Option<&str>) -> PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("herd-pipeline-unit-{}", std::process::id()))
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(t) = tokenizer {
            std::fs::write(dir.join("tokenizer.json"), t).unwrap();
        }
        dir
    }

    fn cfg(max_length: usize, truncation: bool) -> PipelineConfig {
        let mut c: PipelineConfig =
            PipelineConfig::from_config_toml("[pipeline]\npooling = \"mean\"\n")
                .unwrap()
                .unwrap();
        c.max_length = max_length;
        c.truncation = truncation;
        assert_eq!(c.pooling, Some(Pooling::Mean));
        c
    }

    #[test]
    fn pads_to_longest_with_mask_and_type_ids() {
        let dir = model_dir("pads", Some(TINY_TOKENIZER));
        let p = Preprocessor::load(&dir, &cfg(16, true)).unwrap();
        let e = p.encode(&["Hello world", "the CATS", ""]).unwrap();
        assert_eq!((e.batch, e.seq_len), (3, 5));
        #[rustfmt::skip]
        assert_eq!(e.input_ids, vec![
            2, 4, 5, 3, 0,
            2, 6, 7, 8, 3,
            2, 3, 0, 0, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(e.attention_mask, vec![
            1, 1, 1, 1, 0,
            1, 1, 1, 1, 1,
            1, 1, 0, 0, 0,
        ]);
        assert_eq!(e.token_type_ids, vec![0; 15]);
        assert_eq!(e.lengths(), vec![4, 5, 2]);
        assert_eq!(e.total_tokens(), 11);
    }

    #[test]
    fn to_tensors_follows_the_binding() {
        use herd_api::v2::TensorMetadata;
        let dir = model_dir("tensors", Some(TINY_TOKENIZER));
        let p = Preprocessor::load(&dir, &cfg(16, true)).unwrap();
        let e = p.encode(&["hello", "the cats"]).unwrap();
        let meta = |name: &str, datatype| TensorMetadata {
            name: name.into(),
            datatype,
            shape: vec![-1, -1],
        };
        let binding = Binding {
            input_ids: meta("ids", DataType::I32),
            attention_mask: Some(meta("mask", DataType::I64)),
            token_type_ids: None,
            output: meta("logits", DataType::F32),
        };
        let t = e.to_tensors(&binding);
        assert_eq!(t.len(), 2, "no token_type_ids for a model without it");
        assert_eq!(t[0].name, "ids");
        assert_eq!(t[0].shape, vec![2, 5]);
        assert_eq!(
            t[0].data,
            TensorData::I32(vec![2, 4, 3, 0, 0, 2, 6, 7, 8, 3])
        );
        assert_eq!(t[1].name, "mask");
        assert_eq!(t[1].data, TensorData::I64(e.attention_mask.clone()));
    }

    #[test]
    fn preprocessor_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Preprocessor>();
    }

    #[test]
    fn unknown_words_map_to_unk() {
        let dir = model_dir("unk", Some(TINY_TOKENIZER));
        let p = Preprocessor::load(&dir, &cfg(16, true)).unwrap();
        assert_eq!(p.encode(&["zebra"]).unwrap().input_ids, vec![2, 1, 3]);
    }

    #[test]
    fn truncates_to_max_length_or_rejects_when_off() {
        let dir = model_dir("trunc", Some(TINY_TOKENIZER));
        let long = "hello world the cat hello world the cat";
        let p = Preprocessor::load(&dir, &cfg(5, true)).unwrap();
        let e = p.encode(&[long, "cat"]).unwrap();
        assert_eq!(e.seq_len, 5);
        assert_eq!(&e.input_ids[..5], &[2, 4, 5, 6, 3], "truncated, [SEP] kept");
        let strict = Preprocessor::load(&dir, &cfg(5, false)).unwrap();
        let err = strict.encode(&["cat", long]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
        assert!(
            err.to_string()
                .contains("text 1 has 10 tokens, more than max_length 5"),
            "{err}"
        );
        assert_eq!(strict.encode(&["hello world cat"]).unwrap().seq_len, 5);
    }

    #[test]
    fn empty_batch_is_empty() {
        let dir = model_dir("empty", Some(TINY_TOKENIZER));
        let p = Preprocessor::load(&dir, &cfg(8, true)).unwrap();
        let e = p.encode(&[]).unwrap();
        assert_eq!((e.batch, e.seq_len, e.input_ids.len()), (0, 0, 0));
    }

    #[test]
    fn missing_tokenizer_names_the_path() {
        let dir = model_dir("missing", None);
        let err = Preprocessor::load(&dir, &cfg(8, true)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ModelLoadFailed);
        let msg = err.to_string();
        assert!(
            msg.contains(&dir.join("tokenizer.json").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("not found"), "{msg}");
    }

    #[test]
    fn invalid_tokenizer_file_is_a_clear_error() {
        let dir = model_dir("invalid", Some("{\"not\": \"a tokenizer\"}"));
        let err = Preprocessor::load(&dir, &cfg(8, true)).unwrap_err();
        assert!(
            matches!(err, PipelineError::TokenizerInvalid { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("could not be loaded"), "{err}");
    }

    #[test]
    fn max_length_must_leave_room_for_text() {
        let dir = model_dir("room", Some(TINY_TOKENIZER));
        let err = Preprocessor::load(&dir, &cfg(2, true)).unwrap_err();
        assert!(err.to_string().contains("adds 2 special tokens"), "{err}");
        assert!(Preprocessor::load(&dir, &cfg(3, true)).is_ok());
    }

    #[test]
    fn texts_from_tensor_accepts_only_utf8_bytes() {
        let ok = TensorData::Bytes(vec![b"hi".to_vec(), "grüße".as_bytes().to_vec(), vec![]]);
        assert_eq!(
            texts_from_tensor("text", &ok).unwrap(),
            vec!["hi", "grüße", ""]
        );
        let err = texts_from_tensor("text", &TensorData::F32(vec![1.0])).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
        assert!(
            err.to_string()
                .contains("is FP32, but this model takes text"),
            "{err}"
        );
        let err =
            texts_from_tensor("text", &TensorData::Bytes(vec![vec![0xff, 0xfe]])).unwrap_err();
        assert!(err.to_string().contains("element 0 is not UTF-8"), "{err}");
    }

    #[test]
    fn pairs_use_the_pair_template_and_type_ids() {
        let dir = model_dir("pairs", Some(TINY_TOKENIZER));
        let p = Preprocessor::load(&dir, &cfg(16, true)).unwrap();
        let e = p
            .encode_pairs(&[("hello", "the cats"), ("world", "")])
            .unwrap();
        assert_eq!((e.batch, e.seq_len), (2, 7));
        #[rustfmt::skip]
        assert_eq!(e.input_ids, vec![
            2, 4, 3, 6, 7, 8, 3,
            2, 5, 3, 3, 0, 0, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(e.token_type_ids, vec![
            0, 0, 0, 1, 1, 1, 1,
            0, 0, 0, 1, 0, 0, 0,
        ]);
        assert_eq!(e.lengths(), vec![7, 4]);
        assert_eq!(
            p.pair_token_counts(&[("hello", "the cats")]).unwrap(),
            vec![7]
        );
        // longest first: the longer text loses tokens, [SEP]s stay
        let short = Preprocessor::load(&dir, &cfg(6, true)).unwrap();
        let e = short
            .encode_pairs(&[("hello", "the cats the cats")])
            .unwrap();
        assert_eq!(e.input_ids, vec![2, 4, 3, 6, 7, 3]);
        let strict = Preprocessor::load(&dir, &cfg(6, false)).unwrap();
        assert!(strict
            .encode_pairs(&[("hello", "the cats the cats")])
            .unwrap_err()
            .to_string()
            .contains("more than max_length 6"));
    }

    #[test]
    fn tokenize_gives_offsets_and_decode_inverts() {
        let dir = model_dir("tokenize", Some(TINY_TOKENIZER));
        let p = Preprocessor::load(&dir, &cfg(16, true)).unwrap();
        let toks = p.tokenize("Hello cats", true).unwrap();
        type Row<'a> = (u32, &'a str, bool, Option<usize>, Option<usize>);
        let got: Vec<Row> = toks
            .iter()
            .map(|t| (t.id, t.text.as_str(), t.special, t.start, t.stop))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "[CLS]", true, None, None),
                (4, "Hello", false, Some(0), Some(5)),
                (7, "cat", false, Some(6), Some(9)),
                (8, "s", false, Some(9), Some(10)),
                (3, "[SEP]", true, None, None),
            ]
        );
        assert_eq!(p.tokenize("hello", false).unwrap().len(), 1);
        let ids: Vec<u32> = toks.iter().map(|t| t.id).collect();
        assert!(p.decode(&ids, true).unwrap().contains("hello"));
        assert!(p.decode(&ids, false).unwrap().contains("[CLS]"));
        assert!(p
            .decode(&[4, 99], true)
            .unwrap_err()
            .to_string()
            .contains("token id 99 is outside the vocabulary"));
    }
}
