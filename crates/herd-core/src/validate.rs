//! Checks a request's tensors against the model's signature, with errors that say what was expected.

use herd_api::v2::{Tensor, TensorMetadata};
use herd_runtime::Signature;

use crate::CoreError;

fn fmt_shape(s: &[i64]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Validates and reorders `inputs` into signature order. Returns the number of rows (first
/// dimension) when every input has a dynamic first dimension, else `None`.
pub fn check_inputs(
    model: &str,
    sig: &Signature,
    mut inputs: Vec<Tensor>,
) -> Result<(Vec<Tensor>, Option<usize>), CoreError> {
    for t in &inputs {
        if !sig.inputs.iter().any(|m| m.name == t.name) {
            return Err(CoreError::InvalidInput(format!(
                "model '{model}' has no input '{}'; its inputs are: {}",
                t.name,
                describe(&sig.inputs)
            )));
        }
    }
    let mut ordered = Vec::with_capacity(sig.inputs.len());
    let mut rows: Option<usize> = None;
    let mut batchable = true;
    for meta in &sig.inputs {
        let pos = inputs
            .iter()
            .position(|t| t.name == meta.name)
            .ok_or_else(|| {
                CoreError::InvalidInput(format!(
                    "model '{model}' needs input '{}' ({} {}); its inputs are: {}",
                    meta.name,
                    meta.datatype,
                    fmt_shape(&meta.shape),
                    describe(&sig.inputs)
                ))
            })?;
        let t = inputs.swap_remove(pos);
        let dt = t.data.datatype();
        if dt != meta.datatype {
            return Err(CoreError::InvalidInput(format!(
                "input '{}' of model '{model}': expected datatype {}, got {dt}",
                meta.name, meta.datatype
            )));
        }
        let shape_ok = t.shape.len() == meta.shape.len()
            && t.shape
                .iter()
                .zip(&meta.shape)
                .all(|(got, want)| *got >= 0 && (*want < 0 || got == want));
        if !shape_ok {
            return Err(CoreError::InvalidInput(format!(
                "input '{}' of model '{model}': expected shape {} (-1 = any size), got {}",
                meta.name,
                fmt_shape(&meta.shape),
                fmt_shape(&t.shape)
            )));
        }
        let want = Tensor::shape_elements(&t.shape).ok_or_else(|| {
            CoreError::InvalidInput(format!("input '{}': shape is too large", meta.name))
        })?;
        if want != t.data.len() {
            return Err(CoreError::InvalidInput(format!(
                "input '{}' of model '{model}': shape {} holds {want} elements but {} were sent",
                meta.name,
                fmt_shape(&t.shape),
                t.data.len()
            )));
        }
        if meta.shape.first() == Some(&-1) {
            let r = t.shape[0] as usize;
            match rows {
                None => rows = Some(r),
                Some(prev) if prev != r => {
                    return Err(CoreError::InvalidInput(format!(
                        "inputs of model '{model}' disagree on the batch size: {prev} vs {r} rows in '{}'",
                        meta.name
                    )))
                }
                Some(_) => {}
            }
        } else {
            batchable = false;
        }
        ordered.push(t);
    }
    Ok((ordered, if batchable { rows } else { None }))
}

fn describe(metas: &[TensorMetadata]) -> String {
    metas
        .iter()
        .map(|m| format!("'{}' {} {}", m.name, m.datatype, fmt_shape(&m.shape)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::v2::{DataType, TensorData};

    fn sig() -> Signature {
        Signature {
            inputs: vec![TensorMetadata {
                name: "input".into(),
                datatype: DataType::F32,
                shape: vec![-1, 3],
            }],
            outputs: vec![],
        }
    }

    #[test]
    fn good_input_reports_rows() {
        let t = Tensor::new("input", vec![2, 3], TensorData::F32(vec![0.0; 6]));
        let (_, rows) = check_inputs("m", &sig(), vec![t]).unwrap();
        assert_eq!(rows, Some(2));
    }

    #[test]
    fn wrong_shape_says_what_was_expected() {
        let t = Tensor::new("input", vec![1, 4], TensorData::F32(vec![0.0; 4]));
        let e = check_inputs("m", &sig(), vec![t]).unwrap_err().to_string();
        assert!(
            e.contains("expected shape [-1, 3]") && e.contains("got [1, 4]"),
            "{e}"
        );
    }

    #[test]
    fn wrong_dtype_and_unknown_input() {
        let t = Tensor::new("input", vec![1, 3], TensorData::F64(vec![0.0; 3]));
        let e = check_inputs("m", &sig(), vec![t]).unwrap_err().to_string();
        assert!(e.contains("expected datatype FP32, got FP64"), "{e}");
        let t = Tensor::new("other", vec![1, 3], TensorData::F32(vec![0.0; 3]));
        let e = check_inputs("m", &sig(), vec![t]).unwrap_err().to_string();
        assert!(e.contains("no input 'other'"), "{e}");
    }

    #[test]
    fn element_count_must_match_shape() {
        let t = Tensor::new("input", vec![2, 3], TensorData::F32(vec![0.0; 5]));
        assert!(check_inputs("m", &sig(), vec![t]).is_err());
    }
}
