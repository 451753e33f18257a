//! Regression tests for defects found by reading the code, each named after the defect it pins:
//! colliding job ids, poison jobs, workers that outlive their lease, grandchildren that outlive
//! their job, and workers whose clock is skewed.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herd_jobs::run::DefaultRunner;
use herd_jobs::worker::{Worker, WorkerConfig};
use herd_jobs::{
    CommandParams, FailOutcome, Failure, Job, JobId, JobKind, JobOutcome, JobSpec, JobState,
    JobsError, Lease, ListFilter, Progress, Queue, QueueStats,
};
use tokio::sync::watch;

use crate::common::{postgres_url, redis_cluster_url, redis_url, TestDir};

const WORKER: &str = env!("CARGO_BIN_EXE_herd-jobs-test-worker");

/// Every backend reachable here, with real (store) clocks: (name, url).
fn live_backends(test: &str, dir: &TestDir) -> Vec<(&'static str, String)> {
    let mut out = vec![(
        "sqlite",
        format!("sqlite://{}", dir.join("jobs.db").display()),
    )];
    if let Some(url) = redis_url(test) {
        out.push((
            "redis",
            format!("{url}?prefix=t-{test}-{:08x}", rand::random::<u32>()),
        ));
    }
    out
}

fn echo(queue: &str) -> JobSpec {
    JobSpec::new(
        queue,
        JobKind::Command(CommandParams {
            program: "echo".into(),
            args: vec!["x".into()],
            ..Default::default()
        }),
    )
}

