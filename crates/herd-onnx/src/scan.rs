//! A streaming, signature-only read of an ONNX file: walks the protobuf fields with a buffered
//! reader and seeks over everything that is not part of the signature (node lists, initializer
//! bytes), so reading the metadata of a 2 GB model costs kilobytes of memory, not the model.
//! Also lists the external-data files (`external_data` `location`s) the initializers refer to.

use std::collections::HashSet;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::proto::{OperatorSetIdProto, StringStringEntryProto, ValueInfoProto};
use crate::signature::{build, HINT};
use crate::{OnnxError, Signature};

/// What a signature-only read finds in a model file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileScan {
    pub signature: Signature,
    /// Distinct external-data locations, as written in the file (relative to its directory).
    pub external_data: Vec<String>,
}

impl FileScan {
    /// The external-data files, resolved against the model file's directory. A location that
    /// leaves the directory (absolute, or with `..`) is an error: ONNX Runtime would read it.
    pub fn external_paths(&self, model_file: &Path) -> Result<Vec<PathBuf>, OnnxError> {
        let dir = model_file.parent().unwrap_or(Path::new("."));
        self.external_data
            .iter()
            .map(|loc| {
                let p = Path::new(loc);
                let safe = p
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                if !safe {
                    return Err(OnnxError::NotOnnx(format!(
                        "external data location '{loc}' leaves the model's directory; \
                         keep the .data files beside model.onnx"
                    )));
                }
                Ok(dir.join(p))
            })
            .collect()
    }
}

/// Longest single signature field (one ValueInfoProto, opset entry, name) read into memory.
const MAX_FIELD: u64 = 16 << 20;

struct Walker<R> {
    r: BufReader<R>,
    pos: u64,
}

impl<R: Read + Seek> Walker<R> {
    fn byte(&mut self) -> Result<Option<u8>, OnnxError> {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => Ok(None),
            Ok(_) => {
                self.pos += 1;
                Ok(Some(b[0]))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn varint(&mut self) -> Result<Option<u64>, OnnxError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(b) = self.byte()? else {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(bad("truncated varint"))
                };
            };
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(Some(v));
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn skip(&mut self, n: u64) -> Result<(), OnnxError> {
        let n = i64::try_from(n).map_err(|_| bad("field too long"))?;
        self.r.seek_relative(n).map_err(io)?;
        self.pos += n as u64;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, OnnxError> {
        if n > MAX_FIELD {
            return Err(bad("a signature field is larger than 16 MiB"));
        }
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v).map_err(io)?;
        self.pos += n;
        Ok(v)
    }

    /// Skips a field of `wire` type (after its tag).
    fn skip_field(&mut self, wire: u64) -> Result<(), OnnxError> {
        match wire {
            0 => {
                self.varint()?.ok_or_else(|| bad("truncated"))?;
                Ok(())
            }
            1 => self.skip(8),
            2 => {
                let n = self.varint()?.ok_or_else(|| bad("truncated"))?;
                self.skip(n)
            }
            5 => self.skip(4),
            w => Err(bad(&format!("unsupported wire type {w}"))),
        }
    }

    /// The next (field, wire) before `end`, or None at `end`.
    fn tag(&mut self, end: u64) -> Result<Option<(u64, u64)>, OnnxError> {
        if self.pos >= end {
            return Ok(None);
        }
        let t = self.varint()?.ok_or_else(|| bad("truncated"))?;
        Ok(Some((t >> 3, t & 7)))
    }

    fn len(&mut self) -> Result<u64, OnnxError> {
        self.varint()?.ok_or_else(|| bad("truncated length"))
    }
}

fn io(e: std::io::Error) -> OnnxError {
    OnnxError::NotOnnx(format!("reading the file: {e}"))
}

fn bad(what: &str) -> OnnxError {
    OnnxError::NotOnnx(format!("not a valid ONNX protobuf ({what}); {HINT}"))
}

/// Reads the signature and external-data locations of the ONNX file at `path` without loading
/// the file into memory.
pub fn scan_file(path: &Path) -> Result<FileScan, OnnxError> {
    let f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    scan(f, size)
}

/// [`scan_file`] over any seekable reader of `size` bytes.
pub fn scan<R: Read + Seek>(r: R, size: u64) -> Result<FileScan, OnnxError> {
    if size == 0 {
        return Err(OnnxError::NotOnnx(format!("the file is empty; {HINT}")));
    }
    let mut w = Walker {
        r: BufReader::with_capacity(64 * 1024, r),
        pos: 0,
    };
    let mut ir_version = None;
    let mut producer = String::new();
    let mut opset = 0i64;
    let mut graph_seen = false;
    let mut inputs: Vec<ValueInfoProto> = Vec::new();
    let mut outputs: Vec<ValueInfoProto> = Vec::new();
    let mut inits: Vec<String> = Vec::new();
    let mut external: Vec<String> = Vec::new();
    while let Some((field, wire)) = w.tag(size)? {
        match (field, wire) {
            (1, 0) => ir_version = w.varint()?.map(|v| v as i64),
            (2, 2) => {
                let n = w.len()?;
                producer = String::from_utf8_lossy(&w.bytes(n)?).into_owned();
            }
            (7, 2) => {
                graph_seen = true;
                let n = w.len()?;
                let end = w.pos + n;
                graph(
                    &mut w,
                    end,
                    &mut inputs,
                    &mut outputs,
                    &mut inits,
                    &mut external,
                )?;
            }
            (8, 2) => {
                let n = w.len()?;
                let o = OperatorSetIdProto::decode(&w.bytes(n)?[..])
                    .map_err(|e| bad(&e.to_string()))?;
                if matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
                    opset = opset.max(o.version.unwrap_or(0));
                }
            }
            (_, wire) => w.skip_field(wire)?,
        }
    }
    if w.pos != size {
        return Err(bad("the last field runs past the end of the file"));
    }
    let ir_version = match ir_version {
        Some(v) if v > 0 => v,
        _ => {
            return Err(OnnxError::NotOnnx(format!(
                "the file ({size} bytes) has no ir_version; {HINT}"
            )))
        }
    };
    if !graph_seen {
        return Err(OnnxError::NotOnnx(format!(
            "the file has no graph (ir_version {ir_version}); {HINT}"
        )));
    }
    let names: HashSet<&str> = inits.iter().map(String::as_str).collect();
    let signature = build(ir_version, opset, producer, &names, &inputs, &outputs)?;
    let mut seen = HashSet::new();
    external.retain(|l| seen.insert(l.clone()));
    Ok(FileScan {
        signature,
        external_data: external,
    })
}

