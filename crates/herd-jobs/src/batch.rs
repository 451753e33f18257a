//! The `batch-infer` job kind: read rows from a JSONL, CSV or Parquet file, send them in batches
//! to a herd server over the KServe v2 REST protocol, and write one output line per input row.
//!
//! Bad rows (unparsable, non-numeric, wrong width, rejected by the server) are reported with
//! their line number in the output and in the job outcome; good rows are still processed;
//! nothing is dropped silently: every input row gets exactly one output line, in input order.
//! The output goes to `<result_dir>/<job id>.jsonl` through a temp file and a rename.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::run::{io_failure, write_atomic, ProgressTx};
use crate::{BatchInferParams, Failure, InputFormat, Job, JobOutcome, JobsError, Progress};

/// One input row that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line number (JSONL: the line; CSV: the line in the file, header is line 1;
    /// Parquet: the row number).
    pub line: u64,
    pub id: Option<Value>,
    pub features: Vec<f64>,
}

/// One input row that did not.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: u64,
    pub error: String,
}

/// A parsed input file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub bad: Vec<BadRow>,
}

impl Parsed {
    /// Marks rows whose width is not `dim` as bad (so one odd row cannot fail a whole batch).
    pub fn check_width(&mut self, dim: usize) {
        let rows = std::mem::take(&mut self.rows);
        for r in rows {
            if r.features.len() == dim {
                self.rows.push(r);
            } else {
                self.bad.push(BadRow {
                    line: r.line,
                    error: format!(
                        "has {} values, the model input takes {dim}",
                        r.features.len()
                    ),
                });
            }
        }
    }
}

fn numbers(v: &Value) -> Result<Vec<f64>, String> {
    let Value::Array(items) = v else {
        return Err(format!("expected an array of numbers, got {}", short(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("element {i} is {}, not a number", short(x)))
        })
        .collect()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(37).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

/// Parses JSONL: each line a JSON array of numbers, or an object whose `input_field` holds one
/// (and whose `id_field`, if present, is carried along). Blank lines are not rows.
pub fn parse_jsonl(reader: impl Read, p: &BatchInferParams) -> Result<Parsed, std::io::Error> {
    let mut out = Parsed::default();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                out.bad.push(BadRow {
                    line: line_no,
                    error: "not valid UTF-8".into(),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                out.bad.push(BadRow {
                    line: line_no,
                    error: format!("not JSON: {e}"),
                });
                continue;
            }
        };
        let (id, feats) = match &v {
            Value::Array(_) => (None, numbers(&v)),
            Value::Object(m) => match m.get(&p.input_field) {
                Some(f) => (m.get(&p.id_field).cloned(), numbers(f)),
                None => (
                    m.get(&p.id_field).cloned(),
                    Err(format!("no '{}' field (the feature vector)", p.input_field)),
                ),
            },
            other => (
                None,
                Err(format!(
                    "expected an array or an object, got {}",
                    short(other)
                )),
            ),
        };
        match feats {
            Ok(features) => out.rows.push(Row {
                line: line_no,
                id,
                features,
            }),
            Err(error) => out.bad.push(BadRow {
                line: line_no,
                error,
            }),
        }
    }
    Ok(out)
}

/// Parses CSV with a header line: the `id_field` column (if any) is carried along, every other
/// column is a numeric feature.
pub fn parse_csv(reader: impl Read, p: &BatchInferParams) -> Result<Parsed, JobsError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let headers = rdr
        .headers()
        .map_err(|e| JobsError::BadInput {
            path: p.input.clone(),
            message: format!("cannot read the CSV header line: {e}"),
        })?
        .clone();
    let id_col = headers.iter().position(|h| h.trim() == p.id_field);
    let width = headers.len();
    if width == 0 || (width == 1 && id_col.is_some()) {
        return Err(JobsError::BadInput {
            path: p.input.clone(),
            message: "the CSV header names no feature columns".into(),
        });
    }
    let mut out = Parsed::default();
    let mut record = csv::StringRecord::new();
    loop {
        let line_hint = rdr.position().line();
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(line_hint);
                match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => {
                        out.bad.push(BadRow {
                            line,
                            error: "not valid UTF-8".into(),
                        });
                        continue;
                    }
                    _ => {
                        return Err(JobsError::BadInput {
                            path: p.input.clone(),
                            message: format!("line {line}: {e}"),
                        })
                    }
                }
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(line_hint);
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            continue; // blank line
        }
        if record.len() != width {
            out.bad.push(BadRow {
                line,
                error: format!("has {} fields, the header has {width}", record.len()),
            });
            continue;
        }
        let mut features = Vec::with_capacity(width);
        let mut id = None;
        let mut error = None;
        for (col, field) in record.iter().enumerate() {
            if Some(col) == id_col {
                id = Some(Value::String(field.to_string()));
                continue;
            }
            match field.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => features.push(f),
                _ => {
                    error = Some(format!(
                        "column '{}' is '{}', not a number",
                        headers.get(col).unwrap_or("?"),
                        field
                    ));
                    break;
                }
            }
        }
        match error {
            None => out.rows.push(Row { line, id, features }),
            Some(error) => out.bad.push(BadRow { line, error }),
        }
    }
    Ok(out)
}

