//! Acceptance: model-aware routing with a real HAProxy in front of three real `herd serve`
//! processes (the herd binary, the real ONNX Runtime, loopback only).
//!
//! A zipf workload over at least 600 generated classifiers, with a per-replica memory budget for
//! about a sixth of them, runs three ways with the same seed:
//! 1. HAProxy hashing on the model (`herd router haproxy-config`, consistent hash, bounded load):
//!    each model must be served by one replica (a hot one by at most two, when bounded load
//!    spills it), and the aggregate hit ratio must be close to (2) — at least that of one server
//!    with three times the budget minus 0.05;
//! 2. one `herd serve` with three times the budget (the ideal the three replicas should match);
//! 3. HAProxy round robin over three fresh replicas (the plain Service case), measured beside.
//!
//! Then, model-aware again over fresh replicas: replica 2 is stopped with SIGTERM and restarted,
//! replica 3 is killed with SIGKILL and restarted, both while clients keep sending. No request
//! may fail (HAProxy retries on another server while the ring heals), every answer is checked
//! against a reference computed here.
//!
//! Sizes: 600 models and a few thousand requests by default (debug build, CI). For the numbers in
//! BENCHMARKS.md: `bash bench/routing.sh` (release build, more requests); the sizes can be set
//! with HERD_ROUTING_MODELS, HERD_ROUTING_REQUESTS, HERD_ROUTING_CONCURRENCY.
//! Needs `haproxy` and the ONNX Runtime library: under CI=true a missing one fails the test,
//! elsewhere it prints SKIPPED.
//!
//! Run: `cargo test -p herd --test routing -- --nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_onnx::LinearClassifier;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

mod support;
use support::{free_port, require, runs, HERD};
const DIM: usize = 16;
const CLASSES: usize = 4;
const ZIPF_S: f64 = 1.1;
const SEED: u64 = 11;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn model(i: usize) -> String {
    format!("customer-{i:05}")
}

fn classifier(i: usize) -> LinearClassifier {
    LinearClassifier::random(DIM, CLASSES, i as u64)
}

fn generate(dir: &Path, n: usize) {
    for i in 0..n {
        let d = dir.join(model(i)).join("1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.onnx"), classifier(i).to_onnx(&model(i))).unwrap();
    }
}

/// One `herd serve` child; killed on drop.
struct Serve {
    child: Option<Child>,
    port: u16,
    repo: PathBuf,
    budget: u64,
    log: PathBuf,
}

