//! The acceptance walk-through of the autoscaler on this machine: a real SQLite queue, the real
//! `herd` binary running `herd autoscale --backend local`, which starts real `herd worker`
//! processes. Jobs are enqueued; the autoscaler must take workers from 0 up to
//! ceil(waiting / jobs_per_worker) (capped at max), never stop a worker while jobs run, and come
//! back to 0 once the queue is empty, nothing runs and the cooldown has passed.
//!
//! It also prints two timings for BENCHMARKS.md (never asserted): enqueue -> first worker
//! holding a job, and last job done -> zero workers.
//!
//! Run: `cargo test -p herd --test autoscale_local -- --nocapture`

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herd_jobs::{CommandParams, JobKind, JobSpec};
use serde_json::Value;

mod support;
use support::{runtime_available, HERD};

fn worker_command_exists() -> bool {
    Command::new(HERD)
        .args(["worker", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

#[test]
fn local_backend_scales_workers_from_zero_up_and_back_to_zero() {
    if !worker_command_exists() {
        let msg = "`herd worker` is not available in this build";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}: the autoscaler walk-through needs it");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("herd-autoscale-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    walkthrough(&dir, &url, "sqlite");
}

/// The same walk-through on a real Redis queue (HERD_TEST_REDIS_URL, from scripts/test-services.sh).
#[test]
fn local_backend_scales_workers_on_a_redis_queue() {
    if !worker_command_exists() {
        let msg = "`herd worker` is not available in this build";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}: the autoscaler walk-through needs it");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let Ok(redis) = std::env::var("HERD_TEST_REDIS_URL") else {
        if std::env::var_os("CI").is_some() {
            panic!("HERD_TEST_REDIS_URL is not set; CI must run scripts/test-services.sh first");
        }
        eprintln!("SKIPPED: HERD_TEST_REDIS_URL is not set; run scripts/test-services.sh && source .herd/test-env");
        return;
    };
    let dir = std::env::temp_dir().join(format!("herd-autoscale-e2e-redis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A key prefix of its own, so nothing else in that Redis is touched or counted.
    let sep = if redis.contains('?') { '&' } else { '?' };
    let url = format!(
        "{redis}{sep}prefix=herd-autoscale-e2e-{}",
        std::process::id()
    );
    walkthrough(&dir, &url, "redis");
}

fn walkthrough(dir: &Path, url: &str, label: &str) {
    let dir = dir.to_path_buf();
    let url = url.to_string();
    let results = dir.join("results");
    let jobs = 40u64;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let queue = rt.block_on(herd_jobs::connect(&url)).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[defaults]\nqueue_url = \"{url}\"\n\n[[workers]]\nqueue = \"e2e\"\njobs_per_worker = 10\nmin = 0\nmax = 3\ncooldown = \"2s\"\nidle_exit = \"120s\"\n"
        ),
    )
    .unwrap();

    let mut child = Command::new(HERD)
        .args(["autoscale", "--policy"])
        .arg(&policy)
        .args(["--interval", "250ms", "--until-idle", "--json", "--log-dir"])
        .arg(dir.join("logs"))
        .current_dir(&dir)
        // The children inherit this: JSON logs with timestamps, read below for the timings.
        .env("HERD_LOG_JSON", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Safety net: kill the autoscaler if it has not finished in 3 minutes (then the test fails).
    let pid = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if !pid_alive(pid) {
                return false;
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        true
    });

    let stdout = child.stdout.take().unwrap();
    let mut ticks: Vec<(Instant, Value)> = Vec::new();
    let mut enqueued_at = None;
    let mut enqueued_wall = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if ticks.is_empty() {
                // The autoscaler is running and has seen an empty queue: now the work arrives.
                enqueued_at = Some(Instant::now());
                enqueued_wall = Some(herd_scale::jiff::Timestamp::now());
                rt.block_on(async {
                    for i in 0..jobs {
                        let mut spec = JobSpec::new(
                            "e2e",
                            JobKind::Command(CommandParams {
                                program: "sh".into(),
                                args: vec!["-c".into(), format!("sleep 0.2; echo job {i}")],
                                ..Default::default()
                            }),
                        );
                        spec.result_dir = results.display().to_string();
                        queue.enqueue(spec).await.unwrap();
                    }
                });
            }
            ticks.push((Instant::now(), v));
        }
    }
    let status = child.wait().unwrap();
    let killed = watchdog.join().unwrap();
    assert!(
        !killed,
        "autoscaler did not come back to zero within 3 minutes"
    );
    assert!(status.success(), "herd autoscale exited with {status}");

    // Every job ran, exactly once, and nothing is left.
    let stats = rt.block_on(queue.stats("e2e")).unwrap();
    assert_eq!(
        (stats.done, stats.waiting, stats.running, stats.dead),
        (jobs, 0, 0, 0),
        "{stats:?}"
    );

    // Decisions: up from 0 to ceil(40/10)=4 capped at max 3, later down to 0, never below the
    // busy workers, and to zero only with nothing waiting or running.
    let mut first_start = None;
    let mut reached_max = false;
    let mut first_busy = None;
    let mut zero_at = None;
    let mut last_running = None;
    let mut max_workers = 0;
    for (i, (at, t)) in ticks.iter().enumerate() {
        for d in t["decisions"].as_array().unwrap() {
            if d["kind"] != "workers" {
                continue;
            }
            let inputs = d["inputs"].as_str().unwrap();
            let get = |k: &str| -> u64 {
                inputs
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap()
            };
            max_workers = max_workers.max(get("workers"));
            if get("busy") > 0 && first_busy.is_none() {
                first_busy = Some(*at);
            }
            if get("running") > 0 || get("waiting") > 0 {
                last_running = Some(*at);
            }
        }
        for a in t["actions"].as_array().unwrap() {
            match a["action"].as_str().unwrap() {
                "start_workers" => {
                    if first_start.is_none() {
                        assert_eq!(a["from"], 0, "tick {i}: {a}");
                        first_start = Some(i);
                    }
                    if a["to"] == 3 {
                        reached_max = true;
                    }
                }
                "stop_workers" => {
                    let d = t["decisions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|d| d["kind"] == "workers")
                        .unwrap();
                    let inputs = d["inputs"].as_str().unwrap();
                    if a["to"] == 0 {
                        assert!(
                            inputs.starts_with("waiting=0 running=0 "),
                            "tick {i}: to zero with work left: {inputs}"
                        );
                        assert!(inputs.contains("busy=0"), "tick {i}: {inputs}");
                        zero_at.get_or_insert(*at);
                    }
                }
                // The local backend has no disruption budgets; the decision is only logged.
                "set_flexible_max_unavailable" => {}
                other => panic!("unexpected action {other}"),
            }
        }
    }
    let first_start = first_start.expect("the autoscaler never started a worker");
    assert!(first_start >= 1, "nothing to do before the jobs arrived");
    assert!(
        reached_max,
        "ceil(40/10)=4 capped at max 3 was never reached"
    );
    assert!(max_workers <= 3, "max is 3, saw {max_workers}");
    let zero_at = zero_at.expect("the autoscaler never scaled to zero");
    let last_running = last_running.unwrap();
    assert!(zero_at > last_running);

    // Every worker the autoscaler started has exited.
    let logs: Vec<_> = std::fs::read_dir(dir.join("logs")).unwrap().collect();
    assert!(
        logs.len() >= 3,
        "expected at least 3 worker logs, got {}",
        logs.len()
    );

    let first_busy = first_busy.expect("no worker was ever seen holding a job");

    // Timings from the workers' own logs: first "worker started", last line of the last worker.
    let mut first_worker_started: Option<herd_scale::jiff::Timestamp> = None;
    let mut last_worker_line: Option<herd_scale::jiff::Timestamp> = None;
    for entry in std::fs::read_dir(dir.join("logs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let stamps: Vec<(herd_scale::jiff::Timestamp, String)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                let ts = v["timestamp"].as_str()?.parse().ok()?;
                Some((
                    ts,
                    v["fields"]["message"].as_str().unwrap_or("").to_string(),
                ))
            })
            .collect();
        if let Some((ts, _)) = stamps.iter().find(|(_, m)| m.contains("worker started")) {
            first_worker_started = Some(first_worker_started.map_or(*ts, |f| f.min(*ts)));
        }
        if let Some((ts, _)) = stamps.last() {
            last_worker_line = Some(last_worker_line.map_or(*ts, |l| l.max(*ts)));
        }
    }
    let jobs_list = rt
        .block_on(queue.list(&herd_jobs::ListFilter {
            queue: Some("e2e".into()),
            limit: 1000,
            ..Default::default()
        }))
        .unwrap();
    let last_done_ms = jobs_list
        .iter()
        .filter_map(|j| j.finished_ms)
        .max()
        .unwrap();
    let last_done = herd_scale::jiff::Timestamp::from_millisecond(last_done_ms).unwrap();
    println!(
        "BENCH [{label}] enqueue -> autoscaler sees a worker holding a job: {:.2}s (interval 250ms)",
        (first_busy - enqueued_at.unwrap()).as_secs_f64()
    );
    println!(
        "BENCH [{label}] last job running -> scale-to-zero decision: {:.2}s (cooldown 2s, interval 250ms)",
        (zero_at - last_running).as_secs_f64()
    );
    if let (Some(first), Some(last)) = (first_worker_started, last_worker_line) {
        println!(
            "BENCH [{label}] enqueue -> first worker process running: {:.2}s (interval 250ms)",
            first.duration_since(enqueued_wall.unwrap()).as_secs_f64()
        );
        println!(
            "BENCH [{label}] last job done -> last worker process exited: {:.2}s (cooldown 2s)",
            last.duration_since(last_done).as_secs_f64()
        );
    } else {
        println!("BENCH worker logs carried no JSON timestamps; process timings not available");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A serving pool on the local backend: the autoscaler starts `herd serve` (min 1), reads its
/// `/metrics`, scales up under real inference load (invocations per minute above target), and
/// back down to min once the load stops and the stabilisation window has passed.
#[test]
fn local_backend_scales_real_servers_by_invocation_rate() {
    if !runtime_available() {
        let msg = "the ONNX Runtime library is not installed (run `herd runtime install`)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; the serving autoscale test needs it");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("herd-autoscale-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model_dir = dir.join("models/m0/1");
    std::fs::create_dir_all(&model_dir).unwrap();
    let model = herd_onnx::LinearClassifier::random(8, 3, 7);
    std::fs::write(model_dir.join("model.onnx"), model.to_onnx("m0")).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[serving]]\nname = \"web\"\ntarget_invocations_per_minute = 120\ntarget_memory_utilisation = 0.8\nstabilisation_window = \"2s\"\ntolerance = 0.1\nmin = 1\nmax = 3\nrepo = \"{}\"\nmemory_budget = \"64MiB\"\n",
            dir.join("models").display()
        ),
    )
    .unwrap();

    let mut child = Command::new(HERD)
        .args(["autoscale", "--policy"])
        .arg(&policy)
        .args([
            "--interval",
            "250ms",
            "--json",
            "--ticks",
            "1000",
            "--log-dir",
        ])
        .arg(dir.join("logs"))
        .current_dir(&dir)
        .env("HERD_LOG_JSON", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let autoscaler_pid = child.id();
    // Safety net: SIGKILL after 3 minutes (the test then fails on the missing events). The
    // watchdog ends as soon as the autoscaler is gone, so it never signals a reused pid.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if done2.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
        let _ = Command::new("kill")
            .arg("-9")
            .arg(autoscaler_pid.to_string())
            .status();
    });

    // Ticks (stdout) and the "started child" log lines (stderr) arrive on one channel.
    let (tx, rx) = std::sync::mpsc::channel::<Ev>();
    let out = child.stdout.take().unwrap();
    let tx1 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx1.send(Ev::Tick(v));
            }
        }
    });
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] != "started child" {
                continue;
            }
            let args = v["fields"]["args"].as_str().unwrap_or("").to_string();
            let port = args
                .split_whitespace()
                .find_map(|a| a.strip_prefix("127.0.0.1:"))
                .and_then(|p| p.parse().ok());
            if let (Some(port), Some(pid)) = (port, v["fields"]["pid"].as_u64()) {
                let _ = tx.send(Ev::Started { pid, port });
            }
        }
    });

    let mut w = Watch::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 8], "datatype": "FP32", "data": vec![0.5f32; 8] }]
    });
    let mut sent = 0u32;
    let deadline = Instant::now() + Duration::from_secs(150);
    while Instant::now() < deadline && !w.back_to_min() {
        while let Ok(ev) = rx.try_recv() {
            w.on(ev);
        }
        match (w.load, w.first_port) {
            (true, Some(port)) => {
                // Real inference requests against the first server, paced at about 20 per second.
                let url = format!("http://127.0.0.1:{port}/v2/models/m0/infer");
                let ok = rt.block_on(async {
                    match http.post(&url).json(&body).send().await {
                        Ok(r) => r.status().is_success(),
                        Err(_) => false, // still starting
                    }
                });
                sent += u32::from(ok);
                std::thread::sleep(Duration::from_millis(50));
            }
            // Nothing to send: wait for the next event.
            _ => {
                if let Ok(ev) = rx.recv_timeout(Duration::from_millis(250)) {
                    w.on(ev);
                }
            }
        }
    }
    let (pids, saw) = (w.pids, w.saw);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(autoscaler_pid.to_string())
        .status();
    let status = child.wait().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    watchdog.thread().unpark();
    watchdog.join().unwrap();

    let actions: Vec<(u64, u64)> = saw.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        actions.first(),
        Some(&(0, 1)),
        "starts min=1 first: {saw:?}"
    );
    let up = saw
        .iter()
        .find(|((from, to), _)| *from == 1 && *to > 1)
        .unwrap_or_else(|| panic!("never scaled up under load ({sent} requests): {saw:?}"));
    assert!(
        up.1.contains("by_invocations=") && !up.1.contains("by_invocations=n/a"),
        "{}",
        up.1
    );
    assert!(
        actions.contains(&(3, 1)) || actions.iter().any(|(f, t)| *f > 1 && *t == 1),
        "never came back to min after the load: {saw:?}"
    );
    assert!(actions.iter().all(|(_, to)| *to <= 3), "max is 3: {saw:?}");
    assert!(status.success(), "autoscaler exit: {status}");
    // Every server the autoscaler started is gone.
    for pid in &pids {
        assert!(
            !pid_alive(*pid as i32),
            "server {pid} still running after the autoscaler stopped"
        );
    }
    println!("serving decisions: {actions:?} after {sent} requests");
    let _ = std::fs::remove_dir_all(&dir);
}

