//! The worker loop against a real SQLite queue and real processes: outcomes of each kind,
//! idle exit, and SIGTERM (finish within the grace period, or release the lease).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_jobs::run::DefaultRunner;
use herd_jobs::worker::{Worker, WorkerConfig};
use herd_jobs::{CommandParams, JobKind, JobSpec, JobState, Queue};
use tokio::sync::watch;

use crate::common::TestDir;

const WORKER: &str = env!("CARGO_BIN_EXE_herd-jobs-test-worker");

fn sh(queue: &str, dir: &TestDir, script: &str) -> JobSpec {
    let mut spec = JobSpec::new(
        queue,
        JobKind::Command(CommandParams {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        }),
    );
    spec.result_dir = dir.join("results").display().to_string();
    spec
}

async fn sqlite(dir: &TestDir) -> (String, Arc<dyn Queue>) {
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    let q = herd_jobs::connect(&url).await.expect("connect");
    (url, q)
}

fn fast_cfg(id: &str, queue: &str) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(id, vec![queue.to_string()]);
    cfg.poll = Duration::from_millis(20);
    cfg.idle_exit = Some(Duration::from_millis(300));
    cfg.lease = Duration::from_secs(5);
    cfg
}

#[tokio::test]
async fn worker_runs_each_outcome_to_its_state_and_exits_when_idle() {
    let dir = TestDir::new("worker-outcomes");
    let (_, queue) = sqlite(&dir).await;
    let ok = queue
        .enqueue(sh("w", &dir, "echo hello; echo warn >&2"))
        .await
        .unwrap();
    let mut flaky = sh("w", &dir, "echo nope; exit 7");
    flaky.max_attempts = 2;
    flaky.backoff = herd_jobs::Backoff {
        base_ms: 10,
        max_ms: 10,
    };
    let flaky = queue.enqueue(flaky).await.unwrap();
    let mut missing = JobSpec::new(
        "w",
        JobKind::Command(CommandParams {
            program: "herd-definitely-not-installed".into(),
            ..Default::default()
        }),
    );
    missing.result_dir = dir.join("results").display().to_string();
    missing.max_attempts = 5;
    let missing = queue.enqueue(missing).await.unwrap();
    let mut slow = sh("w", &dir, "sleep 5");
    slow.timeout_secs = 1;
    slow.max_attempts = 1;
    let slow = queue.enqueue(slow).await.unwrap();

    let (_tx, rx) = watch::channel(false);
    let worker = Worker::new(
        queue.clone(),
        Arc::new(DefaultRunner::default()),
        fast_cfg("w1", "w"),
    );
    let summary = worker.run(rx).await.unwrap();
    assert_eq!(summary.exit_reason, "idle");
    assert_eq!(summary.done, 1);

    let job = queue.show(&ok).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Done);
    let detail = &job.result.as_ref().unwrap().detail;
    assert_eq!(detail["exit_code"], 0);
    assert_eq!(detail["output_tail"].as_array().unwrap().len(), 2);

    let job = queue.show(&flaky).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Dead, 2));
    assert!(job.last_error.unwrap().contains("exit code 7"));

    let job = queue.show(&missing).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Dead, 1),
        "a missing program is not retried"
    );
    assert!(job
        .last_error
        .unwrap()
        .contains("'herd-definitely-not-installed' not found"));

    let job = queue.show(&slow).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert!(job.last_error.unwrap().contains("timed out after 1s"));
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -TERM {pid} failed");
}

async fn wait_running(queue: &Arc<dyn Queue>, queue_name: &str, worker: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if queue
            .lease_holders(queue_name)
            .await
            .unwrap()
            .iter()
            .any(|h| h == worker)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{worker} never claimed a job");
}

#[tokio::test]
async fn sigterm_finishes_the_current_job_within_the_grace_period() {
    let dir = TestDir::new("worker-term-finish");
    let (url, queue) = sqlite(&dir).await;
    let marker = dir.join("finished");
    let id = queue
        .enqueue(sh(
            "t",
            &dir,
            &format!("sleep 0.5; touch {}", marker.display()),
        ))
        .await
        .unwrap();
    let mut later = sh("t", &dir, "echo never claimed");
    later.priority = -1; // claimed only after the first job, whatever the ids say
    queue.enqueue(later).await.unwrap();
    let child = Command::new(WORKER)
        .args([url.as_str(), "t", "term-1", "5000", "60000", "30000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_running(&queue, "t", "term-1").await;
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done=1") && stdout.contains("exit=shutdown"),
        "{stdout}"
    );
    assert!(marker.exists());
    assert_eq!(
        queue.show(&id).await.unwrap().unwrap().state,
        JobState::Done
    );
    // It stopped claiming: the second job is still waiting.
    assert_eq!(queue.stats("t").await.unwrap().waiting, 1);
}

#[tokio::test]
async fn sigterm_releases_the_lease_when_the_grace_period_ends() {
    let dir = TestDir::new("worker-term-release");
    let (url, queue) = sqlite(&dir).await;
    let pidfile = dir.join("pid");
    let id = queue
        .enqueue(sh(
            "t",
            &dir,
            &format!("echo $$ > {}; sleep 30", pidfile.display()),
        ))
        .await
        .unwrap();
    let child = Command::new(WORKER)
        .args([url.as_str(), "t", "term-2", "5000", "60000", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_running(&queue, "t", "term-2").await;
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("released=1"), "{stdout}");
    let job = queue.show(&id).await.unwrap().unwrap();
    // Claimable at once by another worker, and the attempt did not count.
    assert_eq!((job.state, job.attempts), (JobState::Waiting, 0));
    assert!(queue.lease_holders("t").await.unwrap().is_empty());
    let lease = queue
        .claim("next", &["t".to_string()], Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lease.is_some());
    // The abandoned command was killed with its job, not left running.
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alive = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Field 3 is the state; a zombie only waits to be reaped.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
                .unwrap_or(false),
            Err(_) => false,
        };
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the released job's process {pid} kept running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
