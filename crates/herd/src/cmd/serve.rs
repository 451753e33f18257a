//! `herd serve`: the KServe v2 server over a model repository.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use herd_core::{Core, DirectorySource, ModelSource};
use herd_runtime::OrtBackend;
use herd_server::{auth::Auth, telemetry, AppState, Settings};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub settings: Settings,

    /// Serve a registry channel (--channel) instead of the --repo directory.
    #[command(flatten)]
    pub registry: super::registry::ServeRegistryArgs,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "HERD_LOG_JSON")]
    pub log_json: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logs(args.log_json);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(serve(args.settings, args.registry))
}

/// Builds the server state from settings: runtime, source, core, auth, metrics.
/// `source` replaces the `--repo` directory when given (a registry channel).
pub async fn build(
    settings: &Settings,
    source: Option<Arc<dyn ModelSource>>,
) -> anyhow::Result<(AppState, Arc<Core>)> {
    let lib = super::runtime::ensure(settings.ort_lib.as_deref(), !settings.no_auto_install)?;
    let backend = OrtBackend::new(Some(&lib), settings.threads)?;
    let source: Arc<dyn ModelSource> = match source {
        Some(s) => s,
        None => {
            Arc::new(DirectorySource::new(&settings.repo).context("opening the model repository")?)
        }
    };
    let core = Core::new(settings.core_config(), source, Arc::new(backend));
    let auth = match &settings.tokens {
        Some(p) => Auth::from_file(p).map_err(anyhow::Error::msg)?,
        None => Auth::open(),
    };
    let state = AppState::new(core.clone(), Arc::new(auth), telemetry::init_metrics());
    Ok((state, core))
}

async fn serve(
    settings: Settings,
    registry: super::registry::ServeRegistryArgs,
) -> anyhow::Result<()> {
    tracing::info!(settings = %serde_json::to_string(&settings).unwrap_or_default(), "effective settings");
    let channel = registry.open_source().await?;
    let (state, core) = build(
        &settings,
        channel.clone().map(|s| s as Arc<dyn ModelSource>),
    )
    .await?;
    if let Some(src) = &channel {
        registry.watch(src, core.clone());
    }
    tracing::info!(
        budget_bytes = core.config().memory_budget,
        library = %herd_runtime::install::locate(settings.ort_lib.as_deref()).map(|p| p.display().to_string()).unwrap_or_default(),
        "memory budget"
    );
    // Ready (GET /v2/health/ready) once the pinned models are loaded.
    state.start();
    core.spawn_warmup_loop();
    let auth = state.auth.clone();
    let health = state.health.clone();
    let mut app = herd_server::app(state, settings.max_body_bytes());
    if let Some(src) = &channel {
        app = app.nest(
            "/v1/registry",
            herd_server::registry_router(src.registry(), auth).layer(
                axum::extract::DefaultBodyLimit::max(settings.max_body_bytes()),
            ),
        );
    }
    herd_server::serve_with(
        app,
        settings.addr,
        settings.http_limits(),
        health,
        settings.drain_delay(),
    )
    .await
    .with_context(|| format!("serving on {}", settings.addr))
}
