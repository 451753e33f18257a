//! Reading a model's signature: its real inputs (graph inputs that are not initializers), outputs,
//! IR version, default-domain opset and producer.

use std::collections::HashSet;

use herd_api::v2::{DataType, TensorMetadata};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::proto::{elem_type, DimensionValue, ModelProto, ValueInfoProto};
use crate::OnnxError;

/// What a client needs to know to call a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    /// Graph inputs minus initializers, in graph order. `-1` marks a dynamic dimension; a tensor
    /// whose rank is unknown (no shape in the file) has an empty `shape`.
    pub inputs: Vec<TensorMetadata>,
    /// Graph outputs, in graph order, with the same shape conventions.
    pub outputs: Vec<TensorMetadata>,
    pub ir_version: i64,
    /// The version of the default (`""` / `"ai.onnx"`) operator set; 0 when the model imports none.
    pub opset: i64,
    /// `producer_name`, empty when the file does not say.
    pub producer: String,
}

pub(crate) const HINT: &str =
    "export the model to ONNX (for example with torch.onnx.export or tf2onnx) \
                    and upload the .onnx file itself";

/// Parses `bytes` as an ONNX `ModelProto` and returns its signature.
///
/// Anything that is not a model with a graph is [`OnnxError::NotOnnx`]; an input or output whose
/// type herd cannot serve (complex, float8, sequences, maps...) is
/// [`OnnxError::UnsupportedType`].
pub fn read_signature(bytes: &[u8]) -> Result<Signature, OnnxError> {
    if bytes.is_empty() {
        return Err(OnnxError::NotOnnx(format!("the file is empty; {HINT}")));
    }
    let model = ModelProto::decode(bytes).map_err(|e| {
        OnnxError::NotOnnx(format!(
            "the file ({} bytes) is not a valid ONNX protobuf ({e}); {HINT}",
            bytes.len()
        ))
    })?;
    let ir_version = match model.ir_version {
        Some(v) if v > 0 => v,
        _ => {
            return Err(OnnxError::NotOnnx(format!(
                "the file ({} bytes) has no ir_version; {HINT}",
                bytes.len()
            )))
        }
    };
    let Some(graph) = model.graph else {
        return Err(OnnxError::NotOnnx(format!(
            "the file has no graph (ir_version {ir_version}); {HINT}"
        )));
    };
    let opset = model
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .filter_map(|o| o.version)
        .max()
        .unwrap_or(0);
    let initializers: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    build(
        ir_version,
        opset,
        model.producer_name.unwrap_or_default(),
        &initializers,
        &graph.input,
        &graph.output,
    )
}

