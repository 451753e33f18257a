//! A model whose runs cost what the test asks: `depth` chained `[dim, dim]` matrix products.
//! For tests of what happens while a request is running (shutdown, cancellation).

use crate::classifier::{f32_le_bytes, OPSET};
use crate::proto::{elem_type, GraphProto, NodeProto, TensorProto, ValueInfoProto};

/// `y = x · I · I · … · I` (`depth` products with the `[dim, dim]` identity), so `y = x`.
///
/// The ONNX graph ([`MatMulChain::to_onnx`]): input `"input"` FP32 `[-1, dim]`; `depth`
/// `MatMul` nodes sharing one initializer `I`; output `"output"` FP32 `[-1, dim]`. A row costs
/// `2 · depth · dim²` floating-point operations, whatever its values. Opset 13, IR version 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMulChain {
    pub dim: usize,
    pub depth: usize,
}

impl MatMulChain {
    /// The serialized ONNX model; `name` becomes the graph name.
    pub fn to_onnx(&self, name: &str) -> Vec<u8> {
        let (dim, depth) = (self.dim.max(1), self.depth.max(1));
        let mut eye = vec![0f32; dim * dim];
        for i in 0..dim {
            eye[i * dim + i] = 1.0;
        }
        let w = TensorProto {
            name: Some("I".into()),
            dims: vec![dim as i64, dim as i64],
            data_type: Some(elem_type::FLOAT),
            raw_data: Some(f32_le_bytes(&eye)),
            ..Default::default()
        };
        let node = (0..depth)
            .map(|k| NodeProto {
                input: vec![
                    if k == 0 {
                        "input".to_string()
                    } else {
                        format!("h{k}")
                    },
                    "I".to_string(),
                ],
                output: vec![if k + 1 == depth {
                    "output".to_string()
                } else {
                    format!("h{}", k + 1)
                }],
                name: Some(format!("MatMul_{k}")),
                op_type: Some("MatMul".to_string()),
                ..Default::default()
            })
            .collect();
        let graph = GraphProto {
            name: Some(name.to_string()),
            node,
            initializer: vec![w],
            input: vec![ValueInfoProto::tensor(
                "input",
                elem_type::FLOAT,
                &[-1, dim as i64],
            )],
            output: vec![ValueInfoProto::tensor(
                "output",
                elem_type::FLOAT,
                &[-1, dim as i64],
            )],
            ..Default::default()
        };
        crate::proto::model_bytes(graph, OPSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ModelProto;
    use prost::Message;

    #[test]
    fn the_chain_has_one_product_per_step_and_the_row_signature() {
        let bytes = MatMulChain { dim: 8, depth: 5 }.to_onnx("chain");
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 5);
        assert!(g
            .node
            .iter()
            .all(|n| n.op_type.as_deref() == Some("MatMul")));
        assert_eq!(g.node[4].output, vec!["output".to_string()]);
        let sig = crate::read_signature(&bytes).unwrap();
        assert_eq!(sig.inputs[0].shape, vec![-1, 8]);
        assert_eq!(sig.outputs[0].name, "output");
        assert_eq!(sig.outputs[0].shape, vec![-1, 8]);
    }
}
