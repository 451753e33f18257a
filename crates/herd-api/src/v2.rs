//! KServe v2 / Open Inference Protocol REST types, and the typed tensor they carry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ApiError, ErrorCode};

/// Tensor element types of the v2 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    U8,
    #[serde(rename = "UINT16")]
    U16,
    #[serde(rename = "UINT32")]
    U32,
    #[serde(rename = "UINT64")]
    U64,
    #[serde(rename = "INT8")]
    I8,
    #[serde(rename = "INT16")]
    I16,
    #[serde(rename = "INT32")]
    I32,
    #[serde(rename = "INT64")]
    I64,
    #[serde(rename = "FP16")]
    F16,
    #[serde(rename = "FP32")]
    F32,
    #[serde(rename = "FP64")]
    F64,
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Size of one element in the binary tensor extension; `None` for BYTES (length-prefixed).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => Some(1),
            DataType::U16 | DataType::I16 | DataType::F16 => Some(2),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(4),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, row-major tensor contents.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

macro_rules! each_variant {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of the given type.
    pub fn empty(dt: DataType) -> Result<TensorData, ApiError> {
        Ok(match dt {
            DataType::Bool => TensorData::Bool(vec![]),
            DataType::U8 => TensorData::U8(vec![]),
            DataType::U16 => TensorData::U16(vec![]),
            DataType::U32 => TensorData::U32(vec![]),
            DataType::U64 => TensorData::U64(vec![]),
            DataType::I8 => TensorData::I8(vec![]),
            DataType::I16 => TensorData::I16(vec![]),
            DataType::I32 => TensorData::I32(vec![]),
            DataType::I64 => TensorData::I64(vec![]),
            DataType::F32 => TensorData::F32(vec![]),
            DataType::F64 => TensorData::F64(vec![]),
            DataType::Bytes => TensorData::Bytes(vec![]),
            DataType::F16 => {
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    "FP16 tensors are not supported; send FP32",
                ))
            }
        })
    }

    /// Appends `other` (same type) to `self`. Used to concatenate batches.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        match (self, other) {
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (TensorData::U8(a), TensorData::U8(b)) => a.extend_from_slice(b),
            (TensorData::U16(a), TensorData::U16(b)) => a.extend_from_slice(b),
            (TensorData::U32(a), TensorData::U32(b)) => a.extend_from_slice(b),
            (TensorData::U64(a), TensorData::U64(b)) => a.extend_from_slice(b),
            (TensorData::I8(a), TensorData::I8(b)) => a.extend_from_slice(b),
            (TensorData::I16(a), TensorData::I16(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), TensorData::I64(b)) => a.extend_from_slice(b),
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::F64(a), TensorData::F64(b)) => a.extend_from_slice(b),
            (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// Elements `[start, end)` as a new buffer. Used to split a batch back into requests.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        match self {
            TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
            TensorData::U8(v) => TensorData::U8(v[start..end].to_vec()),
            TensorData::U16(v) => TensorData::U16(v[start..end].to_vec()),
            TensorData::U32(v) => TensorData::U32(v[start..end].to_vec()),
            TensorData::U64(v) => TensorData::U64(v[start..end].to_vec()),
            TensorData::I8(v) => TensorData::I8(v[start..end].to_vec()),
            TensorData::I16(v) => TensorData::I16(v[start..end].to_vec()),
            TensorData::I32(v) => TensorData::I32(v[start..end].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[start..end].to_vec()),
            TensorData::F32(v) => TensorData::F32(v[start..end].to_vec()),
            TensorData::F64(v) => TensorData::F64(v[start..end].to_vec()),
            TensorData::Bytes(v) => TensorData::Bytes(v[start..end].to_vec()),
        }
    }

    /// JSON array of the elements (BYTES as UTF-8 strings where valid, else as byte arrays).
    pub fn to_json(&self) -> Value {
        match self {
            TensorData::Bytes(v) => Value::Array(
                v.iter()
                    .map(|b| match std::str::from_utf8(b) {
                        Ok(s) => Value::String(s.to_string()),
                        Err(_) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
                    })
                    .collect(),
            ),
            TensorData::F32(v) => Value::Array(
                v.iter()
                    .map(|x| {
                        serde_json::Number::from_f64(*x as f64)
                            .map(Value::Number)
                            .unwrap_or(Value::Null)
                    })
                    .collect(),
            ),
            TensorData::F64(v) => Value::Array(
                v.iter()
                    .map(|x| {
                        serde_json::Number::from_f64(*x)
                            .map(Value::Number)
                            .unwrap_or(Value::Null)
                    })
                    .collect(),
            ),
            other => each_variant!(other, v => serde_json::to_value(v).unwrap_or(Value::Null)),
        }
    }

    /// Parses JSON tensor data (flat or nested arrays) of the declared type.
    pub fn from_json(dt: DataType, data: &Value, name: &str) -> Result<TensorData, ApiError> {
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        let bad = |i: usize, v: &Value| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("input '{name}': element {i} ({v}) is not a valid {dt} value"),
            )
        };
        macro_rules! ints {
            ($variant:ident, $t:ty) => {{
                let mut out = Vec::with_capacity(flat.len());
                for (i, v) in flat.iter().enumerate() {
                    let x = v
                        .as_i64()
                        .and_then(|x| <$t>::try_from(x).ok())
                        .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                        .ok_or_else(|| bad(i, v))?;
                    out.push(x);
                }
                TensorData::$variant(out)
            }};
        }
        Ok(match dt {
            DataType::Bool => TensorData::Bool(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
            DataType::U8 => ints!(U8, u8),
            DataType::U16 => ints!(U16, u16),
            DataType::U32 => ints!(U32, u32),
            DataType::U64 => ints!(U64, u64),
            DataType::I8 => ints!(I8, i8),
            DataType::I16 => ints!(I16, i16),
            DataType::I32 => ints!(I32, i32),
            DataType::I64 => ints!(I64, i64),
            DataType::F32 => TensorData::F32(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| v.as_f64().map(|x| x as f32).ok_or_else(|| bad(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
            DataType::F64 => TensorData::F64(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
            DataType::Bytes => TensorData::Bytes(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::String(s) => Ok(s.as_bytes().to_vec()),
                        _ => Err(bad(i, v)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DataType::F16 => return TensorData::empty(DataType::F16),
        })
    }

    /// Decodes the raw little-endian bytes of Triton's binary tensor extension.
    pub fn from_binary(dt: DataType, raw: &[u8], name: &str) -> Result<TensorData, ApiError> {
        let bad_len = |size: usize| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "input '{name}': binary data of {} bytes is not a multiple of the {dt} element size {size}",
                    raw.len()
                ),
            )
        };
        macro_rules! le {
            ($variant:ident, $t:ty) => {{
                const N: usize = std::mem::size_of::<$t>();
                if raw.len() % N != 0 {
                    return Err(bad_len(N));
                }
                TensorData::$variant(
                    raw.chunks_exact(N)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match dt {
            DataType::Bool => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
            DataType::U8 => TensorData::U8(raw.to_vec()),
            DataType::I8 => TensorData::I8(raw.iter().map(|b| *b as i8).collect()),
            DataType::U16 => le!(U16, u16),
            DataType::U32 => le!(U32, u32),
            DataType::U64 => le!(U64, u64),
            DataType::I16 => le!(I16, i16),
            DataType::I32 => le!(I32, i32),
            DataType::I64 => le!(I64, i64),
            DataType::F32 => le!(F32, f32),
            DataType::F64 => le!(F64, f64),
            DataType::Bytes => {
                let mut out = Vec::new();
                let mut rest = raw;
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err(ApiError::new(
                            ErrorCode::InvalidInput,
                            format!("input '{name}': truncated BYTES element length prefix"),
                        ));
                    }
                    let n = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                    rest = &rest[4..];
                    if rest.len() < n {
                        return Err(ApiError::new(
                            ErrorCode::InvalidInput,
                            format!("input '{name}': BYTES element of {n} bytes runs past the end of the data"),
                        ));
                    }
                    out.push(rest[..n].to_vec());
                    rest = &rest[n..];
                }
                TensorData::Bytes(out)
            }
            DataType::F16 => return TensorData::empty(DataType::F16),
        })
    }

    /// Encodes for Triton's binary tensor extension (little-endian; BYTES length-prefixed).
    pub fn to_binary(&self) -> Vec<u8> {
        match self {
            TensorData::Bool(v) => v.iter().map(|b| *b as u8).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::I8(v) => v.iter().map(|b| *b as u8).collect(),
            TensorData::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Bytes(v) => {
                let mut out = Vec::new();
                for b in v {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                out
            }
        }
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

/// A named tensor with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    pub fn new(name: impl Into<String>, shape: Vec<i64>, data: TensorData) -> Self {
        Tensor {
            name: name.into(),
            shape,
            data,
        }
    }

    /// Number of elements the shape calls for.
    pub fn shape_elements(shape: &[i64]) -> Option<usize> {
        shape.iter().try_fold(1usize, |acc, d| {
            usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
        })
    }
}

pub type Parameters = BTreeMap<String, Value>;

/// One input tensor of a v2 infer request, as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A requested output, with optional parameters (`binary_data`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<RequestInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    pub outputs: Vec<ResponseOutput>,
}

/// Input or output signature in model metadata. `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// herd's extension: `READY` (loaded), `LOADING`, `UNLOADED` (loaded on first request) or
    /// `UNAVAILABLE` (last load failed), as in the repository index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// Body of `POST /v2/repository/index`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RepositoryIndexRequest {
    #[serde(default)]
    pub ready: Option<bool>,
}

/// One entry of the repository index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepositoryIndexEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_json_flattens_row_major() {
        let t = TensorData::from_json(DataType::F32, &json!([[1, 2.5], [3, 4]]), "x").unwrap();
        assert_eq!(t, TensorData::F32(vec![1.0, 2.5, 3.0, 4.0]));
    }

    #[test]
    fn out_of_range_int_is_rejected_with_position() {
        let e = TensorData::from_json(DataType::U8, &json!([1, 300]), "x").unwrap_err();
        assert!(e.error.contains("element 1"), "{}", e.error);
        assert_eq!(e.code, ErrorCode::InvalidInput);
    }

    #[test]
    fn binary_roundtrip_all_types() {
        let cases = vec![
            TensorData::F32(vec![1.0, -2.5]),
            TensorData::F64(vec![1.0, -2.5]),
            TensorData::I64(vec![i64::MIN, 7]),
            TensorData::I8(vec![-1, 5]),
            TensorData::U16(vec![65535]),
            TensorData::Bool(vec![true, false]),
            TensorData::Bytes(vec![b"hi".to_vec(), vec![], "é".as_bytes().to_vec()]),
        ];
        for c in cases {
            let raw = c.to_binary();
            assert_eq!(TensorData::from_binary(c.datatype(), &raw, "x").unwrap(), c);
        }
    }

    #[test]
    fn truncated_bytes_is_an_error() {
        assert!(TensorData::from_binary(DataType::Bytes, &[5, 0, 0, 0, 1], "x").is_err());
        assert!(TensorData::from_binary(DataType::F32, &[0, 0, 0], "x").is_err());
    }

    #[test]
    fn datatype_wire_names() {
        assert_eq!(serde_json::to_string(&DataType::U64).unwrap(), "\"UINT64\"");
        let d: DataType = serde_json::from_str("\"FP32\"").unwrap();
        assert_eq!(d, DataType::F32);
    }
}
