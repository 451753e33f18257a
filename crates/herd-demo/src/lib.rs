//! `herd demo` as a library: generates N per-customer classifiers as real ONNX files, serves
//! them through the one serving path (`herd_server::serving::Server`, the same assembly as
//! `herd serve --repo`), drives a zipf workload over HTTP, checks every answer against a
//! reference computed in Rust, and reports. The CLI only parses flags and prints.
//!
//! Owns: the demo's model generation, budget sizing, workload and trace recording.
//! Must not depend on: the CLI, terminal output (progress goes through callbacks).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_api::units::SizeSpec;
use herd_core::{CacheStats, CoreError, EvictionPolicy};
use herd_onnx::LinearClassifier;
use herd_server::serving::{ServeError, ServeSettings, Server};
use rand::{Rng, SeedableRng};

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("a workload task failed: {0}")]
    Task(String),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> DemoError {
    move |error| DemoError::Io { context, error }
}

/// The workload.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    pub models: usize,
    pub dim: usize,
    pub classes: usize,
    pub requests: usize,
    pub concurrency: usize,
    pub zipf: f64,
    pub seed: u64,
}

impl DemoSpec {
    pub fn check(&self) -> Result<(), DemoError> {
        if self.models == 0 || self.requests == 0 || self.concurrency == 0 {
            return Err(DemoError::Invalid(
                "--models, --requests and --concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A progress tick (one model written, one request answered).
pub type Tick<'a> = &'a (dyn Fn() + Send + Sync);

pub fn model_name(i: usize) -> String {
    format!("customer-{i:05}")
}

/// Writes `<dir>/customer-NNNNN/1/model.onnx` for every model (files already right are kept).
pub fn generate(dir: &Path, spec: &DemoSpec, tick: Tick<'_>) -> Result<(), DemoError> {
    for i in 0..spec.models {
        let d = dir.join(model_name(i)).join("1");
        let f = d.join("model.onnx");
        let bytes =
            LinearClassifier::random(spec.dim, spec.classes, i as u64).to_onnx(&model_name(i));
        if std::fs::read(&f).map(|b| b == bytes).unwrap_or(false) {
            tick();
            continue;
        }
        std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        std::fs::write(&f, bytes).map_err(io(format!("writing {}", f.display())))?;
        tick();
    }
    Ok(())
}

/// The settings the demo serves with: `herd serve`'s (defaults and `HERD_*` environment) on
/// the generated repository, loopback port 0, no auth, no channel, one inference thread.
pub fn settings(dir: &Path, budget: u64, policy: EvictionPolicy) -> ServeSettings {
    let mut s = ServeSettings::defaults();
    s.server.repo = dir.to_path_buf();
    s.server.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.server.memory_budget = SizeSpec::Bytes(budget);
    s.server.eviction = policy;
    s.server.tokens = None;
    s.server.threads = 1;
    s.registry.channel = None;
    s
}

/// One model's charge, measured by a server with an unbounded budget: the first load also pays
/// the runtime's one-time setup, so the second model's charge is the one reported.
pub async fn per_model_charge(dir: &Path, ort_lib: &Path, models: usize) -> Result<u64, DemoError> {
    let s = settings(dir, u64::MAX / 4, EvictionPolicy::Gdsf);
    let server = Server::build(&s, ort_lib).await?;
    server.core.load_model(&model_name(0)).await?;
    let first = server.core.stats().used_bytes;
    server.core.load_model(&model_name(1 % models)).await?;
    Ok(server.core.stats().used_bytes.saturating_sub(first).max(1))
}

/// A budget for about `share` of `models`, plus one model of headroom for the reservation a
/// load makes first.
pub fn budget_for(per_model: u64, models: usize, share: f64) -> Result<u64, DemoError> {
    if !(share > 0.0 && share <= 1.0) {
        return Err(DemoError::Invalid(
            "--budget-share must be in (0, 1]".into(),
        ));
    }
    Ok((((models as f64 * share).ceil() as u64).max(1) + 1) * per_model)
}

/// What one workload run saw.
pub struct Report {
    /// (seconds since the workload started, model) of every request, in the order sent.
    pub sent: Vec<(f64, usize)>,
    pub ok: usize,
    pub failed: usize,
    pub wrong: usize,
    pub retries: usize,
    pub wall: Duration,
    /// Sorted ascending.
    pub latencies_ms: Vec<f64>,
    /// A few failed requests, for the reader.
    pub errors: Vec<String>,
}

impl Report {
    /// The latency at quantile `q` in ms.
    pub fn p(&self, q: f64) -> f64 {
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

/// Sends the zipf workload to the server at `addr`, checking every answer.
pub async fn drive(
    spec: &DemoSpec,
    addr: SocketAddr,
    tick: Arc<dyn Fn() + Send + Sync>,
) -> Result<Report, DemoError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let zipf = Arc::new(Zipf::new(spec.models, spec.zipf, &mut rng));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.concurrency)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..spec.concurrency {
        let (client, next, zipf, tick) = (client.clone(), next.clone(), zipf.clone(), tick.clone());
        let (dim, classes, total, seed) = (spec.dim, spec.classes, spec.requests, spec.seed);
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
                tick();
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
        errors: Vec::new(),
    };
    for t in futures::future::join_all(tasks).await {
        let (ok, failed, wrong, retries, lat, errors, sent) =
            t.map_err(|e| DemoError::Task(e.to_string()))?;
        report.sent.extend(sent);
        report.retries += retries;
        report.errors.extend(errors.into_iter().take(3));
        report.ok += ok;
        report.failed += failed;
        report.wrong += wrong;
        report.latencies_ms.extend(lat);
    }
    report.wall = started.elapsed();
    report.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    report.sent.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(report)
}

/// Writes the trace and the counters of one run (`--record DIR`): `trace-<policy>.csv` and
/// `result.json`, so `herd plan` can replay the same trace.
pub fn record(
    dir: &Path,
    policy: EvictionPolicy,
    budget: u64,
    per_model: u64,
    s: &CacheStats,
    report: &Report,
    charges: &[(String, u64)],
) -> Result<(), DemoError> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let name = format!("{policy:?}").to_ascii_lowercase();
    let mut csv = String::from("timestamp,model\n");
    for (t, m) in &report.sent {
        let _ = writeln!(csv, "{t:.6},{}", model_name(*m));
    }
    let f = dir.join(format!("trace-{name}.csv"));
    std::fs::write(&f, csv).map_err(io(format!("writing {}", f.display())))?;
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
    let bytes = serde_json::to_vec_pretty(&all).unwrap_or_default();
    std::fs::write(&f, bytes).map_err(io(format!("writing {}", f.display())))?;
    Ok(())
}

/// The charges of the loaded models at the end of a run (for `record`).
pub fn charges(server: &Server) -> Result<Vec<(String, u64)>, DemoError> {
    Ok(server
        .core
        .index()?
        .into_iter()
        .filter(|e| e.charge > 0)
        .map(|e| (e.name, e.charge))
        .collect())
}

/// Default repository of the generated models.
pub fn default_dir() -> PathBuf {
    PathBuf::from(".herd/demo-models")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_covers_the_models() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let z = Zipf::new(100, 1.1, &mut rng);
        let mut counts = vec![0usize; 100];
        for _ in 0..20_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        let top = counts[z.order[0]];
        let last = counts[z.order[99]];
        assert!(top > 20 * last.max(1), "top {top} last {last}");
    }

    #[test]
    fn budget_share_is_checked() {
        assert!(budget_for(10, 100, 0.0).is_err());
        assert_eq!(budget_for(10, 100, 0.1).unwrap(), 110);
    }
}
