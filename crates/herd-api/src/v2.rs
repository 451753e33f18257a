//! KServe v2 / Open Inference Protocol REST types, and the typed tensor they carry.

use std::collections::BTreeMap;

pub use half::{bf16, f16};
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
    #[serde(rename = "BF16")]
    BF16,
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
            DataType::BF16 => "BF16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Size of one element in the binary tensor extension; `None` for BYTES (length-prefixed).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => Some(1),
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => Some(2),
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
    /// IEEE half precision (FP16).
    F16(Vec<f16>),
    /// bfloat16 (BF16).
    BF16(Vec<bf16>),
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
            TensorData::F16($v) => $body,
            TensorData::BF16($v) => $body,
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
            TensorData::F16(_) => DataType::F16,
            TensorData::BF16(_) => DataType::BF16,
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
            DataType::F16 => TensorData::F16(vec![]),
            DataType::BF16 => TensorData::BF16(vec![]),
        })
    }

    /// `n` zeros (`false`, empty strings for BYTES) of the given type: warm-up inputs.
    pub fn zeros(dt: DataType, n: usize) -> TensorData {
        match dt {
            DataType::Bool => TensorData::Bool(vec![false; n]),
            DataType::U8 => TensorData::U8(vec![0; n]),
            DataType::U16 => TensorData::U16(vec![0; n]),
            DataType::U32 => TensorData::U32(vec![0; n]),
            DataType::U64 => TensorData::U64(vec![0; n]),
            DataType::I8 => TensorData::I8(vec![0; n]),
            DataType::I16 => TensorData::I16(vec![0; n]),
            DataType::I32 => TensorData::I32(vec![0; n]),
            DataType::I64 => TensorData::I64(vec![0; n]),
            DataType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DataType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DataType::F32 => TensorData::F32(vec![0.0; n]),
            DataType::F64 => TensorData::F64(vec![0.0; n]),
            DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
        }
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
            (TensorData::F16(a), TensorData::F16(b)) => a.extend_from_slice(b),
            (TensorData::BF16(a), TensorData::BF16(b)) => a.extend_from_slice(b),
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
            TensorData::F16(v) => TensorData::F16(v[start..end].to_vec()),
            TensorData::BF16(v) => TensorData::BF16(v[start..end].to_vec()),
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
            TensorData::F64(v) => Value::Array(v.iter().map(|x| float_json(*x)).collect()),
            TensorData::F16(v) => Value::Array(v.iter().map(|x| float_json(x.to_f64())).collect()),
            TensorData::BF16(v) => Value::Array(v.iter().map(|x| float_json(x.to_f64())).collect()),
            other => serde_json::to_value(other).unwrap_or(Value::Null),
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
            DataType::F16 => TensorData::F16(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| v.as_f64().map(f16::from_f64).ok_or_else(|| bad(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
            DataType::BF16 => TensorData::BF16(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| v.as_f64().map(bf16::from_f64).ok_or_else(|| bad(i, v)))
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
            DataType::F16 => le!(F16, f16),
            DataType::BF16 => le!(BF16, bf16),
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
            TensorData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
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

/// A JSON number, or `null` for a non-finite value (JSON has no NaN or infinity).
fn float_json(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
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
///
/// `data` is decoded straight into a typed vector of the declared `datatype` (no
/// `serde_json::Value` per element: an FP32 element takes 4 bytes, not ~80). When `data` comes
/// before `datatype` in the object, its raw JSON text is kept (one copy of those bytes) and
/// decoded once the datatype is known.
#[derive(Debug, Clone, Serialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

impl<'de> Deserialize<'de> for RequestInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RequestInputVisitor)
    }
}

struct RequestInputVisitor;

impl<'de> serde::de::Visitor<'de> for RequestInputVisitor {
    type Value = RequestInput;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an input tensor object {name, shape, datatype, data}")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RequestInput, A::Error> {
        use serde::de::Error;
        let mut name: Option<String> = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut datatype: Option<DataType> = None;
        let mut parameters: Option<Parameters> = None;
        let mut data: Option<TensorData> = None;
        let mut raw: Option<Box<serde_json::value::RawValue>> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "name" => name = Some(map.next_value()?),
                "shape" => shape = Some(map.next_value()?),
                "datatype" => datatype = Some(map.next_value()?),
                "parameters" => parameters = map.next_value()?,
                "data" => match datatype {
                    Some(dt) => data = map.next_value_seed(TypedData(dt))?,
                    None => raw = Some(map.next_value()?),
                },
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let datatype = datatype.ok_or_else(|| A::Error::missing_field("datatype"))?;
        if let Some(raw) = raw {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            data = serde::de::DeserializeSeed::deserialize(TypedData(datatype), &mut de)
                .map_err(A::Error::custom)?;
        }
        Ok(RequestInput {
            name: name.ok_or_else(|| A::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| A::Error::missing_field("shape"))?,
            datatype,
            parameters,
            data,
        })
    }
}

/// Decodes JSON tensor data (a flat or nested array; `null` is no data) of one datatype
/// straight into its typed vector.
pub struct TypedData(pub DataType);

impl<'de> serde::de::DeserializeSeed<'de> for TypedData {
    type Value = Option<TensorData>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        use serde::de::Error;
        let mut out = TensorData::empty(self.0).map_err(|e| D::Error::custom(e.error))?;
        let present = d.deserialize_any(Elements {
            out: &mut out,
            depth: 0,
        })?;
        Ok(present.then_some(out))
    }
}

