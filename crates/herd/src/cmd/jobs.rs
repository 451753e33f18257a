//! `herd worker` (claim and run queued jobs) and
//! `herd job enqueue|list|show|cancel|requeue|purge|stats`.
//! The queue, the worker loop and the job kinds live in herd-jobs; this module parses flags and
//! prints (tables for people, `--json` for scripts).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use herd_jobs::run::DefaultRunner;
use herd_jobs::worker::{default_worker_id, parse_duration, WorkerConfig};
use herd_jobs::{
    BatchInferParams, CommandParams, InputFormat, Job, JobKind, JobSpec, JobState, ListFilter,
    Queue, DEFAULT_QUEUE_URL, DEFAULT_RESULT_DIR,
};

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Where the queue lives; shared by `herd worker` and `herd job`.
#[derive(Args, Clone)]
pub struct QueueUrl {
    /// Queue URL: sqlite://PATH (embedded, zero setup; created if missing),
    /// redis://[:PASS@]HOST:PORT[/DB][?prefix=NAME] (rediss:// for TLS),
    /// redis+cluster://HOST:PORT,HOST:PORT[?prefix=NAME] or postgres://USER:PASS@HOST/DB.
    /// Prefer the HERD_QUEUE_URL environment variable when it holds a password.
    #[arg(long, env = "HERD_QUEUE_URL", default_value = DEFAULT_QUEUE_URL, global = true)]
    pub queue_url: String,
}

#[derive(Args)]
#[command(after_long_help = WORKER_HELP)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queue_url: QueueUrl,

    /// Queue(s) to take jobs from; repeat the flag or separate with commas.
    #[arg(
        long = "queue",
        env = "HERD_QUEUE",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,

    /// This worker's id in job leases (the autoscaler never stops a worker that holds one).
    /// Default: <hostname>-<pid>.
    #[arg(long, env = "HERD_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Exit after this long without a job ("30s", "5m"); workers are meant to be ephemeral.
    /// Without it the worker runs until SIGTERM.
    #[arg(long, env = "HERD_IDLE_EXIT", value_parser = duration)]
    pub idle_exit: Option<Duration>,

    /// On SIGTERM/SIGINT: stop claiming, give the current job this long to finish, then
    /// release its lease so another worker takes it.
    #[arg(long, env = "HERD_GRACE", default_value = "30s", value_parser = duration)]
    pub grace: Duration,

    /// Lease length. The worker renews it every third of this while a job runs; if the worker
    /// dies, the job is claimable again this long after the last renewal.
    #[arg(long, env = "HERD_LEASE", default_value = "30s", value_parser = duration)]
    pub lease: Duration,

    /// Pause between claims while the queue is empty.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub poll: Duration,

    /// Serve Prometheus metrics (herd_jobs_*) at http://ADDR/metrics, e.g. 127.0.0.1:9101.
    /// Off by default.
    #[arg(long, env = "HERD_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "HERD_LOG_JSON")]
    pub log_json: bool,
}

const WORKER_HELP: &str = "\
Delivery is at least once: a job whose worker dies runs again after its lease expires. Results are
written to <result_dir>/<job id>.json (and .jsonl for batch-infer) through a temp file and a rename;
a job whose outcome file already exists is not run again, so a crash between finishing and
acknowledging does not repeat its side effects.

Examples:
  herd worker --queue default --idle-exit 60s
  herd worker --queue-url redis://127.0.0.1:6379 --queue batch,reports --worker-id w1";

/// `herd job ...`
#[derive(Subcommand)]
pub enum JobCommand {
    /// Add jobs to a queue: a command, a batch inference, or JSON specs from a file.
    Enqueue(Box<EnqueueArgs>),
    /// List jobs, newest first.
    List(ListArgs),
    /// Show one job: spec, state, attempts, error, result.
    Show(ShowArgs),
    /// Cancel a waiting, delayed or running job (it moves to the dead letter; a running job's
    /// worker stops it at its next lease renewal).
    Cancel(CancelArgs),
    /// Move dead-lettered jobs back to waiting with fresh attempts.
    Requeue(RequeueArgs),
    /// Delete done and dead jobs that finished longer ago than the retention.
    Purge(PurgeArgs),
    /// Counts per state for each queue.
    Stats(StatsArgs),
}

