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
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::watch;

use crate::batch;
use crate::{CommandParams, Failure, Job, JobKind, JobOutcome, JobsError, Progress};

/// Where a runner reports progress; the worker stores the latest value with each lease renewal.
pub type ProgressTx = watch::Sender<Option<Progress>>;

/// What a runner gets besides the job: where to report progress, and the signal that the worker
/// abandons the job (timeout, lost lease, end of the shutdown grace).
pub struct JobContext {
    pub progress: ProgressTx,
    cancel: watch::Receiver<Option<String>>,
}

/// The worker's side of a [`JobContext`]: abandons the job with a reason.
pub struct CancelHandle(watch::Sender<Option<String>>);

impl CancelHandle {
    pub fn cancel(&self, why: impl Into<String>) {
        let why = why.into();
        self.0.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    }
}

impl JobContext {
    /// A context and the handle that cancels it.
    pub fn new() -> (JobContext, CancelHandle, watch::Receiver<Option<Progress>>) {
        let (ptx, prx) = watch::channel(None);
        let (ctx, crx) = watch::channel(None);
        (
            JobContext {
                progress: ptx,
                cancel: crx,
            },
            CancelHandle(ctx),
            prx,
        )
    }

    /// Resolves with the reason once the worker abandons the job (never, if it does not).
    pub async fn cancelled(&self) -> String {
        let mut rx = self.cancel.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                // The worker dropped its handle without cancelling: nothing will cancel now.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs one job. On abandonment the worker first cancels the [`JobContext`] and waits for the
/// runner to clean up (a command's whole process group is terminated); it drops the future only
/// if that takes too long, so runners must not leave work behind when dropped either.
#[async_trait]
pub trait Runner: Send + Sync {
    async fn run(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, Failure>;
}

/// The runner for the built-in kinds (`command`, `batch-infer`).
#[derive(Clone)]
pub struct DefaultRunner {
    http: reqwest::Client,
    /// On abandonment, how long a command's process group gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

impl Default for DefaultRunner {
    fn default() -> Self {
        DefaultRunner {
            http: reqwest::Client::new(),
            kill_grace: Duration::from_secs(10),
        }
    }
}

impl DefaultRunner {
    /// The runner with another TERM-to-KILL grace for abandoned commands.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }
}

/// Lines of output kept for a command's outcome.
pub const OUTPUT_TAIL_LINES: usize = 40;
/// Bytes kept of one output line; the rest of a longer line is counted, not kept.
pub const OUTPUT_LINE_BYTES: usize = 4096;

/// Environment variables of the worker that a command job does not inherit: the worker's own
/// secrets (queue credentials, the inference token).
pub const WORKER_SECRET_ENV: &[&str] = &["HERD_QUEUE_URL", "HERD_TOKEN"];

#[async_trait]
impl Runner for DefaultRunner {
    async fn run(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, Failure> {
        if crate::storage::is_remote(&job.spec.result_dir) {
            return self.run_to_store(job, ctx).await;
        }
        let dir = PathBuf::from(&job.spec.result_dir);
        if let Some(done) = read_outcome(&dir, &job.id)? {
            tracing::info!(job_id = %job.id, "outcome already written by an earlier attempt; not running again");
            return Ok(done);
        }
        let outcome = self.run_in(job, ctx, &dir).await?;
        write_outcome(&dir, &job.id, &outcome)?;
        Ok(outcome)
    }
}

impl DefaultRunner {
    /// Runs the job's kind with its results in the local folder `dir`.
    async fn run_in(&self, job: &Job, ctx: &JobContext, dir: &Path) -> Result<JobOutcome, Failure> {
        let dir = dir.to_path_buf();
        let outcome = match &job.spec.kind {
            JobKind::Command(c) => run_command(job, c, &dir, ctx, self.kill_grace).await?,
            JobKind::BatchInfer(b) => {
                tokio::select! {
                    r = batch::run(&self.http, job, b, &dir, &ctx.progress) => r?,
                    why = ctx.cancelled() => return Err(Failure::retryable(format!("abandoned: {why}"))),
                }
            }
        };
        Ok(outcome)
    }

    /// A job whose results go to an object store: the outcome there means it is done; else
    /// run it with a local staging folder, upload every file it wrote there, then the outcome
    /// (last: an outcome is only ever next to complete results).
    async fn run_to_store(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, Failure> {
        use crate::storage;
        let base = job.spec.result_dir.trim_end_matches('/').to_string();
        let outcome_url = storage::join(&base, &format!("{}.json", job.id));
        if let Some(bytes) = storage::read_small(&outcome_url)
            .await
            .map_err(store_failure)?
        {
            let done: JobOutcome = serde_json::from_slice(&bytes).map_err(|e| {
                Failure::permanent(format!(
                    "{outcome_url} exists but is not a job outcome ({e}); move it away and requeue the job"
                ))
            })?;
            tracing::info!(job_id = %job.id, "outcome already written by an earlier attempt; not running again");
            return Ok(done);
        }
        let staging = storage::StagingDir::new(&job.id).map_err(io_failure)?;
        let mut outcome = self.run_in(job, ctx, &staging.0).await?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&staging.0)
            .map_err(|e| io_failure(JobsError::io(&staging.0, e)))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        for f in &files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == format!("{}.json", job.id) {
                continue;
            }
            storage::upload(f, &storage::join(&base, &name))
                .await
                .map_err(store_failure)?;
        }
        if let Some(loc) = &outcome.location {
            if let Some(name) = Path::new(loc).file_name() {
                outcome.location = Some(storage::join(&base, &name.to_string_lossy()));
            }
        }
        let bytes = serde_json::to_vec_pretty(&outcome)
            .map_err(|e| Failure::permanent(format!("outcome does not serialise: {e}")))?;
        storage::write_small(&outcome_url, bytes)
            .await
            .map_err(store_failure)?;
        Ok(outcome)
    }
}

/// An object store error: a bad location is permanent, anything else (network, throttling)
/// worth another attempt.
pub(crate) fn store_failure(e: JobsError) -> Failure {
    match e {
        JobsError::InvalidArgument(_) => Failure::permanent(e.to_string()),
        other => Failure::retryable(other.to_string()),
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

async fn run_command(
    job: &Job,
    c: &CommandParams,
    dir: &Path,
    ctx: &JobContext,
    kill_grace: Duration,
) -> Result<JobOutcome, Failure> {
    let mut cmd = tokio::process::Command::new(&c.program);
    for var in WORKER_SECRET_ENV {
        cmd.env_remove(var);
    }
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
    // Its own process group: `sh -c`, `make` or a forking Python are ended with it.
    #[cfg(unix)]
    cmd.process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| spawn_failure(c, &e))?;
    let mut group = ProcessGroup::new(child.id(), kill_grace);
    let tail = std::sync::Arc::new(parking_lot::Mutex::new(VecDeque::new()));
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(collect(s, tail.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(collect(s, tail.clone())));
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| Failure::retryable(format!("waiting for '{}': {e}", c.program)))?,
        why = ctx.cancelled() => {
            tracing::warn!(program = %c.program, reason = %why, "abandoning the command: terminating its process group");
            group.terminate().await;
            let _ = child.wait().await;
            for h in [out, err].into_iter().flatten() {
                h.abort();
            }
            return Err(Failure::retryable(format!("'{}' abandoned: {why}", c.program)));
        }
    };
    // The program is done; whatever it left running in its group goes with it.
    group.terminate().await;
    for h in [out, err].into_iter().flatten() {
        // The pipes close when the last process of the group is gone; a process that left the
        // group (setsid) could keep them open: do not wait for it.
        let abort = h.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .is_err()
        {
            abort.abort();
        }
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

/// A command's process group. [`ProcessGroup::terminate`] sends SIGTERM to the whole group,
/// waits up to the grace for it to empty, then sends SIGKILL. Dropped without `terminate` (the
/// worker gave up waiting and dropped the job's future), it does the same on a thread of its own.
struct ProcessGroup {
    pgid: Option<i32>,
    grace: Duration,
}

impl ProcessGroup {
    fn new(pid: Option<u32>, grace: Duration) -> Self {
        ProcessGroup {
            pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1),
            grace,
        }
    }

    async fn terminate(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let grace = self.grace;
            let _ = tokio::task::spawn_blocking(move || terminate_group(pgid, grace)).await;
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let grace = self.grace;
            std::thread::spawn(move || terminate_group(pgid, grace));
        }
    }
}

/// SIGTERM to the group, SIGKILL after `grace` if any member is left. Blocking.
#[cfg(unix)]
fn terminate_group(pgid: i32, grace: Duration) {
    let alive = || {
        // SAFETY: kill with signal 0 only checks for existence; no memory is touched.
        unsafe { libc::kill(-pgid, 0) == 0 }
    };
    // SAFETY: signals a process group we created (its leader is our child); no memory involved.
    if unsafe { libc::kill(-pgid, libc::SIGTERM) } != 0 {
        return; // the group is already gone
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if !alive() || group_is_only_zombies(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        pgid,
        grace_s = grace.as_secs_f64(),
        "process group still alive after SIGTERM and the grace; sending SIGKILL"
    );
    // SAFETY: as above.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    // SIGKILL is delivered asynchronously: return once the group is really gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline && alive() && !group_is_only_zombies(pgid) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(not(unix))]
fn terminate_group(_pgid: i32, _grace: Duration) {}

/// True when every process left in the group is a zombie (exited, waiting to be reaped by an
/// init that may never do it in a container): nothing is running any more.
#[cfg(target_os = "linux")]
fn group_is_only_zombies(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ")" of the command name: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (Some(state), Some(_ppid), Some(pgrp)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if pgrp.parse::<i32>().ok() == Some(pgid) && state != "Z" {
            return false;
        }
    }
    true
}

#[cfg(all(unix, not(target_os = "linux")))]
fn group_is_only_zombies(_pgid: i32) -> bool {
    false
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

/// Reads a child's output as lines of lossy UTF-8 (a bad byte never stops the reader, so the
/// child never dies of SIGPIPE), each kept up to [`OUTPUT_LINE_BYTES`] (a longer line, or one
/// without a newline, is cut and the rest counted), the last [`OUTPUT_TAIL_LINES`] kept.
async fn collect(
    stream: impl AsyncRead + Unpin,
    tail: std::sync::Arc<parking_lot::Mutex<VecDeque<String>>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut dropped: u64 = 0;
    let push = |line: &mut Vec<u8>, dropped: &mut u64| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let mut text = String::from_utf8_lossy(line).into_owned();
        if *dropped > 0 {
            text.push_str(&format!(
                " [... {} more bytes of this line not kept]",
                *dropped
            ));
        }
        let mut t = tail.lock();
        if t.len() == OUTPUT_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(text);
        line.clear();
        *dropped = 0;
    };
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if buf.is_empty() {
            if !line.is_empty() || dropped > 0 {
                push(&mut line, &mut dropped);
            }
            break;
        }
        let (chunk, newline, used) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], true, i + 1),
            None => (buf, false, buf.len()),
        };
        let room = OUTPUT_LINE_BYTES.saturating_sub(line.len());
        let take = room.min(chunk.len());
        line.extend_from_slice(&chunk[..take]);
        dropped += (chunk.len() - take) as u64;
        r.consume(used);
        if newline {
            push(&mut line, &mut dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobSpec, JobState};

    fn job(dir: &Path, c: CommandParams) -> Job {
        let mut spec = JobSpec::new("q", JobKind::Command(c));
        spec.result_dir = dir.display().to_string();
        Job::for_test("jtest", spec, JobState::Running, 1)
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
        let (ctx, _cancel, _p) = JobContext::new();
        let out = DefaultRunner::default()
            .run(&job(dir.path(), c), &ctx)
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
        let (ctx, _cancel, _p) = JobContext::new();
        let err = DefaultRunner::default()
            .run(&job(dir.path(), sh("echo disk full >&2; exit 3")), &ctx)
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
        let (ctx, _cancel, _p) = JobContext::new();
        let c = CommandParams {
            program: "herd-no-such-program-xyz".into(),
            ..Default::default()
        };
        let err = DefaultRunner::default()
            .run(&job(dir.path(), c), &ctx)
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
        let (ctx, _cancel, _p) = JobContext::new();
        let runner = DefaultRunner::default();
        let first = runner.run(&job(dir.path(), c.clone()), &ctx).await.unwrap();
        let second = runner.run(&job(dir.path(), c), &ctx).await.unwrap();
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

    fn alive(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Field 3 is the state; a zombie only waits to be reaped.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn wait_for_file(path: &Path) -> String {
        for _ in 0..500 {
            if let Ok(s) = std::fs::read_to_string(path) {
                if s.ends_with('\n') {
                    return s.trim().to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never appeared", path.display());
    }

    /// Regression: a non-UTF-8 byte used to stop the output reader (and the child then died of
    /// SIGPIPE); a line without a newline was buffered without limit.
    #[tokio::test]
    async fn non_utf8_output_and_a_huge_line_without_newline_are_kept_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // 3 MB of 'a' without a newline, after a line with invalid UTF-8, then more output: the
        // child must run to its end (exit 0) and the tail stays small.
        let c = sh("printf 'bad \\377\\376 bytes\\n'; echo after; head -c 3000000 /dev/zero | tr '\\0' a; echo; echo end; exit 0");
        let (ctx, _cancel, _p) = JobContext::new();
        let out = DefaultRunner::default()
            .run(&job(dir.path(), c), &ctx)
            .await
            .unwrap();
        assert_eq!(out.detail["exit_code"], 0);
        let tail: Vec<String> = out.detail["output_tail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(tail[0], "bad \u{fffd}\u{fffd} bytes", "{tail:?}");
        assert_eq!(tail[1], "after");
        assert!(tail[2].starts_with(&"a".repeat(100)), "{}", &tail[2][..50]);
        assert!(tail[2].len() < OUTPUT_LINE_BYTES + 100, "{}", tail[2].len());
        assert!(
            tail[2].ends_with(&format!(
                "[... {} more bytes of this line not kept]",
                3_000_000 - OUTPUT_LINE_BYTES
            )),
            "{}",
            &tail[2][OUTPUT_LINE_BYTES - 10..]
        );
        assert_eq!(tail[3], "end");
        let total: usize = tail.iter().map(|l| l.len()).sum();
        assert!(total <= OUTPUT_TAIL_LINES * (OUTPUT_LINE_BYTES + 100));
    }

    /// Regression: abandoning a command killed only the direct child; `sh -c` left its
    /// grandchildren running while the retry started a second copy. A grandchild that even
    /// ignores SIGTERM is SIGKILLed after the grace.
    #[tokio::test]
    async fn cancel_terminates_the_whole_process_group_term_then_kill() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let c = sh(&format!(
            "sleep 300 & a=$!; (trap '' TERM; exec sleep 301) & b=$!; echo \"$a $b\" > {}; wait",
            pids.display()
        ));
        let (ctx, cancel, _p) = JobContext::new();
        let runner = DefaultRunner::default().with_kill_grace(Duration::from_millis(300));
        let j = job(dir.path(), c);
        let run = runner.run(&j, &ctx);
        let pids_path = pids.clone();
        let (res, grandchildren) = tokio::join!(run, async move {
            let pids = wait_for_file(&pids_path).await;
            cancel.cancel("timed out after 1s (the job's timeout)");
            pids
        });
        let err = res.unwrap_err();
        assert!(err.retryable);
        assert!(
            err.message.contains("abandoned: timed out"),
            "{}",
            err.message
        );
        // The runner returns only once the group is gone: no sleep is left behind.
        for pid in grandchildren.split_whitespace() {
            assert!(!alive(pid), "grandchild {pid} outlived the abandoned job");
        }
    }

    #[tokio::test]
    async fn what_a_finished_command_left_in_its_group_is_ended_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The shell exits at once, leaving a background sleep that holds stdout open.
        let c = sh(&format!(
            "sleep 300 & echo $! > {}; echo started",
            pidfile.display()
        ));
        let (ctx, _cancel, _p) = JobContext::new();
        let out = DefaultRunner::default()
            .with_kill_grace(Duration::from_millis(300))
            .run(&job(dir.path(), c), &ctx)
            .await
            .unwrap();
        assert_eq!(out.detail["exit_code"], 0);
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        assert!(!alive(&pid), "background process {pid} outlived its job");
    }

    #[tokio::test]
    async fn worker_secrets_are_not_passed_to_commands() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sh("echo \"url=${HERD_QUEUE_URL:-unset} token=${HERD_TOKEN:-unset} own=$OWN\"");
        c.env.insert("OWN".into(), "yes".into());
        // SAFETY (test): set before the child is spawned; only this test reads these vars.
        std::env::set_var("HERD_QUEUE_URL", "redis://:hunter2@127.0.0.1:1");
        std::env::set_var("HERD_TOKEN", "secret-token");
        let (ctx, _cancel, _p) = JobContext::new();
        let out = DefaultRunner::default()
            .run(&job(dir.path(), c), &ctx)
            .await
            .unwrap();
        assert_eq!(
            out.detail["output_tail"][0],
            "url=unset token=unset own=yes"
        );
    }
}
