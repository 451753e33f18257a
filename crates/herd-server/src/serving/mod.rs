//! The serving assembly: one [`ServeSettings`], one [`serve`] (and [`Server::start`] for tests,
//! the demo and benchmarks) that build the runtime backend, the model source (a `--repo`
//! directory or a registry `--channel`), the core, auth, metrics and the router, and that run the
//! channel watcher with its swap-and-retire policy. `herd serve` only parses its flags into
//! [`ServeSettings`] and calls [`serve`].
//!
//! Swap policy: the watcher only switches the source's served set (a new generation); the core
//! follows the generation itself (`Core::follow_source`, woken by the source's `changes()` and
//! checked on every request): versions that left the set leave the cache at once, loads in
//! progress finish for their waiters and leave then, and a version that requests still run on
//! stays charged until the last of them finishes (reference counted), then its charge and memory
//! go. After a switch the bundle cache is pruned of bundles nothing serves or holds.

pub mod export;
pub mod registry_source;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use herd_core::{Core, CoreError, DirectorySource, ModelSource};
use herd_registry::{Registry, RegistryError};
use herd_runtime::OrtBackend;
use serde::Serialize;

pub use export::{export_release, ExportReport};
pub use registry_source::RegistrySource;

use crate::auth::Auth;
use crate::{AppState, Settings};

/// Where `herd serve --channel` reads its release from.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RegistrySettings {
    /// Serve exactly the release of this registry channel (e.g. production) instead of --repo;
    /// a new promote or rollback is picked up and switched to without dropping requests.
    #[arg(long, env = "HERD_CHANNEL")]
    pub channel: Option<String>,
    /// Registry database to read the channel from (with --channel).
    #[arg(long, env = "HERD_REGISTRY", default_value = herd_registry::DEFAULT_REGISTRY_URL)]
    #[serde(serialize_with = "ser_redacted")]
    pub registry: String,
    /// Artifact store to fetch model bundles from (with --channel).
    #[arg(long, env = "HERD_ARTIFACTS", default_value = herd_registry::DEFAULT_ARTIFACTS_URL)]
    pub artifacts: String,
    /// Local disk cache for fetched bundles (verified by digest, reused across restarts):
    /// `<cache>/<model>/<digest>/model.onnx, config.toml, tokenizer.json, ...`.
    #[arg(
        long,
        env = "HERD_ARTIFACT_CACHE",
        default_value = ".herd/cache/artifacts"
    )]
    pub artifact_cache: PathBuf,
    /// How often to check the channel for a new release, in milliseconds.
    #[arg(long, env = "HERD_CHANNEL_POLL_MS", default_value_t = 1000)]
    pub channel_poll_ms: u64,
}

fn ser_redacted<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&herd_registry::db::redact_url(v))
}

/// Everything `herd serve` takes.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ServeSettings {
    #[command(flatten)]
    pub server: Settings,
    #[command(flatten)]
    pub registry: RegistrySettings,
}

impl ServeSettings {
    /// `herd serve`'s settings with no flags: the built-in defaults and the `HERD_*`
    /// environment (for the demo, benchmarks and tests, which then set what they need).
    pub fn defaults() -> ServeSettings {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            s: ServeSettings,
        }
        <Flags as clap::Parser>::try_parse_from(["herd"])
            .map(|f| f.s)
            .unwrap_or_else(|_| {
                // An invalid HERD_* value: fall back to the built-in defaults alone.
                let mut cmd = <Flags as clap::CommandFactory>::command();
                cmd = cmd.mut_args(|a| a.env(None::<&str>));
                let m = cmd.get_matches_from(["herd"]);
                <Flags as clap::FromArgMatches>::from_arg_matches(&m)
                    .map(|f| f.s)
                    .expect("built-in defaults parse")
            })
    }
}

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
}