/// Parses Parquet (plain, Snappy or uncompressed): a list column named `input_field` is the
/// feature vector; otherwise every numeric column except `id_field` is one feature.
pub fn parse_parquet(path: &Path, p: &BatchInferParams) -> Result<Parsed, JobsError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let bad_input = |message: String| JobsError::BadInput {
        path: p.input.clone(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| JobsError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| bad_input(format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| bad_input(format!("cannot read rows: {e}")))?;
    fn num(f: &Field) -> Option<f64> {
        match f {
            Field::Byte(v) => Some(f64::from(*v)),
            Field::Short(v) => Some(f64::from(*v)),
            Field::Int(v) => Some(f64::from(*v)),
            Field::Long(v) => Some(*v as f64),
            Field::UByte(v) => Some(f64::from(*v)),
            Field::UShort(v) => Some(f64::from(*v)),
            Field::UInt(v) => Some(f64::from(*v)),
            Field::ULong(v) => Some(*v as f64),
            Field::Float16(v) => Some(f64::from(*v)),
            Field::Float(v) => Some(f64::from(*v)),
            Field::Double(v) => Some(*v),
            _ => None,
        }
        .filter(|v| v.is_finite())
    }
    fn id_value(f: &Field) -> Value {
        match f {
            Field::Str(s) => Value::String(s.clone()),
            Field::Null => Value::Null,
            other => match num(other) {
                Some(n) if n.fract() == 0.0 && n.abs() < 9e15 => json!(n as i64),
                Some(n) => json!(n),
                None => Value::String(other.to_string()),
            },
        }
    }
    let mut out = Parsed::default();
    for (i, row) in rows.enumerate() {
        let line = i as u64 + 1;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                return Err(bad_input(format!("row {line}: {e}")));
            }
        };
        let mut id = None;
        let mut features = Vec::new();
        let mut list = None;
        let mut error = None;
        for (name, field) in row.get_column_iter() {
            if *name == p.id_field {
                id = Some(id_value(field));
            } else if *name == p.input_field {
                if let Field::ListInternal(l) = field {
                    list = Some(
                        l.elements()
                            .iter()
                            .enumerate()
                            .map(|(k, e)| {
                                num(e).ok_or_else(|| {
                                    format!("element {k} of '{name}' is {e}, not a number")
                                })
                            })
                            .collect::<Result<Vec<f64>, String>>(),
                    );
                } else if let Some(v) = num(field) {
                    features.push(v);
                } else {
                    error = Some(format!("column '{name}' is {field}, not a number"));
                }
            } else if let Some(v) = num(field) {
                features.push(v);
            } else if matches!(
                field,
                Field::ListInternal(_)
                    | Field::Str(_)
                    | Field::Bytes(_)
                    | Field::Bool(_)
                    | Field::Group(_)
                    | Field::MapInternal(_)
                    | Field::Date(_)
                    | Field::TimestampMillis(_)
                    | Field::TimestampMicros(_)
            ) {
                // Non-numeric columns other than the id are not features; say so once per row.
                error.get_or_insert_with(|| {
                    format!("column '{name}' is not numeric: name the feature list column '{}' or drop it", p.input_field)
                });
            } else {
                error = Some(format!("column '{name}' is {field}, not a number"));
            }
        }
        let features = match list {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e),
            None => match error {
                Some(e) => Err(e),
                None => Ok(features),
            },
        };
        match features {
            Ok(features) if !features.is_empty() => out.rows.push(Row { line, id, features }),
            Ok(_) => out.bad.push(BadRow {
                line,
                error: "no numeric feature columns".into(),
            }),
            Err(error) => out.bad.push(BadRow { line, error }),
        }
    }
    Ok(out)
}

