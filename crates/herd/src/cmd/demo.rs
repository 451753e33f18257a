//! `herd demo`: the main job on a fresh clone. Generates N per-customer classifiers as real ONNX
//! files, serves them over HTTP under a budget that holds about a tenth of them, drives a zipf
//! workload, checks every answer against a reference computed in Rust, and reports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use herd_api::units::human_bytes;
use herd_core::{Core, CoreConfig, DirectorySource, EvictionPolicy, ModelSource};
use herd_onnx::LinearClassifier;
use herd_runtime::OrtBackend;
use herd_server::{auth::Auth, AppState};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

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
    if args.models == 0 || args.requests == 0 || args.concurrency == 0 {
        bail!("--models, --requests and --concurrency must be at least 1");
    }
    if !(args.budget_share > 0.0 && args.budget_share <= 1.0) {
        bail!("--budget-share must be in (0, 1]");
    }
    let lib = super::runtime::ensure(args.ort_lib.as_deref(), true)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(demo(args, lib))
}

async fn demo(args: DemoArgs, lib: PathBuf) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".herd/demo-models"));
    generate(&dir, &args)?;
    let backend = Arc::new(OrtBackend::new(Some(&lib), 1)?);
    let source: Arc<dyn ModelSource> = Arc::new(DirectorySource::new(&dir)?);

    // Measure one model's charge to size the budget at about `budget_share` of the models.
    let probe = Core::new(
        CoreConfig {
            memory_budget: u64::MAX / 4,
            ..CoreConfig::default()
        },
        source.clone(),
        backend.clone(),
    );
    // The first load also pays the runtime's one-time setup; the second shows one model's cost.
    probe.load_model(&model_name(0)).await?;
    let first = probe.stats().used_bytes;
    probe.load_model(&model_name(1 % args.models)).await?;
    let per_model = probe.stats().used_bytes.saturating_sub(first).max(1);
    drop(probe);
    // Room for the share, plus one model of headroom for the reservation a load makes first.
    let budget = (((args.models as f64 * args.budget_share).ceil() as u64).max(1) + 1) * per_model;
    println!(
        "one model is charged {} (measured); budget {} holds about {} of {} models",
        human_bytes(per_model),
        human_bytes(budget),
        budget / per_model,
        args.models
    );

    let policies: Vec<EvictionPolicy> = match args.policy {
        PolicyChoice::Gdsf => vec![EvictionPolicy::Gdsf],
        PolicyChoice::Lru => vec![EvictionPolicy::Lru],
        PolicyChoice::Both => vec![EvictionPolicy::Gdsf, EvictionPolicy::Lru],
    };
    let mut summaries = Vec::new();
    for policy in policies {
        let core = Core::new(
            CoreConfig {
                memory_budget: budget,
                policy,
                ..CoreConfig::default()
            },
            source.clone(),
            backend.clone(),
        );
        let state = AppState::new(
            core.clone(),
            Arc::new(Auth::open()),
            herd_server::telemetry::init_metrics(),
        );
        state.start();
        let app = herd_server::app(state, 16 << 20);
        let (addr, server) = herd_server::spawn(app, "127.0.0.1:0".parse()?).await?;
        println!(
            "\nserving {} models on http://{addr} with policy {policy:?}",
            args.models
        );
        let report = drive(&args, addr).await?;
        server.abort();
        let s = core.stats();
        if let Some(dir) = &args.record {
            let charges: Vec<(String, u64)> = core
                .index()?
                .into_iter()
                .filter(|e| e.charge > 0)
                .map(|e| (e.name, e.charge))
                .collect();
            record(dir, policy, budget, per_model, &s, &report, &charges)?;
        }
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
            println!("process         peak RSS {} (includes the runtime, the HTTP client and the demo itself)", human_bytes(rss));
        }
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

fn report_failed(s: &[(EvictionPolicy, herd_core::CacheStats, Report)]) -> bool {
    s.iter().any(|(_, _, r)| r.failed > 0 || r.wrong > 0)
}

fn model_name(i: usize) -> String {
    format!("customer-{i:05}")
}

