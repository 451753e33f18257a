//! A tiny linear classifier: random weights from a seed, its ONNX graph, and a Rust reference
//! `predict` that computes what onnxruntime computes on that graph.

use crate::proto::{elem_type, AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use crate::OnnxError;

/// `softmax(x · W + b)` over `classes`, with `label = argmax`.
///
/// The ONNX graph ([`LinearClassifier::to_onnx`]): input `"input"` FP32 `[-1, dim]`;
/// `Gemm(input, W, b) -> logits`; `Softmax(axis=-1)` -> output `"probabilities"` FP32
/// `[-1, classes]`; `ArgMax(logits, axis=1, keepdims=0)` -> output `"label"` INT64 `[-1]`.
/// Opset 13, IR version 8.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearClassifier {
    pub dim: usize,
    pub classes: usize,
    /// `dim * classes` values, row-major `[dim, classes]`.
    pub weights: Vec<f32>,
    /// `classes` values.
    pub bias: Vec<f32>,
}

/// splitmix64: tiny, fast, good enough for test weights, and the same on every platform.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    pub(crate) fn next_f32(&mut self) -> f32 {
        // 24 random bits -> [0, 1) exactly representable in f32.
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        unit * 2.0 - 1.0
    }
}

pub const OPSET: i64 = 13;

impl LinearClassifier {
    /// A classifier with the given parts; the lengths must match `dim` and `classes`.
    pub fn new(
        dim: usize,
        classes: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<Self, OnnxError> {
        if dim == 0 || classes == 0 {
            return Err(OnnxError::InvalidClassifier(format!(
                "dim ({dim}) and classes ({classes}) must both be at least 1"
            )));
        }
        if weights.len() != dim * classes {
            return Err(OnnxError::InvalidClassifier(format!(
                "weights has {} values, expected dim * classes = {}",
                weights.len(),
                dim * classes
            )));
        }
        if bias.len() != classes {
            return Err(OnnxError::InvalidClassifier(format!(
                "bias has {} values, expected classes = {classes}",
                bias.len()
            )));
        }
        Ok(LinearClassifier {
            dim,
            classes,
            weights,
            bias,
        })
    }

    /// Deterministic random weights and bias in `[-1, 1)`; different seeds give different models.
    /// `dim` and `classes` below 1 are raised to 1.
    pub fn random(dim: usize, classes: usize, seed: u64) -> Self {
        let dim = dim.max(1);
        let classes = classes.max(1);
        let mut rng = SplitMix64(seed ^ 0x6865_7264_6f6e_6e78);
        let weights = (0..dim * classes).map(|_| rng.next_f32()).collect();
        let bias = (0..classes).map(|_| rng.next_f32()).collect();
        LinearClassifier {
            dim,
            classes,
            weights,
            bias,
        }
    }

    /// The serialized ONNX model (see the type's docs for the graph). `name` becomes the graph
    /// name. A classifier built by hand with mismatched lengths gives a model onnxruntime rejects;
    /// use [`LinearClassifier::new`] to check.
    pub fn to_onnx(&self, name: &str) -> Vec<u8> {
        let (dim, classes) = (self.dim as i64, self.classes as i64);
        let w = TensorProto {
            name: Some("W".into()),
            dims: vec![dim, classes],
            data_type: Some(elem_type::FLOAT),
            raw_data: Some(f32_le_bytes(&self.weights)),
            ..Default::default()
        };
        let b = TensorProto {
            name: Some("b".into()),
            dims: vec![classes],
            data_type: Some(elem_type::FLOAT),
            raw_data: Some(f32_le_bytes(&self.bias)),
            ..Default::default()
        };
        let node =
            |op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>| NodeProto {
                input: inputs.iter().map(|s| s.to_string()).collect(),
                output: vec![output.to_string()],
                name: Some(format!("{op}_0")),
                op_type: Some(op.to_string()),
                attribute: attrs,
                ..Default::default()
            };
        let graph = GraphProto {
            name: Some(name.to_string()),
            node: vec![
                node("Gemm", &["input", "W", "b"], "logits", vec![]),
                node(
                    "Softmax",
                    &["logits"],
                    "probabilities",
                    vec![AttributeProto::int("axis", -1)],
                ),
                node(
                    "ArgMax",
                    &["logits"],
                    "label",
                    vec![
                        AttributeProto::int("axis", 1),
                        AttributeProto::int("keepdims", 0),
                    ],
                ),
            ],
            initializer: vec![w, b],
            input: vec![ValueInfoProto::tensor(
                "input",
                elem_type::FLOAT,
                &[-1, dim],
            )],
            output: vec![
                ValueInfoProto::tensor("probabilities", elem_type::FLOAT, &[-1, classes]),
                ValueInfoProto::tensor("label", elem_type::INT64, &[-1]),
            ],
            ..Default::default()
        };
        crate::proto::model_bytes(graph, OPSET)
    }

    /// The reference output for `x`, a row-major `[batch, dim]` buffer: per row the label
    /// (argmax of the logits, first index on ties, as onnxruntime) and the flat row-major
    /// `[batch, classes]` probabilities. Trailing values that do not fill a whole row are
    /// ignored; use [`LinearClassifier::try_predict`] to reject them instead.
    pub fn predict(&self, x: &[f32]) -> (Vec<i64>, Vec<f32>) {
        let dim = self.dim.max(1);
        let batch = x.len() / dim;
        let mut labels = Vec::with_capacity(batch);
        let mut probs = Vec::with_capacity(batch * self.classes);
        let mut logits = vec![0f32; self.classes];
        for row in x.chunks_exact(dim) {
            for (c, l) in logits.iter_mut().enumerate() {
                let mut acc = 0f32;
                for (d, &xv) in row.iter().enumerate() {
                    acc += xv
                        * self
                            .weights
                            .get(d * self.classes + c)
                            .copied()
                            .unwrap_or(0.0);
                }
                *l = acc + self.bias.get(c).copied().unwrap_or(0.0);
            }
            let mut best = 0usize;
            for (c, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = c;
                }
            }
            labels.push(best as i64);
            let max = logits[best];
            let start = probs.len();
            let mut sum = 0f32;
            for &l in &logits {
                let e = (l - max).exp();
                sum += e;
                probs.push(e);
            }
            for p in &mut probs[start..] {
                *p /= sum;
            }
        }
        (labels, probs)
    }