/// A built server: state, core, router, and (with a channel) the source and its watcher.
pub struct Server {
    pub state: AppState,
    pub core: Arc<Core>,
    pub app: Router,
    pub channel: Option<Arc<RegistrySource>>,
    /// The jobs API, when `--jobs-queue-url` is given.
    pub jobs: Option<Arc<herd_jobs::api::JobsApi>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The listener of [`Server::start`] (stopped when the server is dropped).
    listener: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

impl Server {
    /// Builds everything from settings with the ONNX Runtime library at `ort_lib` (the CLI
    /// finds or installs it first). Starts the channel watcher, the pinned preloads and the
    /// warm-up loop. Must run inside a tokio runtime.
    pub async fn build(settings: &ServeSettings, ort_lib: &Path) -> Result<Server, ServeError> {
        let backend = OrtBackend::new(Some(ort_lib), settings.server.threads, settings.server.spin)
            .map_err(|e| ServeError::Runtime(e.to_string()))?;
        let channel = open_channel(&settings.registry).await?;
        let source: Arc<dyn ModelSource> =
            match &channel {
                Some(c) => c.clone(),
                None => Arc::new(DirectorySource::new(&settings.server.repo).map_err(|e| {
                    ServeError::Config(format!("opening the model repository: {e}"))
                })?),
            };
        let core = Core::new(settings.server.core_config(), source, Arc::new(backend));
        let auth = match &settings.server.tokens {
            Some(p) => Auth::from_file(p).map_err(ServeError::Config)?,
            None => Auth::open(),
        };
        let jobs = jobs_api(&settings.server).await?;
        let mut state = AppState::new(
            core.clone(),
            Arc::new(auth),
            crate::telemetry::init_metrics(),
        );
        if let Some(api) = &jobs {
            state = state.with_jobs_queue(api.queue().clone());
        }
        let max_body = settings.server.max_body_bytes();
        let mut app = crate::app(state.clone(), max_body);
        let mut watcher = None;
        if let Some(src) = &channel {
            app = app.nest(
                "/v1/registry",
                crate::registry_router(src.registry(), state.auth.clone())
                    .layer(axum::extract::DefaultBodyLimit::max(max_body)),
            );
            watcher = Some(watch(
                src,
                core.clone(),
                Duration::from_millis(settings.registry.channel_poll_ms.max(50)),
            ));
        }
        if let Some(api) = &jobs {
            app = app.merge(
                crate::jobs_router(state.service.clone(), api.clone())
                    .layer(axum::extract::DefaultBodyLimit::max(1 << 20)),
            );
        }
        // Ready (GET /v2/health/ready) once the pinned models are loaded.
        state.start();
        core.spawn_warmup_loop();
        core.spawn_follow_source();
        Ok(Server {
            state,
            core,
            app,
            channel,
            jobs,
            watcher,
            listener: None,
        })
    }

    /// Tells the parts that need it where the server listens (the jobs API's default
    /// inference URL for batch-infer workers).
    pub fn bound(&self, addr: SocketAddr) {
        if let Some(j) = &self.jobs {
            j.set_default_infer_url(format!("http://{addr}"));
        }
    }

    /// Builds and serves on `addr` in the background (port 0 picks one) with the settings'
    /// HTTP limits; returns the address. Dropping the server stops it. For tests, the demo and
    /// benchmarks.
    pub async fn start(
        settings: &ServeSettings,
        ort_lib: &Path,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, Server), ServeError> {
        let mut server = Server::build(settings, ort_lib).await?;
        let (bound, h) = crate::spawn_with(server.app.clone(), addr, settings.server.http_limits())
            .await
            .map_err(|e| ServeError::Io {
                context: format!("cannot listen on {addr}"),
                error: e,
            })?;
        server.listener = Some(h);
        server.bound(bound);
        Ok((bound, server))
    }
}

/// `herd serve`: builds the server and serves on `settings.server.addr` until ctrl-c/SIGTERM.
pub async fn serve(settings: ServeSettings, ort_lib: PathBuf) -> Result<(), ServeError> {
    tracing::info!(settings = %serde_json::to_string(&settings).unwrap_or_default(), "effective settings");
    let server = Server::build(&settings, &ort_lib).await?;
    tracing::info!(
        budget_bytes = server.core.config().memory_budget,
        library = %ort_lib.display(),
        "memory budget"
    );
    let addr = settings.server.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Io {
            context: format!("cannot listen on {addr}"),
            error: e,
        })?;
    if let Ok(a) = listener.local_addr() {
        server.bound(a);
    }
    crate::serve_bound(
        listener,
        server.app.clone(),
        settings.server.http_limits(),
        server.state.health.clone(),
        settings.server.drain_delay(),
    )
    .await
    .map_err(|e| ServeError::Io {
        context: format!("serving on {addr}"),
        error: e,
    })
}