enum Ev {
    Tick(Value),
    Started { pid: u64, port: u16 },
}

/// What the serving test has seen so far.
#[derive(Default)]
struct Watch {
    pids: Vec<u64>,
    first_port: Option<u16>,
    /// (from, to) of each serving action with the decision's inputs.
    saw: Vec<((u64, u64), String)>,
    load: bool,
    loaded_once: bool,
}

impl Watch {
    fn on(&mut self, ev: Ev) {
        match ev {
            Ev::Started { pid, port } => {
                self.pids.push(pid);
                if self.first_port.is_none() {
                    self.first_port = Some(port);
                    self.load = true;
                    self.loaded_once = true;
                }
            }
            Ev::Tick(t) => {
                let action = t["actions"].as_array().and_then(|a| {
                    a.iter().find_map(|a| {
                        (a["action"] == "scale_serving")
                            .then(|| (a["from"].as_u64().unwrap(), a["to"].as_u64().unwrap()))
                    })
                });
                if let Some(a) = action {
                    let inputs = t["decisions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|d| d["kind"] == "serving")
                        .map(|d| d["inputs"].as_str().unwrap_or("").to_string())
                        .unwrap_or_default();
                    self.saw.push((a, inputs));
                    if a.1 == 3 {
                        self.load = false;
                    }
                }
            }
        }
    }

    fn back_to_min(&self) -> bool {
        self.loaded_once && self.saw.iter().any(|((from, to), _)| *from > 1 && *to == 1)
    }
}
