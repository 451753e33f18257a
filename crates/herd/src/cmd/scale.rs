//! `herd autoscale` (the control loop) and `herd k8s manifests` (ready-to-apply YAML).
//! The logic lives in herd-scale; this module parses flags, adapts herd-jobs' queue stats to
//! herd-scale's `QueueSource`, and prints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use herd_scale::controller::{Backend, Controller, QueueSource, QueueStats};
use herd_scale::kubernetes::{KubeBackend, FLEXIBLE_PDB};
use herd_scale::local::{LocalBackend, LocalSettings};
use herd_scale::manifests::{self, ManifestOptions};
use herd_scale::policy::parse_duration;
use herd_scale::{jiff, Policy, ScaleError};

/// Where `herd autoscale` applies its decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Start and stop `herd worker` / `herd serve` child processes on this machine.
    Local,
    /// Patch Deployment scale, PodDisruptionBudgets and pod-deletion-cost through the API server
    /// (in-cluster service account, else KUBECONFIG).
    Kubernetes,
}

#[derive(Args)]
#[command(after_long_help = POLICY_HELP)]
pub struct AutoscaleArgs {
    /// The policy file (TOML): worker pools per queue, serving pools, schedules. See below.
    #[arg(long, env = "HERD_POLICY")]
    pub policy: PathBuf,

    /// Where decisions are applied.
    #[arg(
        long,
        value_enum,
        default_value = "local",
        env = "HERD_AUTOSCALE_BACKEND"
    )]
    pub backend: BackendKind,

    /// Time between two ticks (observe, decide, apply): "5s", "500ms", "1m".
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Print each tick's decisions with their inputs; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Queue URL (sqlite://FILE, redis://HOST:PORT/DB) for worker pools that name none in the
    /// policy (neither in the pool nor in [defaults]). The default is the embedded queue that
    /// `herd job enqueue` uses.
    #[arg(long, env = "HERD_QUEUE_URL", default_value = "sqlite://.herd/jobs.db")]
    pub queue_url: Option<String>,

    /// Kubernetes namespace (default: the client's, i.e. the pod's own in a cluster).
    #[arg(long, env = "HERD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Name of the flexible-pod PodDisruptionBudget the schedules adjust (the autoscaler
    /// creates it with server-side apply, field manager `herd-autoscaler`).
    #[arg(long, default_value = FLEXIBLE_PDB)]
    pub flexible_pdb: String,

    /// Only pods of this install (label app.kubernetes.io/instance), as rendered by
    /// `herd k8s manifests --instance`.
    #[arg(long, env = "HERD_INSTANCE")]
    pub instance: Option<String>,

    /// Local backend: directory for the children's output, one `<id>.log` each.
    #[arg(long, default_value = ".herd/autoscale-logs")]
    pub log_dir: PathBuf,

    /// Local backend: how many logs of exited children to keep in --log-dir (oldest deleted).
    #[arg(long, default_value_t = 500)]
    pub keep_logs: usize,

    /// Stop after this many ticks (0: run until Ctrl-C or SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub ticks: u64,

    /// Exit once work has come and gone: after at least one worker was started, every worker
    /// pool is back at zero workers with nothing waiting or running. For scripts and demos.
    #[arg(long)]
    pub until_idle: bool,

    /// Serve the autoscaler's own Prometheus metrics at http://ADDR/metrics (127.0.0.1 only by default).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,

    /// File holding the bearer token sent when scraping serving instances' /metrics (needed
    /// when they run with --tokens): an admin token or one made by `herd token new --scope
    /// metrics`. Read once at start and trimmed. The environment variable HERD_METRICS_TOKEN
    /// may hold the token itself instead (never pass it as an argument).
    #[arg(long, env = "HERD_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// Print decisions as JSON lines on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "HERD_LOG_JSON")]
    pub log_json: bool,
}

