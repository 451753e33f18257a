//! The jobs API's rules, transport-free (`herd serve` mounts them under `/v1/jobs`; the routes
//! only decode, call one method here and encode).
//!
//! * A tenant may enqueue `batch-infer` over its own models (the caller checks the model's
//!   tenant before [`JobsApi::enqueue`]), reading its input from and writing its results to its
//!   own folder of the operator's jobs data root (`<data>/<tenant>/...`). It sees, cancels and
//!   requeues only its own jobs; another tenant's job is "not found".
//! * `command` jobs only from the operator's [`Templates`]: a file that declares, per template,
//!   the program, its arguments, environment and limits, which tenants may run it, and the
//!   parameters a client may fill in (each value one whole argument, never a shell string). A
//!   command line sent by a client is refused, for every caller.
//! * The inference server a batch-infer job calls is the operator's setting, never the
//!   client's; the worker authenticates with its own token (`HERD_TOKEN`), never one stored in
//!   the queue.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use herd_api::jobs::{BatchInferRequest, EnqueueRequest, TemplateRequest};
use serde::Deserialize;

use crate::{
    BatchInferParams, CommandParams, InputFormat, Job, JobKind, JobSpec, JobState, JobsError,
    ListFilter, Queue,
};

/// Who calls the jobs API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An admin token, or a server without tokens: every job.
    Operator,
    /// A tenant's token: its own jobs and models.
    Tenant(String),
}

impl Caller {
    fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Operator => None,
            Caller::Tenant(t) => Some(t),
        }
    }

    fn may_see(&self, job: &Job) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Tenant(t) => job.spec.owner.as_deref() == Some(t.as_str()),
        }
    }
}

/// One `command` job an operator allows through the API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    /// The program (a name on the worker's `PATH`, or a path).
    pub program: String,
    /// Arguments; `{param}` in an argument is replaced by the client's value of a declared
    /// parameter.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Names of the parameters a client must give (`values` in the request).
    #[serde(default)]
    pub params: Vec<String>,
    /// Tenants that may run it; admins always may. Empty: admins only.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Queue the job goes to (the server's default jobs queue when absent).
    #[serde(default)]
    pub queue: Option<String>,
    /// Wall-clock limit of one attempt (a client may ask for less, never more).
    #[serde(default = "default_template_timeout")]
    pub timeout_secs: u64,
    /// Attempts before the dead letter (a client may ask for fewer, never more).
    #[serde(default = "default_template_attempts")]
    pub max_attempts: u32,
}

fn default_template_timeout() -> u64 {
    3600
}
fn default_template_attempts() -> u32 {
    3
}

/// The operator's templates file (TOML):
///
/// ```toml
/// [[template]]
/// name = "reindex"
/// program = "/usr/local/bin/reindex"
/// args = ["--date", "{date}"]
/// env = { MODE = "full" }
/// params = ["date"]
/// tenants = ["acme"]
/// timeout_secs = 600
/// max_attempts = 2
/// ```
#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    #[serde(default)]
    template: Vec<Template>,
}

/// Longest value a client may give a template parameter.
pub const MAX_PARAM_VALUE: usize = 256;

impl Templates {
    pub fn from_file(path: &Path) -> Result<Templates, JobsError> {
        let text = std::fs::read_to_string(path).map_err(|e| JobsError::io(path, e))?;
        Templates::from_toml(&text).map_err(|e| {
            JobsError::InvalidArgument(format!("job templates file {}: {e}", path.display()))
        })
    }

