//! Request limits, checked before any work is done, and chunking of requests larger than a
//! model's batch into consecutive runs.

use herd_api::v2::{Tensor, TensorData};

use crate::{CoreError, RequestLimits};

pub(crate) fn exceeded(
    model: &str,
    limit: &'static str,
    max: usize,
    got: usize,
    what: &str,
) -> CoreError {
    CoreError::LimitExceeded {
        model: model.to_string(),
        limit,
        max: max as u64,
        got: got as u64,
        what: what.to_string(),
    }
}

/// Rows of a tensor request.
pub(crate) fn check_rows(
    model: &str,
    limits: &RequestLimits,
    rows: usize,
) -> Result<(), CoreError> {
    if rows > limits.max_rows_per_request {
        return Err(exceeded(
            model,
            "max_rows_per_request",
            limits.max_rows_per_request,
            rows,
            "rows in one request",
        ));
    }
    Ok(())
}

/// The dynamic dimensions other than the batch of a tensor model's inputs: at most `max` (the
/// model's `max_dynamic_dim`, the size its warm-up ran at, so its charge covers the run).
pub(crate) fn check_dynamic_dims(
    model: &str,
    sig: &herd_runtime::Signature,
    inputs: &[Tensor],
    max: usize,
) -> Result<(), CoreError> {
    for t in inputs {
        let Some(meta) = sig.inputs.iter().find(|m| m.name == t.name) else {
            continue;
        };
        for (i, (&d, &got)) in meta.shape.iter().zip(&t.shape).enumerate().skip(1) {
            if d < 0 && got > max as i64 {
                return Err(exceeded(
                    model,
                    "max_dynamic_dim",
                    max,
                    got as usize,
                    &format!("elements along dimension {i} of input '{}'", t.name),
                ));
            }
        }
    }
    Ok(())
}

/// The texts of a text-pipeline request (the BYTES input `input`): their number is bounded, and
/// each text longer than `max_chars_per_text` characters is cut to it (when the pipeline
/// truncates anyway) or refused. Runs before the tokenizer sees anything.
pub(crate) fn limit_texts(
    model: &str,
    limits: &RequestLimits,
    truncation: bool,
    text: &mut Tensor,
) -> Result<(), CoreError> {
    let TensorData::Bytes(items) = &mut text.data else {
        // A wrong datatype is reported by validation with what was expected.
        return Ok(());
    };
    if items.len() > limits.max_texts_per_request {
        return Err(exceeded(
            model,
            "max_texts_per_request",
            limits.max_texts_per_request,
            items.len(),
            "texts in one request",
        ));
    }
    let max = limits.max_chars_per_text;
    for (i, b) in items.iter_mut().enumerate() {
        if b.len() <= max {
            continue; // never more characters than bytes
        }
        if truncation {
            cut_to_chars(b, max);
        } else {
            let chars = count_chars(b);
            if chars > max {
                return Err(exceeded(
                    model,
                    "max_chars_per_text",
                    max,
                    chars,
                    &format!("characters in text {i} (the pipeline does not truncate)"),
                ));
            }
        }
    }
    Ok(())
}

/// UTF-8 characters (lead bytes; an invalid byte counts as one and is reported later).
fn count_chars(b: &[u8]) -> usize {
    b.iter().filter(|&&x| x & 0xC0 != 0x80).count()
}

/// Cuts `b` after `max` characters, on a character boundary; frees the rest. Returns whether
/// it cut. Reads at most the bytes of the first `max + 1` characters.
pub(crate) fn cut_to_chars(b: &mut Vec<u8>, max: usize) -> bool {
    let mut chars = 0usize;
    for i in 0..b.len() {
        if b[i] & 0xC0 != 0x80 {
            if chars == max {
                b.truncate(i);
                b.shrink_to_fit();
                return true;
            }
            chars += 1;
        }
    }
    false
}

/// The most tokens `texts` can give: a token covers at least one byte of text (WordPiece,
/// byte-level BPE, SentencePiece with byte fallback), plus the special tokens and a prefix
/// marker, and never more than `max_length` per text.
pub(crate) fn token_upper_bound(texts: &[Vec<u8>], max_length: usize, specials: usize) -> usize {
    texts
        .iter()
        .map(|t| (t.len() + specials + 1).min(max_length))
        .sum()
}

/// Rows `[start, end)` of `t` along its first dimension (of `rows` rows in all).
pub(crate) fn slice_rows(t: &Tensor, rows: usize, start: usize, end: usize) -> Tensor {
    let per_row = t.data.len().checked_div(rows).unwrap_or(0);
    let mut shape = t.shape.clone();
    if let Some(d) = shape.first_mut() {
        *d = (end - start) as i64;
    }
    Tensor::new(
        t.name.clone(),
        shape,
        t.data.slice(start * per_row, end * per_row),
    )
}

