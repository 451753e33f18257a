//! Post-processing: pooling, L2 normalisation, softmax, top-k — and the two whole steps
//! ([`embeddings`], [`classify`]) that the serving core applies to a model's output.

use crate::config::{ClassifierConfig, Pooling};
use crate::PipelineError;

/// Pools `hidden` (row-major `[batch, seq, hidden_dim]`) to one vector per text, using `mask`
/// (`[batch, seq]`, non-zero = real token) as sentence-transformers does: `Mean` averages the
/// masked tokens (a text without any gives zeros), `Cls` takes token 0, `Max` takes the
/// element-wise maximum of the masked tokens (zeros when there are none).
pub fn pool(
    hidden: &[f32],
    batch: usize,
    seq: usize,
    hidden_dim: usize,
    mask: &[i64],
    mode: Pooling,
) -> Result<Vec<Vec<f32>>, PipelineError> {
    let want = batch
        .checked_mul(seq)
        .and_then(|n| n.checked_mul(hidden_dim));
    if want != Some(hidden.len()) {
        return Err(PipelineError::Shape(format!(
            "model output has {} values, expected batch {batch} x seq {seq} x hidden {hidden_dim}",
            hidden.len()
        )));
    }
    if mask.len() != batch * seq {
        return Err(PipelineError::Shape(format!(
            "attention mask has {} values, expected batch {batch} x seq {seq}",
            mask.len()
        )));
    }
    if seq == 0 {
        return Ok(vec![vec![0.0; hidden_dim]; batch]);
    }
    let mut out = Vec::with_capacity(batch);
    for b in 0..batch {
        let tokens = &hidden[b * seq * hidden_dim..(b + 1) * seq * hidden_dim];
        let m = &mask[b * seq..(b + 1) * seq];
        let v = match mode {
            Pooling::Cls => tokens[..hidden_dim].to_vec(),
            Pooling::Mean => {
                let mut acc = vec![0f32; hidden_dim];
                let mut count = 0f32;
                for (t, _) in m.iter().enumerate().filter(|(_, &mv)| mv != 0) {
                    count += 1.0;
                    for (a, &h) in acc
                        .iter_mut()
                        .zip(&tokens[t * hidden_dim..(t + 1) * hidden_dim])
                    {
                        *a += h;
                    }
                }
                let denom = count.max(1e-9);
                acc.iter_mut().for_each(|a| *a /= denom);
                acc
            }
            Pooling::Max => {
                let mut acc = vec![f32::NEG_INFINITY; hidden_dim];
                let mut any = false;
                for (t, _) in m.iter().enumerate().filter(|(_, &mv)| mv != 0) {
                    any = true;
                    for (a, &h) in acc
                        .iter_mut()
                        .zip(&tokens[t * hidden_dim..(t + 1) * hidden_dim])
                    {
                        *a = a.max(h);
                    }
                }
                if !any {
                    acc.iter_mut().for_each(|a| *a = 0.0);
                }
                acc
            }
        };
        out.push(v);
    }
    Ok(out)
}

/// Scales `v` to unit L2 norm in place (`v / max(|v|, 1e-12)`, as `torch.nn.functional.normalize`),
/// so a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Numerically stable softmax. An empty slice gives an empty vector.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` best `(label, score)` pairs, best first; ties keep the lower class index first; NaN
/// scores rank last. Classes without a name in `labels` are named by their index.
pub fn top_k(scores: &[f32], k: usize, labels: &[String]) -> Vec<(String, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (sa, sb) = (scores[a], scores[b]);
        match (sa.is_nan(), sb.is_nan()) {
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => sb.total_cmp(&sa).then(a.cmp(&b)),
        }
    });
    idx.into_iter()
        .take(k)
        .map(|i| {
            let label = labels.get(i).cloned().unwrap_or_else(|| i.to_string());
            (label, scores[i])
        })
        .collect()
}

/// The FP32 values and the shape of a model output, for [`embeddings`] and [`classify`].
pub fn f32_output(t: &herd_api::v2::Tensor) -> Result<(&[f32], Vec<usize>), PipelineError> {
    let herd_api::v2::TensorData::F32(values) = &t.data else {
        return Err(PipelineError::Shape(format!(
            "output '{}' is {}, post-processing needs FP32",
            t.name,
            t.data.datatype()
        )));
    };
    let shape = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            PipelineError::Shape(format!("output '{}' has shape {:?}", t.name, t.shape))
        })?;
    Ok((values, shape))
}