#[derive(Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub queue_url: QueueUrl,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Args)]
#[command(after_long_help = ENQUEUE_HELP)]
pub struct EnqueueArgs {
    /// Queue name.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Higher runs first; equal priorities run oldest first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Attempts before the job goes to the dead letter.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Time limit of one attempt ("10m", "2h").
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub timeout: Duration,
    /// Directory for results (<dir>/<job id>.json, .jsonl). Relative paths are resolved by the
    /// worker; an absolute path is safest when workers run elsewhere.
    #[arg(long, default_value = DEFAULT_RESULT_DIR)]
    pub result_dir: String,
    /// Enqueue this many identical jobs (for load tests and demos).
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Print the ids as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub kind: EnqueueKind,
}

const ENQUEUE_HELP: &str = "\
Examples:
  herd job enqueue command -- python train.py --epochs 3
  herd job enqueue --queue batch batch-infer --server http://127.0.0.1:8080 --model m1 --input rows.csv
  herd job enqueue spec jobs.jsonl     # one JSON JobSpec per line: {\"queue\":..,\"kind\":..,\"params\":{..}}";

#[derive(Subcommand)]
pub enum EnqueueKind {
    /// Run a program with arguments and environment; the exit code and output tail are kept.
    Command {
        /// Extra environment variable KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Working directory of the program.
        #[arg(long)]
        cwd: Option<String>,
        /// The program and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// Run a served model (herd serve, KServe v2 REST) over a JSONL, CSV or Parquet file.
    BatchInfer {
        /// Base URL of the herd server, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        server: String,
        /// Model name.
        #[arg(long)]
        model: String,
        /// Model version (the server's default when absent).
        #[arg(long)]
        version: Option<String>,
        /// The input file. JSONL: one array of numbers or {"id":..,"input":[..]} per line;
        /// CSV: a header line, an optional id column, numeric feature columns;
        /// Parquet: numeric columns (or a list column named like --input-field).
        #[arg(long)]
        input: String,
        /// jsonl, csv or parquet (default: from the file extension).
        #[arg(long)]
        format: Option<String>,
        /// The model's input tensor name.
        #[arg(long, default_value = "input")]
        input_name: String,
        /// JSONL/Parquet field holding the feature vector.
        #[arg(long, default_value = "input")]
        input_field: String,
        /// Text input for a text pipeline model: the JSONL field or CSV column holding each
        /// row's text (a bare JSON string line also works); outputs are its embeddings/labels.
        #[arg(long)]
        text_field: Option<String>,
        /// Field/column carried to the output to match rows.
        #[arg(long, default_value = "id")]
        id_field: String,
        /// Rows per infer request.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Where the worker finds the server's bearer token: env:NAME (a variable of the
        /// worker's environment) or file:PATH. Default: the worker's HERD_TOKEN. The token
        /// itself is never stored in the queue.
        #[arg(long, value_name = "env:NAME|file:PATH")]
        token_secret: Option<String>,
    },
    /// Enqueue JobSpecs from a JSON Lines file ("-" for stdin); the other enqueue flags are ignored.
    Spec {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only this state: waiting, delayed, running, done, dead.
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// JSON array of full job records.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Job id.
    pub id: String,
    /// The full record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(after_long_help = CANCEL_HELP)]
pub struct CancelArgs {
    /// Job id.
    pub id: String,
    /// Why, kept as the job's last error (shown by `herd job show`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Print the cancelled job as JSON.
    #[arg(long)]
    pub json: bool,
}

const CANCEL_HELP: &str = "\
A cancelled job goes to the dead letter of its queue with the reason as its error, so
`herd job requeue --queue QUEUE ID` can bring it back. A running job's lease is revoked: its
worker stops the job at its next renewal (a command job's whole process group is terminated).
An unknown id, or a job that is done or dead already, is an error (exit status 1).

Examples:
  herd job cancel 0193f2c4-7d1e-7c3a-9f0e-2b6d4a8c1e57
  herd job cancel 0193f2c4-7d1e-7c3a-9f0e-2b6d4a8c1e57 --reason \"wrong input file\"";

#[derive(Args)]
pub struct RequeueArgs {
    /// Queue of the dead jobs.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// The dead job to requeue (omit and pass --all for every dead job of the queue).
    pub id: Option<String>,
    /// Requeue every dead job of the queue.
    #[arg(long, conflicts_with = "id")]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PurgeArgs {
    /// Keep finished jobs this long ("7d", "12h").
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub older_than: Duration,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Only this queue (default: all).
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn open(url: &str) -> anyhow::Result<Arc<dyn Queue>> {
    herd_jobs::connect(url)
        .await
        .with_context(|| format!("opening the queue {}", herd_jobs::redact_url(url)))
}

/// `herd worker`.
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    herd_server::telemetry::init_logs(args.log_json);
    for q in &args.queues {
        herd_jobs::validate_queue_name(q)?;
    }
    if args.lease < Duration::from_millis(300) {
        bail!("--lease must be at least 300ms (it is renewed every third of it)");
    }
    let rt = runtime()?;
    rt.block_on(async move {
        if let Some(addr) = args.metrics_addr {
            serve_metrics(addr).await?;
        }
        let queue = open(&args.queue_url.queue_url).await?;
        let mut cfg = WorkerConfig::new(
            args.worker_id.unwrap_or_else(default_worker_id),
            args.queues,
        );
        cfg.lease = args.lease;
        cfg.idle_exit = args.idle_exit;
        cfg.grace = args.grace;
        cfg.poll = args.poll;
        tracing::info!(queue_url = %herd_jobs::redact_url(&args.queue_url.queue_url), worker_id = %cfg.worker_id, queues = ?cfg.queues,
            lease_s = cfg.lease.as_secs_f64(), grace_s = cfg.grace.as_secs_f64(),
            idle_exit_s = cfg.idle_exit.map(|d| d.as_secs_f64()), "effective worker settings");
        let summary = herd_jobs::worker::run_until_signalled(
            queue,
            Arc::new(DefaultRunner::default()),
            cfg,
        )
        .await?;
        tracing::info!(done = summary.done, failed = summary.failed, released = summary.released,
            lost = summary.lost, reason = summary.exit_reason, "worker exiting");
        Ok(())
    })
}

/// Serves `/metrics` for this worker process in the background.
async fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let Some(handle) = herd_server::telemetry::init_metrics() else {
        bail!("a metrics recorder is already installed");
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-addr {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "worker metrics at /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { h.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "worker metrics server stopped");
        }
    });
    Ok(())
}

/// `herd job ...`.
pub fn run_job(args: JobArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async move {
        let url = args.queue_url.queue_url;
        match args.command {
            JobCommand::Enqueue(a) => enqueue(&url, *a).await,
            JobCommand::List(a) => list(&url, a).await,
            JobCommand::Show(a) => show(&url, a).await,
            JobCommand::Cancel(a) => cancel(&url, a).await,
            JobCommand::Requeue(a) => requeue(&url, a).await,
            JobCommand::Purge(a) => purge(&url, a).await,
            JobCommand::Stats(a) => stats(&url, a).await,
        }
    })
}

fn base_spec(a: &EnqueueArgs, kind: JobKind) -> JobSpec {
    let mut spec = JobSpec::new(a.queue.clone(), kind);
    spec.priority = a.priority;
    spec.max_attempts = a.max_attempts;
    spec.timeout_secs = a.timeout.as_secs().max(1);
    spec.result_dir = a.result_dir.clone();
    spec
}

fn specs_from_args(a: &EnqueueArgs) -> anyhow::Result<Vec<JobSpec>> {
    let one = match &a.kind {
        EnqueueKind::Command { env, cwd, argv } => {
            let Some((program, rest)) = argv.split_first() else {
                bail!("give the program to run after `--`, e.g. `herd job enqueue command -- echo hi`");
            };
            let mut vars = BTreeMap::new();
            for kv in env {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--env '{kv}' is not KEY=VALUE");
                };
                if k.is_empty() {
                    bail!("--env '{kv}' has an empty name");
                }
                vars.insert(k.to_string(), v.to_string());
            }
            base_spec(
                a,
                JobKind::Command(CommandParams {
                    program: program.clone(),
                    args: rest.to_vec(),
                    env: vars,
                    cwd: cwd.clone(),
                }),
            )
        }
        EnqueueKind::BatchInfer {
            server,
            model,
            version,
            input,
            format,
            input_name,
            input_field,
            text_field,
            id_field,
            batch_size,
            token_secret,
        } => {
            let format = format
                .as_deref()
                .map(str::parse::<InputFormat>)
                .transpose()?;
            let mut p = BatchInferParams::new(server.clone(), model.clone(), input.clone());
            p.version = version.clone();
            p.format = format;
            p.input_name = input_name.clone();
            p.input_field = input_field.clone();
            p.text_field = text_field.clone();
            p.id_field = id_field.clone();
            p.batch_size = *batch_size;
            p.token_secret = token_secret.clone();
            if !herd_jobs::storage::is_remote(input) && !std::path::Path::new(input).exists() {
                eprintln!(
                    "warning: {input} does not exist here; the worker must be able to read it"
                );
            }
            base_spec(a, JobKind::BatchInfer(p))
        }
        EnqueueKind::Spec { file } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading specs from stdin")?;
            } else {
                text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
            }
            let mut specs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let spec: JobSpec = serde_json::from_str(line).with_context(|| {
                    format!(
                        "{} line {}: not a job spec (expected {{\"queue\":..,\"kind\":\"command\"|\"batch-infer\",\"params\":{{..}}}})",
                        file.display(),
                        i + 1
                    )
                })?;
                spec.validate()
                    .with_context(|| format!("{} line {}", file.display(), i + 1))?;
                specs.push(spec);
            }
            if specs.is_empty() {
                bail!("{} holds no job specs", file.display());
            }
            return Ok(specs);
        }
    };
    one.validate()?;
    Ok(vec![one; a.count.max(1) as usize])
}