/// The signature from the parts of a model that name it (shared by the in-memory and the
/// streaming reader).
pub(crate) fn build(
    ir_version: i64,
    opset: i64,
    producer: String,
    initializers: &HashSet<&str>,
    inputs: &[ValueInfoProto],
    outputs: &[ValueInfoProto],
) -> Result<Signature, OnnxError> {
    let inputs = inputs
        .iter()
        .filter(|v| !initializers.contains(v.name.as_deref().unwrap_or("")))
        .map(|v| tensor_metadata(v, "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = outputs
        .iter()
        .map(|v| tensor_metadata(v, "output"))
        .collect::<Result<Vec<_>, _>>()?;
    if outputs.is_empty() {
        return Err(OnnxError::NotOnnx(format!(
            "the graph has no outputs; {HINT}"
        )));
    }
    Ok(Signature {
        inputs,
        outputs,
        ir_version,
        opset,
        producer,
    })
}

fn tensor_metadata(v: &ValueInfoProto, role: &'static str) -> Result<TensorMetadata, OnnxError> {
    let name = v.name.clone().unwrap_or_default();
    let unsupported = |kind: &str| OnnxError::UnsupportedType {
        role,
        name: name.clone(),
        kind: kind.to_string(),
    };
    let Some(ty) = &v.r#type else {
        return Err(unsupported("<no type>"));
    };
    let Some(tensor) = &ty.tensor_type else {
        let kind = if ty.sequence_type.is_some() {
            "sequence"
        } else if ty.map_type.is_some() {
            "map"
        } else if ty.optional_type.is_some() {
            "optional"
        } else if ty.sparse_tensor_type.is_some() {
            "sparse tensor"
        } else if ty.opaque_type.is_some() {
            "opaque"
        } else {
            "<no type>"
        };
        return Err(unsupported(kind));
    };
    let elem = tensor.elem_type.unwrap_or(elem_type::UNDEFINED);
    let datatype = data_type(elem).ok_or_else(|| unsupported(&elem_type_name(elem)))?;
    let shape = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(DimensionValue::DimValue(n)) if n >= 0 => n,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(TensorMetadata {
        name,
        datatype,
        shape,
    })
}

/// The v2 data type of an ONNX element type, `None` when herd cannot serve it.
pub fn data_type(elem: i32) -> Option<DataType> {
    Some(match elem {
        elem_type::FLOAT => DataType::F32,
        elem_type::UINT8 => DataType::U8,
        elem_type::INT8 => DataType::I8,
        elem_type::UINT16 => DataType::U16,
        elem_type::INT16 => DataType::I16,
        elem_type::INT32 => DataType::I32,
        elem_type::INT64 => DataType::I64,
        elem_type::STRING => DataType::Bytes,
        elem_type::BOOL => DataType::Bool,
        elem_type::FLOAT16 => DataType::F16,
        elem_type::BFLOAT16 => DataType::BF16,
        elem_type::DOUBLE => DataType::F64,
        elem_type::UINT32 => DataType::U32,
        elem_type::UINT64 => DataType::U64,
        _ => return None,
    })
}

fn elem_type_name(elem: i32) -> String {
    match elem {
        elem_type::UNDEFINED => "UNDEFINED".into(),
        elem_type::COMPLEX64 => "COMPLEX64".into(),
        elem_type::COMPLEX128 => "COMPLEX128".into(),
        17..=20 => "FLOAT8".into(),
        21 | 22 | 25 | 26 => "sub-byte integer (INT4/UINT4/INT2/UINT2)".into(),
        23 | 27 | 28 => "sub-byte float".into(),
        other => format!("ONNX element type {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GraphProto, OperatorSetIdProto, TensorProto, TypeProto};
    use herd_api::{ErrorCode, HasErrorCode};

    fn not_onnx(bytes: &[u8]) -> String {
        match read_signature(bytes) {
            Err(e @ OnnxError::NotOnnx(_)) => {
                assert_eq!(e.code(), ErrorCode::InvalidInput);
                e.to_string()
            }
            other => panic!("expected NotOnnx, got {other:?}"),
        }
    }

    fn model(graph: Option<GraphProto>) -> Vec<u8> {
        ModelProto {
            ir_version: Some(9),
            producer_name: Some("pytorch".into()),
            opset_import: vec![
                OperatorSetIdProto {
                    domain: Some("ai.onnx.ml".into()),
                    version: Some(3),
                },
                OperatorSetIdProto {
                    domain: Some("ai.onnx".into()),
                    version: Some(17),
                },
            ],
            graph,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn empty_file_is_not_onnx() {
        let msg = not_onnx(b"");
        assert!(
            msg.starts_with("not an ONNX model: the file is empty"),
            "{msg}"
        );
    }

    #[test]
    fn text_file_is_not_onnx() {
        let msg = not_onnx(b"name,age\nalice,31\nbob,27\n");
        assert!(msg.starts_with("not an ONNX model"), "{msg}");
        not_onnx(b"{\"model\": \"resnet\"}");
        not_onnx(b"hello world, this is a README file\n");
    }

    #[test]
    fn random_bytes_are_not_onnx() {
        // deterministic pseudo-random buffers of many lengths
        let mut state = 0x1234_5678_9abc_def0u64;
        for len in [1usize, 2, 3, 7, 16, 100, 1000, 4096, 65536] {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            not_onnx(&buf);
        }
    }

    #[test]
    fn model_without_graph_is_not_onnx() {
        let msg = not_onnx(&model(None));
        assert!(msg.contains("no graph"), "{msg}");
    }

    #[test]
    fn initializers_are_not_inputs_and_dims_map() {
        let graph = GraphProto {
            input: vec![
                ValueInfoProto::tensor("ids", elem_type::INT64, &[-1, 128]),
                ValueInfoProto::tensor("text", elem_type::STRING, &[-1]),
                ValueInfoProto::tensor("weight", elem_type::FLOAT, &[4, 4]),
            ],
            output: vec![ValueInfoProto::tensor("y", elem_type::DOUBLE, &[2, 3])],
            initializer: vec![TensorProto {
                name: Some("weight".into()),
                dims: vec![4, 4],
                data_type: Some(elem_type::FLOAT),
                ..Default::default()
            }],
            ..Default::default()
        };
        let sig = read_signature(&model(Some(graph))).unwrap();
        assert_eq!(
            sig.opset, 17,
            "ai.onnx is the default domain; ai.onnx.ml is not"
        );
        assert_eq!(sig.producer, "pytorch");
        assert_eq!(sig.ir_version, 9);
        assert_eq!(sig.inputs.len(), 2);
        assert_eq!(sig.inputs[0].shape, vec![-1, 128]);
        assert_eq!(sig.inputs[1].datatype, DataType::Bytes);
        assert_eq!(sig.outputs[0].datatype, DataType::F64);
        assert_eq!(sig.outputs[0].shape, vec![2, 3]);
    }

    #[test]
    fn unknown_dims_and_unknown_rank() {
        let mut v = ValueInfoProto::tensor("x", elem_type::FLOAT, &[3, 0]);
        if let Some(t) = v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
            // a dimension with neither dim_value nor dim_param
            t.shape
                .as_mut()
                .unwrap()
                .dim
                .push(crate::proto::Dimension::default());
        }
        let mut no_shape = ValueInfoProto::tensor("y", elem_type::FLOAT, &[]);
        no_shape
            .r#type
            .as_mut()
            .unwrap()
            .tensor_type
            .as_mut()
            .unwrap()
            .shape = None;
        let graph = GraphProto {
            input: vec![v],
            output: vec![no_shape],
            ..Default::default()
        };
        let sig = read_signature(&model(Some(graph))).unwrap();
        assert_eq!(sig.inputs[0].shape, vec![3, 0, -1]);
        assert_eq!(sig.outputs[0].shape, Vec::<i64>::new());
    }

    #[test]
    fn unsupported_types_are_named() {
        let graph = GraphProto {
            input: vec![ValueInfoProto::tensor("z", elem_type::COMPLEX64, &[2])],
            output: vec![ValueInfoProto::tensor("y", elem_type::FLOAT, &[2])],
            ..Default::default()
        };
        let err = read_signature(&model(Some(graph))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
        let msg = err.to_string();
        assert!(
            msg.contains("input 'z'") && msg.contains("COMPLEX64"),
            "{msg}"
        );

        let seq = ValueInfoProto {
            name: Some("s".into()),
            r#type: Some(TypeProto {
                sequence_type: Some(vec![]),
                ..Default::default()
            }),
            doc_string: None,
        };
        let graph = GraphProto {
            output: vec![seq],
            ..Default::default()
        };
        let msg = read_signature(&model(Some(graph))).unwrap_err().to_string();
        assert!(
            msg.contains("output 's'") && msg.contains("sequence"),
            "{msg}"
        );
    }

    #[test]
    fn graph_without_outputs_is_not_onnx() {
        let msg = not_onnx(&model(Some(GraphProto::default())));
        assert!(msg.contains("no outputs"), "{msg}");
    }
}