const POLICY_HELP: &str = r#"POLICY FILE (TOML):

  [defaults]
  queue_url = "sqlite://.herd/jobs.db"   # for pools that name none (or --queue-url)
  flexible_max_unavailable = 1           # flexible-pod PDB outside every schedule window

  [[workers]]                            # one pool per queue
  queue = "default"
  jobs_per_worker = 10                   # desired = ceil(waiting / jobs_per_worker)
  min = 0                                # 0: scale to zero when idle
  max = 8
  cooldown = "60s"                       # empty queue + nothing running this long -> zero
  idle_exit = "300s"                     # local: `herd worker --idle-exit`

  [[serving]]
  name = "web"
  target_invocations_per_minute = 225    # per instance
  target_memory_utilisation = 0.8        # of each instance's memory budget
  stabilisation_window = "300s"          # scale down on the highest recommendation of this window
  tolerance = 0.1                        # no change within +-10% of target
  min = 1
  max = 6
  repo = "./models"                      # local: `herd serve --repo`
  memory_budget = "256MiB"               # local: `herd serve --memory-budget`

  [[schedule]]                           # first open window wins
  name = "working-hours"
  days = ["weekdays"]                    # mon..sun, weekdays, weekend, daily
  window = "08:00-19:00"                 # local time; "22:00-06:00" crosses midnight
  timezone = "Europe/Berlin"             # IANA; DST handled by wall clock
  flexible_max_unavailable = 0
  workers.default = { min = 1 }          # per-pool min/max while the window is open

Rules: workers never stop while they hold a job lease (idle ones go first); scale to zero only
when nothing waits, nothing runs and the cooldown has passed; serving replicas are the larger of
the invocation-based and memory-based counts, scaled up at once and down only to the highest
recommendation of the stabilisation window.

Metrics: herd_scale_ticks_total, herd_scale_tick_seconds, herd_scale_actions_total{kind,status},
herd_scale_decisions_total, herd_scale_desired_replicas{kind,pool},
herd_scale_current_replicas{kind,pool}, herd_scale_observe_errors_total{kind}.
"#;

/// `herd k8s ...`
#[derive(Subcommand)]
pub enum K8sCommand {
    /// Render ready-to-apply manifests of an install that serves a release: serving pods
    /// (`serve --channel`), HAProxy routers hashing on the model, workers, Redis with a password,
    /// the autoscaler (with RBAC), Secrets, NetworkPolicies, the restricted Pod Security profile,
    /// fixed/flexible placement. With --out: one file per component and a kustomization.yaml.
    Manifests(ManifestArgs),
}

#[derive(Args)]
pub struct ManifestArgs {
    /// Namespace of every object (created by the manifests, enforcing Pod Security "restricted").
    #[arg(long, default_value = "herd")]
    pub namespace: String,

    /// Name of the install: prefix of every object and the app.kubernetes.io/instance label
    /// (two installs in one namespace need two names).
    #[arg(long, default_value = "herd")]
    pub instance: String,

    /// Write one file per component into DIR (00-namespace.yaml ... plus kustomization.yaml)
    /// instead of printing one multi-document YAML to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Container image with the herd binary (built from deploy/Containerfile).
    #[arg(long, default_value = "herd:0.1.0")]
    pub image: String,

    /// HAProxy image of the routers (2.6 or newer).
    #[arg(long, default_value = "haproxy:2.6")]
    pub router_image: String,

    /// Redis image of the queue.
    #[arg(long, default_value = "redis:7.2")]
    pub redis_image: String,

    /// A queue to run workers for (repeat for several).
    #[arg(long = "queue", default_values_t = vec!["default".to_string()])]
    pub queues: Vec<String>,

    /// A serving pool (repeat for several); each gets its own router.
    #[arg(long = "serving-pool", default_values_t = vec!["default".to_string()])]
    pub serving_pools: Vec<String>,

    /// Registry channel the serving pods serve (`herd serve --channel`).
    #[arg(long, default_value = "production")]
    pub channel: String,

    /// Policy file to put in the autoscaler's ConfigMap (validated first); default: one generated
    /// for the queues and pools above.
    #[arg(long)]
    pub policy: Option<PathBuf>,

