//! The job model: what is enqueued ([`JobSpec`]), what the queue keeps ([`Job`]), and the types
//! passed between the queue and a worker ([`Lease`], [`Failure`], [`JobOutcome`], [`QueueStats`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::JobsError;

/// A job id: `j` + 12 hex digits of the enqueue time in ms + 20 random hex digits (80 bits), so
/// ids sort in enqueue order (jobs of equal priority are claimed oldest first) and never collide
/// in practice (see [`new_job_id`]).
pub type JobId = String;

/// What a job does, with its parameters. Serialised as `{"kind": "...", "params": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "kebab-case")]
pub enum JobKind {
    /// Run a served model over a JSONL/CSV/Parquet file and write the outputs.
    BatchInfer(BatchInferParams),
    /// Run a program with arguments and environment; capture the exit code and the output tail.
    Command(CommandParams),
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::BatchInfer(_) => "batch-infer",
            JobKind::Command(_) => "command",
        }
    }
}

/// Parameters of a `command` job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CommandParams {
    /// The program: a name looked up on `PATH`, or a path.
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (added to the worker's environment).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the worker's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Input file formats of `batch-infer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl InputFormat {
    /// The format implied by a file name's extension.
    pub fn from_path(path: &str) -> Option<InputFormat> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
            Some(InputFormat::Jsonl)
        } else if lower.ends_with(".csv") {
            Some(InputFormat::Csv)
        } else if lower.ends_with(".parquet") || lower.ends_with(".pq") {
            Some(InputFormat::Parquet)
        } else {
            None
        }
    }
}

impl FromStr for InputFormat {
    type Err = JobsError;
    fn from_str(s: &str) -> Result<Self, JobsError> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Ok(InputFormat::Jsonl),
            "csv" => Ok(InputFormat::Csv),
            "parquet" => Ok(InputFormat::Parquet),
            other => Err(JobsError::InvalidArgument(format!(
                "unknown input format '{other}': use jsonl, csv or parquet"
            ))),
        }
    }
}

/// Parameters of a `batch-infer` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchInferParams {
    /// Base URL of a herd server (KServe v2 REST), e.g. `http://127.0.0.1:8080`.
    pub server: String,
    pub model: String,
    /// Model version; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The input file (JSONL, CSV or Parquet).
    pub input: String,
    /// Input format; from the file extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<InputFormat>,
    /// Name of the model's input tensor.
    #[serde(default = "default_input_name")]
    pub input_name: String,
    /// JSONL: the field of each object that holds the feature vector (a bare array line is also
    /// accepted). CSV/Parquet: ignored (every numeric column except `id_field` is a feature).
    #[serde(default = "default_input_field")]
    pub input_field: String,
    /// Text input for pipeline models: the JSONL field or CSV column that holds each row's text
    /// (sent as the v2 `text` input; the outputs are the pipeline's embeddings or labels).
    /// Absent: numeric features (`input_field`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// Field/column carried to the output unchanged so rows can be matched; optional per row.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Rows per infer request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Where the worker finds the bearer token for the server: `env:NAME` (a variable of the
    /// worker's environment) or `file:PATH` (a file on the worker). The token itself is never
    /// stored in the queue. Absent: the worker's `HERD_TOKEN`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
}

fn default_input_name() -> String {
    "input".into()
}
fn default_input_field() -> String {
    "input".into()
}
fn default_id_field() -> String {
    "id".into()
}
fn default_batch_size() -> usize {
    64
}

impl BatchInferParams {
    /// Parameters with the defaults for everything optional.
    pub fn new(
        server: impl Into<String>,
        model: impl Into<String>,
        input: impl Into<String>,
    ) -> Self {
        BatchInferParams {
            server: server.into(),
            model: model.into(),
            version: None,
            input: input.into(),
            format: None,
            input_name: default_input_name(),
            input_field: default_input_field(),
            text_field: None,
            id_field: default_id_field(),
            batch_size: default_batch_size(),
            token_secret: None,
        }
    }
}

/// Exponential backoff between attempts: `min(max_ms, base_ms * 2^(attempt-1))`, then a random
/// jitter that keeps between half and all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 1_000,
            max_ms: 300_000,
        }
    }
}

/// Everything needed to enqueue a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Queue name (letters, digits, `-`, `_`, `.`).
    pub queue: String,
    #[serde(flatten)]
    pub kind: JobKind,
    /// Higher runs first; equal priorities run in enqueue order.
    #[serde(default)]
    pub priority: i32,
    /// Attempts before the job goes to the dead letter (a lease that expired counts as one).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wall-clock limit of one attempt, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Where results go: a directory; the worker writes `<result_dir>/<job id>.*` there.
    #[serde(default = "default_result_dir")]
    pub result_dir: String,
    #[serde(default)]
    pub backoff: Backoff,
    /// The tenant that enqueued the job through the jobs API (`/v1/jobs`); `None` for jobs an
    /// operator enqueued (CLI, admin token). The API shows a tenant only its own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The operator's template a `command` job was made from (jobs API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_timeout_secs() -> u64 {
    3600
}
/// The result directory used when a job names none.
pub const DEFAULT_RESULT_DIR: &str = ".herd/results";
fn default_result_dir() -> String {
    DEFAULT_RESULT_DIR.into()
}

