//! A tiny text classifier over token ids — what a per-customer intent classifier behind a
//! tokenizer pipeline looks like, small enough to write thousands of.

use crate::classifier::{f32_le_bytes, SplitMix64};
use crate::proto::{elem_type, AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use crate::OnnxError;

/// Hashed bag-of-embeddings classifier: `logits = mean_masked(E[ids mod buckets]) · W + b`.
///
/// The ONNX graph ([`TextClassifier::to_onnx`]): inputs `"input_ids"` and `"attention_mask"`
/// INT64 `[-1, -1]`; `Mod(input_ids, buckets)` → `Gather(E)` → multiply by the float mask →
/// `ReduceSum` over the sequence ÷ `max(mask count, 1e-9)` → `Gemm(W, b)` → output `"logits"`
/// FP32 `[-1, classes]`. Opset 13, IR version 8. It takes no `token_type_ids`, so a pipeline
/// leaves that input out.
#[derive(Debug, Clone, PartialEq)]
pub struct TextClassifier {
    pub buckets: usize,
    pub dim: usize,
    pub classes: usize,
    /// `buckets * dim`, row-major `[buckets, dim]`.
    pub embedding: Vec<f32>,
    /// `dim * classes`, row-major `[dim, classes]`.
    pub weights: Vec<f32>,
    /// `classes`.
    pub bias: Vec<f32>,
}

impl TextClassifier {
    /// Deterministic random parameters in `[-1, 1)`; sizes below 1 are raised to 1.
    pub fn random(buckets: usize, dim: usize, classes: usize, seed: u64) -> Self {
        let (buckets, dim, classes) = (buckets.max(1), dim.max(1), classes.max(1));
        let mut rng = SplitMix64(seed ^ 0x7465_7874_636c_7366);
        let mut take = |n: usize| (0..n).map(|_| rng.next_f32()).collect::<Vec<_>>();
        TextClassifier {
            buckets,
            dim,
            classes,
            embedding: take(buckets * dim),
            weights: take(dim * classes),
            bias: take(classes),
        }
    }

    /// The serialized ONNX model; `name` becomes the graph name.
    pub fn to_onnx(&self, name: &str) -> Vec<u8> {
        let (b, d, c) = (self.buckets as i64, self.dim as i64, self.classes as i64);
        let f32_tensor = |n: &str, dims: Vec<i64>, v: &[f32]| TensorProto {
            name: Some(n.into()),
            dims,
            data_type: Some(elem_type::FLOAT),
            raw_data: Some(f32_le_bytes(v)),
            ..Default::default()
        };
        let i64_tensor = |n: &str, dims: Vec<i64>, v: &[i64]| TensorProto {
            name: Some(n.into()),
            dims,
            data_type: Some(elem_type::INT64),
            int64_data: v.to_vec(),
            ..Default::default()
        };
        let node =
            |op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>| NodeProto {
                input: inputs.iter().map(|s| s.to_string()).collect(),
                output: vec![output.to_string()],
                name: Some(format!("{op}_{output}")),
                op_type: Some(op.to_string()),
                attribute: attrs,
                ..Default::default()
            };
        let graph = GraphProto {
            name: Some(name.to_string()),
            node: vec![
                node("Mod", &["input_ids", "buckets"], "bucket_ids", vec![]),
                node(
                    "Gather",
                    &["E", "bucket_ids"],
                    "token_vectors",
                    vec![AttributeProto::int("axis", 0)],
                ),
                node(
                    "Cast",
                    &["attention_mask"],
                    "mask_f",
                    vec![AttributeProto::int("to", i64::from(elem_type::FLOAT))],
                ),
                node("Unsqueeze", &["mask_f", "axis2"], "mask3", vec![]),
                node("Mul", &["token_vectors", "mask3"], "masked", vec![]),
                node(
                    "ReduceSum",
                    &["masked", "axis1"],
                    "summed",
                    vec![AttributeProto::int("keepdims", 0)],
                ),
                node(
                    "ReduceSum",
                    &["mask3", "axis1"],
                    "count",
                    vec![AttributeProto::int("keepdims", 0)],
                ),
                node("Max", &["count", "eps"], "count_c", vec![]),
                node("Div", &["summed", "count_c"], "pooled", vec![]),
                node("Gemm", &["pooled", "W", "b"], "logits", vec![]),
            ],
            initializer: vec![
                f32_tensor("E", vec![b, d], &self.embedding),
                f32_tensor("W", vec![d, c], &self.weights),
                f32_tensor("b", vec![c], &self.bias),
                f32_tensor("eps", vec![], &[1e-9]),
                i64_tensor("buckets", vec![], &[b]),
                i64_tensor("axis1", vec![1], &[1]),
                i64_tensor("axis2", vec![1], &[2]),
            ],
            input: vec![
                ValueInfoProto::tensor("input_ids", elem_type::INT64, &[-1, -1]),
                ValueInfoProto::tensor("attention_mask", elem_type::INT64, &[-1, -1]),
            ],
            output: vec![ValueInfoProto::tensor("logits", elem_type::FLOAT, &[-1, c])],
            ..Default::default()
        };
        // distinct symbolic names for batch and sequence
        let mut graph = graph;
        for v in &mut graph.input {
            if let Some(shape) = v
                .r#type
                .as_mut()
                .and_then(|t| t.tensor_type.as_mut())
                .and_then(|t| t.shape.as_mut())
            {
                shape.dim[1] = crate::proto::Dimension::param("S");
            }
        }
        crate::proto::model_bytes(graph, crate::classifier::OPSET)
    }

    /// Reference logits, row-major `[batch, classes]`, for row-major `[batch, seq]` ids and mask
    /// (as `herd_pipeline::Preprocessor::encode` produces). Negative ids are hashed like ONNX
    /// `Mod` with `fmod = 0` (the result takes the divisor's sign, so it is never negative).
    pub fn predict(
        &self,
        input_ids: &[i64],
        attention_mask: &[i64],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<f32>, OnnxError> {
        if batch.checked_mul(seq) != Some(input_ids.len())
            || input_ids.len() != attention_mask.len()
        {
            return Err(OnnxError::InvalidClassifier(format!(
                "input_ids ({}) and attention_mask ({}) must both hold batch {batch} x seq {seq} values",
                input_ids.len(),
                attention_mask.len()
            )));
        }
        if self.embedding.len() != self.buckets * self.dim
            || self.weights.len() != self.dim * self.classes
            || self.bias.len() != self.classes
            || self.buckets == 0
        {
            return Err(OnnxError::InvalidClassifier(
                "parameter lengths do not match buckets, dim and classes".into(),
            ));
        }
        let mut out = Vec::with_capacity(batch * self.classes);
        let mut pooled = vec![0f32; self.dim];
        for r in 0..batch {
            pooled.iter_mut().for_each(|p| *p = 0.0);
            let mut count = 0f32;
            for t in 0..seq {
                let m = attention_mask[r * seq + t] as f32;
                let bucket = input_ids[r * seq + t].rem_euclid(self.buckets as i64) as usize;
                let row = &self.embedding[bucket * self.dim..(bucket + 1) * self.dim];
                for (p, &e) in pooled.iter_mut().zip(row) {
                    *p += e * m;
                }
                count += m;
            }
            let count = count.max(1e-9);
            pooled.iter_mut().for_each(|p| *p /= count);
            for c in 0..self.classes {
                let mut acc = 0f32;
                for (k, &p) in pooled.iter().enumerate() {
                    acc += p * self.weights[k * self.classes + c];
                }
                out.push(acc + self.bias[c]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_signature;
    use herd_api::v2::DataType;

    #[test]
    fn signature_has_ids_mask_and_logits() {
        let m = TextClassifier::random(64, 8, 3, 5);
        let sig = read_signature(&m.to_onnx("intent-7")).unwrap();
        let ins: Vec<_> = sig
            .inputs
            .iter()
            .map(|t| (t.name.as_str(), t.datatype))
            .collect();
        assert_eq!(
            ins,
            [
                ("input_ids", DataType::I64),
                ("attention_mask", DataType::I64)
            ]
        );
        assert_eq!(sig.inputs[0].shape, vec![-1, -1]);
        assert_eq!(sig.outputs[0].name, "logits");
        assert_eq!(sig.outputs[0].shape, vec![-1, 3]);
    }

    #[test]
    fn predict_ignores_padding_and_hashes_ids() {
        let m = TextClassifier::random(4, 2, 2, 1);
        // id 5 and id 1 share bucket 1; padding (mask 0) must not matter
        let a = m.predict(&[5, 2, 0], &[1, 1, 0], 1, 3).unwrap();
        let b = m.predict(&[1, 2], &[1, 1], 1, 2).unwrap();
        assert_eq!(a, b);
        let e = |bucket: usize, k: usize| m.embedding[bucket * 2 + k];
        let pooled = [(e(1, 0) + e(2, 0)) / 2.0, (e(1, 1) + e(2, 1)) / 2.0];
        let want0 = pooled[0] * m.weights[0] + pooled[1] * m.weights[2] + m.bias[0];
        assert!((a[0] - want0).abs() < 1e-6);
        assert!(m.predict(&[1, 2, 3], &[1, 1], 1, 3).is_err());
        assert!(m.predict(&[1, 2, 3], &[1, 1, 1], 2, 3).is_err());
        assert_ne!(m, TextClassifier::random(4, 2, 2, 2));
    }
}
