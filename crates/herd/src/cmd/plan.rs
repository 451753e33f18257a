//! `herd plan FILE`: machines and monthly cost for a fleet of models before buying, and a
//! cache simulation of the traffic (see `examples/plan/`). Parses and prints; the work is in
//! `herd-plan`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use herd_runtime::OrtBackend;

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
    /// Path to libonnxruntime, for plans that measure a directory repository.
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let (plan, base) = herd_plan::PlanFile::load(&args.file)?;
    let fleet = match herd_plan::static_models(&plan, &base)? {
        Some(f) => f,
        None => {
            let dir = herd_plan::directory_to_measure(&plan, &base).context("models.dir")?;
            let lib = super::runtime::ensure(args.ort_lib.as_deref(), true)?;
            let backend = Arc::new(OrtBackend::new(Some(&lib), 1)?);
            eprintln!(
                "measuring the models of {} (loading each once)",
                dir.display()
            );
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(herd_plan::models::measure_directory(&dir, backend))?
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
