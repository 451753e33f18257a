//! Wire types of the jobs API (`/v1/jobs` on `herd serve`).
//!
//! `POST /v1/jobs` takes an [`EnqueueRequest`]: `kind` is `batch-infer` (params:
//! [`BatchInferRequest`]) or `template` (params: [`TemplateRequest`], a `command` job the
//! operator declared). A `command` kind with a client's command line is refused: the API never
//! runs a program a client names. Answers are the job as the queue keeps it (see herd-jobs'
//! `Job`), with the values of a command's environment replaced by `***`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Queue name; the server's default jobs queue when absent (a template may fix its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// `batch-infer` or `template`.
    pub kind: String,
    /// The kind's parameters.
    #[serde(default)]
    pub params: serde_json::Value,
    /// Higher runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Attempts before the dead letter (at most the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wall-clock limit of one attempt, in seconds (at most the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// `params` of a `batch-infer` job sent to the API. The server fills in the inference server
/// (the operator's setting) and where the input and results live: a tenant's `input` is a
/// relative path (or object key) under its own folder of the operator's jobs data root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchInferRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Tenants: a relative path under `<jobs data>/<tenant>/`. Operators (admin tokens): any
    /// path or URL the workers can read.
    pub input: String,
    /// `jsonl`, `csv` or `parquet`; from the extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_field: Option<String>,
    /// For text pipelines: the JSONL field / CSV column that holds each row's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// `params` of a `template` job: the name of a template the operator declared, and values for
/// the parameters it declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    pub name: String,
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// `GET /v1/jobs` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList<J> {
    pub jobs: Vec<J>,
}