/// Checks a bundle's `config.toml` with the serving core's own parser (the one a server opening
/// the channel uses), so a bad config is refused at push (400 / a CLI error) rather than when a
/// server switches to a release holding it.
pub fn config_check() -> herd_registry::ConfigCheck {
    Arc::new(|model: &str, text: &str| {
        herd_core::ModelConfig::parse(model, text)
            .map(|_| ())
            .map_err(|e| match e {
                CoreError::BadConfig { reason, .. } => reason,
                other => other.to_string(),
            })
    })
}

/// Opens a registry for pushing and serving: [`Registry::open`] with [`config_check`] installed.
pub async fn open_registry(
    registry_url: &str,
    artifacts_url: &str,
) -> Result<Registry, RegistryError> {
    Ok(Registry::open(registry_url, artifacts_url)
        .await?
        .with_config_check(config_check()))
}

/// The jobs API when `--jobs-queue-url` is given (its queue, the operator's templates).
async fn jobs_api(s: &Settings) -> Result<Option<Arc<herd_jobs::api::JobsApi>>, ServeError> {
    let j = &s.jobs;
    let Some(url) = &j.jobs_queue_url else {
        return Ok(None);
    };
    let queue = herd_jobs::connect(url)
        .await
        .map_err(|e| ServeError::Config(format!("jobs API: {e}")))?;
    let templates = match &j.job_templates {
        Some(p) => herd_jobs::api::Templates::from_file(p)
            .map_err(|e| ServeError::Config(e.to_string()))?,
        None => herd_jobs::api::Templates::default(),
    };
    // Default: this server's own address once bound (see `Server::bound`).
    let infer_url = j.jobs_infer_url.clone();
    tracing::info!(
        queue = %herd_jobs::redact_url(url),
        templates = templates.len(),
        data = ?j.jobs_data,
        infer_url = ?infer_url,
        "jobs API on at /v1/jobs"
    );
    Ok(Some(Arc::new(herd_jobs::api::JobsApi::new(
        queue,
        templates,
        herd_jobs::api::JobsApiConfig {
            infer_url,
            data_root: j.jobs_data.clone(),
            default_queue: j.jobs_default_queue.clone(),
            ..Default::default()
        },
    ))))
}

/// Opens the channel's source when `--channel` is given.
pub async fn open_channel(s: &RegistrySettings) -> Result<Option<Arc<RegistrySource>>, ServeError> {
    let Some(channel) = &s.channel else {
        return Ok(None);
    };
    let reg = open_registry(&s.registry, &s.artifacts)
        .await
        .map_err(|e| {
            ServeError::Config(format!(
                "cannot open the registry (--registry {}, --artifacts {}): {e}",
                herd_registry::db::redact_url(&s.registry),
                s.artifacts
            ))
        })?;
    let src = RegistrySource::open(Arc::new(reg), channel, s.artifact_cache.clone()).await?;
    Ok(Some(src))
}

/// Watches the channel (the core follows each switch itself, see the module docs) and prunes
/// the bundle cache of what neither any channel nor the core needs.
pub fn watch(
    src: &Arc<RegistrySource>,
    core: Arc<Core>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let me = src.clone();
    let grace = core.config().request_timeout;
    src.spawn_watch(
        every,
        grace,
        move || core.resident(),
        move || tracing::info!(release = %me.release().short_id, "now serving the new release"),
    )
}