fn generate(dir: &std::path::Path, args: &DemoArgs) -> anyhow::Result<()> {
    let pb = ProgressBar::new(args.models as u64);
    pb.set_style(
        ProgressStyle::with_template("generating models {bar:40} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for i in 0..args.models {
        let d = dir.join(model_name(i)).join("1");
        let f = d.join("model.onnx");
        let bytes =
            LinearClassifier::random(args.dim, args.classes, i as u64).to_onnx(&model_name(i));
        if std::fs::read(&f).map(|b| b == bytes).unwrap_or(false) {
            pb.inc(1);
            continue;
        }
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::write(&f, bytes).with_context(|| format!("writing {}", f.display()))?;
        pb.inc(1);
    }
    pb.finish();
    Ok(())
}

/// Writes the trace and the counters of one run (`--record`).
fn record(
    dir: &std::path::Path,
    policy: EvictionPolicy,
    budget: u64,
    per_model: u64,
    s: &herd_core::CacheStats,
    report: &Report,
    charges: &[(String, u64)],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = format!("{policy:?}").to_ascii_lowercase();
    let mut csv = String::from("timestamp,model\n");
    for (t, m) in &report.sent {
        let _ = writeln!(csv, "{t:.6},{}", model_name(*m));
    }
    let f = dir.join(format!("trace-{name}.csv"));
    std::fs::write(&f, csv).with_context(|| format!("writing {}", f.display()))?;
    let f = dir.join("result.json");
    let mut all: serde_json::Value = std::fs::read(&f)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    all["budget_bytes"] = budget.into();
    all["per_model_bytes"] = per_model.into();
    all[name.as_str()] = serde_json::json!({
        "hits": s.hits, "misses": s.misses, "loads": s.loads, "evictions": s.evictions,
        "load_seconds_total": s.load_seconds_total, "requests": report.sent.len(),
        "charges_at_end": charges.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    });
    std::fs::write(&f, serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("writing {}", f.display()))?;
    Ok(())
}

struct Report {
    /// (seconds since the workload started, model) of every request, in the order sent.
    sent: Vec<(f64, usize)>,
    ok: usize,
    failed: usize,
    wrong: usize,
    retries: usize,
    wall: Duration,
    latencies_ms: Vec<f64>,
}

impl Report {
    fn p(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_ms.len() - 1) as f64 * q).round() as usize;
        self.latencies_ms[i]
    }
}

/// Zipf(s) over ranks, mapped onto a shuffled order of the models.
struct Zipf {
    cdf: Vec<f64>,
    order: Vec<usize>,
}

impl Zipf {
    fn new(n: usize, s: f64, rng: &mut impl Rng) -> Zipf {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        Zipf { cdf, order }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.gen();
        let rank = self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1);
        self.order[rank]
    }
}

async fn drive(args: &DemoArgs, addr: SocketAddr) -> anyhow::Result<Report> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let zipf = Arc::new(Zipf::new(args.models, args.zipf, &mut rng));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let pb = ProgressBar::new(args.requests as u64);
    pb.set_style(
        ProgressStyle::with_template("zipf workload {bar:40} {pos}/{len} {per_sec} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let (client, next, zipf, pb) = (client.clone(), next.clone(), zipf.clone(), pb.clone());
        let (dim, classes, total, seed) = (args.dim, args.classes, args.requests, args.seed);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1000) + w as u64);
            let mut lat = Vec::new();
            let mut sent = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            let (mut ok, mut failed, mut wrong, mut retries) = (0usize, 0usize, 0usize, 0usize);
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let m = zipf.sample(&mut rng);
                let x: Vec<f32> = (0..dim).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let body = serde_json::json!({
                    "inputs": [{"name": "input", "shape": [1, dim], "datatype": "FP32", "data": x}],
                    "outputs": [{"name": "label"}]
                });
                let t = Instant::now();
                sent.push((started.elapsed().as_secs_f64(), m));
                // Like a well-behaved client: on 429/503, wait Retry-After and try again (3 times).
                let mut attempt = 0;
                let r = loop {
                    let r = client
                        .post(format!("http://{addr}/v2/models/{}/infer", model_name(m)))
                        .json(&body)
                        .send()
                        .await;
                    let retry_after = match &r {
                        Ok(resp) if attempt < 3 && matches!(resp.status().as_u16(), 429 | 503) => {
                            resp.headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok())
                        }
                        _ => None,
                    };
                    match retry_after {
                        Some(secs) => {
                            attempt += 1;
                            retries += 1;
                            tokio::time::sleep(Duration::from_secs(secs.min(5))).await;
                        }
                        None => break r,
                    }
                };
                let answer = match r {
                    Ok(resp) if resp.status().is_success() => {
                        resp.json::<serde_json::Value>().await.ok()
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        if errors.len() < 5 {
                            errors.push(format!("{}: {status} {text}", model_name(m)));
                        }
                        None
                    }
                    Err(e) => {
                        if errors.len() < 5 {
                            errors.push(format!("{}: {e}", model_name(m)));
                        }
                        None
                    }
                };
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                match answer {
                    None => failed += 1,
                    Some(v) => {
                        let got = v["outputs"][0]["data"][0].as_i64();
                        let (want, _) =
                            LinearClassifier::random(dim, classes, m as u64).predict(&x);
                        if got == want.first().copied() {
                            ok += 1;
                        } else {
                            wrong += 1;
                        }
                    }
                }
                pb.inc(1);
            }
            (ok, failed, wrong, retries, lat, errors, sent)
        }));
    }
    let mut report = Report {
        sent: Vec::new(),
        ok: 0,
        failed: 0,
        wrong: 0,
        retries: 0,
        wall: Duration::ZERO,
        latencies_ms: Vec::new(),
    };
    for t in futures::future::join_all(tasks).await {
        let (ok, failed, wrong, retries, lat, errors, sent) = t?;
        report.sent.extend(sent);
        report.retries += retries;
        for e in errors.iter().take(3) {
            eprintln!("failed request: {e}");
        }
        report.ok += ok;
        report.failed += failed;
        report.wrong += wrong;
        report.latencies_ms.extend(lat);
    }
    report.wall = started.elapsed();
    pb.finish();
    report.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    report.sent.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(report)
}
