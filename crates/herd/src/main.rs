//! The `herd` command line. Each subcommand lives in `cmd/<area>.rs`; this file only dispatches.
//! `anyhow` lives here and nowhere else; `main` prints the whole error chain and exits non-zero.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod layered;

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Serve thousands of per-customer models, scale queued work, ship versioned releases.",
    long_about = "herd hosts thousands of per-customer ONNX models behind the KServe v2 protocol under a \
memory budget, runs queued jobs with an autoscaler, and keeps a registry of versioned releases.\n\n\
Settings are layered: built-in defaults < config file (--config or HERD_CONFIG) < HERD_* environment \
variables < flags.\n\nStart with `herd demo`."
)]
struct Cli {
    /// TOML config file; its keys are flag names (memory_budget = "2GiB", addr = "127.0.0.1:9000").
    #[arg(long, global = true, env = "HERD_CONFIG")]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant (`k8s manifests` flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the models of a repository over the KServe v2 HTTP protocol.
    Serve(cmd::serve::ServeArgs),
    /// Generate per-customer models, serve them under a small budget, drive a zipf workload, report.
    Demo(cmd::demo::DemoArgs),
    /// Manage the ONNX Runtime library herd loads (install, locate).
    #[command(subcommand)]
    Runtime(cmd::runtime::RuntimeCommand),
    /// Make bearer tokens for the tokens file.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// Registry: `herd model|alias|release|backup|gc`, flattened to the top level.
    #[command(flatten)]
    Registry(cmd::registry::RegistryCommand),
    /// Scale workers and serving replicas from queue depth and server load, by policy and schedule.
    Autoscale(cmd::scale::AutoscaleArgs),
    /// Kubernetes: render ready-to-apply manifests.
    #[command(subcommand)]
    K8s(cmd::scale::K8sCommand),
    /// Claim and run queued jobs (batch-infer, command); renews leases, exits when idle.
    Worker(cmd::jobs::WorkerArgs),
    /// Queued jobs: enqueue, list, show, requeue dead ones, purge old ones, stats.
    Job(cmd::jobs::JobArgs),
    /// Route across serving replicas: print an HAProxy configuration that hashes on the model.
    #[command(subcommand)]
    Router(cmd::router::RouterCommand),
    /// Plan before paying: machines and monthly cost one model per machine, shared, autoscaled;
    /// a cache simulation of the traffic under a range of budgets.
    Plan(cmd::plan::PlanArgs),
    // Subcommands are added here, one variant per area, each delegating to `cmd::<area>`.
}

fn main() -> ExitCode {
    if let Err(e) = layered::apply_config_file() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let _ = &cli.config;
    let result: anyhow::Result<()> = match cli.command {
        Command::Serve(a) => cmd::serve::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Runtime(c) => cmd::runtime::run(c),
        Command::Token(c) => cmd::token::run(c),
        Command::Registry(c) => cmd::registry::run(c),
        Command::Autoscale(a) => cmd::scale::run_autoscale(a),
        Command::K8s(c) => cmd::scale::run_k8s(c),
        Command::Worker(a) => cmd::jobs::run_worker(a),
        Command::Job(a) => cmd::jobs::run_job(a),
        Command::Router(c) => cmd::router::run(c),
        Command::Plan(a) => cmd::plan::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