async fn enqueue(url: &str, a: EnqueueArgs) -> anyhow::Result<()> {
    // Validate everything before the first write: a bad line enqueues nothing.
    let specs = specs_from_args(&a)?;
    let queue = open(url).await?;
    let bar = if specs.len() > 1 && !a.json {
        let pb = indicatif::ProgressBar::new(specs.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("enqueue {bar:40} {pos}/{len} {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut ids = Vec::with_capacity(specs.len());
    for spec in specs {
        let id = queue
            .enqueue(spec)
            .await
            .with_context(|| format!("enqueued {} job(s) before this error", ids.len()))?;
        ids.push(id);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else if ids.len() <= 20 {
        for id in &ids {
            println!("{id}");
        }
    } else {
        println!(
            "enqueued {} jobs ({} .. {})",
            ids.len(),
            ids[0],
            ids[ids.len() - 1]
        );
    }
    Ok(())
}

fn age(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn now_ms() -> i64 {
    herd_jobs::Clock::now_ms(&herd_jobs::SystemClock)
}

fn summary(job: &Job) -> String {
    let text = match (job.state, &job.last_error, &job.result) {
        (JobState::Done, _, Some(r)) => r.location.clone().unwrap_or_else(|| r.detail.to_string()),
        (_, Some(e), _) => e.clone(),
        _ => match &job.progress {
            Some(p) => match p.total {
                Some(t) => format!("{}/{t}", p.done),
                None => p.done.to_string(),
            },
            None => String::new(),
        },
    };
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() > 60 {
        format!("{}...", one_line.chars().take(57).collect::<String>())
    } else {
        one_line
    }
}

async fn list(url: &str, a: ListArgs) -> anyhow::Result<()> {
    let state = a.state.as_deref().map(str::parse::<JobState>).transpose()?;
    let queue = open(url).await?;
    let jobs = queue
        .list(&ListFilter {
            queue: a.queue,
            state,
            limit: a.limit,
        })
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(());
    }
    let now = now_ms();
    println!(
        "{:<21}  {:<12}  {:<11}  {:<7}  {:>8}  {:>5}  {:<16}  RESULT / ERROR",
        "ID", "QUEUE", "KIND", "STATE", "ATTEMPTS", "AGE", "WORKER"
    );
    for j in &jobs {
        println!(
            "{:<21}  {:<12}  {:<11}  {:<7}  {:>8}  {:>5}  {:<16}  {}",
            j.id,
            j.spec.queue,
            j.spec.kind.name(),
            j.state.as_str(),
            format!("{}/{}", j.attempts, j.spec.max_attempts),
            age(now, j.created_ms),
            j.worker_id.as_deref().unwrap_or("-"),
            summary(j)
        );
    }
    Ok(())
}

async fn show(url: &str, a: ShowArgs) -> anyhow::Result<()> {
    let queue = open(url).await?;
    let Some(job) = queue.show(&a.id).await? else {
        bail!(
            "job '{}' not found in {} (list jobs with `herd job list`)",
            a.id,
            herd_jobs::redact_url(url)
        );
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(());
    }
    let now = now_ms();
    println!("id:        {}", job.id);
    println!("queue:     {}", job.spec.queue);
    println!("kind:      {}", job.spec.kind.name());
    println!("state:     {}", job.state);
    println!("attempts:  {}/{}", job.attempts, job.spec.max_attempts);
    println!("priority:  {}", job.spec.priority);
    println!("timeout:   {}s", job.spec.timeout_secs);
    println!("created:   {} ago", age(now, job.created_ms));
    if let Some(w) = &job.worker_id {
        println!("worker:    {w}");
    }
    if let Some(exp) = job.lease_expires_ms {
        println!("lease:     expires in {}ms", exp - now);
    }
    if matches!(job.state, JobState::Delayed) {
        println!("retry in:  {}ms", (job.run_at_ms - now).max(0));
    }
    if let Some(p) = &job.progress {
        println!("progress:  {}", serde_json::to_string(p)?);
    }
    println!("params:    {}", serde_json::to_string(&job.spec.kind)?);
    println!("results:   {}", job.spec.result_dir);
    if let Some(e) = &job.last_error {
        println!("error:     {}", e.replace('\n', "\n           "));
    }
    if let Some(r) = &job.result {
        if let Some(loc) = &r.location {
            println!("output:    {loc}");
        }
        println!(
            "outcome:   {}",
            serde_json::to_string_pretty(&r.detail)?.replace('\n', "\n           ")
        );
    }
    Ok(())
}

async fn cancel(url: &str, a: CancelArgs) -> anyhow::Result<()> {
    let reason = match a.reason.as_deref().map(str::trim) {
        Some("") => bail!("--reason is empty; omit it or say why the job is cancelled"),
        Some(r) => format!("cancelled with `herd job cancel`: {r}"),
        None => "cancelled with `herd job cancel`".to_string(),
    };
    let queue = open(url).await?;
    let was = match queue.cancel(&a.id, &reason).await {
        Ok(s) => s,
        Err(herd_jobs::JobsError::NotFound(id)) => bail!(
            "job '{id}' not found in {} (list jobs with `herd job list`)",
            herd_jobs::redact_url(url)
        ),
        Err(e @ herd_jobs::JobsError::NotCancellable { .. }) => {
            bail!("cannot cancel: {e} (see it with `herd job show {}`)", a.id)
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cancelling job '{}'", a.id))),
    };
    let job = queue.show(&a.id).await?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "cancelled": a.id, "was": was.as_str(), "job": job })
        );
        return Ok(());
    }
    let q = job.as_ref().map(|j| j.spec.queue.as_str()).unwrap_or("?");
    println!("cancelled job {} (it was {was}; queue '{q}')", a.id);
    if matches!(was, JobState::Running) {
        println!("its worker stops it at its next lease renewal");
    }
    println!(
        "it is in the dead letter now; bring it back with `herd job requeue --queue {q} {}`",
        a.id
    );
    Ok(())
}

async fn requeue(url: &str, a: RequeueArgs) -> anyhow::Result<()> {
    if a.id.is_none() && !a.all {
        bail!(
            "name a dead job to requeue, or pass --all for every dead job of queue '{}'",
            a.queue
        );
    }
    let queue = open(url).await?;
    let n = queue.requeue_dead(&a.queue, a.id.as_deref()).await?;
    if a.json {
        println!("{}", serde_json::json!({ "requeued": n }));
    } else {
        println!("requeued {n} job(s) in queue '{}'", a.queue);
    }
    Ok(())
}

async fn purge(url: &str, a: PurgeArgs) -> anyhow::Result<()> {
    let queue = open(url).await?;
    let n = queue.purge(a.older_than).await?;
    if a.json {
        println!("{}", serde_json::json!({ "purged": n }));
    } else {
        println!(
            "purged {n} finished job(s) older than {}s",
            a.older_than.as_secs()
        );
    }
    Ok(())
}

async fn stats(url: &str, a: StatsArgs) -> anyhow::Result<()> {
    let queue = open(url).await?;
    let names = match a.queue {
        Some(q) => vec![q],
        None => queue.queues().await?,
    };
    let mut all = BTreeMap::new();
    for name in names {
        let st = queue.stats(&name).await?;
        let holders = queue.lease_holders(&name).await?;
        all.insert(name, (st, holders));
    }
    if a.json {
        let v: BTreeMap<_, _> = all
            .iter()
            .map(|(k, (st, h))| {
                (
                    k.clone(),
                    serde_json::json!({ "stats": st, "lease_holders": h }),
                )
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no queues yet");
        return Ok(());
    }
    println!(
        "{:<16}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  WORKERS",
        "QUEUE", "WAITING", "RUNNING", "DELAYED", "DEAD", "DONE"
    );
    for (name, (st, holders)) in &all {
        println!(
            "{:<16}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {}",
            name,
            st.waiting,
            st.running,
            st.delayed,
            st.dead,
            st.done,
            holders.join(",")
        );
    }
    Ok(())
}