    /// Registry database URL (PostgreSQL), into the connections Secret as HERD_REGISTRY.
    #[arg(
        long,
        default_value = "postgres://herd:CHANGE-ME@herd-postgres:5432/herd"
    )]
    pub registry_url: String,

    /// Artifact store, s3://bucket[/prefix] (AWS S3 or MinIO), into the Secret as HERD_ARTIFACTS.
    #[arg(long, default_value = "s3://herd-artifacts/models")]
    pub artifacts_url: String,

    /// S3-compatible endpoint, e.g. http://minio.storage:9000 (omit for AWS).
    #[arg(long)]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,

    /// S3 access key id (into the Secret).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", default_value = "CHANGE-ME")]
    pub s3_access_key_id: String,

    /// S3 secret access key (into the Secret).
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        default_value = "CHANGE-ME",
        hide_env_values = true
    )]
    pub s3_secret_access_key: String,

    /// Password of the install's Redis (also in the queue URL the workers get).
    #[arg(
        long,
        env = "HERD_REDIS_PASSWORD",
        default_value = "CHANGE-ME",
        hide_env_values = true
    )]
    pub redis_password: String,

    /// Tokens file (TOML, `herd token new`) to put in the tokens Secret. Default: a file with no
    /// token, so every request is refused until you add one (closed by default).
    #[arg(long)]
    pub tokens: Option<PathBuf>,

    /// File with the token the autoscaler (and a ServiceMonitor) send to /metrics, into the
    /// `<instance>-metrics-token` Secret: make it with `herd token new --scope metrics` and put
    /// its entry in --tokens (checked). Default: a placeholder the servers refuse.
    #[arg(long)]
    pub metrics_token_file: Option<PathBuf>,

    /// Node label naming the node group; nodes carry LABEL=<fixed group> or LABEL=<flexible group>.
    #[arg(long, default_value = "herd.dev/node-group")]
    pub node_group_label: String,

    /// Value of the node label on the fixed node group.
    #[arg(long, default_value = "fixed")]
    pub fixed_group: String,

    /// Value of the node label on the flexible node group.
    #[arg(long, default_value = "flexible")]
    pub flexible_group: String,

    /// Model memory budget of each serving pod ("2GiB"); its memory request adds 25% + 256MiB.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    pub serve_memory_budget: u64,

    /// Size limit of each serving pod's artifact disk cache (an emptyDir).
    #[arg(long, default_value = "10GiB", value_parser = parse_bytes)]
    pub artifact_cache_size: u64,

    /// Most serving replicas a router can send to (HAProxy server-template slots).
    #[arg(long, default_value_t = 32)]
    pub router_slots: u32,

    /// HAProxy pods per serving pool.
    #[arg(long, default_value_t = 2)]
    pub router_replicas: i32,

    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Also render a ServiceMonitor per serving pool (needs the Prometheus operator's CRD).
    #[arg(long)]
    pub service_monitor: bool,
}

/// `"2GiB"`, `"512MiB"`, `"1G"`, `"1048576"` -> bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size; write e.g. 512MiB or 2GiB"))?;
    let f: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" | "ki" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" | "mi" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" | "gi" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "'{s}': unknown size unit '{other}'; use B, KiB, MiB or GiB"
            ))
        }
    };
    Ok((v * f) as u64)
}