fn jobs_per_enqueuer() -> usize {
    std::env::var("HERD_TEST_ENQUEUE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// Regression: ids were milliseconds + a per-process counter + 16 random bits, so two
/// enqueuer processes collided once in 65,536 same-millisecond pairs, and on Redis the second
/// `HSET` merged two jobs into one (on SQLite `--count N` aborted halfway). 16 enqueuer
/// processes at once: every id distinct, every job present exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_enqueuer_processes_every_id_distinct_every_job_present_once() {
    let dir = TestDir::new("enqueuers");
    let per = jobs_per_enqueuer();
    let mut backends = live_backends("enqueuers", &dir);
    if let Some(url) = postgres_url("enqueuers").await {
        backends.push(("postgres", url));
    }
    if let Some(url) = redis_cluster_url("enqueuers") {
        backends.push((
            "redis-cluster",
            format!("{url}?prefix=t-enqueuers-{:08x}", rand::random::<u32>()),
        ));
    }
    for (name, url) in backends {
        let started = Instant::now();
        let children: Vec<_> = (0..16)
            .map(|_| {
                Command::new(WORKER)
                    .args(["enqueue", url.as_str(), "many", &per.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn an enqueuer")
            })
            .collect();
        let mut ids: Vec<String> = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{name}: an enqueuer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let mine: Vec<String> = text.lines().map(str::to_string).collect();
            assert_eq!(mine.len(), per, "{name}: an enqueuer stopped halfway");
            ids.extend(mine);
        }
        let total = 16 * per;
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), total, "{name}: two enqueues got one id");
        let queue = herd_jobs::connect(&url).await.unwrap();
        let st = queue.stats("many").await.unwrap();
        assert_eq!(
            st,
            QueueStats {
                waiting: total as u64,
                ..Default::default()
            },
            "{name}"
        );
        let listed = queue
            .list(&ListFilter {
                queue: Some("many".into()),
                state: None,
                limit: total + 10,
            })
            .await
            .unwrap();
        let listed: BTreeSet<String> = listed.into_iter().map(|j| j.id).collect();
        let want: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(
            listed, want,
            "{name}: the stored jobs are not the enqueued ones"
        );
        eprintln!(
            "{name}: 16 enqueuer processes x {per} jobs: {total} distinct ids, all stored once ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Regression: an undecodable job at the head of an SQLite queue made every claim fail,
/// forever. Now it goes to the dead letter with the reason and the next job is claimed.
#[tokio::test]
async fn poison_job_goes_to_the_dead_letter_and_the_queue_keeps_flowing() {
    let dir = TestDir::new("poison");
    for (name, url) in live_backends("poison", &dir) {
        let queue = herd_jobs::connect(&url).await.unwrap();
        let mut first = echo("p");
        first.priority = 10; // at the head of the queue
        let poison = queue.enqueue(first).await.unwrap();
        let good = queue.enqueue(echo("p")).await.unwrap();
        corrupt(&url, &poison).await;

        let lease = queue
            .claim("w", &["p".to_string()], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{name}: claim failed on a poison job: {e}"))
            .expect("the good job");
        assert_eq!(lease.job.id, good, "{name}");
        queue.ack(&lease, &JobOutcome::default()).await.unwrap();
        let st = queue.stats("p").await.unwrap();
        assert_eq!((st.dead, st.done, st.waiting), (1, 1, 0), "{name}: {st:?}");
        let reason = last_error(&url, &poison).await;
        assert!(
            reason.contains("undecodable job record") && reason.contains("spec"),
            "{name}: {reason}"
        );
        // Later claims are not disturbed either.
        assert!(queue
            .claim("w", &["p".to_string()], Duration::from_secs(30))
            .await
            .unwrap()
            .is_none());
    }
}

/// Breaks a stored job's spec behind the queue's back.
async fn corrupt(url: &str, id: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
            .await
            .unwrap();
        sqlx::query("UPDATE jobs SET spec = '{\"queue\": 7, not json' WHERE id = ?")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let (base, key) = redis_job_key(url, id);
        let client = redis::Client::open(base).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg("spec")
            .arg("{\"queue\": 7, not json")
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

async fn last_error(url: &str, id: &str) -> String {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
            .await
            .unwrap();
        let (state, err): (String, Option<String>) =
            sqlx::query_as("SELECT state, last_error FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(state, "dead");
        err.unwrap_or_default()
    } else {
        let (base, key) = redis_job_key(url, id);
        let client = redis::Client::open(base).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let (state, err): (String, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("state")
            .arg("last_error")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(state, "dead");
        err.unwrap_or_default()
    }
}

fn redis_job_key(url: &str, id: &str) -> (String, String) {
    let (base, query) = url.split_once('?').unwrap();
    let prefix = query.strip_prefix("prefix=").unwrap();
    (base.to_string(), format!("{{{prefix}}}:job:{id}"))
}

/// A real queue whose renewals fail (the store is unreachable for this worker) once armed.
struct RenewalsFail {
    inner: Arc<dyn Queue>,
    failing: AtomicBool,
}

#[async_trait]
impl Queue for RenewalsFail {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn enqueue(&self, spec: JobSpec) -> Result<JobId, JobsError> {
        self.inner.enqueue(spec).await
    }
    async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<Option<Lease>, JobsError> {
        let got = self.inner.claim(worker_id, queues, lease).await?;
        if got.is_some() {
            self.failing.store(true, Ordering::SeqCst);
        }
        Ok(got)
    }
    async fn renew(
        &self,
        lease: &mut Lease,
        extend: Duration,
        progress: Option<&Progress>,
    ) -> Result<(), JobsError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(outage());
        }
        self.inner.renew(lease, extend, progress).await
    }
    async fn ack(&self, lease: &Lease, outcome: &JobOutcome) -> Result<(), JobsError> {
        self.inner.ack(lease, outcome).await
    }
    async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, JobsError> {
        self.inner.fail(lease, failure).await
    }
    async fn release(&self, _lease: &Lease) -> Result<(), JobsError> {
        Err(outage())
    }
    async fn requeue_dead(&self, queue: &str, id: Option<&str>) -> Result<u64, JobsError> {
        self.inner.requeue_dead(queue, id).await
    }
    async fn cancel(&self, id: &str, reason: &str) -> Result<herd_jobs::JobState, JobsError> {
        self.inner.cancel(id, reason).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, JobsError> {
        self.inner.list(filter).await
    }
    async fn show(&self, id: &str) -> Result<Option<Job>, JobsError> {
        self.inner.show(id).await
    }
    async fn purge(&self, retention: Duration) -> Result<u64, JobsError> {
        self.inner.purge(retention).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats, JobsError> {
        self.inner.stats(queue).await
    }
    async fn lease_holders(&self, queue: &str) -> Result<Vec<String>, JobsError> {
        self.inner.lease_holders(queue).await
    }
    async fn queues(&self) -> Result<Vec<String>, JobsError> {
        self.inner.queues().await
    }
}

fn outage() -> JobsError {
    JobsError::Io {
        path: "queue store".into(),
        source: std::io::Error::other("injected outage: the store is unreachable"),
    }
}

fn now_ms() -> i64 {
    herd_jobs::Clock::now_ms(&herd_jobs::SystemClock)
}

/// Regression: a worker whose renewals kept failing kept running the job after its lease had
/// expired, while another worker could claim and run it too. Now it stops the job (its whole
/// process group) before the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stops_a_job_whose_lease_it_cannot_renew_before_the_lease_expires() {
    let dir = TestDir::new("renewfail");
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    let real = herd_jobs::connect(&url).await.unwrap();
    let beats = dir.join("beats");
    let mut spec = JobSpec::new(
        "r",
        JobKind::Command(CommandParams {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "while true; do date +%s%3N >> {}; sleep 0.05; done",
                    beats.display()
                ),
            ],
            ..Default::default()
        }),
    );
    spec.timeout_secs = 20;
    // An expired lease on the last attempt goes to dead: the same worker cannot reclaim it.
    spec.max_attempts = 1;
    spec.result_dir = dir.join("results").display().to_string();
    let id = real.enqueue(spec).await.unwrap();
    let flaky = Arc::new(RenewalsFail {
        inner: real.clone(),
        failing: AtomicBool::new(false),
    });
    let mut cfg = WorkerConfig::new("w-cut-off", vec!["r".to_string()]);
    cfg.lease = Duration::from_millis(1_500);
    cfg.poll = Duration::from_millis(20);
    cfg.idle_exit = Some(Duration::from_millis(200));
    let (_tx, rx) = watch::channel(false);
    let worker = Worker::new(
        flaky,
        Arc::new(DefaultRunner::default().with_kill_grace(Duration::from_millis(200))),
        cfg,
    );
    let running =
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(15), worker.run(rx)).await },
        );
    // The lease as granted (renewals all fail, so it never moves).
    let expires = loop {
        if let Some(e) = real
            .show(&id)
            .await
            .unwrap()
            .and_then(|j| j.lease_expires_ms)
        {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let summary = running
        .await
        .unwrap()
        .expect("the worker kept running a job it had lost the lease of")
        .unwrap();
    assert_eq!(summary.lost, 1, "{summary:?}");
    let text = std::fs::read_to_string(&beats).unwrap();
    let last: i64 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        text.lines().count() > 3,
        "the job barely ran; the test proves nothing"
    );
    assert!(
        last < expires,
        "the job still ran at {last}, after its lease expired at {expires}"
    );
    // And nothing keeps running.
    let len = text.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&beats).unwrap().len(), len);
    assert!(now_ms() > 0);
}

fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|r| !r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Regression: a timeout killed only the direct child; `sh -c` left its grandchild running
/// while the retry started a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_leaves_no_grandchild_behind() {
    let dir = TestDir::new("grandchild");
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    let queue = herd_jobs::connect(&url).await.unwrap();
    let pids = dir.join("pids");
    let mut spec = JobSpec::new(
        "g",
        JobKind::Command(CommandParams {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "sleep 300 & echo $! >> {p}; (trap '' TERM; sleep 301) & echo $! >> {p}; wait",
                    p = pids.display()
                ),
            ],
            ..Default::default()
        }),
    );
    spec.timeout_secs = 1;
    spec.max_attempts = 1;
    spec.result_dir = dir.join("results").display().to_string();
    let id = queue.enqueue(spec).await.unwrap();
    let mut cfg = WorkerConfig::new("w-timeout", vec!["g".to_string()]);
    cfg.poll = Duration::from_millis(20);
    cfg.idle_exit = Some(Duration::from_millis(200));
    let (_tx, rx) = watch::channel(false);
    let summary = Worker::new(
        queue.clone(),
        Arc::new(DefaultRunner::default().with_kill_grace(Duration::from_millis(300))),
        cfg,
    )
    .run(rx)
    .await
    .unwrap();
    assert_eq!(summary.failed, 1, "{summary:?}");
    let job = queue.show(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert!(
        job.last_error
            .unwrap_or_default()
            .contains("timed out after 1s"),
        "timeout reason"
    );
    let text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!alive(pid), "grandchild {pid} outlived its timed-out job");
    }
}

/// libfaketime, which shifts a process's wall clock (apt: libfaketime).
fn faketime_lib() -> Option<String> {
    for dir in [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
    ] {
        let p = format!("{dir}/libfaketime.so.1");
        if std::path::Path::new(&p).exists() {
            return Some(p);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("libfaketime is not installed but CI is: .ci/run installs it (apt-get install libfaketime)");
    }
    eprintln!(
        "SKIPPED (skewed clock test): libfaketime not installed (apt-get install libfaketime)"
    );
    None
}

/// Regression: leases were taken on each worker's own wall clock, so a worker whose clock ran
/// an hour ahead saw every running job's lease as expired and took it. Lease times now come
/// from the store's clock. (SQLite is embedded: its clock is the host's, so it is not tested.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_skewed_clock_cannot_steal_a_running_job() {
    let Some(lib) = faketime_lib() else {
        return;
    };
    let Some(base) = redis_url("skew") else {
        return;
    };
    let mut urls = vec![format!(
        "{base}?prefix=t-skew-{:08x}",
        rand::random::<u32>()
    )];
    if let Some(pg) = postgres_url("skew").await {
        urls.push(pg);
    }
    // The shifted clock really is shifted: otherwise this test proves nothing.
    let out = Command::new("date")
        .arg("+%s")
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME", "+3600")
        .output()
        .unwrap();
    let skewed: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        skewed - now_ms() / 1000 > 3000,
        "libfaketime did not shift the clock"
    );

    for url in urls {
        let queue = herd_jobs::connect(&url).await.unwrap();
        let id = queue.enqueue(echo("s")).await.unwrap();
        let lease = queue
            .claim("honest", &["s".to_string()], Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let out = Command::new(WORKER)
            .args([url.as_str(), "s", "skewed", "5000", "1500"])
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", "+3600")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("done=0"),
            "the skewed worker ran the job: {stdout}"
        );
        let job = queue.show(&id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts, job.worker_id.as_deref()),
            (JobState::Running, 1, Some("honest"))
        );
        queue.ack(&lease, &JobOutcome::default()).await.unwrap();
    }
}
