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

use crate::run::{io_failure, temp_path, ProgressTx};
use crate::{BatchInferParams, Failure, InputFormat, Job, JobOutcome, JobsError, Progress};

/// One input row that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line number (JSONL: the line; CSV: the line in the file, header is line 1;
    /// Parquet: the row number).
    pub line: u64,
    pub id: Option<Value>,
    pub features: Vec<f64>,
    /// The row's text (text input, `text_field`); `features` is empty then.
    pub text: Option<String>,
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

/// Where a parser puts what it reads, in input order: collected in memory ([`Parsed`]) or sent
/// on to the inference loop while the rest of the file is still being read.
pub trait Sink {
    fn row(&mut self, row: Row);
    fn bad(&mut self, bad: BadRow);
    /// True when nobody wants more (the job was abandoned): the parser stops.
    fn closed(&self) -> bool {
        false
    }
}

impl Sink for Parsed {
    fn row(&mut self, row: Row) {
        self.rows.push(row);
    }
    fn bad(&mut self, bad: BadRow) {
        self.bad.push(bad);
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
    stream_jsonl(reader, p, &mut out)?;
    Ok(out)
}

/// [`parse_jsonl`] into a [`Sink`], one line at a time.
pub fn stream_jsonl(
    reader: impl Read,
    p: &BatchInferParams,
    out: &mut impl Sink,
) -> Result<(), std::io::Error> {
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        if out.closed() {
            break;
        }
        let line_no = i as u64 + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                out.bad(BadRow {
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
                out.bad(BadRow {
                    line: line_no,
                    error: format!("not JSON: {e}"),
                });
                continue;
            }
        };
        if let Some(tf) = &p.text_field {
            let (id, text) = match &v {
                Value::String(t) => (None, Ok(t.clone())),
                Value::Object(m) => (
                    m.get(&p.id_field).cloned(),
                    match m.get(tf) {
                        Some(Value::String(t)) => Ok(t.clone()),
                        Some(other) => Err(format!("'{tf}' is {}, not a string", short(other))),
                        None => Err(format!("no '{tf}' field (the text)")),
                    },
                ),
                other => (
                    None,
                    Err(format!(
                        "expected a string or an object, got {}",
                        short(other)
                    )),
                ),
            };
            match text {
                Ok(t) => out.row(Row {
                    line: line_no,
                    id,
                    features: Vec::new(),
                    text: Some(t),
                }),
                Err(error) => out.bad(BadRow {
                    line: line_no,
                    error,
                }),
            }
            continue;
        }
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
            Ok(features) => out.row(Row {
                line: line_no,
                id,
                features,
                text: None,
            }),
            Err(error) => out.bad(BadRow {
                line: line_no,
                error,
            }),
        }
    }
    Ok(())
}

/// Parses CSV with a header line: the `id_field` column (if any) is carried along, every other
/// column is a numeric feature.
pub fn parse_csv(reader: impl Read, p: &BatchInferParams) -> Result<Parsed, JobsError> {
    let mut out = Parsed::default();
    stream_csv(reader, p, &mut out)?;
    Ok(out)
}