pub fn run_k8s(cmd: K8sCommand) -> anyhow::Result<()> {
    match cmd {
        K8sCommand::Manifests(a) => {
            let policy = match &a.policy {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading policy file {}", p.display()))?;
                    Policy::parse(&text, &p.display().to_string())?;
                    Some(text)
                }
                None => None,
            };
            let tokens = match &a.tokens {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading tokens file {}", p.display()))?;
                    herd_server::auth::Auth::from_toml(&text)
                        .map_err(|e| anyhow::anyhow!("tokens file {}: {e}", p.display()))?;
                    Some(text)
                }
                None => None,
            };
            let metrics_token = match &a.metrics_token_file {
                Some(p) => {
                    let token = herd_scale::metrics_text::read_token_file(p)?;
                    // The rendered servers must let the autoscaler read /metrics with it.
                    let auth =
                        herd_server::auth::Auth::from_toml(tokens.as_deref().unwrap_or_default())
                            .map_err(|e| anyhow::anyhow!("tokens file: {e}"))?;
                    let mut h = axum::http::HeaderMap::new();
                    h.insert(
                        axum::http::header::AUTHORIZATION,
                        format!("Bearer {token}")
                            .parse()
                            .context("the metrics token is not a valid header value")?,
                    );
                    if auth.check_metrics(&h).is_err() {
                        bail!(
                            "the tokens file (--tokens) does not let the token in {} read /metrics: append the [[token]] entry `herd token new --scope metrics` printed for it (scopes = [\"metrics\"])",
                            p.display()
                        );
                    }
                    Some(token)
                }
                None => {
                    eprintln!("note: no --metrics-token-file: the autoscaler's metrics token is a placeholder, so it cannot read the servers' /metrics until you set one (see the README, Kubernetes)");
                    None
                }
            };
            let defaults = ManifestOptions::default();
            let opts = ManifestOptions {
                namespace: a.namespace,
                instance: a.instance,
                image: a.image,
                router_image: a.router_image,
                redis_image: a.redis_image,
                queues: a.queues,
                serving_pools: a.serving_pools,
                channel: a.channel,
                policy,
                registry_url: a.registry_url,
                artifacts_url: a.artifacts_url,
                s3_endpoint: a.s3_endpoint,
                s3_region: a.s3_region,
                s3_access_key_id: a.s3_access_key_id,
                s3_secret_access_key: a.s3_secret_access_key,
                redis_password: a.redis_password,
                tokens: tokens.unwrap_or(defaults.tokens),
                metrics_token: metrics_token.unwrap_or(defaults.metrics_token),
                node_group_label: a.node_group_label,
                fixed_group: a.fixed_group,
                flexible_group: a.flexible_group,
                serve_memory_budget: a.serve_memory_budget,
                artifact_cache_size: a.artifact_cache_size,
                router_slots: a.router_slots,
                router_replicas: a.router_replicas,
                cluster_domain: a.cluster_domain,
                service_monitor: a.service_monitor,
            };
            let objects = opts.render()?;
            match a.out {
                None => print!("{}", manifests::to_yaml(&objects)?),
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    for (name, yaml) in manifests::files(&objects)? {
                        let path = dir.join(&name);
                        std::fs::write(&path, yaml)
                            .with_context(|| format!("writing {}", path.display()))?;
                        println!("wrote {}", path.display());
                    }
                    println!("apply with: kubectl apply -k {}", dir.display());
                }
            }
            Ok(())
        }
    }
}

/// herd-jobs queues behind herd-scale's `QueueSource`, one connection per URL.
struct JobsQueues {
    conns: tokio::sync::Mutex<HashMap<String, Arc<dyn herd_jobs::Queue>>>,
}

impl QueueSource for JobsQueues {
    async fn stats(&self, url: &str, queue: &str) -> herd_scale::Result<QueueStats> {
        let err = |e: herd_jobs::JobsError| ScaleError::Observe {
            what: format!("queue '{queue}' at {url}"),
            message: e.to_string(),
        };
        let q = {
            let mut conns = self.conns.lock().await;
            match conns.get(url) {
                Some(q) => q.clone(),
                None => {
                    let q = herd_jobs::connect(url).await.map_err(err)?;
                    conns.insert(url.to_string(), q.clone());
                    q
                }
            }
        };
        let s = q.stats(queue).await.map_err(err)?;
        let lease_holders = q.lease_holders(queue).await.map_err(err)?;
        Ok(QueueStats {
            waiting: s.waiting,
            running: s.running,
            lease_holders,
        })
    }
}

pub fn run_autoscale(args: AutoscaleArgs) -> anyhow::Result<()> {
    herd_server::telemetry::init_logs(args.log_json);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(autoscale(args))
}