    pub fn from_toml(text: &str) -> Result<Templates, String> {
        let f: TemplateFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_name = BTreeMap::new();
        for t in f.template {
            if t.name.trim().is_empty() || t.program.trim().is_empty() {
                return Err("every template needs a name and a program".into());
            }
            if t.timeout_secs == 0 || t.max_attempts == 0 {
                return Err(format!(
                    "template '{}': timeout_secs and max_attempts must be at least 1",
                    t.name
                ));
            }
            if let Some(q) = &t.queue {
                crate::validate_queue_name(q).map_err(|e| format!("template '{}': {e}", t.name))?;
            }
            // Every {placeholder} must be a declared parameter, and every parameter used.
            for a in &t.args {
                for p in placeholders(a) {
                    if !t.params.iter().any(|d| d == p) {
                        return Err(format!(
                            "template '{}': argument '{a}' uses {{{p}}}, which is not in params",
                            t.name
                        ));
                    }
                }
            }
            let name = t.name.clone();
            if by_name.insert(name.clone(), t).is_some() {
                return Err(format!("template '{name}' is declared twice"));
            }
        }
        Ok(Templates { by_name })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The command a client's request makes from a template, or why not.
    fn build(&self, caller: &Caller, req: &TemplateRequest) -> Result<&Template, JobsError> {
        let Some(t) = self.by_name.get(&req.name) else {
            return Err(JobsError::InvalidSpec(format!(
                "no job template named '{}' (the operator declares templates in the --job-templates file)",
                req.name
            )));
        };
        if let Caller::Tenant(tenant) = caller {
            if !t.tenants.iter().any(|x| x == tenant) {
                return Err(JobsError::Forbidden(format!(
                    "template '{}' is not allowed for tenant '{tenant}'",
                    req.name
                )));
            }
        }
        for k in req.values.keys() {
            if !t.params.iter().any(|p| p == k) {
                return Err(JobsError::InvalidSpec(format!(
                    "template '{}' has no parameter '{k}' (it takes: {})",
                    t.name,
                    t.params.join(", ")
                )));
            }
        }
        for p in &t.params {
            let Some(v) = req.values.get(p) else {
                return Err(JobsError::InvalidSpec(format!(
                    "template '{}' needs a value for '{p}'",
                    t.name
                )));
            };
            check_param_value(p, v)?;
        }
        Ok(t)
    }
}

/// `{name}` placeholders of one argument.
fn placeholders(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// A template value is one argument: plain characters only, no leading `-` (it cannot turn into
/// an option), at most [`MAX_PARAM_VALUE`] bytes.
fn check_param_value(name: &str, v: &str) -> Result<(), JobsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:/=@+,-".contains(c);
    if v.is_empty() || v.len() > MAX_PARAM_VALUE || v.starts_with('-') || !v.chars().all(ok_char) {
        return Err(JobsError::InvalidSpec(format!(
            "value of '{name}' must be 1-{MAX_PARAM_VALUE} characters of letters, digits and ._:/=@+,- and must not start with '-'"
        )));
    }
    if v.split('/').any(|seg| seg == "..") {
        return Err(JobsError::InvalidSpec(format!(
            "value of '{name}' must not contain a '..' path segment"
        )));
    }
    Ok(())
}

/// What the operator set for the jobs API.
#[derive(Debug, Clone)]
pub struct JobsApiConfig {
    /// Base URL of the herd server batch-infer workers call (KServe v2). `None`: set once the
    /// server knows its address ([`JobsApi::set_default_infer_url`]).
    pub infer_url: Option<String>,
    /// Where tenants' inputs and results live: a directory, `file://` or `s3://bucket/prefix`.
    /// A tenant's input is `<data>/<tenant>/<input>`, its results `<data>/<tenant>/results/`.
    /// `None`: tenants cannot enqueue batch-infer.
    pub data_root: Option<String>,
    /// Queue of jobs that name none.
    pub default_queue: String,
    /// Largest `timeout_secs` a client may ask for.
    pub max_timeout_secs: u64,
    /// Largest `max_attempts` a client may ask for.
    pub max_attempts: u32,
}

impl Default for JobsApiConfig {
    fn default() -> Self {
        JobsApiConfig {
            infer_url: None,
            data_root: None,
            default_queue: "default".into(),
            max_timeout_secs: 24 * 3600,
            max_attempts: 10,
        }
    }
}

/// The jobs API over one queue.
pub struct JobsApi {
    queue: Arc<dyn Queue>,
    templates: Templates,
    cfg: JobsApiConfig,
    infer_url: std::sync::OnceLock<String>,
}

/// Most jobs `list` looks at to find a tenant's own (newest first).
pub const LIST_SCAN: usize = 5_000;

impl JobsApi {
    pub fn new(queue: Arc<dyn Queue>, templates: Templates, cfg: JobsApiConfig) -> JobsApi {
        let infer_url = std::sync::OnceLock::new();
        if let Some(u) = &cfg.infer_url {
            let _ = infer_url.set(u.clone());
        }
        JobsApi {
            queue,
            templates,
            cfg,
            infer_url,
        }
    }

