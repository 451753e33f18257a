//! `herd plan FILE`: machines and monthly cost for a fleet of models before buying, and a
//! cache simulation of the traffic (see `examples/plan/`). Parses and prints; the work is in
//! `herd-plan`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use herd_runtime::OrtBackend;
use herd_server::serving::{open_channel, RegistrySettings};

#[derive(Args)]
pub struct PlanArgs {
    /// The plan file (TOML): models, traffic, machines catalog, policy.
    pub file: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "OUT")]
    pub html: Option<PathBuf>,
    /// Path to libonnxruntime, for plans that measure a directory repository or a channel.
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Plan for the models of this registry channel's release (e.g. production) instead of the
    /// plan file's [models]: each is fetched and loaded once to measure its charge and load
    /// time, as `herd serve --channel` would serve it.
    #[arg(long)]
    pub channel: Option<String>,
    /// Registry database the channel is read from (with --channel or models.channel).
    #[arg(long, env = "HERD_REGISTRY", default_value = herd_registry::DEFAULT_REGISTRY_URL)]
    pub registry: String,
    /// Artifact store the channel's model bundles are fetched from.
    #[arg(long, env = "HERD_ARTIFACTS", default_value = herd_registry::DEFAULT_ARTIFACTS_URL)]
    pub artifacts: String,
    /// Local disk cache for fetched bundles (the one `herd serve` uses).
    #[arg(
        long,
        env = "HERD_ARTIFACT_CACHE",
        default_value = ".herd/cache/artifacts"
    )]
    pub artifact_cache: PathBuf,
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let (plan, base) = herd_plan::PlanFile::load_with_channel(&args.file, args.channel.clone())?;
    let fleet = match herd_plan::static_models(&plan, &base)? {
        Some(f) => f,
        None => {
            let lib = super::runtime::ensure(args.ort_lib.as_deref(), true)?;
            let backend = Arc::new(OrtBackend::new(Some(&lib), 1, false)?);
            let rt = tokio::runtime::Runtime::new()?;
            if let Some(channel) = herd_plan::channel_to_measure(&plan) {
                let settings = RegistrySettings {
                    channel: Some(channel.to_string()),
                    registry: args.registry.clone(),
                    artifacts: args.artifacts.clone(),
                    artifact_cache: args.artifact_cache.clone(),
                    channel_poll_ms: 1000,
                };
                let source = rt
                    .block_on(open_channel(&settings))?
                    .context("a channel to measure")?;
                let release = source.release().short_id;
                eprintln!(
                    "measuring the models of release {release} on channel {channel} (loading each once)"
                );
                let what = format!("release {release} on channel {channel}");
                rt.block_on(herd_plan::models::measure_source(source, backend, &what))?
            } else {
                let dir = herd_plan::directory_to_measure(&plan, &base).context("models.dir")?;
                eprintln!(
                    "measuring the models of {} (loading each once)",
                    dir.display()
                );
                rt.block_on(herd_plan::models::measure_directory(&dir, backend))?
            }
        }
    };
    let report = herd_plan::evaluate(&plan, &base, fleet)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", herd_plan::render_text(&report));
    }
    if let Some(out) = &args.html {
        std::fs::write(out, herd_plan::html::render(&report))
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