/// Appends the outputs of one chunk to those of the chunks before it, along the first dimension.
pub(crate) fn append_rows(acc: &mut Vec<Tensor>, more: Vec<Tensor>) -> Result<(), String> {
    if acc.is_empty() {
        *acc = more;
        return Ok(());
    }
    if acc.len() != more.len() {
        return Err(format!(
            "a chunk answered {} outputs, the first chunk {}",
            more.len(),
            acc.len()
        ));
    }
    for (a, m) in acc.iter_mut().zip(more) {
        if a.name != m.name || a.shape.get(1..) != m.shape.get(1..) || a.shape.is_empty() {
            return Err(format!(
                "output '{}' has shape {:?} in one chunk and {:?} in another; set max_batch_size \
                 at least as large as the requests' rows for this model",
                a.name, a.shape, m.shape
            ));
        }
        if !a.data.extend_from(&m.data) {
            return Err(format!(
                "output '{}' changed datatype between chunks",
                a.name
            ));
        }
        a.shape[0] += m.shape[0];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: Vec<&str>) -> Tensor {
        Tensor::new(
            "text",
            vec![v.len() as i64],
            TensorData::Bytes(v.into_iter().map(|s| s.as_bytes().to_vec()).collect()),
        )
    }

    fn lim(texts: usize, chars: usize) -> RequestLimits {
        RequestLimits {
            max_texts_per_request: texts,
            max_chars_per_text: chars,
            ..RequestLimits::default()
        }
    }

    #[test]
    fn texts_just_under_the_limit_pass_and_one_more_is_named() {
        let mut t = texts(vec!["a"; 3]);
        limit_texts("m", &lim(3, 10), true, &mut t).unwrap();
        let mut t = texts(vec!["a"; 4]);
        let e = limit_texts("m", &lim(3, 10), true, &mut t).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("max_texts_per_request = 3"), "{msg}");
        assert!(msg.contains("4 texts"), "{msg}");
        assert!(msg.contains("--max-texts-per-request"), "{msg}");
        assert_eq!(herd_api::HasErrorCode::code(&e).as_str(), "limit_exceeded");
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        // "é" is two bytes: 6 characters, 12 bytes; cut to 4 characters = 8 bytes.
        let mut t = texts(vec!["éééééé", "short"]);
        limit_texts("m", &lim(10, 4), true, &mut t).unwrap();
        let TensorData::Bytes(v) = &t.data else {
            panic!()
        };
        assert_eq!(std::str::from_utf8(&v[0]).unwrap(), "éééé");
        assert_eq!(std::str::from_utf8(&v[1]).unwrap(), "shor");
        // Exactly at the limit: untouched.
        let mut t = texts(vec!["abcd"]);
        limit_texts("m", &lim(10, 4), true, &mut t).unwrap();
        let TensorData::Bytes(v) = &t.data else {
            panic!()
        };
        assert_eq!(v[0], b"abcd");
    }

    #[test]
    fn without_truncation_a_long_text_is_refused() {
        let mut t = texts(vec!["abcd", "abcde"]);
        let e = limit_texts("m", &lim(10, 4), false, &mut t).unwrap_err();
        assert!(
            e.to_string().contains("max_chars_per_text = 4") && e.to_string().contains("text 1"),
            "{e}"
        );
        // Multi-byte text within the character limit though over it in bytes: accepted.
        let mut t = texts(vec!["éééé"]);
        limit_texts("m", &lim(10, 4), false, &mut t).unwrap();
    }

    #[test]
    fn rows_limit() {
        let l = RequestLimits {
            max_rows_per_request: 5,
            ..RequestLimits::default()
        };
        check_rows("m", &l, 5).unwrap();
        let e = check_rows("m", &l, 6).unwrap_err().to_string();
        assert!(e.contains("max_rows_per_request = 5"), "{e}");
    }

    #[test]
    fn slicing_and_appending_rows_round_trip() {
        let t = Tensor::new(
            "x",
            vec![5, 2],
            TensorData::F32((0..10).map(|v| v as f32).collect()),
        );
        let mut acc = Vec::new();
        for (s, e) in [(0, 2), (2, 4), (4, 5)] {
            append_rows(&mut acc, vec![slice_rows(&t, 5, s, e)]).unwrap();
        }
        assert_eq!(acc, vec![t]);
    }

    #[test]
    fn upper_bound_caps_each_text() {
        let v = vec![b"".to_vec(), b"hello world".to_vec(), vec![b'a'; 1000]];
        assert_eq!(token_upper_bound(&v, 16, 2), 3 + 14 + 16);
    }
}
