//! A minimal worker process for herd-jobs' own crash tests (`tests/queue/kill.rs`): the same
//! worker loop and runners as `herd worker`, without the rest of herd, so the crate's tests can
//! SIGKILL real worker processes. Users run `herd worker` instead.
//!
//! Usage: herd-jobs-test-worker QUEUE_URL QUEUE WORKER_ID LEASE_MS IDLE_EXIT_MS [GRACE_MS]
//!        herd-jobs-test-worker enqueue QUEUE_URL QUEUE COUNT   (prints one job id per line)

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use herd_jobs::run::DefaultRunner;
use herd_jobs::worker::{run_until_signalled, WorkerConfig};

/// Enqueues COUNT `echo` jobs and prints their ids: one of many concurrent enqueuer processes.
fn enqueue(url: &str, queue: &str, count: &str) -> ExitCode {
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("COUNT must be a whole number");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<Vec<String>, herd_jobs::JobsError> = rt.block_on(async {
        let q = herd_jobs::connect(url).await?;
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let spec = herd_jobs::JobSpec::new(
                queue,
                herd_jobs::JobKind::Command(herd_jobs::CommandParams {
                    program: "echo".into(),
                    args: vec![format!("{}-{i}", std::process::id())],
                    ..Default::default()
                }),
            );
            ids.push(q.enqueue(spec).await?);
        }
        Ok(ids)
    });
    match result {
        Ok(ids) => {
            println!("{}", ids.join("\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, url, queue, count] = args.as_slice() {
        if mode == "enqueue" {
            return enqueue(url, queue, count);
        }
    }
    let (url, queue, id, lease_ms, idle_ms, grace_ms) = match args.as_slice() {
        [u, q, i, l, d] => (u, q, i, l, d, l),
        [u, q, i, l, d, g] => (u, q, i, l, d, g),
        _ => {
            eprintln!("usage: herd-jobs-test-worker QUEUE_URL QUEUE WORKER_ID LEASE_MS IDLE_EXIT_MS [GRACE_MS]");
            return ExitCode::from(2);
        }
    };
    let (Ok(lease_ms), Ok(idle_ms), Ok(grace_ms)) = (
        lease_ms.parse::<u64>(),
        idle_ms.parse::<u64>(),
        grace_ms.parse::<u64>(),
    ) else {
        eprintln!("LEASE_MS and IDLE_EXIT_MS must be whole numbers of milliseconds");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let q = herd_jobs::connect(url).await?;
        let mut cfg = WorkerConfig::new(id.clone(), vec![queue.clone()]);
        cfg.lease = Duration::from_millis(lease_ms);
        cfg.idle_exit = Some(Duration::from_millis(idle_ms));
        cfg.poll = Duration::from_millis(50);
        cfg.grace = Duration::from_millis(grace_ms);
        run_until_signalled(q, Arc::new(DefaultRunner::default()), cfg).await
    });
    match result {
        Ok(s) => {
            println!(
                "done={} failed={} released={} lost={} exit={}",
                s.done, s.failed, s.released, s.lost, s.exit_reason
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