    /// The server's own address as the inference URL, unless the operator set one.
    pub fn set_default_infer_url(&self, url: String) {
        let _ = self.infer_url.set(url);
    }

    /// The inference URL batch-infer jobs get.
    pub fn infer_url(&self) -> Option<&str> {
        self.infer_url.get().map(String::as_str)
    }

    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// The model and version a batch-infer request would call (the caller checks the model's
    /// tenant before [`JobsApi::enqueue`]); `None` for other kinds.
    pub fn batch_model(
        req: &EnqueueRequest,
    ) -> Result<Option<(String, Option<String>)>, JobsError> {
        if req.kind != "batch-infer" {
            return Ok(None);
        }
        let b = parse_batch(&req.params)?;
        Ok(Some((b.model, b.version)))
    }

    /// Builds the job from the request under the API's rules and enqueues it.
    pub async fn enqueue(&self, caller: &Caller, req: EnqueueRequest) -> Result<Job, JobsError> {
        let spec = self.spec_for(caller, &req)?;
        let id = self.queue.enqueue(spec).await?;
        self.queue
            .show(&id)
            .await?
            .ok_or_else(|| JobsError::NotFound(id))
    }

    fn limits(
        &self,
        req: &EnqueueRequest,
        spec: &mut JobSpec,
        max_t: u64,
        max_a: u32,
    ) -> Result<(), JobsError> {
        if let Some(t) = req.timeout_secs {
            if t == 0 || t > max_t {
                return Err(JobsError::InvalidSpec(format!(
                    "timeout_secs must be 1..={max_t}"
                )));
            }
            spec.timeout_secs = t;
        } else {
            spec.timeout_secs = spec.timeout_secs.min(max_t);
        }
        if let Some(a) = req.max_attempts {
            if a == 0 || a > max_a {
                return Err(JobsError::InvalidSpec(format!(
                    "max_attempts must be 1..={max_a}"
                )));
            }
            spec.max_attempts = a;
        } else {
            spec.max_attempts = spec.max_attempts.min(max_a);
        }
        if let Some(p) = req.priority {
            spec.priority = p;
        }
        Ok(())
    }

