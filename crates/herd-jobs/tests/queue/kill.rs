//! Acceptance 3: SIGKILL real worker processes in the middle of jobs, again and again; every job
//! still ends done exactly once in the outcome registry (queue records + outcome files), none
//! lost, and the outcome the queue recorded is the one written on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_jobs::{CommandParams, JobKind, JobOutcome, JobSpec, JobState, ListFilter, Queue};

use crate::common::{postgres_url, redis_url, TestDir};

const WORKER: &str = env!("CARGO_BIN_EXE_herd-jobs-test-worker");
const KILLS: usize = 22;
const JOBS: usize = 24;
const LEASE_MS: u64 = 1_000;

fn spawn_worker(url: &str, id: &str, idle_ms: u64) -> Child {
    Command::new(WORKER)
        .args([
            url,
            "crash",
            id,
            &LEASE_MS.to_string(),
            &idle_ms.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the test worker binary")
}

/// Polls until `worker` holds a lease on some job, or gives up after a minute.
async fn wait_until_running(queue: &Arc<dyn Queue>, worker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let holders = queue.lease_holders("crash").await.expect("lease holders");
        if holders.iter().any(|h| h == worker) {
            return true;
        }
        let st = queue.stats("crash").await.expect("stats");
        if st.waiting + st.delayed + st.running == 0 {
            return false; // nothing left to run
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("worker {worker} never claimed a job within a minute");
}

async fn crash_scenario(url: String, dir: &TestDir) {
    let queue = herd_jobs::connect(&url).await.expect("connect");
    let results = dir.join("results");
    let log = dir.join("completions.log");
    let mut ids = BTreeSet::new();
    for i in 0..JOBS {
        let mut spec = JobSpec::new(
            "crash",
            JobKind::Command(CommandParams {
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    format!(
                        "sleep 0.4; echo \"$HERD_JOB_ID $HERD_JOB_ATTEMPT\" >> {}; echo job {i} attempt $HERD_JOB_ATTEMPT",
                        log.display()
                    ),
                ],
                ..Default::default()
            }),
        );
        spec.max_attempts = 100;
        spec.result_dir = results.display().to_string();
        ids.insert(queue.enqueue(spec).await.expect("enqueue"));
    }

    // Kill phase: each worker is SIGKILLed while it holds a lease (mid-job), at a random point.
    let mut kills = 0;
    for k in 0..KILLS {
        let id = format!("victim-{k}");
        let mut child = spawn_worker(&url, &id, 30_000);
        if !wait_until_running(&queue, &id).await {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        let jitter = rand::random::<u64>() % 450;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        child.kill().expect("SIGKILL the worker");
        child.wait().expect("reap the worker");
        kills += 1;
    }
    assert!(
        kills >= 20,
        "only {kills} workers were killed mid-job; the test proves nothing"
    );

    // Recovery phase: two workers drain the queue (expired leases become claimable) and exit
    // once idle.
    let mut finals: Vec<Child> = (0..2)
        .map(|i| spawn_worker(&url, &format!("survivor-{i}"), 2_500))
        .collect();
    for c in &mut finals {
        let status = c.wait().expect("wait for survivor");
        assert!(status.success(), "survivor exited with {status}");
    }

    // The registry of outcomes: every job done exactly once, none lost, none dead.
    let st = queue.stats("crash").await.unwrap();
    assert_eq!(
        (st.done, st.waiting, st.running, st.delayed, st.dead),
        (JOBS as u64, 0, 0, 0, 0),
        "{st:?}"
    );
    let jobs = queue
        .list(&ListFilter {
            queue: Some("crash".into()),
            state: None,
            limit: 10_000,
        })
        .await
        .unwrap();
    let listed: BTreeSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(listed, ids, "the queue lost or invented jobs");
    let mut retried = 0;
    for job in &jobs {
        assert_eq!(
            job.state,
            JobState::Done,
            "{}: {:?}",
            job.id,
            job.last_error
        );
        if job.attempts > 1 {
            retried += 1;
        }
        // The outcome file is the one the queue recorded.
        let path = results.join(format!("{}.json", job.id));
        let on_disk: JobOutcome = serde_json::from_slice(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        assert_eq!(job.result.as_ref(), Some(&on_disk), "{}", job.id);
        assert_eq!(on_disk.detail["exit_code"], 0);
    }
    assert!(
        retried > 0,
        "no job was ever retried: the kills did not hit jobs mid-run"
    );
    // Exactly one outcome file per job, nothing else but possibly temp files of killed attempts.
    let outcome_files: BTreeSet<String> = std::fs::read_dir(&results)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let expected: BTreeSet<String> = ids.iter().map(|i| format!("{i}.json")).collect();
    assert_eq!(outcome_files, expected);
    // Every job's command ran to completion at least once; killed attempts left no completion
    // (the child dies with its worker). Duplicates would be at-least-once re-runs between a
    // completed command and its outcome write; count them for the log.
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let mut completions: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines() {
        if let Some((id, _attempt)) = line.split_once(' ') {
            *completions.entry(id.to_string()).or_default() += 1;
        }
    }
    let completed: BTreeSet<String> = completions.keys().cloned().collect();
    assert_eq!(completed, ids, "some job never completed its command");
    let dupes: usize = completions.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {kills} SIGKILLs, {retried} jobs retried, {dupes} duplicate command completions, {} jobs done once",
        jobs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_mid_job_every_job_done_exactly_once_sqlite() {
    let dir = TestDir::new("kill-sqlite");
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    crash_scenario(url, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_mid_job_every_job_done_exactly_once_redis() {
    let Some(base) = redis_url("kill-redis") else {
        return;
    };
    let dir = TestDir::new("kill-redis");
    let url = format!("{base}?prefix=t-kill-{:08x}", rand::random::<u32>());
    crash_scenario(url, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_mid_job_every_job_done_exactly_once_postgres() {
    let Some(url) = postgres_url("kill").await else {
        return;
    };
    let dir = TestDir::new("kill-postgres");
    crash_scenario(url, &dir).await;
}
