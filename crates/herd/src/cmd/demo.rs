//! `herd demo`: parses the flags, calls `herd_demo` (which serves through the one serving path,
//! `herd_server::serving::Server`) and prints the report.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, ValueEnum};
use herd_api::units::human_bytes;
use herd_core::{CacheStats, EvictionPolicy};
use herd_demo::{DemoSpec, Report};
use herd_server::serving::Server;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum PolicyChoice {
    Gdsf,
    Lru,
    /// Run the same workload with both and compare.
    Both,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Number of per-customer models to generate.
    #[arg(long, default_value_t = 1000)]
    pub models: usize,
    /// Input features of each classifier.
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Classes of each classifier.
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
    /// Requests to send.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Zipf exponent of the traffic over models (higher = more skewed).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Share of the models the memory budget should hold.
    #[arg(long, default_value_t = 0.1)]
    pub budget_share: f64,
    /// Eviction policy to run with.
    #[arg(long, value_enum, default_value = "gdsf")]
    pub policy: PolicyChoice,
    /// Where to write the generated repository (default: .herd/demo-models).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seed of the workload.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Path to libonnxruntime (else found or installed automatically).
    #[arg(long, env = "HERD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Write what ran to this directory: `trace-<policy>.csv` (seconds since start, model; in
    /// the order sent) and `result.json` (budget and the cache's counters), so `herd plan` can
    /// replay the same trace and its prediction can be checked against what was measured.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let spec = DemoSpec {
        models: args.models,
        dim: args.dim,
        classes: args.classes,
        requests: args.requests,
        concurrency: args.concurrency,
        zipf: args.zipf,
        seed: args.seed,
    };
    spec.check()?;
    herd_demo::budget_for(1, 1, args.budget_share)?;
    let lib = super::runtime::ensure(args.ort_lib.as_deref(), true)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(demo(args, spec, lib))
}

fn bar(len: usize, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

async fn demo(args: DemoArgs, spec: DemoSpec, lib: PathBuf) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(herd_demo::default_dir);
    let pb = bar(
        spec.models,
        "generating models {bar:40} {pos}/{len} {elapsed}",
    );
    let tick = pb.clone();
    herd_demo::generate(&dir, &spec, &move || tick.inc(1))?;
    pb.finish();

    // Measure one model's charge to size the budget at about `budget_share` of the models.
    let per_model = herd_demo::per_model_charge(&dir, &lib, spec.models).await?;
    let budget = herd_demo::budget_for(per_model, spec.models, args.budget_share)?;
    println!(
        "one model is charged {} (measured); budget {} holds about {} of {} models",
        human_bytes(per_model),
        human_bytes(budget),
        budget / per_model,
        spec.models
    );

    let policies: Vec<EvictionPolicy> = match args.policy {
        PolicyChoice::Gdsf => vec![EvictionPolicy::Gdsf],
        PolicyChoice::Lru => vec![EvictionPolicy::Lru],
        PolicyChoice::Both => vec![EvictionPolicy::Gdsf, EvictionPolicy::Lru],
    };
    let mut summaries = Vec::new();
    for policy in policies {
        // The same assembly as `herd serve --repo DIR`, one server per policy.
        let settings = herd_demo::settings(&dir, budget, policy);
        let (addr, server) = Server::start(&settings, &lib, settings.server.addr).await?;
        println!(
            "\nserving {} models on http://{addr} with policy {policy:?}",
            spec.models
        );
        let pb = bar(
            spec.requests,
            "zipf workload {bar:40} {pos}/{len} {per_sec} {elapsed}",
        );
        let tick = pb.clone();
        let report = herd_demo::drive(&spec, addr, Arc::new(move || tick.inc(1))).await?;
        pb.finish();
        for e in &report.errors {
            eprintln!("failed request: {e}");
        }
        let s = server.core.stats();
        if let Some(rec) = &args.record {
            let charges = herd_demo::charges(&server)?;
            herd_demo::record(rec, policy, budget, per_model, &s, &report, &charges)?;
        }
        drop(server);
        print_report(&s, &report);
        summaries.push((policy, s, report));
        if report_failed(&summaries) {
            break;
        }
    }
    if summaries.len() == 2 {
        let (a, b) = (&summaries[0].1, &summaries[1].1);
        println!(
            "\nGDSF vs LRU: loads {} vs {} ({:.2}x), load time {:.2} s vs {:.2} s",
            a.loads,
            b.loads,
            b.loads as f64 / a.loads.max(1) as f64,
            a.load_seconds_total,
            b.load_seconds_total
        );
    }
    if report_failed(&summaries) {
        bail!("some requests failed or answered wrongly (see above)");
    }
    Ok(())
}

fn print_report(s: &CacheStats, report: &Report) {
    let hit_ratio = s.hits as f64 / (s.hits + s.misses).max(1) as f64;
    println!(
        "requests        {} ok, {} failed, {} wrong answers ({} retries after 429/503)",
        report.ok, report.failed, report.wrong, report.retries
    );
    println!(
        "throughput      {:.0} req/s over {:.1} s",
        report.ok as f64 / report.wall.as_secs_f64(),
        report.wall.as_secs_f64()
    );
    println!(
        "latency         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.p(0.50),
        report.p(0.99),
        report.p(1.0)
    );
    println!(
        "cache           hit ratio {:.3}, {} loads ({:.2} s loading in all), {} evictions",
        hit_ratio, s.loads, s.load_seconds_total, s.evictions
    );
    println!(
        "memory          peak charged {} of budget {} ({:.1}%), loaded now {}",
        human_bytes(s.peak_used_bytes),
        human_bytes(s.budget_bytes),
        100.0 * s.peak_used_bytes as f64 / s.budget_bytes.max(1) as f64,
        s.loaded_models
    );
    if let Some(rss) = herd_runtime::memory::peak_rss_bytes() {
        println!(
            "process         peak RSS {} (includes the runtime, the HTTP client and the demo itself)",
            human_bytes(rss)
        );
    }
}

fn report_failed(s: &[(EvictionPolicy, CacheStats, Report)]) -> bool {
    s.iter().any(|(_, _, r)| r.failed > 0 || r.wrong > 0)
}