/// Reads and parses the job's input file.
pub fn parse_input(p: &BatchInferParams) -> Result<(InputFormat, Parsed), JobsError> {
    let format = match p.format.or_else(|| InputFormat::from_path(&p.input)) {
        Some(f) => f,
        None => {
            return Err(JobsError::InvalidSpec(format!(
            "cannot tell the format of '{}': name it .jsonl, .csv or .parquet, or set the format",
            p.input
        )))
        }
    };
    let path = PathBuf::from(&p.input);
    let parsed = match format {
        InputFormat::Jsonl => {
            let f = std::fs::File::open(&path).map_err(|e| JobsError::io(&path, e))?;
            parse_jsonl(f, p).map_err(|e| JobsError::io(&path, e))?
        }
        InputFormat::Csv => {
            let f = std::fs::File::open(&path).map_err(|e| JobsError::io(&path, e))?;
            parse_csv(f, p)?
        }
        InputFormat::Parquet => parse_parquet(&path, p)?,
    };
    Ok((format, parsed))
}

/// The output line of one row, by line number: outputs or an error.
type Results = std::collections::BTreeMap<u64, Value>;

/// Runs a batch-infer job (see the module docs).
pub(crate) async fn run(
    http: &reqwest::Client,
    job: &Job,
    p: &BatchInferParams,
    dir: &Path,
    progress: &ProgressTx,
) -> Result<JobOutcome, Failure> {
    let (format, mut parsed) = parse_input(p).map_err(|e| match &e {
        // The file may appear later (a sync job writes it): retry. Everything else is permanent.
        JobsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Failure::retryable(format!("{e}"))
        }
        _ => Failure::permanent(e.to_string()),
    })?;
    let client = V2Client::new(http, p);
    let meta = client.input_signature().await?;
    let dim = match meta.as_ref().and_then(|(_, shape)| shape.last().copied()) {
        Some(d) if d > 0 => Some(d as usize),
        _ => parsed.rows.first().map(|r| r.features.len()),
    };
    if let Some(dim) = dim {
        parsed.check_width(dim);
    }
    let datatype = meta.map(|(dt, _)| dt).unwrap_or_else(|| "FP32".to_string());

    let total = (parsed.rows.len() + parsed.bad.len()) as u64;
    let mut results = Results::new();
    for b in &parsed.bad {
        results.insert(b.line, json!({ "line": b.line, "error": b.error }));
    }
    let mut done = parsed.bad.len() as u64;
    let _ = progress.send(Some(Progress {
        done,
        total: Some(total),
        message: Some(format!("{} bad rows", parsed.bad.len())),
    }));
    for chunk in parsed.rows.chunks(p.batch_size.max(1)) {
        client.infer_rows(chunk, &datatype, &mut results).await?;
        done += chunk.len() as u64;
        let _ = progress.send(Some(Progress {
            done,
            total: Some(total),
            message: None,
        }));
    }

    let mut body = Vec::new();
    let mut ok = 0u64;
    let mut bad = Vec::new();
    for (line, v) in &results {
        if let Some(e) = v.get("error") {
            bad.push(json!({ "line": line, "error": e }));
        } else {
            ok += 1;
        }
        body.extend_from_slice(v.to_string().as_bytes());
        body.push(b'\n');
    }
    let out_path = dir.join(format!("{}.jsonl", job.id));
    write_atomic(&out_path, &body).map_err(io_failure)?;
    let bad_count = bad.len();
    bad.truncate(100);
    Ok(JobOutcome {
        location: Some(out_path.display().to_string()),
        detail: json!({
            "format": format,
            "rows": results.len(),
            "ok": ok,
            "bad": bad_count,
            "bad_rows": bad,
            "model": p.model,
        }),
    })
}

struct V2Client<'a> {
    http: &'a reqwest::Client,
    base: String,
    server: String,
    input_name: String,
}