/// Nesting deeper than this is not a tensor (and would only grow the stack).
const MAX_DEPTH: usize = 32;

/// Most elements of one JSON BYTES tensor. Each element is its own allocation (24 bytes of
/// bookkeeping for a 3-byte `"",`), so without a cap a body of tiny strings would take 8x its
/// size in memory; typed numbers take at most 4x (a 2-byte `0,` becomes 8 bytes of INT64), and
/// typical FP32 data less than its text.
pub const MAX_JSON_BYTES_ELEMENTS: usize = 1 << 20;

/// Visits one JSON value: an array is walked, a scalar is pushed. Yields `false` for a
/// top-level `null` (no data).
struct Elements<'a> {
    out: &'a mut TensorData,
    depth: usize,
}

impl Elements<'_> {
    fn bad<E: serde::de::Error>(&self, what: std::fmt::Arguments) -> E {
        E::custom(format!(
            "data element {} ({what}) is not a valid {} value",
            self.out.len(),
            self.out.datatype()
        ))
    }

    fn int<E: serde::de::Error>(self, x: i128) -> Result<bool, E> {
        macro_rules! push {
            ($v:expr) => {
                match $v.push_checked(x) {
                    true => Ok(true),
                    false => Err(self.bad(format_args!("{x}"))),
                }
            };
        }
        match &mut *self.out {
            TensorData::F32(v) => v.push(x as f32),
            TensorData::F64(v) => v.push(x as f64),
            TensorData::F16(v) => v.push(f16::from_f64(x as f64)),
            TensorData::BF16(v) => v.push(bf16::from_f64(x as f64)),
            TensorData::U8(v) => return push!(v),
            TensorData::U16(v) => return push!(v),
            TensorData::U32(v) => return push!(v),
            TensorData::U64(v) => return push!(v),
            TensorData::I8(v) => return push!(v),
            TensorData::I16(v) => return push!(v),
            TensorData::I32(v) => return push!(v),
            TensorData::I64(v) => return push!(v),
            TensorData::Bool(_) | TensorData::Bytes(_) => return Err(self.bad(format_args!("{x}"))),
        }
        Ok(true)
    }
}

fn too_many_bytes<E: serde::de::Error>() -> E {
    E::custom(format!(
        "a JSON BYTES tensor may hold at most {MAX_JSON_BYTES_ELEMENTS} elements (MAX_JSON_BYTES_ELEMENTS); send fewer or use the binary tensor extension"
    ))
}

trait PushChecked {
    fn push_checked(&mut self, x: i128) -> bool;
}

