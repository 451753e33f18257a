//! Job runners: what a worker does with a claimed job, by kind.
//!
//! Results are written idempotently: `<result_dir>/<job id>.json` (the outcome) and any kind
//! output (`<job id>.jsonl` for batch-infer) go to a temp file first and are renamed into place.
//! A job that finds its outcome file already written (an earlier attempt finished but the worker
//! died before it could ack) returns that outcome without running again, so side effects are not
//! duplicated.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use crate::batch;
use crate::{CommandParams, Failure, Job, JobKind, JobOutcome, JobsError, Progress};

/// Where a runner reports progress; the worker stores the latest value with each lease renewal.
pub type ProgressTx = watch::Sender<Option<Progress>>;

/// Runs one job. The worker drops the future to abandon a job (timeout, shutdown, lost lease), so
/// runners must not leave work behind when dropped (child processes are killed on drop).
#[async_trait]
pub trait Runner: Send + Sync {
    async fn run(&self, job: &Job, progress: &ProgressTx) -> Result<JobOutcome, Failure>;
}

/// The runner for the built-in kinds (`command`, `batch-infer`).
#[derive(Clone)]
pub struct DefaultRunner {
    http: reqwest::Client,
}

impl Default for DefaultRunner {
    fn default() -> Self {
        DefaultRunner {
            http: reqwest::Client::new(),
        }
    }
}

/// Lines of output kept for a command's outcome.
pub const OUTPUT_TAIL_LINES: usize = 40;

#[async_trait]
impl Runner for DefaultRunner {
    async fn run(&self, job: &Job, progress: &ProgressTx) -> Result<JobOutcome, Failure> {
        let dir = PathBuf::from(&job.spec.result_dir);
        if let Some(done) = read_outcome(&dir, &job.id)? {
            tracing::info!(job_id = %job.id, "outcome already written by an earlier attempt; not running again");
            return Ok(done);
        }
        let outcome = match &job.spec.kind {
            JobKind::Command(c) => run_command(job, c, &dir).await?,
            JobKind::BatchInfer(b) => batch::run(&self.http, job, b, &dir, progress).await?,
        };
        write_outcome(&dir, &job.id, &outcome)?;
        Ok(outcome)
    }
}

/// Path of a job's outcome file.
pub fn outcome_path(dir: &Path, job_id: &str) -> PathBuf {
    dir.join(format!("{job_id}.json"))
}

fn read_outcome(dir: &Path, job_id: &str) -> Result<Option<JobOutcome>, Failure> {
    let path = outcome_path(dir, job_id);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(o) => Ok(Some(o)),
            // Written by rename, so never half-written; unreadable means someone else's file.
            Err(e) => Err(Failure::permanent(format!(
                "{} exists but is not a job outcome ({e}); move it away and requeue the job",
                path.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::retryable(format!("{}: {e}", path.display()))),
    }
}

fn write_outcome(dir: &Path, job_id: &str, outcome: &JobOutcome) -> Result<(), Failure> {
    let bytes = serde_json::to_vec_pretty(outcome)
        .map_err(|e| Failure::permanent(format!("outcome does not serialise: {e}")))?;
    write_atomic(&outcome_path(dir, job_id), &bytes).map_err(io_failure)
}

pub(crate) fn io_failure(e: JobsError) -> Failure {
    Failure::retryable(e.to_string())
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename, so readers
/// see the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JobsError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| JobsError::io(dir, e))?;
    let tmp = temp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| JobsError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| JobsError::io(&tmp, e))?;
    f.sync_all().map_err(|e| JobsError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| JobsError::io(path, e))
}

/// A temp name next to `path`, unique per call (so two attempts never share one).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let r: u32 = rand::random();
    path.with_file_name(format!(".{name}.{r:08x}.tmp"))
}

async fn run_command(job: &Job, c: &CommandParams, dir: &Path) -> Result<JobOutcome, Failure> {
    let mut cmd = tokio::process::Command::new(&c.program);
    cmd.args(&c.args)
        .envs(&c.env)
        .env("HERD_JOB_ID", &job.id)
        .env("HERD_JOB_ATTEMPT", job.attempts.to_string())
        .env("HERD_RESULT_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &c.cwd {
        cmd.current_dir(cwd);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| spawn_failure(c, &e))?;
    let tail = std::sync::Arc::new(parking_lot::Mutex::new(VecDeque::new()));
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(collect(s, tail.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(collect(s, tail.clone())));
    let status = child
        .wait()
        .await
        .map_err(|e| Failure::retryable(format!("waiting for '{}': {e}", c.program)))?;
    for h in [out, err].into_iter().flatten() {
        let _ = h.await;
    }
    let tail: Vec<String> = tail.lock().iter().cloned().collect();
    let code = status.code();
    if status.success() {
        Ok(JobOutcome {
            location: Some(outcome_path(dir, &job.id).display().to_string()),
            detail: serde_json::json!({ "exit_code": code, "output_tail": tail }),
        })
    } else {
        let how = match code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        };
        let last = tail
            .iter()
            .rev()
            .take(5)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        Err(Failure::retryable(format!(
            "'{}' failed with {how}; output tail:\n{last}",
            c.program
        )))
    }
}