/// [`parse_csv`] into a [`Sink`], one record at a time.
pub fn stream_csv(
    reader: impl Read,
    p: &BatchInferParams,
    out: &mut impl Sink,
) -> Result<(), JobsError> {
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
    let text_col = match &p.text_field {
        Some(tf) => Some(headers.iter().position(|h| h.trim() == tf).ok_or_else(|| {
            JobsError::BadInput {
                path: p.input.clone(),
                message: format!("the CSV header has no column '{tf}' (the text)"),
            }
        })?),
        None => None,
    };
    if p.text_field.is_none() && (width == 0 || (width == 1 && id_col.is_some())) {
        return Err(JobsError::BadInput {
            path: p.input.clone(),
            message: "the CSV header names no feature columns".into(),
        });
    }
    let mut record = csv::StringRecord::new();
    loop {
        if out.closed() {
            break;
        }
        let line_hint = rdr.position().line();
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(line_hint);
                match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => {
                        out.bad(BadRow {
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
            out.bad(BadRow {
                line,
                error: format!("has {} fields, the header has {width}", record.len()),
            });
            continue;
        }
        if let Some(tc) = text_col {
            out.row(Row {
                line,
                id: id_col
                    .and_then(|c| record.get(c))
                    .map(|f| Value::String(f.to_string())),
                features: Vec::new(),
                text: record.get(tc).map(str::to_string),
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
            None => out.row(Row {
                line,
                id,
                features,
                text: None,
            }),
            Some(error) => out.bad(BadRow { line, error }),
        }
    }
    Ok(())
}

/// Parses Parquet (plain, Snappy or uncompressed): a list column named `input_field` is the
/// feature vector; otherwise every numeric column except `id_field` is one feature.
pub fn parse_parquet(path: &Path, p: &BatchInferParams) -> Result<Parsed, JobsError> {
    let mut out = Parsed::default();
    stream_parquet(path, p, &mut out)?;
    Ok(out)
}

/// [`parse_parquet`] into a [`Sink`], one row at a time.
pub fn stream_parquet(
    path: &Path,
    p: &BatchInferParams,
    out: &mut impl Sink,
) -> Result<(), JobsError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let bad_input = |message: String| JobsError::BadInput {
        path: p.input.clone(),
        message,
    };
    if p.text_field.is_some() {
        return Err(bad_input(
            "text input from Parquet is not supported yet: use JSONL or CSV for text_field".into(),
        ));
    }
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
    for (i, row) in rows.enumerate() {
        if out.closed() {
            break;
        }
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
            Ok(features) if !features.is_empty() => out.row(Row {
                line,
                id,
                features,
                text: None,
            }),
            Ok(_) => out.bad(BadRow {
                line,
                error: "no numeric feature columns".into(),
            }),
            Err(error) => out.bad(BadRow { line, error }),
        }
    }
    Ok(())
}

/// The job's input format, from the spec or the file name.
fn input_format(p: &BatchInferParams) -> Result<InputFormat, JobsError> {
    p.format
        .or_else(|| InputFormat::from_path(&p.input))
        .ok_or_else(|| {
            JobsError::InvalidSpec(format!(
                "cannot tell the format of '{}': name it .jsonl, .csv or .parquet, or set the format",
                p.input
            ))
        })
}

/// Reads and parses the job's input file into `out`, streaming.
pub fn stream_input(p: &BatchInferParams, out: &mut impl Sink) -> Result<InputFormat, JobsError> {
    let format = input_format(p)?;
    let path = PathBuf::from(&p.input);
    match format {
        InputFormat::Jsonl => {
            let f = std::fs::File::open(&path).map_err(|e| JobsError::io(&path, e))?;
            stream_jsonl(f, p, out).map_err(|e| JobsError::io(&path, e))?
        }
        InputFormat::Csv => {
            let f = std::fs::File::open(&path).map_err(|e| JobsError::io(&path, e))?;
            stream_csv(f, p, out)?
        }
        InputFormat::Parquet => stream_parquet(&path, p, out)?,
    };
    Ok(format)
}

/// Reads and parses the job's input file.
pub fn parse_input(p: &BatchInferParams) -> Result<(InputFormat, Parsed), JobsError> {
    let mut parsed = Parsed::default();
    let format = stream_input(p, &mut parsed)?;
    Ok((format, parsed))
}

/// The output line of one row, by line number: outputs or an error.
type Results = std::collections::BTreeMap<u64, Value>;

/// One parsed input line, in input order.
enum Item {
    Row(Row),
    Bad(BadRow),
}

/// Sends parsed lines to the inference loop; blocks the reader thread when it is ahead.
struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<Item>,
    closed: bool,
}

impl Sink for ChannelSink {
    fn row(&mut self, row: Row) {
        self.closed |= self.tx.blocking_send(Item::Row(row)).is_err();
    }
    fn bad(&mut self, bad: BadRow) {
        self.closed |= self.tx.blocking_send(Item::Bad(bad)).is_err();
    }
    fn closed(&self) -> bool {
        self.closed
    }
}

/// Writes the output lines on a thread of its own into a temp file next to the result, renamed
/// into place by [`OutputWriter::finish`]; dropped unfinished, it removes the temp file.
struct OutputWriter {
    tx: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<Result<(), JobsError>>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl OutputWriter {
    fn create(path: &Path) -> Result<OutputWriter, JobsError> {
        use std::io::Write;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| JobsError::io(dir, e))?;
        let tmp = temp_path(path);
        let file = std::fs::File::create(&tmp).map_err(|e| JobsError::io(&tmp, e))?;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let tmp2 = tmp.clone();
        let thread = std::thread::spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(256 * 1024, file);
            for chunk in rx {
                w.write_all(&chunk).map_err(|e| JobsError::io(&tmp2, e))?;
            }
            let f = w
                .into_inner()
                .map_err(|e| JobsError::io(&tmp2, e.into_error()))?;
            f.sync_all().map_err(|e| JobsError::io(&tmp2, e))
        });
        Ok(OutputWriter {
            tx: Some(tx),
            thread: Some(thread),
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn write(&self, bytes: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(bytes);
        }
    }

    async fn finish(mut self) -> Result<(), JobsError> {
        drop(self.tx.take());
        let thread = self.thread.take();
        let (tmp, path) = (self.tmp.clone(), self.path.clone());
        let res = tokio::task::spawn_blocking(move || {
            match thread.map(|t| t.join()) {
                Some(Ok(r)) => r?,
                Some(Err(_)) => {
                    return Err(JobsError::Corrupt(
                        "the output writer thread panicked".into(),
                    ))
                }
                None => {}
            }
            std::fs::rename(&tmp, &path).map_err(|e| JobsError::io(&path, e))
        })
        .await
        .map_err(|e| JobsError::Corrupt(format!("output writer: {e}")))?;
        if res.is_ok() {
            self.tmp = PathBuf::new();
        }
        res
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The bearer token a batch-infer job sends: from the spec's secret reference (`env:NAME`, a
/// variable of the worker's environment, or `file:PATH`, a file on the worker), else the
/// worker's `HERD_TOKEN`, else none. The token itself is never stored in the queue.
pub fn resolve_token(p: &BatchInferParams) -> Result<Option<String>, Failure> {
    let from_env = |name: &str| std::env::var(name).ok().map(|t| t.trim().to_string());
    match p.token_secret.as_deref() {
        Some(r) => {
            let token = if let Some(name) = r.strip_prefix("env:") {
                from_env(name).ok_or_else(|| {
                    Failure::permanent(format!(
                        "the job's token secret '{r}' is not set on this worker: export {name} in the worker's environment"
                    ))
                })?
            } else if let Some(path) = r.strip_prefix("file:") {
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| {
                        Failure::permanent(format!(
                            "the job's token secret '{r}' cannot be read on this worker: {e}"
                        ))
                    })?
            } else {
                return Err(Failure::permanent(format!(
                    "unknown token secret reference '{r}': use env:NAME or file:PATH"
                )));
            };
            if token.is_empty() {
                return Err(Failure::permanent(format!(
                    "the job's token secret '{r}' is empty"
                )));
            }
            Ok(Some(token))
        }
        None => Ok(from_env("HERD_TOKEN").filter(|t| !t.is_empty())),
    }
}

/// Runs a batch-infer job (see the module docs): the input is parsed on a reader thread and
/// streamed through the server batch by batch; the output is written on a writer thread.
pub(crate) async fn run(
    http: &reqwest::Client,
    job: &Job,
    p: &BatchInferParams,
    dir: &Path,
    progress: &ProgressTx,
) -> Result<JobOutcome, Failure> {
    let format = input_format(p).map_err(|e| Failure::permanent(e.to_string()))?;
    // A remote input is streamed to a local temp file first (removed when the job ends).
    let mut local = p.clone();
    let mut _downloaded = None;
    if crate::storage::is_remote(&p.input) {
        let tmp = crate::storage::TempFile::new(&job.id, &p.input);
        crate::storage::download(&p.input, &tmp.0)
            .await
            .map_err(crate::run::store_failure)?;
        local.input = tmp.0.display().to_string();
        local.format = Some(format);
        _downloaded = Some(tmp);
    }
    let p = &local;
    // The file may appear later (a sync job writes it): retry. Checked before the server.
    if let Err(e) = std::fs::metadata(&p.input) {
        let e = JobsError::io(&p.input, e);
        return Err(match &e {
            JobsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Failure::retryable(e.to_string())
            }
            _ => Failure::permanent(e.to_string()),
        });
    }
    let token = resolve_token(p)?;
    let client = V2Client::new(http, p, token);
    let meta = client.input_signature().await?;
    let mut dim = match meta.as_ref().and_then(|(_, shape)| shape.last().copied()) {
        Some(d) if d > 0 => Some(d as usize),
        _ => None,
    };
    let datatype = meta.map(|(dt, _)| dt).unwrap_or_else(|| "FP32".to_string());

    let batch = p.batch_size.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(batch * 4);
    let params = p.clone();
    let reader = std::thread::spawn(move || {
        let mut sink = ChannelSink { tx, closed: false };
        stream_input(&params, &mut sink)
    });
    let out_path = dir.join(format!("{}.jsonl", job.id));
    let writer = OutputWriter::create(&out_path).map_err(io_failure)?;

    let mut window: Vec<Item> = Vec::with_capacity(batch * 2);
    let mut good_in_window = 0usize;
    let (mut rows_total, mut ok, mut bad_count) = (0u64, 0u64, 0u64);
    let mut bad_rows = Vec::new();
    loop {
        let next = rx.recv().await;
        let eof = next.is_none();
        if let Some(item) = next {
            let item = match item {
                Item::Row(r) if r.text.is_some() => {
                    good_in_window += 1;
                    Item::Row(r)
                }
                Item::Row(r) => {
                    let want = *dim.get_or_insert(r.features.len());
                    if r.features.len() == want {
                        good_in_window += 1;
                        Item::Row(r)
                    } else {
                        Item::Bad(BadRow {
                            line: r.line,
                            error: format!(
                                "has {} values, the model input takes {want}",
                                r.features.len()
                            ),
                        })
                    }
                }
                bad => bad,
            };
            window.push(item);
        }
        if good_in_window >= batch || (eof && !window.is_empty()) {
            let rows: Vec<Row> = window
                .iter()
                .filter_map(|i| match i {
                    Item::Row(r) => Some(r.clone()),
                    Item::Bad(_) => None,
                })
                .collect();
            let mut results = Results::new();
            if !rows.is_empty() {
                client.infer_rows(&rows, &datatype, &mut results).await?;
            }
            let mut body = Vec::new();
            for item in window.drain(..) {
                let v = match item {
                    Item::Row(r) => results
                        .remove(&r.line)
                        .unwrap_or_else(|| json!({ "line": r.line, "error": "no output" })),
                    Item::Bad(b) => json!({ "line": b.line, "error": b.error }),
                };
                rows_total += 1;
                if let Some(e) = v.get("error") {
                    bad_count += 1;
                    if bad_rows.len() < 100 {
                        bad_rows.push(json!({ "line": v["line"], "error": e }));
                    }
                } else {
                    ok += 1;
                }
                body.extend_from_slice(v.to_string().as_bytes());
                body.push(b'\n');
            }
            writer.write(body);
            good_in_window = 0;
            let _ = progress.send(Some(Progress {
                done: rows_total,
                total: None,
                message: Some(format!("{ok} ok, {bad_count} bad")),
            }));
        }
        if eof {
            break;
        }
    }
    match tokio::task::spawn_blocking(move || reader.join()).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => {
            return Err(match &e {
                JobsError::Io { .. } => Failure::retryable(e.to_string()),
                _ => Failure::permanent(e.to_string()),
            })
        }
        _ => return Err(Failure::retryable("the input reader thread crashed")),
    }
    writer.finish().await.map_err(io_failure)?;
    Ok(JobOutcome {
        location: Some(out_path.display().to_string()),
        detail: json!({
            "format": format,
            "rows": rows_total,
            "ok": ok,
            "bad": bad_count,
            "bad_rows": bad_rows,
            "model": p.model,
        }),
    })
}