impl JobSpec {
    /// A spec with the defaults: priority 0, 3 attempts, 1 h timeout, results under `.herd/results`.
    pub fn new(queue: impl Into<String>, kind: JobKind) -> Self {
        JobSpec {
            queue: queue.into(),
            kind,
            priority: 0,
            max_attempts: default_max_attempts(),
            timeout_secs: default_timeout_secs(),
            result_dir: default_result_dir(),
            backoff: Backoff::default(),
            owner: None,
            template: None,
        }
    }

    /// Checks what can be checked before the job runs.
    pub fn validate(&self) -> Result<(), JobsError> {
        validate_queue_name(&self.queue)?;
        if self.max_attempts == 0 {
            return Err(JobsError::InvalidSpec(
                "max_attempts must be at least 1".into(),
            ));
        }
        if self.timeout_secs == 0 {
            return Err(JobsError::InvalidSpec(
                "timeout_secs must be at least 1".into(),
            ));
        }
        if self.result_dir.trim().is_empty() {
            return Err(JobsError::InvalidSpec(
                "result_dir must not be empty".into(),
            ));
        }
        match &self.kind {
            JobKind::Command(c) => {
                if c.program.trim().is_empty() {
                    return Err(JobsError::InvalidSpec("command job needs a program".into()));
                }
            }
            JobKind::BatchInfer(b) => {
                if b.server.trim().is_empty() || b.model.trim().is_empty() {
                    return Err(JobsError::InvalidSpec(
                        "batch-infer job needs a server URL and a model name".into(),
                    ));
                }
                if let Some(r) = &b.token_secret {
                    if !(r.starts_with("env:") && r.len() > 4
                        || r.starts_with("file:") && r.len() > 5)
                    {
                        return Err(JobsError::InvalidSpec(format!(
                            "token_secret '{r}' is not a secret reference: use env:NAME or file:PATH (never the token itself)"
                        )));
                    }
                }
                if b.text_field.as_deref().is_some_and(|f| f.trim().is_empty()) {
                    return Err(JobsError::InvalidSpec(
                        "text_field must name a JSONL field or CSV column".into(),
                    ));
                }
                if b.batch_size == 0 {
                    return Err(JobsError::InvalidSpec(
                        "batch-infer batch_size must be at least 1".into(),
                    ));
                }
                if b.format.is_none() && InputFormat::from_path(&b.input).is_none() {
                    return Err(JobsError::InvalidSpec(format!(
                        "cannot tell the format of '{}' from its extension: name it .jsonl, .csv or .parquet, or set the format",
                        b.input
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Queue names go into Redis keys and file names: keep them plain.
pub fn validate_queue_name(name: &str) -> Result<(), JobsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(JobsError::InvalidSpec(format!(
            "invalid queue name '{name}': use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Ready to be claimed.
    Waiting,
    /// Waiting for its retry time (backoff after a failure).
    Delayed,
    /// Held by a worker under a lease (if the lease expired, it is claimable again).
    Running,
    /// Finished successfully.
    Done,
    /// Failed `max_attempts` times or failed permanently; `herd job requeue` brings it back.
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Delayed => "delayed",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }
    pub const ALL: [JobState; 5] = [
        JobState::Waiting,
        JobState::Delayed,
        JobState::Running,
        JobState::Done,
        JobState::Dead,
    ];
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = JobsError;
    fn from_str(s: &str) -> Result<Self, JobsError> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                JobsError::InvalidArgument(format!(
                    "unknown job state '{s}': use waiting, delayed, running, done or dead"
                ))
            })
    }
}

/// Progress a worker reports while it works (stored with each lease renewal).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The main result file, if the job wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Kind-specific summary (exit code and output tail; rows ok/bad...).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// A job as the queue keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    /// Attempts started so far (claims, including ones whose lease expired).
    pub attempts: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When a waiting/delayed job becomes claimable.
    pub run_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// The worker holding (or that last held) the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

#[cfg(test)]
impl Job {
    /// A job of `spec` in `state` after `attempts` claims, with no times, holder, lease, error,
    /// result or progress: what unit tests hand to the API and the runners.
    pub(crate) fn for_test(id: &str, spec: JobSpec, state: JobState, attempts: u32) -> Job {
        Job {
            id: id.into(),
            spec,
            state,
            attempts,
            created_ms: 0,
            updated_ms: 0,
            run_at_ms: 0,
            finished_ms: None,
            worker_id: None,
            lease_expires_ms: None,
            last_error: None,
            result: None,
            progress: None,
        }
    }
}

/// A claimed job. Only the holder of the token can renew, ack, fail or release it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub job: Job,
    pub token: String,
    pub worker_id: String,
    pub expires_ms: i64,
}

impl Lease {
    pub fn job_id(&self) -> &str {
        &self.job.id
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    /// False for errors that another attempt cannot fix (a program that does not exist, a bad
    /// input file): the job goes to the dead letter at once.
    pub retryable: bool,
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: true,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: false,
        }
    }
}

/// What [`crate::Queue::fail`] did with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Delayed until `run_at_ms` (backoff with jitter).
    Retry { run_at_ms: i64 },
    /// Moved to the dead letter.
    Dead,
}

/// Counts of one queue's jobs. A running job whose lease expired counts as waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueStats {
    pub waiting: u64,
    pub running: u64,
    pub delayed: u64,
    pub dead: u64,
    pub done: u64,
}

/// What [`crate::Queue::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    /// At most this many jobs, newest first.
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            queue: None,
            state: None,
            limit: 100,
        }
    }
}