impl<T: TryFrom<i128>> PushChecked for Vec<T> {
    fn push_checked(&mut self, x: i128) -> bool {
        match T::try_from(x) {
            Ok(v) => {
                self.push(v);
                true
            }
            Err(_) => false,
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Elements<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an array of {} values", self.out.datatype())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "data is nested deeper than {MAX_DEPTH} levels"
            )));
        }
        if let Some(n) = seq.size_hint() {
            each_variant!(&mut *self.out, v => v.reserve(n.min(1 << 20)));
        }
        let depth = self.depth + 1;
        let out = self.out;
        while seq
            .next_element_seed(ElementSeed {
                out: &mut *out,
                depth,
            })?
            .is_some()
        {}
        Ok(true)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        match self.depth {
            0 => Ok(false),
            _ => Err(self.bad(format_args!("null"))),
        }
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<bool, E> {
        match &mut *self.out {
            TensorData::Bool(v) => {
                v.push(b);
                Ok(true)
            }
            _ => Err(self.bad(format_args!("{b}"))),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, x: i64) -> Result<bool, E> {
        self.int(x as i128)
    }

    fn visit_u64<E: serde::de::Error>(self, x: u64) -> Result<bool, E> {
        self.int(x as i128)
    }

    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<bool, E> {
        match &mut *self.out {
            TensorData::F32(v) => v.push(x as f32),
            TensorData::F64(v) => v.push(x),
            TensorData::F16(v) => v.push(f16::from_f64(x)),
            TensorData::BF16(v) => v.push(bf16::from_f64(x)),
            _ => return Err(self.bad(format_args!("{x}"))),
        }
        Ok(true)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<bool, E> {
        match &mut *self.out {
            TensorData::Bytes(v) if v.len() >= MAX_JSON_BYTES_ELEMENTS => Err(too_many_bytes()),
            TensorData::Bytes(v) => {
                v.push(s.as_bytes().to_vec());
                Ok(true)
            }
            _ => Err(self.bad(format_args!("{s:?}"))),
        }
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<bool, E> {
        match &mut *self.out {
            TensorData::Bytes(v) if v.len() >= MAX_JSON_BYTES_ELEMENTS => Err(too_many_bytes()),
            TensorData::Bytes(v) => {
                v.push(s.into_bytes());
                Ok(true)
            }
            _ => Err(self.bad(format_args!("{s:?}"))),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<bool, A::Error> {
        Err(self.bad(format_args!("an object")))
    }
}

struct ElementSeed<'a> {
    out: &'a mut TensorData,
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Elements {
            out: self.out,
            depth: self.depth,
        })
        .map(|_| ())
    }
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

/// An output tensor as the server writes it: its data serialized straight from the typed
/// vector (no `serde_json::Value` per element). Reads back as a [`ResponseOutput`].
#[derive(Debug, Clone, Serialize)]
pub struct ResponseOutputBody {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

/// An infer answer as the server writes it. Reads back as an [`InferResponse`].
#[derive(Debug, Clone, Serialize)]
pub struct InferResponseBody {
    pub model_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    pub outputs: Vec<ResponseOutputBody>,
}

/// A flat JSON array of the elements, written without building a `Value` tree: the same JSON
/// as [`TensorData::to_json`] (non-finite floats as `null`, BYTES as UTF-8 strings where valid,
/// else as arrays of byte values).
impl Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        match self {
            TensorData::F32(v) => {
                for x in v {
                    match x.is_finite() {
                        true => seq.serialize_element(&(*x as f64))?,
                        false => seq.serialize_element(&())?,
                    }
                }
            }
            TensorData::F64(v) => {
                for x in v {
                    match x.is_finite() {
                        true => seq.serialize_element(x)?,
                        false => seq.serialize_element(&())?,
                    }
                }
            }
            TensorData::F16(v) => {
                for x in v {
                    match x.is_finite() {
                        true => seq.serialize_element(&x.to_f64())?,
                        false => seq.serialize_element(&())?,
                    }
                }
            }
            TensorData::BF16(v) => {
                for x in v {
                    match x.is_finite() {
                        true => seq.serialize_element(&x.to_f64())?,
                        false => seq.serialize_element(&())?,
                    }
                }
            }
            TensorData::Bytes(v) => {
                for b in v {
                    match std::str::from_utf8(b) {
                        Ok(text) => seq.serialize_element(text)?,
                        Err(_) => seq.serialize_element(b)?,
                    }
                }
            }
            TensorData::Bool(v) => all(&mut seq, v)?,
            TensorData::U8(v) => all(&mut seq, v)?,
            TensorData::U16(v) => all(&mut seq, v)?,
            TensorData::U32(v) => all(&mut seq, v)?,
            TensorData::U64(v) => all(&mut seq, v)?,
            TensorData::I8(v) => all(&mut seq, v)?,
            TensorData::I16(v) => all(&mut seq, v)?,
            TensorData::I32(v) => all(&mut seq, v)?,
            TensorData::I64(v) => all(&mut seq, v)?,
        }
        fn all<S: SerializeSeq, T: Serialize>(seq: &mut S, v: &[T]) -> Result<(), S::Error> {
            v.iter().try_for_each(|x| seq.serialize_element(x))
        }
        seq.end()
    }
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
    /// herd: bytes charged to this model alone (its unique weights plus working memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_bytes: Option<u64>,
    /// herd: bytes of weights it shares with other loaded models (charged once for all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
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

    fn input(j: serde_json::Value) -> Result<RequestInput, serde_json::Error> {
        serde_json::from_str(&j.to_string())
    }

    #[test]
    fn request_data_decodes_straight_into_typed_vectors() {
        let r = input(
            json!({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]}),
        )
        .unwrap();
        assert_eq!(r.data, Some(TensorData::F32(vec![1.0, 2.5, 3.0, 4.0])));
        let r =
            input(json!({"name": "x", "shape": [2], "datatype": "INT64", "data": [i64::MIN, 7]}))
                .unwrap();
        assert_eq!(r.data, Some(TensorData::I64(vec![i64::MIN, 7])));
        let r = input(json!({"name": "x", "shape": [1], "datatype": "UINT64", "data": [u64::MAX]}))
            .unwrap();
        assert_eq!(r.data, Some(TensorData::U64(vec![u64::MAX])));
        let r = input(json!({"name": "t", "shape": [2], "datatype": "BYTES", "data": ["hé", ""]}))
            .unwrap();
        assert_eq!(
            r.data,
            Some(TensorData::Bytes(vec!["hé".as_bytes().to_vec(), vec![]]))
        );
        let r =
            input(json!({"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]}))
                .unwrap();
        assert_eq!(r.data, Some(TensorData::Bool(vec![true, false])));
        let r = input(json!({"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}})).unwrap();
        assert_eq!(r.data, None);
    }

    #[test]
    fn data_before_datatype_is_decoded_once_the_type_is_known() {
        let text =
            r#"{"data": [[1, 2], [3, 4]], "name": "x", "shape": [2, 2], "datatype": "INT32"}"#;
        let r: RequestInput = serde_json::from_str(text).unwrap();
        assert_eq!(r.data, Some(TensorData::I32(vec![1, 2, 3, 4])));
        let text = r#"{"data": [1, 300], "name": "x", "shape": [2], "datatype": "UINT8"}"#;
        let e = serde_json::from_str::<RequestInput>(text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("element 1") && e.contains("UINT8"), "{e}");
    }

    #[test]
    fn wrong_elements_are_rejected_with_position() {
        for (dt, data, at) in [
            ("UINT8", json!([1, 300]), 1),
            ("INT8", json!([[1], [-129]]), 1),
            ("INT64", json!([1, 2.5]), 1),
            ("FP32", json!([1, "a"]), 1),
            ("BOOL", json!([true, 1]), 1),
            ("BYTES", json!(["a", "b", 3]), 2),
            ("FP32", json!([1, null]), 1),
            ("FP32", json!([{"a": 1}]), 0),
        ] {
            let e = input(json!({"name": "x", "shape": [2], "datatype": dt, "data": data}))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("element {at}")), "{dt}: {e}");
        }
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let text = format!(r#"{{"name": "x", "shape": [1], "datatype": "FP32", "data": {deep}}}"#);
        let e = serde_json::from_str::<RequestInput>(&text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested deeper"), "{e}");
        let e = input(json!({"name": "x", "shape": [2], "datatype": "FP16", "data": [1, "a"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("element 1") && e.contains("FP16"), "{e}");
    }

    #[test]
    fn fp16_and_bf16_in_json_and_binary() {
        let r =
            input(json!({"name": "x", "shape": [3], "datatype": "FP16", "data": [1.5, -2, 0.1]}))
                .unwrap();
        let want = vec![f16::from_f32(1.5), f16::from_f32(-2.0), f16::from_f64(0.1)];
        assert_eq!(r.data, Some(TensorData::F16(want.clone())));
        let r = input(json!({"name": "x", "shape": [2], "datatype": "BF16", "data": [[1.5], [3]]}))
            .unwrap();
        assert_eq!(
            r.data,
            Some(TensorData::BF16(vec![
                bf16::from_f32(1.5),
                bf16::from_f32(3.0)
            ]))
        );
        // Binary: two little-endian bytes per element, the IEEE / bfloat16 bit patterns.
        let t = TensorData::F16(want);
        let raw = t.to_binary();
        assert_eq!(&raw[..2], &f16::from_f32(1.5).to_bits().to_le_bytes());
        assert_eq!(
            TensorData::from_binary(DataType::F16, &raw, "x").unwrap(),
            t
        );
        let b = TensorData::BF16(vec![bf16::from_f32(-0.5), bf16::INFINITY]);
        assert_eq!(
            TensorData::from_binary(DataType::BF16, &b.to_binary(), "x").unwrap(),
            b
        );
        assert!(TensorData::from_binary(DataType::F16, &[0, 0, 0], "x").is_err());
        // JSON out: the exact values as numbers, non-finite as null.
        assert_eq!(serde_json::to_value(&b).unwrap(), json!([-0.5, null]));
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!([1.5, -2.0, f16::from_f64(0.1).to_f64()])
        );
        assert_eq!(DataType::BF16.element_size(), Some(2));
        assert_eq!(serde_json::to_string(&DataType::BF16).unwrap(), "\"BF16\"");
        assert_eq!(TensorData::zeros(DataType::BF16, 2).len(), 2);
        assert_eq!(
            TensorData::zeros(DataType::F16, 1).datatype(),
            DataType::F16
        );
    }

    #[test]
    fn json_bytes_tensors_are_capped() {
        let n = MAX_JSON_BYTES_ELEMENTS;
        let ok = format!(
            r#"{{"name": "t", "shape": [{n}], "datatype": "BYTES", "data": [{}""]}}"#,
            "\"\",".repeat(n - 1)
        );
        let r: RequestInput = serde_json::from_str(&ok).unwrap();
        assert_eq!(r.data.map(|d| d.len()), Some(n));
        let over = format!(
            r#"{{"name": "t", "shape": [{}], "datatype": "BYTES", "data": [{}""]}}"#,
            n + 1,
            "\"\",".repeat(n)
        );
        let e = serde_json::from_str::<RequestInput>(&over)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MAX_JSON_BYTES_ELEMENTS"), "{e}");
    }

    #[test]
    fn request_input_serializes_back_to_the_wire_form() {
        let r = input(json!({"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, 2]}))
            .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, 2.0]})
        );
    }

    #[test]
    fn typed_serialization_matches_to_json() {
        let cases = vec![
            TensorData::F32(vec![1.5, -2.0, f32::NAN, 0.1]),
            TensorData::F64(vec![1.5, f64::INFINITY, 0.1]),
            TensorData::I64(vec![i64::MIN, 7]),
            TensorData::U8(vec![0, 255]),
            TensorData::Bool(vec![true, false]),
            TensorData::Bytes(vec![b"hi".to_vec(), vec![0xff, 0x00], vec![]]),
            TensorData::F16(vec![f16::from_f32(0.25), f16::NAN]),
            TensorData::BF16(vec![bf16::from_f32(8.0)]),
        ];
        for c in cases {
            assert_eq!(serde_json::to_value(&c).unwrap(), c.to_json(), "{c:?}");
        }
    }

    #[test]
    fn datatype_wire_names() {
        assert_eq!(serde_json::to_string(&DataType::U64).unwrap(), "\"UINT64\"");
        let d: DataType = serde_json::from_str("\"FP32\"").unwrap();
        assert_eq!(d, DataType::F32);
    }
}