struct V2Client<'a> {
    http: &'a reqwest::Client,
    base: String,
    server: String,
    model: String,
    input_name: String,
    token: Option<String>,
}

/// Tries of one request when the server answers 429/503 (honouring `Retry-After`) or another
/// 5xx, or cannot be reached; then the attempt fails (retryable), never the rows.
const HTTP_TRIES: u32 = 5;
/// The longest `Retry-After` honoured; a longer one fails the attempt (the queue's backoff
/// takes over).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl<'a> V2Client<'a> {
    fn new(http: &'a reqwest::Client, p: &BatchInferParams, token: Option<String>) -> Self {
        let server = p.server.trim_end_matches('/').to_string();
        let base = match &p.version {
            Some(v) => format!("{server}/v2/models/{}/versions/{v}", p.model),
            None => format!("{server}/v2/models/{}", p.model),
        };
        V2Client {
            http,
            base,
            server,
            model: p.model.clone(),
            input_name: p.input_name.clone(),
            token,
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> Failure {
        Failure::retryable(format!(
            "inference server {} unreachable: {e} (is `herd serve` running there?)",
            self.server
        ))
    }

    /// 401/403: the job cannot succeed with this token; no row is to blame.
    fn refused(&self, status: reqwest::StatusCode, body: &str) -> Failure {
        let why = error_message(body);
        let hint = if self.token.is_some() {
            format!("the token is not valid for model '{}' (a token of the tenant that owns it, or an admin token, is needed)", self.model)
        } else {
            "the job sent no token: give it one (a token_secret reference such as env:NAME, or HERD_TOKEN in the worker's environment)".to_string()
        };
        Failure::permanent(format!(
            "inference server {} refused the request ({status}: {why}): {hint}",
            self.server
        ))
    }

    /// Sends a request built by `make`, retrying 429/503 after their `Retry-After` (or a short
    /// backoff), other 5xx and unreachable servers; returns the final status and body.
    async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), Failure> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut req = make();
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if tries < HTTP_TRIES && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
                    continue;
                }
                Err(e) => return Err(self.unreachable(e)),
            };
            let status = resp.status();
            let busy = status.as_u16() == 429 || status.as_u16() == 503;
            if busy || status.is_server_error() {
                let wait = retry_after(resp.headers())
                    .unwrap_or(Duration::from_millis(200 * u64::from(tries)));
                let body = resp.text().await.unwrap_or_default();
                if tries >= HTTP_TRIES || wait > MAX_RETRY_AFTER {
                    return Err(Failure::retryable(format!(
                        "inference server {} answered {status} {} time(s){}: {}",
                        self.server,
                        tries,
                        if wait > MAX_RETRY_AFTER {
                            format!(" and asked to wait {}s", wait.as_secs())
                        } else {
                            String::new()
                        },
                        error_message(&body)
                    )));
                }
                tracing::info!(
                    status = status.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    "server busy; retrying"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = resp.text().await.map_err(|e| self.unreachable(e))?;
            if status.as_u16() == 401 || status.as_u16() == 403 {
                return Err(self.refused(status, &text));
            }
            return Ok((status, text));
        }
    }

    /// The model input's datatype and shape from the metadata, if the server gives them.
    async fn input_signature(&self) -> Result<Option<(String, Vec<i64>)>, Failure> {
        let (status, body) = self
            .send(|| self.http.get(&self.base).timeout(Duration::from_secs(60)))
            .await?;
        if status.as_u16() == 404 {
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
        let meta: herd_api::v2::ModelMetadata = match serde_json::from_str(&body) {
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
        let body = if rows.iter().all(|r| r.text.is_some()) && !rows.is_empty() {
            // Text pipelines take the texts as the BYTES input `text`.
            json!({
                "inputs": [{
                    "name": "text",
                    "shape": [rows.len()],
                    "datatype": "BYTES",
                    "data": rows.iter().map(|r| r.text.clone().unwrap_or_default()).collect::<Vec<_>>(),
                }]
            })
        } else {
            self.tensor_body(rows, datatype)
        };
        self.send_infer(rows, body).await
    }

    fn tensor_body(&self, rows: &[Row], datatype: &str) -> Value {
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
        json!({
            "inputs": [{
                "name": self.input_name,
                "shape": [rows.len(), dim],
                "datatype": datatype,
                "data": data,
            }]
        })
    }

    async fn send_infer(
        &self,
        rows: &[Row],
        body: Value,
    ) -> Result<Result<Vec<Map<String, Value>>, String>, Failure> {
        let body = body.to_string();
        let url = format!("{}/infer", self.base);
        let (status, text) = self
            .send(|| {
                self.http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .timeout(Duration::from_secs(300))
            })
            .await?;
        if status.as_u16() == 404 {
            return Err(Failure::permanent(format!(
                "model not found on {}: {}",
                self.server,
                text.trim()
            )));
        }
        if status.is_client_error() {
            return Ok(Err(format!("{status}: {}", error_message(&text))));
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

/// The `error` (or `message`) of a JSON error body, else the body itself, shortened.
fn error_message(body: &str) -> String {
    let v = serde_json::from_str::<Value>(body).ok();
    let msg = v
        .as_ref()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| {
                    e.as_str().map(str::to_string).or_else(|| {
                        e.get("message")
                            .and_then(|m| m.as_str())
                            .map(str::to_string)
                    })
                })
                .or_else(|| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
        })
        .unwrap_or_else(|| body.trim().to_string());
    msg.chars().take(300).collect()
}

/// `Retry-After`: delay-seconds, or an HTTP-date (the wait until then; a date in the past is no
/// wait). Anything else is ignored (the caller's default backoff applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    parse_retry_after(v, std::time::SystemTime::now())
}

fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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

    /// The rows that parsed, as (line, id, features).
    fn good_rows(parsed: &Parsed) -> Vec<(u64, Option<Value>, Vec<f64>)> {
        parsed
            .rows
            .iter()
            .map(|r| (r.line, r.id.clone(), r.features.clone()))
            .collect()
    }

    /// Writes `path` as a Parquet file of `schema` (message type text) with one row group, each
    /// column written by `write(column index, writer)`.
    fn write_parquet(
        path: &Path,
        schema: &str,
        props: parquet::file::properties::WriterProperties,
        mut write: impl FnMut(usize, &mut parquet::file::writer::SerializedColumnWriter<'_>),
    ) {
        use std::sync::Arc;
        let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
        let file = std::fs::File::create(path).unwrap();
        let mut w = parquet::file::writer::SerializedFileWriter::new(file, schema, Arc::new(props))
            .unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            write(col, &mut c);
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(42))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn jsonl_bad_rows_have_line_numbers_and_good_rows_survive() {
        let text = "[1, 2]\n{\"id\": \"a\", \"input\": [3, 4.5]}\n\nnot json\n{\"id\": 7, \"features\": [1]}\n[1, \"x\"]\n\"str\"\n[5, 6]\n";
        let parsed = parse_jsonl(text.as_bytes(), &params("x.jsonl")).unwrap();
        assert_eq!(
            good_rows(&parsed),
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
    fn text_input_from_jsonl_fields_strings_and_csv_columns() {
        let mut p = params("x.jsonl");
        p.text_field = Some("body".into());
        let text = "{\"id\": 1, \"body\": \"hello\"}\n\"bare string\"\n{\"body\": 3}\n{\"other\": \"x\"}\n";
        let parsed = parse_jsonl(text.as_bytes(), &p).unwrap();
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(parsed.rows[0].text.as_deref(), Some("hello"));
        assert_eq!(parsed.rows[0].id, Some(json!(1)));
        assert_eq!(parsed.rows[1].text.as_deref(), Some("bare string"));
        assert_eq!(
            parsed.bad.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(
            parsed.bad[0].error.contains("not a string"),
            "{:?}",
            parsed.bad
        );
        let csv = "id,body,n\na,first text,1\nb,\"second, quoted\",2\n";
        let parsed = parse_csv(csv.as_bytes(), &p).unwrap();
        let texts: Vec<_> = parsed
            .rows
            .iter()
            .map(|r| r.text.clone().unwrap())
            .collect();
        assert_eq!(texts, vec!["first text", "second, quoted"]);
        assert_eq!(parsed.rows[1].id, Some(json!("b")));
        p.text_field = Some("missing".into());
        assert!(parse_csv(csv.as_bytes(), &p)
            .unwrap_err()
            .to_string()
            .contains("no column 'missing'"));
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
        assert_eq!(
            good_rows(&parsed),
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

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        write_parquet(
            &path,
            "message s { REQUIRED INT64 id; OPTIONAL DOUBLE f1; REQUIRED FLOAT f2; }",
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
            |col, c| match col {
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
            },
        );

        let p = params(path.to_str().unwrap());
        let (format, parsed) = parse_input(&p).unwrap();
        assert_eq!(format, InputFormat::Parquet);
        assert_eq!(
            good_rows(&parsed),
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

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        write_parquet(
            &path,
            "message s { REQUIRED BINARY id (UTF8); OPTIONAL GROUP input (LIST) { REPEATED GROUP list { OPTIONAL FLOAT element; } } }",
            WriterProperties::builder().build(),
            |col, c| {
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
            },
        );

        let parsed = parse_parquet(&path, &params(path.to_str().unwrap())).unwrap();
        assert_eq!(
            good_rows(&parsed),
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
        let (dir, err) = failed_run(format!("http://127.0.0.1:{port}"), "[1, 2]\n").await;
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

    /// A real HTTP server on loopback that answers every request with `status` and
    /// `Retry-After: retry_after`, counting the requests.
    async fn busy_server(
        status: &'static str,
        retry_after: u64,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let _ = sock.read(&mut buf).await;
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = "{\"error\":\"busy\"}";
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nRetry-After: {retry_after}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}"), hits)
    }

    /// Runs the batch-infer job `jbusy` over `rows` (JSONL text) against `server` in a fresh
    /// directory, which it returns (the output would be `out/jbusy.jsonl`) with the failure.
    async fn failed_run(server: String, rows: &str) -> (tempfile::TempDir, Failure) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, rows).unwrap();
        let p = BatchInferParams::new(server, "m", input.to_str().unwrap());
        let mut spec = crate::JobSpec::new("q", crate::JobKind::BatchInfer(p.clone()));
        spec.result_dir = dir.path().join("out").display().to_string();
        let job = Job::for_test("jbusy", spec, crate::JobState::Running, 1);
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
        (dir, err)
    }

    /// Regression: 429/503 after three retries became bad rows and the job was done. Now the
    /// client honours Retry-After, then fails the attempt (retryable) and writes no rows.
    #[tokio::test]
    async fn busy_server_fails_the_attempt_not_the_rows() {
        for status in ["429 Too Many Requests", "503 Service Unavailable"] {
            let (server, hits) = busy_server(status, 0).await;
            let (dir, err) = failed_run(server, "[1, 2]\n[3, 4]\n").await;
            assert!(err.retryable, "{status}: {}", err.message);
            assert!(err.message.contains(&status[..3]), "{}", err.message);
            assert_eq!(
                hits.load(std::sync::atomic::Ordering::SeqCst),
                HTTP_TRIES as usize,
                "{status}"
            );
            assert!(!dir.path().join("out/jbusy.jsonl").exists());
        }
        // A Retry-After longer than the client waits fails the attempt at once; the queue's
        // backoff takes over.
        let (server, hits) = busy_server("503 Service Unavailable", 3600).await;
        let (_dir, err) = failed_run(server, "[1, 2]\n").await;
        assert!(err.retryable);
        assert!(
            err.message.contains("asked to wait 3600s"),
            "{}",
            err.message
        );
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn token_secret_references_resolve_on_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "from-file\n").unwrap();
        let mut p = params("x.jsonl");
        p.token_secret = Some(format!("file:{}", f.display()));
        assert_eq!(resolve_token(&p).unwrap().as_deref(), Some("from-file"));
        p.token_secret = Some("env:HERD_TEST_SURELY_UNSET_VAR".into());
        let err = resolve_token(&p).unwrap_err();
        assert!(!err.retryable);
        assert!(
            err.message.contains("HERD_TEST_SURELY_UNSET_VAR"),
            "{}",
            err.message
        );
        p.token_secret = Some("hunter2".into());
        assert!(resolve_token(&p).unwrap_err().message.contains("env:NAME"));
    }
}