    /// Like [`LinearClassifier::predict`], but an `x` whose length is not a multiple of `dim`
    /// is an error.
    pub fn try_predict(&self, x: &[f32]) -> Result<(Vec<i64>, Vec<f32>), OnnxError> {
        if x.len().checked_rem(self.dim) != Some(0) {
            return Err(OnnxError::InvalidClassifier(format!(
                "input has {} values, not a whole number of rows of dim {}",
                x.len(),
                self.dim
            )));
        }
        Ok(self.predict(x))
    }
}

pub(crate) fn f32_le_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_signature;
    use herd_api::v2::DataType;

    #[test]
    fn random_is_deterministic_and_distinct_per_seed() {
        let a = LinearClassifier::random(8, 3, 1);
        assert_eq!(a, LinearClassifier::random(8, 3, 1));
        assert_ne!(a.weights, LinearClassifier::random(8, 3, 2).weights);
        assert_eq!(a.weights.len(), 24);
        assert_eq!(a.bias.len(), 3);
        assert!(a.weights.iter().all(|w| (-1.0..1.0).contains(w)));
        assert_eq!(
            a.to_onnx("m"),
            LinearClassifier::random(8, 3, 1).to_onnx("m")
        );
    }

    #[test]
    fn generated_model_signature_roundtrips() {
        let m = LinearClassifier::random(16, 5, 42);
        let sig = read_signature(&m.to_onnx("customer-7")).unwrap();
        assert_eq!(sig.ir_version, 8);
        assert_eq!(sig.opset, 13);
        assert_eq!(sig.producer, "herd");
        assert_eq!(sig.inputs.len(), 1, "initializers W and b are not inputs");
        assert_eq!(sig.inputs[0].name, "input");
        assert_eq!(sig.inputs[0].datatype, DataType::F32);
        assert_eq!(sig.inputs[0].shape, vec![-1, 16]);
        let names: Vec<_> = sig.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["probabilities", "label"]);
        assert_eq!(sig.outputs[0].datatype, DataType::F32);
        assert_eq!(sig.outputs[0].shape, vec![-1, 5]);
        assert_eq!(sig.outputs[1].datatype, DataType::I64);
        assert_eq!(sig.outputs[1].shape, vec![-1]);
    }

    #[test]
    fn predict_matches_hand_computation() {
        // dim 2, classes 2: W = [[1, 0], [0, 2]], b = [0, 1]
        let m = LinearClassifier::new(2, 2, vec![1.0, 0.0, 0.0, 2.0], vec![0.0, 1.0]).unwrap();
        let (labels, probs) = m.predict(&[3.0, 0.5, 0.0, 1.0]);
        // row 0 logits [3, 2] -> label 0; row 1 logits [0, 3] -> label 1
        assert_eq!(labels, vec![0, 1]);
        let p0 = 1.0 / (1.0 + (-1f32).exp());
        assert!((probs[0] - p0).abs() < 1e-6);
        assert!((probs[1] - (1.0 - p0)).abs() < 1e-6);
        let p1 = 1.0 / (1.0 + 3f32.exp());
        assert!((probs[2] - p1).abs() < 1e-6);
        for row in probs.chunks(2) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn ties_pick_the_first_class() {
        let m = LinearClassifier::new(1, 3, vec![0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0]).unwrap();
        assert_eq!(m.predict(&[5.0]).0, vec![0]);
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        assert!(LinearClassifier::new(0, 2, vec![], vec![0.0, 0.0]).is_err());
        assert!(LinearClassifier::new(2, 2, vec![0.0; 3], vec![0.0, 0.0]).is_err());
        assert!(LinearClassifier::new(2, 2, vec![0.0; 4], vec![0.0]).is_err());
        let m = LinearClassifier::random(4, 2, 0);
        let err = m.try_predict(&[1.0; 5]).unwrap_err();
        assert!(err.to_string().contains("dim 4"), "{err}");
        // predict ignores the partial row instead of panicking
        assert_eq!(m.predict(&[1.0; 5]).0.len(), 1);
        assert_eq!(m.predict(&[]).0.len(), 0);
        // zero sizes are raised to 1
        let tiny = LinearClassifier::random(0, 0, 0);
        assert_eq!((tiny.dim, tiny.classes), (1, 1));
    }
}
