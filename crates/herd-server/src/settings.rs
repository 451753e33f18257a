//! Settings of `herd serve`: one struct, layered built-in defaults < config file < `HERD_*`
//! environment variables < flags. Every field's doc comment is its `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd_api::units::SizeSpec;
use herd_core::{CoreConfig, EvictionPolicy, RequestLimits};
use serde::Serialize;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Settings {
    /// Model repository directory: <repo>/<model>/<version>/model.onnx, with an optional
    /// <repo>/<model>/config.toml. Models may be added while the server runs.
    #[arg(long, env = "HERD_REPO", default_value = "models")]
    pub repo: PathBuf,

    /// Address to listen on. Loopback by default; expose it deliberately.
    #[arg(long, env = "HERD_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Memory that loaded models may take in all: bytes, units (256MiB, 2GiB) or a share of
    /// the machine's (or container's) memory (80%). Least valuable models are evicted beyond it.
    #[arg(long, env = "HERD_MEMORY_BUDGET", default_value = "80%", value_parser = parse_size)]
    #[serde(serialize_with = "ser_debug")]
    pub memory_budget: SizeSpec,

    /// Eviction policy: gdsf (weighs use frequency, load cost and size) or lru.
    #[arg(long, env = "HERD_EVICTION", default_value = "gdsf", value_parser = parse_policy)]
    #[serde(serialize_with = "ser_debug")]
    pub eviction: EvictionPolicy,

    /// Model loads that may run at the same time.
    #[arg(long, env = "HERD_LOAD_CONCURRENCY", default_value_t = 2)]
    pub load_concurrency: usize,

    /// Requests that may wait in one model's queue; beyond it the server answers 429 with Retry-After.
    #[arg(long, env = "HERD_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,

    /// Longest time one request may take (load, queue and inference), in seconds; then 504.
    #[arg(long, env = "HERD_REQUEST_TIMEOUT", default_value_t = 30.0)]
    pub request_timeout: f64,

    /// Seconds to keep accepting requests after SIGTERM / ctrl-c while /v2/health/ready answers
    /// 503, so load balancers and Kubernetes stop routing here before the listener closes
    /// (a second signal cuts it short). 0 closes at once.
    #[arg(long, env = "HERD_DRAIN_DELAY", default_value_t = 0.0)]
    pub drain_delay: f64,

    /// Largest request body accepted (413 beyond it).
    #[arg(long, env = "HERD_MAX_BODY", default_value = "64MiB", value_parser = parse_size)]
    #[serde(serialize_with = "ser_debug")]
    pub max_body: SizeSpec,

    /// Most rows (batch dimension) of one request to a tensor model; 413 beyond it. A model's
    /// config.toml may override it (max_rows_per_request).
    #[arg(long, env = "HERD_MAX_ROWS_PER_REQUEST", default_value_t = RequestLimits::default().max_rows_per_request)]
    pub max_rows_per_request: usize,

    /// Most texts of one request to a text pipeline (v2 `text`, /v1/embeddings `input`); 413
    /// beyond it. A model's config.toml may override it (max_texts_per_request).
    #[arg(long, env = "HERD_MAX_TEXTS_PER_REQUEST", default_value_t = RequestLimits::default().max_texts_per_request)]
    pub max_texts_per_request: usize,

    /// Most characters of one text: longer texts are cut to it before tokenizing (refused with
    /// 413 when the pipeline does not truncate). Per model: max_chars_per_text.
    #[arg(long, env = "HERD_MAX_CHARS_PER_TEXT", default_value_t = RequestLimits::default().max_chars_per_text)]
    pub max_chars_per_text: usize,

    /// Most tokens (after truncation to the pipeline's max_length) of all texts of one request;
    /// 413 beyond it. Per model: max_tokens_per_request.
    #[arg(long, env = "HERD_MAX_TOKENS_PER_REQUEST", default_value_t = RequestLimits::default().max_tokens_per_request)]
    pub max_tokens_per_request: usize,

    /// Seconds a connection has to send a whole request head; a connection idle that long
    /// between requests is closed too. A client sending one byte a minute cannot hold one.
    #[arg(long, env = "HERD_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub header_read_timeout: f64,

    /// Seconds a request has to send its whole body after its head; then 408.
    #[arg(long, env = "HERD_BODY_READ_TIMEOUT", default_value_t = 30.0)]
    pub body_read_timeout: f64,

    /// Open connections at once; one more is answered 503 with Retry-After and closed.
    #[arg(long, env = "HERD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Requests handled at once (health probes and /metrics not counted); one more is
    /// answered 503 with Retry-After.
    #[arg(long, env = "HERD_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Memory for request bodies being read and decoded at once (each body is charged twice
    /// its length); a request that cannot get room within the body read timeout gets 503.
    /// Part of the server's fixed overhead on top of --memory-budget.
    #[arg(long, env = "HERD_MAX_BODY_MEMORY", default_value = "512MiB", value_parser = parse_size)]
    #[serde(serialize_with = "ser_debug")]
    pub max_body_memory: SizeSpec,

    /// Seconds requests in flight get to finish on shutdown (after --drain-delay, once the
    /// listener is closed); then they are dropped, their runs cancelled, and the server exits.
    #[arg(long, env = "HERD_SHUTDOWN_GRACE", default_value_t = 30.0)]
    pub shutdown_grace: f64,

    /// Tokens file (TOML of sha256 hashes -> tenant or admin). Without it, no auth.
    #[arg(long, env = "HERD_TOKENS")]
    pub tokens: Option<PathBuf>,

    /// Path to libonnxruntime.so.1.31.1 (else HERD_ORT_LIB, ORT_DYLIB_PATH, herd's cache).
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Threads of the shared inference pool (0 = one per core).
    #[arg(long, env = "HERD_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Let the shared pool's threads spin for a moment after each operator before they sleep
    /// (ONNX Runtime's default). Small runs are much faster with it (MiniLM, one sentence on 2
    /// cores: 4.9 ms with, 6.9 ms without); `--spin false` saves the CPU those moments burn.
    #[arg(long, env = "HERD_ORT_SPIN", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub spin: bool,

    /// Do not install ONNX Runtime automatically when it is missing.
    #[arg(long, env = "HERD_NO_AUTO_INSTALL")]
    pub no_auto_install: bool,

    #[command(flatten)]
    pub jobs: JobsSettings,
}