impl Serve {
    fn start(repo: &Path, budget: u64, port: u16, log: PathBuf) -> Serve {
        let mut s = Serve {
            child: None,
            port,
            repo: repo.to_path_buf(),
            budget,
            log,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(HERD)
            .args(["serve", "--repo"])
            .arg(&self.repo)
            .args([
                "--addr",
                &format!("127.0.0.1:{}", self.port),
                "--memory-budget",
                &self.budget.to_string(),
                "--threads",
                "1",
                "--load-concurrency",
                "1",
            ])
            .env("HERD_NO_AUTO_INSTALL", "true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        for _ in 0..600 {
            if let Ok(r) = client
                .get(format!("{}/v2/health/ready", self.url()))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "herd serve on port {} did not become ready; log:\n{}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn stop(&mut self, signal: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Haproxy {
    child: Child,
    port: u16,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders the config with the real CLI (`herd router haproxy-config`), checks it with
/// `haproxy -c`, starts HAProxy in the foreground and waits until every replica is up.
async fn start_haproxy(dir: &Path, balance: &str, replicas: &[&Serve]) -> Haproxy {
    let port = free_port();
    let mut args = vec![
        "router".to_string(),
        "haproxy-config".into(),
        "--bind".into(),
        format!("127.0.0.1:{port}"),
        "--balance".into(),
        balance.into(),
        "--check-interval-ms".into(),
        "500".into(),
    ];
    if let Ok(f) = std::env::var("HERD_ROUTING_BALANCE_FACTOR") {
        args.push("--hash-balance-factor".into());
        args.push(f);
    }
    for r in replicas {
        args.push("--backend".into());
        args.push(format!("127.0.0.1:{}", r.port));
    }
    let out = Command::new(HERD).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "herd router haproxy-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.join(format!("haproxy-{balance}-{port}.cfg"));
    std::fs::write(&cfg, &out.stdout).unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c refused the rendered config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let h = Haproxy { child, port };
    // Every replica up in HAProxy's view: round-robin health requests reach each of them.
    let client = reqwest::Client::new();
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/v2/health/ready"))
            .send()
            .await
        {
            if let Some(s) = r.headers().get("x-herd-replica") {
                seen.insert(s.to_str().unwrap().to_string());
            }
        }
        if seen.len() == replicas.len() {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("haproxy did not see all replicas up: {seen:?}");
}

/// Zipf(s) over ranks, mapped onto a shuffled order of the models (as `herd demo` does).
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

#[derive(Default)]
struct Outcome {
    ok: usize,
    failed: usize,
    wrong: usize,
    errors: Vec<String>,
    /// model -> replicas (x-herd-replica) that answered it
    placement: BTreeMap<usize, BTreeSet<String>>,
    by_replica: BTreeMap<String, usize>,
    wall: Duration,
}

/// Sends requests until `total` were sent or `stop` is set (when `total` is 0).
async fn drive(
    url: &str,
    models: usize,
    total: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> Outcome {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let zipf = Arc::new(Zipf::new(models, ZIPF_S, &mut rng));
    let weights: Arc<Vec<LinearClassifier>> = Arc::new((0..models).map(classifier).collect());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let out = Arc::new(Mutex::new(Outcome::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, zipf, weights, out, stop, sent) = (
            client.clone(),
            zipf.clone(),
            weights.clone(),
            out.clone(),
            stop.clone(),
            sent.clone(),
        );
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(SEED * 1000 + w as u64);
            loop {
                if total > 0 {
                    if sent.fetch_add(1, Ordering::Relaxed) >= total {
                        break;
                    }
                } else {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                let m = zipf.sample(&mut rng);
                let x: Vec<f32> = (0..DIM).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let body = serde_json::json!({
                    "inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32", "data": x}],
                    "outputs": [{"name": "label"}]
                });
                let r = client
                    .post(format!("{url}/v2/models/{}/infer", model(m)))
                    .json(&body)
                    .send()
                    .await;
                let (want, _) = weights[m].predict(&x);
                let mut o = match r {
                    Ok(resp) if resp.status().is_success() => {
                        let replica = resp
                            .headers()
                            .get("x-herd-replica")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("direct")
                            .to_string();
                        let v: serde_json::Value = match resp.json().await {
                            Ok(v) => v,
                            Err(e) => {
                                let mut o = out.lock();
                                o.failed += 1;
                                o.errors.push(format!("{}: body: {e}", model(m)));
                                continue;
                            }
                        };
                        let mut o = out.lock();
                        if v["outputs"][0]["data"][0].as_i64() == want.first().copied() {
                            o.ok += 1;
                        } else {
                            o.wrong += 1;
                        }
                        o.placement.entry(m).or_default().insert(replica.clone());
                        *o.by_replica.entry(replica).or_insert(0) += 1;
                        continue;
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        let mut o = out.lock();
                        o.errors.push(format!("{}: {status} {text}", model(m)));
                        o
                    }
                    Err(e) => {
                        let mut o = out.lock();
                        o.errors.push(format!("{}: {e}", model(m)));
                        o
                    }
                };
                o.failed += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut o = std::mem::take(&mut *out.lock());
    o.wall = started.elapsed();
    o
}

/// A counter or gauge from a Prometheus text page (sum over label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let k = k.split('{').next()?;
            (k == name).then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[derive(Debug, Clone, Copy, Default)]
struct CacheNumbers {
    hits: f64,
    misses: f64,
    loads: f64,
    evictions: f64,
}

impl CacheNumbers {
    fn hit_ratio(&self) -> f64 {
        self.hits / (self.hits + self.misses).max(1.0)
    }
}

async fn cache_numbers(client: &reqwest::Client, servers: &[&Serve]) -> CacheNumbers {
    let mut n = CacheNumbers::default();
    for s in servers {
        let text = client
            .get(format!("{}/metrics", s.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        n.hits += metric(&text, "herd_cache_hits_total");
        n.misses += metric(&text, "herd_cache_misses_total");
        n.loads += metric(&text, "herd_model_loads_total");
        n.evictions += metric(&text, "herd_cache_evictions_total");
    }
    n
}

/// Bytes one loaded model is charged, measured on a throwaway server with a large budget.
async fn per_model_charge(repo: &Path, dir: &Path, client: &reqwest::Client) -> u64 {
    let s = Serve::start(repo, 1 << 30, free_port(), dir.join("probe.log"));
    s.wait_ready(client).await;
    let mut used = Vec::new();
    for i in 0..3 {
        let body = serde_json::json!({
            "inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32", "data": vec![0.5f32; DIM]}]
        });
        let r = client
            .post(format!("{}/v2/models/{}/infer", s.url(), model(i)))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "probe infer: {}", r.status());
        let text = client
            .get(format!("{}/metrics", s.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        used.push(metric(&text, "herd_cache_memory_used_bytes") as u64);
    }
    // The first load may include one-time costs; the next ones show one model.
    ((used[2] - used[0]) / 2).max(1)
}

fn print_row(name: &str, o: &Outcome, c: &CacheNumbers) {
    println!(
        "{name:<34} hit ratio {:.3}  loads {:>6}  evictions {:>6}  {:>7.0} req/s  ({} ok, {} failed, {} wrong, {:.1} s)",
        c.hit_ratio(),
        c.loads,
        c.evictions,
        o.ok as f64 / o.wall.as_secs_f64().max(1e-9),
        o.ok,
        o.failed,
        o.wrong,
        o.wall.as_secs_f64()
    );
}

fn assert_clean(phase: &str, o: &Outcome) {
    assert!(
        o.failed == 0 && o.wrong == 0,
        "{phase}: {} failed, {} wrong; first errors: {:?}",
        o.failed,
        o.wrong,
        &o.errors[..o.errors.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_aware_routing_gives_three_times_the_cache_and_survives_a_restart() {
    if !require(
        "haproxy (apt-get install haproxy)",
        runs("haproxy", &["-v"]),
    ) || !require(
        "the ONNX Runtime library (herd runtime install)",
        runs(HERD, &["runtime", "path"]),
    ) {
        return;
    }
    let models = env_usize("HERD_ROUTING_MODELS", 600);
    let requests = env_usize("HERD_ROUTING_REQUESTS", 3000);
    let concurrency = env_usize("HERD_ROUTING_CONCURRENCY", 6);
    assert!(models >= 600, "the acceptance is about at least 600 models");
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models");
    generate(&repo, models);
    let client = reqwest::Client::new();
    let per_model = per_model_charge(&repo, tmp.path(), &client).await;
    // A sixth of the models per replica, plus one model of headroom for a load's reservation.
    let per_replica = models / 6;
    let budget = (per_replica as u64 + 1) * per_model;
    println!(
        "{models} models, {requests} requests, {concurrency} clients, zipf s={ZIPF_S}; one model is charged {per_model} B; \
         replica budget {budget} B (~{per_replica} models), one big server {} B",
        3 * budget
    );
    let three = |tag: &str| -> Vec<Serve> {
        (1..=3)
            .map(|i| {
                Serve::start(
                    &repo,
                    budget,
                    free_port(),
                    tmp.path().join(format!("{tag}-{i}.log")),
                )
            })
            .collect()
    };
    let none = || {
        (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        )
    };

    // 1. Model-aware.
    let (aware, aware_cache) = {
        let servers = three("aware");
        for s in &servers {
            s.wait_ready(&client).await;
        }
        let refs: Vec<&Serve> = servers.iter().collect();
        let h = start_haproxy(tmp.path(), "model", &refs).await;
        let (stop, sent) = none();
        let o = drive(
            &format!("http://127.0.0.1:{}", h.port),
            models,
            requests,
            concurrency,
            stop,
            sent,
        )
        .await;
        let c = cache_numbers(&client, &refs).await;
        (o, c)
    };
    // 2. One server with three times the budget, no proxy.
    let (big, big_cache) = {
        let s = Serve::start(&repo, 3 * budget, free_port(), tmp.path().join("big.log"));
        s.wait_ready(&client).await;
        let (stop, sent) = none();
        let o = drive(&s.url(), models, requests, concurrency, stop, sent).await;
        let c = cache_numbers(&client, &[&s]).await;
        (o, c)
    };
    // 3. Round robin over three fresh replicas.
    let (rr, rr_cache) = {
        let servers = three("rr");
        for s in &servers {
            s.wait_ready(&client).await;
        }
        let refs: Vec<&Serve> = servers.iter().collect();
        let h = start_haproxy(tmp.path(), "round-robin", &refs).await;
        let (stop, sent) = none();
        let o = drive(
            &format!("http://127.0.0.1:{}", h.port),
            models,
            requests,
            concurrency,
            stop,
            sent,
        )
        .await;
        let c = cache_numbers(&client, &refs).await;
        (o, c)
    };

    println!("\nsame workload, 3 replicas x budget B unless said:");
    print_row("model-aware (hash on model)", &aware, &aware_cache);
    print_row("one server, budget 3B (no proxy)", &big, &big_cache);
    print_row("round robin", &rr, &rr_cache);
    let on_one = aware.placement.values().filter(|r| r.len() == 1).count();
    let on_two = aware.placement.values().filter(|r| r.len() == 2).count();
    let on_more = aware.placement.values().filter(|r| r.len() > 2).count();
    let rr_on_three = rr.placement.values().filter(|r| r.len() == 3).count();
    println!(
        "model-aware placement: {} models requested; on 1 replica {on_one}, on 2 {on_two}, on 3 {on_more}; requests per replica {:?}",
        aware.placement.len(),
        aware.by_replica
    );
    println!(
        "round-robin placement: on all 3 replicas {rr_on_three} of {}; requests per replica {:?}",
        rr.placement.len(),
        rr.by_replica
    );
    assert_clean("model-aware", &aware);
    assert_clean("one big server", &big);
    assert_clean("round robin", &rr);
    // Each model on one replica, a hot one on at most two; the spill of bounded load is rare.
    assert_eq!(on_more, 0, "a model was served by all three replicas");
    assert!(
        on_two * 10 <= aware.placement.len(),
        "{on_two} of {} models were served by two replicas",
        aware.placement.len()
    );
    // All three replicas take part.
    assert_eq!(aware.by_replica.len(), 3, "{:?}", aware.by_replica);
    // Close to one server with 3x the budget, and better than round robin.
    assert!(
        aware_cache.hit_ratio() >= big_cache.hit_ratio() - 0.05,
        "model-aware hit ratio {:.3} is not close to one server with 3x the budget ({:.3})",
        aware_cache.hit_ratio(),
        big_cache.hit_ratio()
    );
    assert!(
        aware_cache.hit_ratio() > rr_cache.hit_ratio(),
        "model-aware {:.3} vs round robin {:.3}",
        aware_cache.hit_ratio(),
        rr_cache.hit_ratio()
    );
    assert!(aware_cache.loads < rr_cache.loads);

    // 4. A replica stopped and restarted while clients send: no failed request.
    let mut servers = three("restart");
    for s in &servers {
        s.wait_ready(&client).await;
    }
    let h = {
        let refs: Vec<&Serve> = servers.iter().collect();
        start_haproxy(tmp.path(), "model", &refs).await
    };
    let (stop, sent) = none();
    let driver = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let url = format!("http://127.0.0.1:{}", h.port);
        tokio::spawn(async move { drive(&url, models, 0, concurrency, stop, sent).await })
    };
    let wait_sent = |n: usize| {
        let sent = sent.clone();
        async move {
            let target = sent.load(Ordering::Relaxed) + n;
            while sent.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_sent(300).await;
    for (idx, signal) in [(1usize, "-TERM"), (2usize, "-KILL")] {
        servers[idx].stop(signal);
        println!("replica {} stopped ({signal})", idx + 1);
        // Traffic goes on while it is down (HAProxy notices by failed connections, then checks).
        wait_sent(300).await;
        servers[idx].spawn();
        servers[idx].wait_ready(&client).await;
        println!("replica {} restarted", idx + 1);
        // And until HAProxy sends to it again (rise 2 checks) plus some traffic.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        wait_sent(300).await;
    }
    stop.store(true, Ordering::Relaxed);
    let o = driver.await.unwrap();
    println!(
        "stop/restart run: {} ok, {} failed, {} wrong over {:.1} s; requests per replica {:?}",
        o.ok,
        o.failed,
        o.wrong,
        o.wall.as_secs_f64(),
        o.by_replica
    );
    assert_clean("stop and restart", &o);
    assert!(
        o.ok >= 1500,
        "the run was too short to mean anything: {}",
        o.ok
    );
    drop(h);
}
