//! The local backend: real `herd worker` and `herd serve` child processes on this machine.
//!
//! Workers get ids `<queue>-<autoscaler pid>-<seq>` (zero-padded, so they sort by start order)
//! and are passed `--worker-id`, so the queue's lease holders name them. Stopping sends SIGTERM:
//! a worker stops claiming and finishes or releases its job; a server drains. Output of each child
//! goes to `<log_dir>/<id>.log`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::decide::Action;
use crate::error::{Result, ScaleError};
use crate::policy::{Policy, ServingPool, WorkerPool};

/// How long a child may take to exit after SIGTERM at shutdown before it is killed (a worker
/// finishes or releases its job within its own, shorter, grace period).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(90);

/// How to start children.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The `herd` binary (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Where each child's stdout/stderr goes.
    pub log_dir: PathBuf,
    /// Queue URL for pools that name none (neither the pool nor `[defaults]`).
    pub queue_url: Option<String>,
    /// Logs of exited children kept in `log_dir` (the newest); older ones are deleted when new
    /// children start, so an autoscaler that runs for months does not fill the disk.
    pub keep_logs: usize,
}

struct Proc {
    id: String,
    child: Child,
    /// Serving only: the port of `herd serve`.
    port: Option<u16>,
}

/// Children started by this autoscaler.
pub struct LocalBackend {
    settings: LocalSettings,
    workers: BTreeMap<String, Vec<Proc>>,
    serving: BTreeMap<String, Vec<Proc>>,
    /// Asked to stop, not yet exited.
    stopping: Vec<Proc>,
    seq: u64,
}

fn sigterm(child: &Child) -> bool {
    let Some(pid) = child.id() else {
        return false; // already reaped
    };
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with a pid we own (our child, not yet reaped) and a valid signal number.
    unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
}