/// An embedding model's whole post-processing: `output` is `[batch, seq, hidden]` (pooled with
/// `mask`) or already pooled `[batch, hidden]`; then optional L2 normalisation.
pub fn embeddings(
    output: &[f32],
    shape: &[usize],
    mask: &[i64],
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<Vec<f32>>, PipelineError> {
    let mut vectors = match *shape {
        [batch, seq, hidden] => pool(output, batch, seq, hidden, mask, pooling)?,
        [batch, hidden] => {
            if batch.checked_mul(hidden) != Some(output.len()) {
                return Err(PipelineError::Shape(format!(
                    "model output has {} values, expected {batch} x {hidden}",
                    output.len()
                )));
            }
            if hidden == 0 {
                vec![Vec::new(); batch]
            } else {
                output.chunks(hidden).map(<[f32]>::to_vec).collect()
            }
        }
        _ => {
            return Err(PipelineError::Shape(format!(
            "an embedding model must output [batch, seq, hidden] or [batch, hidden], got {shape:?}"
        )))
        }
    };
    if normalize {
        vectors.iter_mut().for_each(|v| l2_normalize(v));
    }
    Ok(vectors)
}

/// A classifier's whole post-processing: `output` is `[batch, classes]` logits; per text the
/// `top_k` `(label, score)` pairs, scores being probabilities when `softmax` is on.
pub fn classify(
    output: &[f32],
    shape: &[usize],
    cfg: &ClassifierConfig,
) -> Result<Vec<Vec<(String, f32)>>, PipelineError> {
    let [batch, classes] = *shape else {
        return Err(PipelineError::Shape(format!(
            "a classifier must output [batch, classes], got {shape:?}"
        )));
    };
    if batch.checked_mul(classes) != Some(output.len()) || classes == 0 {
        return Err(PipelineError::Shape(format!(
            "model output has {} values, expected {batch} x {classes} (at least one class)",
            output.len()
        )));
    }
    if !cfg.labels.is_empty() && cfg.labels.len() != classes {
        return Err(PipelineError::Shape(format!(
            "classifier.labels has {} names but the model answered {classes} classes",
            cfg.labels.len()
        )));
    }
    Ok(output
        .chunks(classes)
        .map(|row| {
            let scores = if cfg.softmax {
                softmax(row)
            } else {
                row.to_vec()
            };
            top_k(&scores, cfg.top_k, &cfg.labels)
        })
        .collect())
}

/// The logistic function, `1 / (1 + e^-x)`, without overflow for large `|x|`.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// A cross-encoder's output (`[batch, 1]` or `[batch]` logits) as one logit per pair.
pub fn pair_logits(output: &[f32], shape: &[usize]) -> Result<Vec<f32>, PipelineError> {
    let batch = match *shape {
        [batch] | [batch, 1] => batch,
        _ => {
            return Err(PipelineError::Shape(format!(
                "a cross-encoder must output one logit per pair ([batch, 1] or [batch]), got \
                 {shape:?}"
            )))
        }
    };
    if output.len() != batch {
        return Err(PipelineError::Shape(format!(
            "model output has {} values, expected {batch} (one per pair)",
            output.len()
        )));
    }
    Ok(output.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    // batch 2, seq 3, hidden 2
    const H: [f32; 12] = [
        1.0, 2.0, /**/ 3.0, -4.0, /**/ 100.0,
        100.0, // text 0: last token is padding
        -1.0, 0.0, /**/ 5.0, 1.0, /**/ 2.0, 8.0, // text 1: all real
    ];
    const M: [i64; 6] = [1, 1, 0, 1, 1, 1];

    #[test]
    fn mean_ignores_padding() {
        let v = pool(&H, 2, 3, 2, &M, Pooling::Mean).unwrap();
        close(&v[0], &[2.0, -1.0]);
        close(&v[1], &[2.0, 3.0]);
    }

    #[test]
    fn cls_takes_first_token() {
        let v = pool(&H, 2, 3, 2, &M, Pooling::Cls).unwrap();
        close(&v[0], &[1.0, 2.0]);
        close(&v[1], &[-1.0, 0.0]);
    }

    #[test]
    fn max_ignores_padding() {
        let v = pool(&H, 2, 3, 2, &M, Pooling::Max).unwrap();
        close(&v[0], &[3.0, 2.0]);
        close(&v[1], &[5.0, 8.0]);
    }

    #[test]
    fn fully_masked_text_pools_to_zeros() {
        for mode in [Pooling::Mean, Pooling::Max] {
            let v = pool(&[1.0, 2.0], 1, 1, 2, &[0], mode).unwrap();
            close(&v[0], &[0.0, 0.0]);
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(pool(&H, 2, 3, 3, &M, Pooling::Mean).is_err());
        assert!(pool(&H, 2, 3, 2, &M[..5], Pooling::Mean).is_err());
        assert!(pool(&H, usize::MAX, 3, 2, &M, Pooling::Mean).is_err());
        assert!(embeddings(&H, &[2, 5], &M, Pooling::Mean, false).is_err());
        assert!(embeddings(&H, &[12], &M, Pooling::Mean, false).is_err());
    }

    #[test]
    fn f32_output_reads_values_and_shape() {
        use herd_api::v2::{Tensor, TensorData};
        let t = Tensor::new("h", vec![1, 2], TensorData::F32(vec![1.0, 2.0]));
        let (v, shape) = f32_output(&t).unwrap();
        assert_eq!((v, shape), (&[1.0f32, 2.0][..], vec![1, 2]));
        let ints = Tensor::new("h", vec![1], TensorData::I64(vec![1]));
        assert!(f32_output(&ints).unwrap_err().to_string().contains("INT64"));
        let neg = Tensor::new("h", vec![-1], TensorData::F32(vec![]));
        assert!(f32_output(&neg).is_err());
    }

    #[test]
    fn normalize_gives_unit_norm_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        close(&v, &[0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        close(&z, &[0.0, 0.0]);
    }

    #[test]
    fn embeddings_pools_or_passes_pooled_output() {
        let v = embeddings(&H, &[2, 3, 2], &M, Pooling::Mean, true).unwrap();
        let n = (4.0f32 + 1.0).sqrt();
        close(&v[0], &[2.0 / n, -1.0 / n]);
        let pooled = embeddings(&[3.0, 4.0, 1.0, 0.0], &[2, 2], &[], Pooling::Mean, true).unwrap();
        close(&pooled[0], &[0.6, 0.8]);
        close(&pooled[1], &[1.0, 0.0]);
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        close(&softmax(&[1.0, 1.0, 1.0 - 2f32.ln()]), &[0.4, 0.4, 0.2]);
        // a naive exp() overflows to inf/inf = NaN here
        close(&softmax(&[1000.0, 1000.0, -1000.0]), &[0.5, 0.5, 0.0]);
        assert!(softmax(&[]).is_empty());
    }

    #[test]
    fn top_k_orders_names_and_caps() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let got = top_k(&[0.1, 0.5, 0.5, f32::NAN], 10, &labels);
        let names: Vec<_> = got.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            names,
            ["b", "2", "a", "3"],
            "ties by index, unnamed by index, NaN last"
        );
        assert_eq!(top_k(&[0.1, 0.9], 1, &labels), vec![("b".to_string(), 0.9)]);
    }

    #[test]
    fn classify_applies_softmax_top_k_and_labels() {
        let cfg = ClassifierConfig {
            softmax: true,
            top_k: 2,
            labels: vec!["x".into(), "y".into(), "z".into()],
        };
        let out = classify(&[0.0, 2f32.ln(), 0.0, 5.0, 1.0, 1.0], &[2, 3], &cfg).unwrap();
        assert_eq!(out[0][0].0, "y");
        assert!((out[0][0].1 - 0.5).abs() < 1e-6);
        assert_eq!(out[0][1].0, "x");
        assert_eq!(out[1].len(), 2);
        assert_eq!(out[1][0].0, "x");
        let raw = ClassifierConfig {
            softmax: false,
            ..cfg.clone()
        };
        assert_eq!(
            classify(&[0.0, 3.0, 1.0], &[1, 3], &raw).unwrap()[0][0],
            ("y".into(), 3.0)
        );
        assert!(
            classify(&[0.0; 4], &[2, 2], &cfg).is_err(),
            "3 labels, 2 classes"
        );
        assert!(classify(&[0.0; 6], &[2, 3, 1], &cfg).is_err());
        assert!(classify(&[0.0; 5], &[2, 3], &cfg).is_err());
    }

    #[test]
    fn sigmoid_and_pair_logits() {
        close(
            &[sigmoid(0.0), sigmoid(2.0), sigmoid(-2.0)],
            &[0.5, 0.880_797, 0.119_203],
        );
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(pair_logits(&[1.0, -2.0], &[2, 1]).unwrap(), vec![1.0, -2.0]);
        assert_eq!(pair_logits(&[3.0], &[1]).unwrap(), vec![3.0]);
        assert!(pair_logits(&[1.0, 2.0], &[1, 2]).is_err());
        assert!(pair_logits(&[1.0], &[2, 1]).is_err());
    }
}