    /// The spec a request makes (exposed for tests).
    pub fn spec_for(&self, caller: &Caller, req: &EnqueueRequest) -> Result<JobSpec, JobsError> {
        let mut spec = match req.kind.as_str() {
            "command" => {
                return Err(JobsError::Forbidden(
                    "the jobs API never runs a command line sent by a client: run a template the operator declared, {\"kind\": \"template\", \"params\": {\"name\": \"...\", \"values\": {...}}}".into(),
                ))
            }
            "batch-infer" => {
                let b = parse_batch(&req.params)?;
                let (input, result_dir) = self.locations(caller, &b.input)?;
                let server = self.infer_url().ok_or_else(|| {
                    JobsError::InvalidArgument(
                        "the jobs API does not know the inference server's URL yet: set --jobs-infer-url".into(),
                    )
                })?;
                let mut p = BatchInferParams::new(server, b.model, input);
                p.version = b.version;
                if let Some(f) = &b.format {
                    p.format = Some(f.parse::<InputFormat>()?);
                }
                if let Some(v) = b.input_name {
                    p.input_name = v;
                }
                if let Some(v) = b.input_field {
                    p.input_field = v;
                }
                if let Some(v) = b.id_field {
                    p.id_field = v;
                }
                if let Some(v) = b.text_field {
                    p.text_field = Some(v);
                }
                if let Some(v) = b.batch_size {
                    if v == 0 || v > 10_000 {
                        return Err(JobsError::InvalidSpec(
                            "batch_size must be 1..=10000".into(),
                        ));
                    }
                    p.batch_size = v;
                }
                let queue = req
                    .queue
                    .clone()
                    .unwrap_or_else(|| self.cfg.default_queue.clone());
                let mut spec = JobSpec::new(queue, JobKind::BatchInfer(p));
                spec.result_dir = result_dir;
                let (t, a) = (self.cfg.max_timeout_secs, self.cfg.max_attempts);
                self.limits(req, &mut spec, t, a)?;
                spec
            }
            "template" => {
                let t_req: TemplateRequest = serde_json::from_value(req.params.clone())
                    .map_err(|e| JobsError::InvalidSpec(format!("template params: {e}")))?;
                let t = self.templates.build(caller, &t_req)?;
                let args = t
                    .args
                    .iter()
                    .map(|a| {
                        let mut a = a.clone();
                        for (k, v) in &t_req.values {
                            a = a.replace(&format!("{{{k}}}"), v);
                        }
                        a
                    })
                    .collect();
                let queue = match (&req.queue, &t.queue) {
                    (Some(q), Some(tq)) if q != tq => {
                        return Err(JobsError::InvalidSpec(format!(
                            "template '{}' runs on queue '{tq}'",
                            t.name
                        )))
                    }
                    (_, Some(tq)) => tq.clone(),
                    (Some(q), None) => q.clone(),
                    (None, None) => self.cfg.default_queue.clone(),
                };
                let mut spec = JobSpec::new(
                    queue,
                    JobKind::Command(CommandParams {
                        program: t.program.clone(),
                        args,
                        env: t.env.clone(),
                        cwd: t.cwd.clone(),
                    }),
                );
                spec.timeout_secs = t.timeout_secs;
                spec.max_attempts = t.max_attempts;
                if let Some(dir) = &self.cfg.data_root {
                    if let Some(tenant) = caller.tenant() {
                        spec.result_dir = join(dir, &[tenant, "results"]);
                    }
                }
                spec.template = Some(t.name.clone());
                self.limits(req, &mut spec, t.timeout_secs, t.max_attempts)?;
                spec
            }
            other => {
                return Err(JobsError::InvalidSpec(format!(
                    "unknown job kind '{other}': use batch-infer or template"
                )))
            }
        };
        spec.owner = caller.tenant().map(str::to_string);
        spec.validate()?;
        Ok(spec)
    }

    /// Input location and result directory of a batch-infer job.
    fn locations(&self, caller: &Caller, input: &str) -> Result<(String, String), JobsError> {
        match caller {
            Caller::Operator => {
                let results = match &self.cfg.data_root {
                    Some(d) => join(d, &["results"]),
                    None => crate::DEFAULT_RESULT_DIR.to_string(),
                };
                Ok((input.to_string(), results))
            }
            Caller::Tenant(tenant) => {
                let Some(root) = &self.cfg.data_root else {
                    return Err(JobsError::Forbidden(
                        "this server takes no batch-infer jobs from tenants: the operator has not set --jobs-data".into(),
                    ));
                };
                check_tenant_dir(tenant)?;
                check_relative(input)?;
                Ok((
                    join(root, &[tenant, input]),
                    join(root, &[tenant, "results"]),
                ))
            }
        }
    }