impl<'a> V2Client<'a> {
    fn new(http: &'a reqwest::Client, p: &BatchInferParams) -> Self {
        let server = p.server.trim_end_matches('/').to_string();
        let base = match &p.version {
            Some(v) => format!("{server}/v2/models/{}/versions/{v}", p.model),
            None => format!("{server}/v2/models/{}", p.model),
        };
        V2Client {
            http,
            base,
            server,
            input_name: p.input_name.clone(),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> Failure {
        Failure::retryable(format!(
            "inference server {} unreachable: {e} (is `herd serve` running there?)",
            self.server
        ))
    }

    /// The model input's datatype and shape from the metadata, if the server gives them.
    async fn input_signature(&self) -> Result<Option<(String, Vec<i64>)>, Failure> {
        let resp = self
            .http
            .get(&self.base)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.as_u16() == 404 {
            let body = resp.text().await.unwrap_or_default();
            return Err(Failure::permanent(format!(
                "model not found on {}: {} ({})",
                self.server,
                self.base,
                body.trim()
            )));
        }
        if !status.is_success() {
            return Ok(None);
        }
        let meta: herd_api::v2::ModelMetadata = match resp.json().await {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        Ok(meta
            .inputs
            .first()
            .map(|t| (t.datatype.as_str().to_string(), t.shape.clone())))
    }

    /// Infers `rows`; on a 4xx for a multi-row batch, retries row by row so only the rows the
    /// server rejects are reported bad.
    async fn infer_rows(
        &self,
        rows: &[Row],
        datatype: &str,
        results: &mut Results,
    ) -> Result<(), Failure> {
        match self.infer(rows, datatype).await? {
            Ok(per_row) => {
                for (row, outputs) in rows.iter().zip(per_row) {
                    let mut line = Map::new();
                    line.insert("line".into(), json!(row.line));
                    if let Some(id) = &row.id {
                        line.insert("id".into(), id.clone());
                    }
                    line.insert("outputs".into(), Value::Object(outputs));
                    results.insert(row.line, Value::Object(line));
                }
            }
            Err(rejected) if rows.len() == 1 => {
                results.insert(rows[0].line, json!({ "line": rows[0].line, "error": format!("server rejected the row: {rejected}") }));
            }
            Err(_) => {
                for row in rows {
                    Box::pin(self.infer_rows(std::slice::from_ref(row), datatype, results)).await?;
                }
            }
        }
        Ok(())
    }

    /// One infer request. Outer error: the job fails (server down, 5xx after retries, model
    /// gone). Inner error: the server rejected this input (4xx), with its message.
    async fn infer(
        &self,
        rows: &[Row],
        datatype: &str,
    ) -> Result<Result<Vec<Map<String, Value>>, String>, Failure> {
        let dim = rows.first().map(|r| r.features.len()).unwrap_or(0);
        let data: Vec<Value> =
            rows.iter()
                .flat_map(|r| r.features.iter())
                .map(|f| match datatype {
                    "INT64" | "INT32" | "INT16" | "INT8" | "UINT8" | "UINT16" | "UINT32"
                    | "UINT64" => json!(*f as i64),
                    "FP32" => json!(*f as f32),
                    _ => json!(*f),
                })
                .collect();
        let body = json!({
            "inputs": [{
                "name": self.input_name,
                "shape": [rows.len(), dim],
                "datatype": datatype,
                "data": data,
            }]
        });
        let body = body.to_string();
        let url = format!("{}/infer", self.base);
        let mut attempt = 0u32;
        let resp = loop {
            attempt += 1;
            let sent = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(300))
                .send()
                .await;
            match sent {
                Ok(r)
                    if (r.status().is_server_error() || r.status().as_u16() == 429)
                        && attempt < 4 =>
                {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Ok(r) => break r,
                Err(e) if attempt < 4 && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.unreachable(e)),
            }
        };
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        if status.as_u16() == 404 {
            return Err(Failure::permanent(format!(
                "model not found on {}: {}",
                self.server,
                text.trim()
            )));
        }
        if status.is_client_error() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| text.trim().to_string());
            return Ok(Err(format!("{status}: {msg}")));
        }
        if !status.is_success() {
            return Err(Failure::retryable(format!(
                "inference server {} answered {status}: {}",
                self.server,
                text.trim()
            )));
        }
        let resp: herd_api::v2::InferResponse = serde_json::from_str(&text).map_err(|e| {
            Failure::retryable(format!(
                "inference server {} sent an unreadable answer: {e}",
                self.server
            ))
        })?;
        let n = rows.len();
        let mut per_row: Vec<Map<String, Value>> = vec![Map::new(); n];
        for out in resp.outputs {
            let mut flat = Vec::new();
            if let Some(d) = &out.data {
                flatten(d, &mut flat);
            }
            if n == 0 || flat.len() % n != 0 {
                return Err(Failure::retryable(format!(
                    "output '{}' has {} values for {n} rows: cannot split it per row",
                    out.name,
                    flat.len()
                )));
            }
            let per = flat.len() / n;
            let row_shape: Vec<i64> = out.shape.iter().skip(1).copied().collect();
            for (i, chunk) in flat.chunks(per).enumerate() {
                let v = if per == 1 && row_shape.iter().all(|d| *d == 1) {
                    chunk[0].clone()
                } else {
                    Value::Array(chunk.to_vec())
                };
                per_row[i].insert(out.name.clone(), v);
            }
        }
        Ok(Ok(per_row))
    }
}

fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(input: &str) -> BatchInferParams {
        BatchInferParams::new("http://127.0.0.1:9", "m", input)
    }

    #[test]
    fn jsonl_bad_rows_have_line_numbers_and_good_rows_survive() {
        let text = "[1, 2]\n{\"id\": \"a\", \"input\": [3, 4.5]}\n\nnot json\n{\"id\": 7, \"features\": [1]}\n[1, \"x\"]\n\"str\"\n[5, 6]\n";
        let parsed = parse_jsonl(text.as_bytes(), &params("x.jsonl")).unwrap();
        let good: Vec<_> = parsed
            .rows
            .iter()
            .map(|r| (r.line, r.id.clone(), r.features.clone()))
            .collect();
        assert_eq!(
            good,
            vec![
                (1, None, vec![1.0, 2.0]),
                (2, Some(json!("a")), vec![3.0, 4.5]),
                (8, None, vec![5.0, 6.0]),
            ]
        );
        let bad: Vec<_> = parsed.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, vec![4, 5, 6, 7]);
        assert!(parsed.bad[0].error.contains("not JSON"));
        assert!(
            parsed.bad[1].error.contains("no 'input' field"),
            "{}",
            parsed.bad[1].error
        );
        assert!(
            parsed.bad[2].error.contains("element 1"),
            "{}",
            parsed.bad[2].error
        );
    }

    #[test]
    fn width_check_moves_odd_rows_to_bad() {
        let text = "[1, 2]\n[1, 2, 3]\n[4, 5]\n";
        let mut parsed = parse_jsonl(text.as_bytes(), &params("x.jsonl")).unwrap();
        parsed.check_width(2);
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(
            parsed.bad,
            vec![BadRow {
                line: 2,
                error: "has 3 values, the model input takes 2".into()
            }]
        );
    }

    #[test]
    fn csv_header_id_column_and_bad_rows_with_file_line_numbers() {
        let text = "id,f1,f2\na,1,2\nb,x,2\nc,3\nd,4,5,6\n\"e\",5.5,-1e3\n";
        let parsed = parse_csv(text.as_bytes(), &params("x.csv")).unwrap();
        let good: Vec<_> = parsed
            .rows
            .iter()
            .map(|r| (r.line, r.id.clone(), r.features.clone()))
            .collect();
        assert_eq!(
            good,
            vec![
                (2, Some(json!("a")), vec![1.0, 2.0]),
                (6, Some(json!("e")), vec![5.5, -1000.0])
            ]
        );
        let bad: Vec<_> = parsed
            .bad
            .iter()
            .map(|b| (b.line, b.error.clone()))
            .collect();
        assert_eq!(bad[0], (3, "column 'f1' is 'x', not a number".to_string()));
        assert_eq!(bad[1].0, 4);
        assert!(bad[1].1.contains("has 2 fields"));
        assert_eq!(bad[2].0, 5);
    }

    #[test]
    fn csv_without_features_is_a_clear_error() {
        let err = parse_csv("id\n1\n".as_bytes(), &params("x.csv")).unwrap_err();
        assert!(err.to_string().contains("no feature columns"), "{err}");
    }

    #[test]
    fn parquet_numeric_columns_nulls_are_bad_rows() {
        use parquet::basic::Compression;
        use parquet::data_type::{DoubleType, FloatType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        let schema = Arc::new(
            parse_message_type(
                "message s { REQUIRED INT64 id; OPTIONAL DOUBLE f1; REQUIRED FLOAT f2; }",
            )
            .unwrap(),
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(&path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            match col {
                0 => {
                    c.typed::<Int64Type>()
                        .write_batch(&[10, 11, 12], None, None)
                        .unwrap();
                }
                1 => {
                    // Row 2 is null.
                    c.typed::<DoubleType>()
                        .write_batch(&[1.5, 3.5], Some(&[1, 0, 1]), None)
                        .unwrap();
                }
                _ => {
                    c.typed::<FloatType>()
                        .write_batch(&[2.0, 4.0, 6.0], None, None)
                        .unwrap();
                }
            }
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();

        let p = params(path.to_str().unwrap());
        let (format, parsed) = parse_input(&p).unwrap();
        assert_eq!(format, InputFormat::Parquet);
        let good: Vec<_> = parsed
            .rows
            .iter()
            .map(|r| (r.line, r.id.clone(), r.features.clone()))
            .collect();
        assert_eq!(
            good,
            vec![
                (1, Some(json!(10)), vec![1.5, 2.0]),
                (3, Some(json!(12)), vec![3.5, 6.0])
            ]
        );
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].line, 2);
        assert!(
            parsed.bad[0].error.contains("f1"),
            "{}",
            parsed.bad[0].error
        );
    }

    #[test]
    fn parquet_list_column_is_the_feature_vector() {
        use parquet::data_type::{ByteArray, ByteArrayType, FloatType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        let schema = Arc::new(
            parse_message_type(
                "message s { REQUIRED BINARY id (UTF8); OPTIONAL GROUP input (LIST) { REPEATED GROUP list { OPTIONAL FLOAT element; } } }",
            )
            .unwrap(),
        );
        let file = std::fs::File::create(&path).unwrap();
        let mut w =
            SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
                .unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            if col == 0 {
                let ids: Vec<ByteArray> = ["a", "b", "c"]
                    .iter()
                    .map(|s| ByteArray::from(*s))
                    .collect();
                c.typed::<ByteArrayType>()
                    .write_batch(&ids, None, None)
                    .unwrap();
            } else {
                // Rows: [1, 2], [3, null], [5, 6]. def 3 = value, 2 = null element; rep 0 starts a row.
                c.typed::<FloatType>()
                    .write_batch(
                        &[1.0, 2.0, 3.0, 5.0, 6.0],
                        Some(&[3, 3, 3, 2, 3, 3]),
                        Some(&[0, 1, 0, 1, 0, 1]),
                    )
                    .unwrap();
            }
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();

        let parsed = parse_parquet(&path, &params(path.to_str().unwrap())).unwrap();
        let good: Vec<_> = parsed
            .rows
            .iter()
            .map(|r| (r.line, r.id.clone(), r.features.clone()))
            .collect();
        assert_eq!(
            good,
            vec![
                (1, Some(json!("a")), vec![1.0, 2.0]),
                (3, Some(json!("c")), vec![5.0, 6.0])
            ]
        );
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].line, 2);
        assert!(
            parsed.bad[0].error.contains("element 1 of 'input'"),
            "{}",
            parsed.bad[0].error
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_retryable_failure_and_writes_nothing() {
        // A loopback port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "[1, 2]\n").unwrap();
        let p = BatchInferParams::new(
            format!("http://127.0.0.1:{port}"),
            "m",
            input.to_str().unwrap(),
        );
        let mut spec = crate::JobSpec::new("q", crate::JobKind::BatchInfer(p.clone()));
        spec.result_dir = dir.path().join("out").display().to_string();
        let job = Job {
            id: "jx".into(),
            spec,
            state: crate::JobState::Running,
            attempts: 1,
            created_ms: 0,
            updated_ms: 0,
            run_at_ms: 0,
            finished_ms: None,
            worker_id: None,
            lease_expires_ms: None,
            last_error: None,
            result: None,
            progress: None,
        };
        let (tx, _rx) = tokio::sync::watch::channel(None);
        let err = run(
            &reqwest::Client::new(),
            &job,
            &p,
            &dir.path().join("out"),
            &tx,
        )
        .await
        .unwrap_err();
        assert!(err.retryable, "{}", err.message);
        assert!(err.message.contains("unreachable"), "{}", err.message);
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn not_parquet_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        std::fs::write(&path, b"id,f1\n1,2\n").unwrap();
        let err = parse_input(&params(path.to_str().unwrap())).unwrap_err();
        assert!(
            err.to_string().contains("not a readable Parquet file"),
            "{err}"
        );
    }
}