/// A new job id (see [`JobId`]): `j`, 12 hex digits of the enqueue time in ms, then 20 hex
/// digits (80 bits) of randomness, like a ULID. Two enqueuers anywhere, even in the same
/// millisecond, collide with odds of 2^-80 per pair; the queues still refuse to overwrite an
/// existing id and draw a new one. Within one process ids are strictly increasing even inside
/// one millisecond or across a clock step back (the random part of a repeated millisecond is the
/// previous one plus a random step, as monotonic ULIDs do).
pub fn new_job_id(now_ms: i64) -> JobId {
    static LAST: parking_lot::Mutex<(i64, u128)> = parking_lot::Mutex::new((0, 0));
    const RAND_BITS: u32 = 80;
    const MASK: u128 = (1u128 << RAND_BITS) - 1;
    let (ms, r) = {
        let mut last = LAST.lock();
        let fresh: u128 = rand::random::<u128>() & MASK;
        if now_ms > last.0 {
            *last = (now_ms, fresh);
        } else {
            // Same millisecond (or the clock went back): keep the order, add 1..2^32 of entropy.
            let step = u128::from(rand::random::<u32>()) + 1;
            match last.1.checked_add(step).filter(|v| *v <= MASK) {
                Some(v) => last.1 = v,
                None => *last = (last.0 + 1, fresh),
            }
        }
        *last
    };
    format!("j{:012x}{:020x}", ms.max(0) & 0xffff_ffff_ffff, r)
}

/// A new lease token.
pub fn new_token() -> String {
    let r: u64 = rand::random();
    format!("{r:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_as_kind_and_params() {
        let spec = JobSpec::new(
            "default",
            JobKind::Command(CommandParams {
                program: "echo".into(),
                args: vec!["hi".into()],
                ..Default::default()
            }),
        );
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["kind"], "command");
        assert_eq!(v["params"]["program"], "echo");
        let back: JobSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn minimal_json_spec_gets_defaults() {
        let spec: JobSpec = serde_json::from_str(
            r#"{"queue":"q","kind":"batch-infer","params":{"server":"http://127.0.0.1:1","model":"m","input":"x.csv"}}"#,
        )
        .unwrap();
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.result_dir, DEFAULT_RESULT_DIR);
        match &spec.kind {
            JobKind::BatchInfer(b) => {
                assert_eq!(b.input_name, "input");
                assert_eq!(b.batch_size, 64);
            }
            other => panic!("wrong kind {other:?}"),
        }
        spec.validate().unwrap();
    }

    #[test]
    fn validation_explains() {
        let mut spec = JobSpec::new("bad queue!", JobKind::Command(CommandParams::default()));
        assert!(spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("queue name"));
        spec.queue = "ok".into();
        assert!(spec.validate().unwrap_err().to_string().contains("program"));
        let spec = JobSpec::new(
            "ok",
            JobKind::BatchInfer(BatchInferParams::new("http://x", "m", "data.txt")),
        );
        assert!(spec.validate().unwrap_err().to_string().contains(".jsonl"));
    }

    #[test]
    fn ids_sort_by_time_even_within_a_millisecond() {
        let a = new_job_id(1_000);
        let b = new_job_id(2_000);
        let c = new_job_id(2_000);
        let d = new_job_id(1_500); // a clock step back still sorts after
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(a.len(), 33);
    }

    #[test]
    fn ids_carry_at_least_64_random_bits() {
        // Two ids of the same millisecond from "different processes" share only the time part:
        // the rest is random. Simulate other processes by drawing fresh state each time (a new
        // millisecond resets the monotonic part to fresh randomness).
        let mut seen = std::collections::HashSet::new();
        for ms in 0..20_000i64 {
            let id = new_job_id(10_000_000 + ms);
            assert!(
                seen.insert(id[13..].to_string()),
                "random part repeated: {id}"
            );
        }
    }
}