/// On Linux, the child gets SIGKILL when the worker dies, even by SIGKILL: a killed worker must
/// not leave its job running unsupervised while another worker runs it again.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut tokio::process::Command) {}

fn spawn_failure(c: &CommandParams, e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::NotFound => Failure::permanent(format!(
            "program '{}' not found{}: install it, fix PATH on the worker, or give its full path",
            c.program,
            c.cwd
                .as_ref()
                .map(|d| format!(" (or working directory '{d}' does not exist)"))
                .unwrap_or_default()
        )),
        std::io::ErrorKind::PermissionDenied => Failure::permanent(format!(
            "program '{}' is not executable (permission denied): chmod +x it or run it through its interpreter",
            c.program
        )),
        _ => Failure::retryable(format!("cannot start '{}': {e}", c.program)),
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    tail: std::sync::Arc<parking_lot::Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut t = tail.lock();
        if t.len() == OUTPUT_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobSpec, JobState};

    fn job(dir: &Path, c: CommandParams) -> Job {
        let mut spec = JobSpec::new("q", JobKind::Command(c));
        spec.result_dir = dir.display().to_string();
        Job {
            id: "jtest".into(),
            spec,
            state: JobState::Running,
            attempts: 1,
            created_ms: 0,
            updated_ms: 0,
            run_at_ms: 0,
            finished_ms: None,
            worker_id: None,
            lease_expires_ms: None,
            last_error: None,
            result: None,
            progress: None,
        }
    }

    fn sh(script: &str) -> CommandParams {
        CommandParams {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn command_captures_exit_code_output_tail_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let mut c =
            sh("for i in $(seq 1 100); do echo line $i; done; echo \"$GREETING $HERD_JOB_ID\" >&2");
        c.env.insert("GREETING".into(), "hello".into());
        let (tx, _rx) = watch::channel(None);
        let out = DefaultRunner::default()
            .run(&job(dir.path(), c), &tx)
            .await
            .unwrap();
        assert_eq!(out.detail["exit_code"], 0);
        let tail = out.detail["output_tail"].as_array().unwrap();
        assert_eq!(tail.len(), OUTPUT_TAIL_LINES);
        assert!(tail.iter().any(|l| l == "hello jtest"), "{tail:?}");
        assert!(tail.iter().any(|l| l == "line 100"));
        assert!(!tail.iter().any(|l| l == "line 1"));
        // Written atomically next to the results.
        let stored: JobOutcome =
            serde_json::from_slice(&std::fs::read(outcome_path(dir.path(), "jtest")).unwrap())
                .unwrap();
        assert_eq!(stored, out);
    }

    #[tokio::test]
    async fn failing_command_is_retryable_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = watch::channel(None);
        let err = DefaultRunner::default()
            .run(&job(dir.path(), sh("echo disk full >&2; exit 3")), &tx)
            .await
            .unwrap_err();
        assert!(err.retryable);
        assert!(err.message.contains("exit code 3"), "{}", err.message);
        assert!(err.message.contains("disk full"), "{}", err.message);
        assert!(!outcome_path(dir.path(), "jtest").exists());
    }

    #[tokio::test]
    async fn missing_program_is_a_permanent_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = watch::channel(None);
        let c = CommandParams {
            program: "herd-no-such-program-xyz".into(),
            ..Default::default()
        };
        let err = DefaultRunner::default()
            .run(&job(dir.path(), c), &tx)
            .await
            .unwrap_err();
        assert!(!err.retryable);
        assert!(
            err.message.contains("'herd-no-such-program-xyz' not found"),
            "{}",
            err.message
        );
        assert!(err.message.contains("PATH"), "{}", err.message);
    }

    #[tokio::test]
    async fn an_outcome_already_written_is_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let c = sh(&format!("echo x >> {}", marker.display()));
        let (tx, _rx) = watch::channel(None);
        let runner = DefaultRunner::default();
        let first = runner.run(&job(dir.path(), c.clone()), &tx).await.unwrap();
        let second = runner.run(&job(dir.path(), c), &tx).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\n");
    }

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/out.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