/// Drops exited children from `procs`, logging how each ended.
fn reap(kind: &str, procs: &mut Vec<Proc>) {
    procs.retain_mut(|p| match p.child.try_wait() {
        Ok(Some(status)) => {
            info!(target: "herd_scale", kind, id = %p.id, %status, "child exited");
            false
        }
        Ok(None) => true,
        Err(e) => {
            warn!(target: "herd_scale", kind, id = %p.id, error = %e, "cannot poll child; forgetting it");
            false
        }
    });
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ScaleError::Process(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    let port = l
        .local_addr()
        .map_err(|e| ScaleError::Process(format!("cannot read a local port: {e}")))?
        .port();
    Ok(port)
}

impl LocalBackend {
    pub fn new(settings: LocalSettings) -> Result<LocalBackend> {
        std::fs::create_dir_all(&settings.log_dir).map_err(|e| {
            ScaleError::Process(format!(
                "cannot create the log directory {}: {e}",
                settings.log_dir.display()
            ))
        })?;
        Ok(LocalBackend {
            settings,
            workers: BTreeMap::new(),
            serving: BTreeMap::new(),
            stopping: Vec::new(),
            seq: 0,
        })
    }

    /// Ids of this pool's live workers (exited ones are reaped first).
    pub fn workers(&mut self, pool: &WorkerPool) -> Vec<String> {
        reap("stopping", &mut self.stopping);
        let procs = self.workers.entry(pool.queue.clone()).or_default();
        reap("worker", procs);
        procs.iter().map(|p| p.id.clone()).collect()
    }

    /// Live serving instances of a pool: `(id, metrics url)`.
    pub fn serving_instances(&mut self, pool: &ServingPool) -> Vec<(String, Option<String>)> {
        let procs = self.serving.entry(pool.name.clone()).or_default();
        reap("serve", procs);
        procs
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    p.port
                        .map(|port| format!("http://127.0.0.1:{port}/metrics")),
                )
            })
            .collect()
    }

    /// `(id, pid)` of every live worker and server child, for inspection.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.workers
            .values()
            .chain(self.serving.values())
            .flatten()
            .filter_map(|p| Some((p.id.clone(), p.child.id()?)))
            .collect()
    }

    /// Number of children still alive or stopping (for tests and shutdown).
    pub fn live_children(&mut self) -> usize {
        reap("stopping", &mut self.stopping);
        let mut n = self.stopping.len();
        for procs in self.workers.values_mut().chain(self.serving.values_mut()) {
            reap("child", procs);
            n += procs.len();
        }
        n
    }

    /// Deletes the oldest `*.log` files of exited children beyond `keep_logs`.
    fn prune_logs(&self) {
        let live: std::collections::HashSet<String> = self
            .workers
            .values()
            .chain(self.serving.values())
            .flatten()
            .chain(self.stopping.iter())
            .map(|p| format!("{}.log", p.id))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.settings.log_dir) else {
            return;
        };
        let mut old: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".log") && !live.contains(&name)
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if old.len() <= self.settings.keep_logs {
            return;
        }
        old.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, path) in old.into_iter().skip(self.settings.keep_logs) {
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(target: "herd_scale", path = %path.display(), error = %e, "cannot delete an old child log");
            }
        }
    }

    /// Starts a child with `args` and extra environment `envs` (secrets such as the queue URL go
    /// there, never in argv, which every local user can read in `ps`).
    fn spawn(&mut self, id: &str, args: &[String], envs: &[(&str, &str)]) -> Result<Child> {
        self.prune_logs();
        let log_path = self.settings.log_dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| {
            ScaleError::Process(format!("cannot create {}: {e}", log_path.display()))
        })?;
        let log2 = log.try_clone().map_err(|e| {
            ScaleError::Process(format!("cannot share {}: {e}", log_path.display()))
        })?;
        let child = Command::new(&self.settings.exe)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| {
                ScaleError::Process(format!(
                    "cannot start {} {}: {e}",
                    self.settings.exe.display(),
                    args.join(" ")
                ))
            })?;
        info!(target: "herd_scale", id, pid = child.id(), args = %args.join(" "), log = %log_path.display(), "started child");
        Ok(child)
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{}-{:06}", std::process::id(), self.seq)
    }

    /// Applies one action.
    pub fn apply(&mut self, action: &Action, policy: &Policy) -> Result<()> {
        match action {
            Action::StartWorkers { queue, from, to } => {
                let pool = policy
                    .workers
                    .iter()
                    .find(|p| &p.queue == queue)
                    .ok_or_else(|| ScaleError::Process(format!("no worker pool '{queue}'")))?;
                let url = policy
                    .queue_url(pool, self.settings.queue_url.as_deref())
                    .ok_or_else(|| {
                        ScaleError::Process(format!(
                            "worker pool '{queue}' has no queue URL: set queue_url in the pool or in [defaults], or pass --queue-url"
                        ))
                    })?
                    .to_string();
                let idle_exit = format!("{}s", pool.idle_exit.0.as_secs().max(1));
                for _ in *from..*to {
                    let id = self.next_id(queue);
                    let args = vec![
                        "worker".to_string(),
                        "--queue".into(),
                        queue.clone(),
                        "--worker-id".into(),
                        id.clone(),
                        "--idle-exit".into(),
                        idle_exit.clone(),
                    ];
                    let child = self.spawn(&id, &args, &[("HERD_QUEUE_URL", url.as_str())])?;
                    self.workers.entry(queue.clone()).or_default().push(Proc {
                        id,
                        child,
                        port: None,
                    });
                }
                Ok(())
            }
            Action::StopWorkers { queue, stop, .. } => {
                let procs = self.workers.entry(queue.clone()).or_default();
                for id in stop {
                    if let Some(pos) = procs.iter().position(|p| &p.id == id) {
                        let p = procs.remove(pos);
                        if sigterm(&p.child) {
                            info!(target: "herd_scale", id = %p.id, "sent SIGTERM to idle worker");
                        }
                        self.stopping.push(p);
                    }
                }
                Ok(())
            }
            Action::ScaleServing { pool, from, to } => {
                let sp = policy
                    .serving
                    .iter()
                    .find(|p| &p.name == pool)
                    .ok_or_else(|| ScaleError::Process(format!("no serving pool '{pool}'")))?
                    .clone();
                if to > from {
                    let repo = sp.repo.clone().ok_or_else(|| {
                        ScaleError::Process(format!(
                            "serving pool '{pool}' has no repo: set repo = \"DIR\" in its [[serving]] table for the local backend"
                        ))
                    })?;
                    for _ in *from..*to {
                        let id = self.next_id(&format!("serve-{pool}"));
                        let port = free_port()?;
                        let args = vec![
                            "serve".to_string(),
                            "--repo".into(),
                            repo.display().to_string(),
                            "--addr".into(),
                            format!("127.0.0.1:{port}"),
                            "--memory-budget".into(),
                            sp.memory_budget.clone(),
                        ];
                        let child = self.spawn(&id, &args, &[])?;
                        self.serving.entry(pool.clone()).or_default().push(Proc {
                            id,
                            child,
                            port: Some(port),
                        });
                    }
                } else {
                    let procs = self.serving.entry(pool.clone()).or_default();
                    let excess = (*from - *to) as usize;
                    for _ in 0..excess.min(procs.len()) {
                        if let Some(p) = procs.pop() {
                            sigterm(&p.child);
                            info!(target: "herd_scale", id = %p.id, "sent SIGTERM to server");
                            self.stopping.push(p);
                        }
                    }
                }
                Ok(())
            }
            Action::SetFlexibleMaxUnavailable { value, .. } => {
                info!(target: "herd_scale", value, "local backend has no disruption budgets; nothing to do");
                Ok(())
            }
        }
    }

    /// SIGTERM to every child, then wait for them to exit (each gets its own grace period).
    pub async fn shutdown(&mut self) {
        let mut all: Vec<Proc> = std::mem::take(&mut self.stopping);
        for (_, procs) in std::mem::take(&mut self.workers) {
            all.extend(procs);
        }
        for (_, procs) in std::mem::take(&mut self.serving) {
            all.extend(procs);
        }
        for p in &all {
            sigterm(&p.child);
        }
        for mut p in all {
            match tokio::time::timeout(SHUTDOWN_GRACE, p.child.wait()).await {
                Ok(Ok(status)) => {
                    info!(target: "herd_scale", id = %p.id, %status, "child exited at shutdown")
                }
                Ok(Err(e)) => {
                    warn!(target: "herd_scale", id = %p.id, error = %e, "cannot wait for child")
                }
                Err(_) => {
                    warn!(target: "herd_scale", id = %p.id, grace_s = SHUTDOWN_GRACE.as_secs(), "child ignored SIGTERM; killing it");
                    let _ = p.child.start_kill();
                    let _ = p.child.wait().await;
                }
            }
        }
    }
}