async fn autoscale(args: AutoscaleArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&args.policy)?;
    if policy.workers.is_empty() && policy.serving.is_empty() {
        bail!(
            "policy {} has no [[workers]] and no [[serving]] pools: nothing to scale",
            args.policy.display()
        );
    }
    if args.interval.is_zero() {
        bail!("--interval must be above zero, e.g. 5s");
    }
    let metrics_token = metrics_token(args.metrics_token_file.as_deref())?;
    // Fail fast on a pool without a queue URL, and on URLs herd-jobs does not know.
    let queues = JobsQueues {
        conns: tokio::sync::Mutex::new(HashMap::new()),
    };
    for pool in &policy.workers {
        let Some(url) = policy.queue_url(pool, args.queue_url.as_deref()) else {
            bail!(
                "worker pool '{}' has no queue URL: set queue_url in its [[workers]] table or in [defaults], or pass --queue-url / HERD_QUEUE_URL",
                pool.queue
            );
        };
        queues
            .stats(url, &pool.queue)
            .await
            .with_context(|| format!("worker pool '{}'", pool.queue))?;
    }
    let backend = match args.backend {
        BackendKind::Local => {
            let exe = std::env::current_exe().context("locating the herd binary")?;
            Backend::Local(LocalBackend::new(LocalSettings {
                exe,
                log_dir: args.log_dir.clone(),
                queue_url: args.queue_url.clone(),
                keep_logs: args.keep_logs,
            })?)
        }
        BackendKind::Kubernetes => Backend::Kubernetes(
            KubeBackend::connect(args.namespace.clone(), args.flexible_pdb.clone())
                .await?
                .with_instance(args.instance.clone()),
        ),
    };
    if let Some(addr) = args.metrics_addr {
        serve_metrics(addr).await?;
    }
    tracing::info!(
        policy = %args.policy.display(),
        backend = backend.name(),
        interval_ms = args.interval.as_millis() as u64,
        dry_run = args.dry_run,
        worker_pools = policy.workers.len(),
        serving_pools = policy.serving.len(),
        schedules = policy.schedules.len(),
        metrics_token = metrics_token.is_some(),
        "autoscaler starting"
    );
    let mut c = Controller::new(
        policy,
        backend,
        queues,
        args.queue_url.clone(),
        args.dry_run,
    )?
    .with_metrics_token(metrics_token);

    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut n = 0u64;
    let mut started_any = false;
    let result = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
        let now = jiff::Timestamp::now();
        let plan = c.tick(now).await;
        n += 1;
        print_plan(&plan, now, args.dry_run, args.json);
        if plan
            .actions
            .iter()
            .any(|a| matches!(a, herd_scale::Action::StartWorkers { .. }))
        {
            started_any = true;
        }
        if args.until_idle && started_any && all_idle(&plan) {
            println!(
                "all worker pools are back at zero with an empty queue; exiting (--until-idle)"
            );
            break Ok(());
        }
        if args.ticks > 0 && n >= args.ticks {
            break Ok(());
        }
    };
    c.shutdown().await;
    result
}

/// The /metrics bearer token: --metrics-token-file / HERD_METRICS_TOKEN_FILE, else the
/// HERD_METRICS_TOKEN variable; both at once is an error.
fn metrics_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var("HERD_METRICS_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    match (file, from_env) {
        (Some(_), Some(_)) => bail!(
            "both --metrics-token-file (HERD_METRICS_TOKEN_FILE) and HERD_METRICS_TOKEN are set; keep one"
        ),
        (Some(p), None) => Ok(Some(herd_scale::metrics_text::read_token_file(p)?)),
        (None, t) => Ok(t),
    }
}

/// True when every worker pool decision shows zero workers, nothing waiting, nothing running.
fn all_idle(plan: &herd_scale::Plan) -> bool {
    let pools: Vec<&herd_scale::Decision> = plan
        .decisions
        .iter()
        .filter(|d| d.kind == "workers")
        .collect();
    !pools.is_empty()
        && pools.iter().all(|d| {
            d.desired == 0
                && d.inputs.starts_with("waiting=0 running=0 ")
                && d.inputs.contains(" workers=0 ")
        })
}

fn print_plan(plan: &herd_scale::Plan, now: jiff::Timestamp, dry_run: bool, json: bool) {
    if json {
        let line = serde_json::json!({
            "time": now.to_string(),
            "dry_run": dry_run,
            "schedule": plan.schedule,
            "decisions": plan.decisions,
            "actions": plan.actions,
        });
        println!("{line}");
        return;
    }
    let time = now.strftime("%H:%M:%S");
    if dry_run {
        for d in &plan.decisions {
            println!("{time} [dry-run] {d}");
        }
        for a in &plan.actions {
            println!("{time} [dry-run] would: {a}");
        }
    } else {
        for a in &plan.actions {
            println!("{time} {a}");
        }
        // One status line per worker pool whose inputs changed is enough to watch progress.
        for d in plan.decisions.iter().filter(|d| d.kind == "workers") {
            println!("{time} {d}");
        }
    }
}

async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    let Some(handle) = herd_server::telemetry::init_metrics() else {
        bail!("a metrics recorder is already installed");
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-addr {addr}"))?;
    tracing::info!(%addr, "metrics at /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { h.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