/// The jobs API (`/v1/jobs`); off unless `--jobs-queue-url` is given.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct JobsSettings {
    /// Queue behind the jobs API at /v1/jobs (sqlite://PATH, redis://..., postgres://...), the
    /// one `herd worker --queue-url` drains. Without it the jobs API is off.
    #[arg(long, env = "HERD_JOBS_QUEUE_URL")]
    #[serde(serialize_with = "ser_redacted_opt")]
    pub jobs_queue_url: Option<String>,

    /// The operator's job templates (TOML): the only `command` jobs the API accepts (program,
    /// arguments, environment, limits, allowed tenants). Without it the API takes no commands.
    #[arg(long, env = "HERD_JOB_TEMPLATES")]
    pub job_templates: Option<PathBuf>,

    /// Where tenants' batch-infer inputs and results live (a directory, file:// or
    /// s3://bucket/prefix): a tenant's input is <data>/<tenant>/<input>, its results
    /// <data>/<tenant>/results/. Without it tenants cannot enqueue batch-infer.
    #[arg(long, env = "HERD_JOBS_DATA")]
    pub jobs_data: Option<String>,

    /// Base URL workers call for batch-infer jobs enqueued through the API (this server as the
    /// workers reach it). Default: http://<--addr>.
    #[arg(long, env = "HERD_JOBS_INFER_URL")]
    pub jobs_infer_url: Option<String>,

    /// Queue of API jobs that name none.
    #[arg(long, env = "HERD_JOBS_DEFAULT_QUEUE", default_value = "default")]
    pub jobs_default_queue: String,
}

fn ser_redacted_opt<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) => s.serialize_str(&herd_jobs::redact_url(u)),
        None => s.serialize_none(),
    }
}

fn ser_debug<T: std::fmt::Debug, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

pub fn parse_size(s: &str) -> Result<SizeSpec, String> {
    s.parse()
}

pub fn parse_policy(s: &str) -> Result<EvictionPolicy, String> {
    s.parse()
}

/// Memory the budget's percentage refers to: the machine's, or the container's limit if lower.
pub fn memory_limit() -> u64 {
    let total = herd_runtime::memory::total_memory_bytes().unwrap_or(8 << 30);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map(|c| c.min(total)).unwrap_or(total)
}

impl Settings {
    pub fn core_config(&self) -> CoreConfig {
        CoreConfig {
            memory_budget: self.memory_budget.resolve(memory_limit()),
            policy: self.eviction,
            load_concurrency: self.load_concurrency.max(1),
            queue_capacity: self.queue_capacity.max(1),
            request_timeout: Duration::from_secs_f64(self.request_timeout.max(0.001)),
            limits: RequestLimits {
                max_rows_per_request: self.max_rows_per_request.max(1),
                max_texts_per_request: self.max_texts_per_request.max(1),
                max_chars_per_text: self.max_chars_per_text.max(1),
                max_tokens_per_request: self.max_tokens_per_request.max(1),
            },
            ..CoreConfig::default()
        }
    }

    pub fn drain_delay(&self) -> Duration {
        Duration::from_secs_f64(self.drain_delay.max(0.0))
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body.resolve(memory_limit()) as usize
    }

    /// The HTTP listener's limits (timeouts, connections, in-flight requests, body memory).
    pub fn http_limits(&self) -> crate::HttpLimits {
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.001));
        crate::HttpLimits {
            max_body_bytes: self.max_body_bytes(),
            header_read_timeout: secs(self.header_read_timeout),
            body_read_timeout: secs(self.body_read_timeout),
            max_connections: self.max_connections.max(1),
            max_in_flight: self.max_in_flight.max(1),
            max_body_memory: self.max_body_memory.resolve(memory_limit()),
            shutdown_grace: Duration::from_secs_f64(self.shutdown_grace.max(0.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: super::Settings,
    }

    #[test]
    fn shutdown_grace_is_a_flag_with_a_30_s_default() {
        let s = Cli::parse_from(["herd", "--shutdown-grace", "2.5"]).settings;
        assert_eq!(
            s.http_limits().shutdown_grace,
            std::time::Duration::from_millis(2500)
        );
        if std::env::var_os("HERD_SHUTDOWN_GRACE").is_none() {
            let s = Cli::parse_from(["herd"]).settings;
            assert_eq!(
                s.http_limits().shutdown_grace,
                std::time::Duration::from_secs(30)
            );
        }
    }
}