fn graph<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
    inputs: &mut Vec<ValueInfoProto>,
    outputs: &mut Vec<ValueInfoProto>,
    inits: &mut Vec<String>,
    external: &mut Vec<String>,
) -> Result<(), OnnxError> {
    while let Some((field, wire)) = w.tag(end)? {
        match (field, wire) {
            (5, 2) => {
                let n = w.len()?;
                let tend = w.pos + n;
                tensor(w, tend, inits, external)?;
            }
            (11, 2) | (12, 2) => {
                let n = w.len()?;
                let v =
                    ValueInfoProto::decode(&w.bytes(n)?[..]).map_err(|e| bad(&e.to_string()))?;
                if field == 11 {
                    inputs.push(v)
                } else {
                    outputs.push(v)
                }
            }
            (_, wire) => w.skip_field(wire)?,
        }
    }
    if w.pos != end {
        return Err(bad("a graph field runs past its end"));
    }
    Ok(())
}

/// An initializer: its name, and its external-data location if `data_location = EXTERNAL`.
fn tensor<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
    inits: &mut Vec<String>,
    external: &mut Vec<String>,
) -> Result<(), OnnxError> {
    let mut location = None;
    let mut is_external = false;
    while let Some((field, wire)) = w.tag(end)? {
        match (field, wire) {
            (8, 2) => {
                let n = w.len()?;
                inits.push(String::from_utf8_lossy(&w.bytes(n)?).into_owned());
            }
            (13, 2) => {
                // StringStringEntryProto { key = 1, value = 2 }
                let n = w.len()?;
                let e = StringStringEntryProto::decode(&w.bytes(n)?[..])
                    .map_err(|e| bad(&e.to_string()))?;
                if e.key.as_deref() == Some("location") {
                    location = e.value;
                }
            }
            (14, 0) => is_external = w.varint()? == Some(1),
            (_, wire) => w.skip_field(wire)?,
        }
    }
    if w.pos != end {
        return Err(bad("an initializer runs past its end"));
    }
    if is_external {
        if let Some(l) = location {
            external.push(l);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LinearClassifier;
    use std::io::Cursor;

    #[test]
    fn same_signature_as_the_full_decode() {
        let bytes = LinearClassifier::random(16, 4, 1).to_onnx("m");
        let full = crate::read_signature(&bytes).unwrap();
        let s = scan(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(s.signature, full);
        assert!(s.external_data.is_empty());
    }

    #[test]
    fn garbage_and_truncation_are_not_onnx() {
        let bytes = LinearClassifier::random(16, 4, 1).to_onnx("m");
        let cut = &bytes[..bytes.len() - 7];
        assert!(scan(Cursor::new(cut), cut.len() as u64).is_err());
        let junk = b"this is not a model at all, just some text";
        assert!(scan(Cursor::new(junk), junk.len() as u64).is_err());
        assert!(scan(Cursor::new(b""), 0).is_err());
    }

    #[test]
    fn external_data_locations_are_listed_once_and_kept_inside() {
        use crate::proto::{GraphProto, ModelProto, TensorProto};
        let mut m =
            ModelProto::decode(&LinearClassifier::random(4, 2, 1).to_onnx("m")[..]).unwrap();
        let g: &mut GraphProto = m.graph.as_mut().unwrap();
        for name in ["W", "b"] {
            let t: &mut TensorProto = g
                .initializer
                .iter_mut()
                .find(|t| t.name.as_deref() == Some(name))
                .unwrap();
            t.raw_data = None;
            t.float_data.clear();
            t.external_data = vec![
                crate::proto::StringStringEntryProto::new("location", "weights.data"),
                crate::proto::StringStringEntryProto::new("offset", "0"),
            ];
            t.data_location = Some(1);
        }
        let bytes = m.encode_to_vec();
        let s = scan(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(s.external_data, vec!["weights.data".to_string()]);
        let p = s.external_paths(Path::new("/repo/m/1/model.onnx")).unwrap();
        assert_eq!(p, vec![PathBuf::from("/repo/m/1/weights.data")]);
        let evil = FileScan {
            external_data: vec!["../../etc/passwd".into()],
            ..s
        };
        assert!(evil
            .external_paths(Path::new("/repo/m/1/model.onnx"))
            .is_err());
    }
}