    /// Jobs the caller may see, newest first (a tenant: its own, among the newest
    /// [`LIST_SCAN`]).
    pub async fn list(
        &self,
        caller: &Caller,
        queue: Option<String>,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>, JobsError> {
        if let Some(q) = &queue {
            crate::validate_queue_name(q)?;
        }
        let limit = limit.clamp(1, 1000);
        let scan = match caller {
            Caller::Operator => limit,
            Caller::Tenant(_) => LIST_SCAN,
        };
        let mut jobs = self
            .queue
            .list(&ListFilter {
                queue,
                state,
                limit: scan,
            })
            .await?;
        jobs.retain(|j| caller.may_see(j));
        jobs.truncate(limit);
        Ok(jobs)
    }

    /// One job the caller may see; another tenant's job is "not found" (its existence is not
    /// revealed).
    pub async fn show(&self, caller: &Caller, id: &str) -> Result<Job, JobsError> {
        match self.queue.show(id).await? {
            Some(j) if caller.may_see(&j) => Ok(j),
            _ => Err(JobsError::NotFound(id.to_string())),
        }
    }

    /// Cancels a job the caller may see (waiting, delayed or running).
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Job, JobsError> {
        self.show(caller, id).await?;
        let who = match caller {
            Caller::Operator => "an operator".to_string(),
            Caller::Tenant(t) => format!("tenant '{t}'"),
        };
        self.queue
            .cancel(id, &format!("cancelled through the jobs API by {who}"))
            .await?;
        self.show(caller, id).await
    }

    /// Brings a dead job the caller may see back to waiting with fresh attempts.
    pub async fn requeue(&self, caller: &Caller, id: &str) -> Result<Job, JobsError> {
        let job = self.show(caller, id).await?;
        self.queue.requeue_dead(&job.spec.queue, Some(id)).await?;
        self.show(caller, id).await
    }

    /// The result file of a done job the caller may see (its `result.location`).
    pub async fn result_location(&self, caller: &Caller, id: &str) -> Result<String, JobsError> {
        let job = self.show(caller, id).await?;
        if job.state != JobState::Done {
            return Err(JobsError::InvalidArgument(format!(
                "job '{id}' is {}: results exist once it is done",
                job.state
            )));
        }
        job.result
            .and_then(|r| r.location)
            .ok_or_else(|| JobsError::NotFound(format!("{id}: the job wrote no result file")))
    }
}

fn parse_batch(params: &serde_json::Value) -> Result<BatchInferRequest, JobsError> {
    for k in ["server", "token_secret", "result_dir"] {
        if params.get(k).is_some() {
            return Err(JobsError::InvalidSpec(format!(
                "'{k}' cannot be set through the jobs API: the server sets where the job runs and writes, and workers use their own token"
            )));
        }
    }
    serde_json::from_value(params.clone())
        .map_err(|e| JobsError::InvalidSpec(format!("batch-infer params: {e}")))
}

/// Tenant names become a folder name.
fn check_tenant_dir(tenant: &str) -> Result<(), JobsError> {
    let ok = !tenant.is_empty()
        && tenant != "."
        && tenant != ".."
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(JobsError::Forbidden(format!(
            "tenant '{tenant}' cannot name a jobs data folder (letters, digits, '.', '_', '-')"
        )))
    }
}

/// A tenant's input: a relative path inside its folder.
fn check_relative(p: &str) -> Result<(), JobsError> {
    let bad = p.is_empty()
        || p.starts_with('/')
        || p.contains('\\')
        || p.contains("://")
        || p.contains('\0')
        || p.split('/').any(|s| s == ".." || s == "." || s.is_empty());
    if bad {
        return Err(JobsError::InvalidSpec(format!(
            "input '{p}' must be a relative path inside your jobs data folder (no leading '/', no '..', no URL)"
        )));
    }
    Ok(())
}

fn join(root: &str, parts: &[&str]) -> String {
    let mut s = root.trim_end_matches('/').to_string();
    for p in parts {
        s.push('/');
        s.push_str(p.trim_matches('/'));
    }
    s
}

/// A job as the API shows it: the values of a command's environment replaced by `***` (they
/// are the operator's, and may hold secrets).
pub fn redacted(mut job: Job) -> Job {
    if let JobKind::Command(c) = &mut job.spec.kind {
        for v in c.env.values_mut() {
            *v = "***".into();
        }
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(templates: &str) -> JobsApi {
        // A queue is not needed for spec building; use an SQLite file in a temp dir lazily.
        struct NoQueue;
        #[async_trait::async_trait]
        impl Queue for NoQueue {
            fn backend(&self) -> &'static str {
                "none"
            }
            async fn enqueue(&self, _: JobSpec) -> Result<String, JobsError> {
                unreachable!()
            }
            async fn claim(
                &self,
                _: &str,
                _: &[String],
                _: std::time::Duration,
            ) -> Result<Option<crate::Lease>, JobsError> {
                unreachable!()
            }
            async fn renew(
                &self,
                _: &mut crate::Lease,
                _: std::time::Duration,
                _: Option<&crate::Progress>,
            ) -> Result<(), JobsError> {
                unreachable!()
            }
            async fn ack(&self, _: &crate::Lease, _: &crate::JobOutcome) -> Result<(), JobsError> {
                unreachable!()
            }
            async fn fail(
                &self,
                _: &crate::Lease,
                _: &crate::Failure,
            ) -> Result<crate::FailOutcome, JobsError> {
                unreachable!()
            }
            async fn release(&self, _: &crate::Lease) -> Result<(), JobsError> {
                unreachable!()
            }
            async fn requeue_dead(&self, _: &str, _: Option<&str>) -> Result<u64, JobsError> {
                unreachable!()
            }
            async fn cancel(&self, _: &str, _: &str) -> Result<JobState, JobsError> {
                unreachable!()
            }
            async fn list(&self, _: &ListFilter) -> Result<Vec<Job>, JobsError> {
                unreachable!()
            }
            async fn show(&self, _: &str) -> Result<Option<Job>, JobsError> {
                unreachable!()
            }
            async fn purge(&self, _: std::time::Duration) -> Result<u64, JobsError> {
                unreachable!()
            }
            async fn stats(&self, _: &str) -> Result<crate::QueueStats, JobsError> {
                unreachable!()
            }
            async fn lease_holders(&self, _: &str) -> Result<Vec<String>, JobsError> {
                unreachable!()
            }
            async fn queues(&self) -> Result<Vec<String>, JobsError> {
                unreachable!()
            }
        }
        JobsApi::new(
            Arc::new(NoQueue),
            Templates::from_toml(templates).unwrap(),
            JobsApiConfig {
                infer_url: Some("http://herd:8080".into()),
                data_root: Some("s3://bucket/jobs".into()),
                ..Default::default()
            },
        )
    }

    fn req(kind: &str, params: serde_json::Value) -> EnqueueRequest {
        EnqueueRequest {
            queue: None,
            kind: kind.into(),
            params,
            priority: None,
            max_attempts: None,
            timeout_secs: None,
        }
    }

    const TEMPLATES: &str = r#"
[[template]]
name = "greet"
program = "echo"
args = ["hello", "{who}"]
env = { SECRET = "s3cr3t" }
params = ["who"]
tenants = ["acme"]
timeout_secs = 60
max_attempts = 2
"#;

    #[test]
    fn a_client_command_line_is_refused_for_everyone() {
        let a = api(TEMPLATES);
        for caller in [Caller::Operator, Caller::Tenant("acme".into())] {
            let e = a
                .spec_for(
                    &caller,
                    &req(
                        "command",
                        serde_json::json!({"program": "sh", "args": ["-c", "id"]}),
                    ),
                )
                .unwrap_err();
            assert!(matches!(e, JobsError::Forbidden(_)), "{e}");
            assert!(e.to_string().contains("template"), "{e}");
        }
    }

    #[test]
    fn a_tenant_batch_infer_stays_in_its_folder_and_calls_the_operators_server() {
        let a = api("");
        let acme = Caller::Tenant("acme".into());
        let spec = a
            .spec_for(
                &acme,
                &req(
                    "batch-infer",
                    serde_json::json!({"model": "m", "input": "in/rows.jsonl"}),
                ),
            )
            .unwrap();
        assert_eq!(spec.owner.as_deref(), Some("acme"));
        assert_eq!(spec.result_dir, "s3://bucket/jobs/acme/results");
        match &spec.kind {
            JobKind::BatchInfer(b) => {
                assert_eq!(b.input, "s3://bucket/jobs/acme/in/rows.jsonl");
                assert_eq!(b.server, "http://herd:8080");
                assert_eq!(b.token_secret, None);
            }
            other => panic!("{other:?}"),
        }
        for input in [
            "/etc/passwd",
            "../globex/rows.jsonl",
            "a/../../x.csv",
            "s3://other/x.csv",
            "./x.csv",
        ] {
            let e = a
                .spec_for(
                    &acme,
                    &req(
                        "batch-infer",
                        serde_json::json!({"model": "m", "input": input}),
                    ),
                )
                .unwrap_err();
            assert!(e.to_string().contains("relative path"), "{input}: {e}");
        }
        for (k, v) in [
            ("server", "http://evil"),
            ("token_secret", "env:AWS_SECRET_ACCESS_KEY"),
            ("result_dir", "/tmp"),
        ] {
            let e = a
                .spec_for(
                    &acme,
                    &req(
                        "batch-infer",
                        serde_json::json!({"model": "m", "input": "x.csv", k: v}),
                    ),
                )
                .unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn templates_fill_declared_parameters_only_within_their_limits() {
        let a = api(TEMPLATES);
        let acme = Caller::Tenant("acme".into());
        let ok = |values: serde_json::Value| {
            a.spec_for(
                &acme,
                &req(
                    "template",
                    serde_json::json!({"name": "greet", "values": values}),
                ),
            )
        };
        let spec = ok(serde_json::json!({"who": "world"})).unwrap();
        match &spec.kind {
            JobKind::Command(c) => {
                assert_eq!(c.program, "echo");
                assert_eq!(c.args, vec!["hello", "world"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((spec.timeout_secs, spec.max_attempts), (60, 2));
        assert_eq!(spec.template.as_deref(), Some("greet"));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"who": "x", "extra": "y"}),
            serde_json::json!({"who": "; rm -rf /"}),
            serde_json::json!({"who": "--help"}),
            serde_json::json!({"who": "a/../../etc"}),
            serde_json::json!({"who": "x".repeat(MAX_PARAM_VALUE + 1)}),
        ] {
            assert!(
                matches!(ok(bad.clone()), Err(JobsError::InvalidSpec(_))),
                "{bad}"
            );
        }
        // More time or attempts than the template allows: refused.
        let mut r = req(
            "template",
            serde_json::json!({"name": "greet", "values": {"who": "x"}}),
        );
        r.timeout_secs = Some(61);
        assert!(a.spec_for(&acme, &r).is_err());
        r.timeout_secs = Some(10);
        assert_eq!(a.spec_for(&acme, &r).unwrap().timeout_secs, 10);
        // Another tenant may not run it; an unknown template is named.
        let e = a
            .spec_for(
                &Caller::Tenant("globex".into()),
                &req(
                    "template",
                    serde_json::json!({"name": "greet", "values": {"who": "x"}}),
                ),
            )
            .unwrap_err();
        assert!(matches!(e, JobsError::Forbidden(_)), "{e}");
        let e = a
            .spec_for(&acme, &req("template", serde_json::json!({"name": "nope"})))
            .unwrap_err();
        assert!(
            e.to_string().contains("no job template named 'nope'"),
            "{e}"
        );
    }

    #[test]
    fn bad_template_files_are_clear_errors() {
        let e = Templates::from_toml(
            "[[template]]\nname = \"x\"\nprogram = \"echo\"\nargs = [\"{y}\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("{y}"), "{e}");
        let e = Templates::from_toml("[[template]]\nname = \"x\"\nprogram = \"echo\"\n[[template]]\nname = \"x\"\nprogram = \"echo\"\n")
            .unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(Templates::from_toml(
            "[[template]]\nname = \"x\"\nprogram = \"echo\"\nshell = true\n"
        )
        .is_err());
    }

    #[test]
    fn env_values_are_redacted_in_views() {
        let a = api(TEMPLATES);
        let spec = a
            .spec_for(
                &Caller::Operator,
                &req(
                    "template",
                    serde_json::json!({"name": "greet", "values": {"who": "x"}}),
                ),
            )
            .unwrap();
        let job = Job::for_test("j1", spec, JobState::Waiting, 0);
        let v = serde_json::to_string(&redacted(job)).unwrap();
        assert!(!v.contains("s3cr3t") && v.contains("SECRET"), "{v}");
    }
}
