//! Queue throughput: enqueue N jobs, then W concurrent claimers claim+ack them until empty.
//! Prints jobs/s for each phase. Each claimer has its own connection (SQLite: its own pool, like
//! a separate worker process).
//!
//! cargo run --release -p herd-jobs --example queue_bench -- [URL] [N] [W]
//!   URL default: a fresh sqlite file under the temp dir; e.g. redis://127.0.0.1:56379?prefix=bench
//!   N default 5000, W default 4

use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_jobs::{CommandParams, JobKind, JobOutcome, JobSpec, Queue};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tmp = std::env::temp_dir().join(format!("herd-queue-bench-{}", std::process::id()));
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| format!("sqlite://{}/jobs.db", tmp.display()));
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5000);
    let w: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let queue_name = format!("bench-{:08x}", rand::random::<u32>());

    let q = herd_jobs::connect(&url).await?;
    let spec = JobSpec::new(
        queue_name.clone(),
        JobKind::Command(CommandParams {
            program: "true".into(),
            ..Default::default()
        }),
    );
    let t = Instant::now();
    for _ in 0..n {
        q.enqueue(spec.clone()).await?;
    }
    let enq = t.elapsed();

    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..w {
        let q: Arc<dyn Queue> = herd_jobs::connect(&url).await?;
        let name = queue_name.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = 0usize;
            let queues = vec![name];
            while let Some(l) = q
                .claim(&format!("bench-{i}"), &queues, Duration::from_secs(60))
                .await?
            {
                q.ack(&l, &JobOutcome::default()).await?;
                k += 1;
            }
            Ok::<usize, herd_jobs::JobsError>(k)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let ca = t.elapsed();
    let st = q.stats(&queue_name).await?;
    assert_eq!(total, n);
    assert_eq!(st.done, n as u64);
    println!(
        "backend={} jobs={n} claimers={w} enqueue={:.0}/s claim+ack={:.0}/s (enqueue {:.2}s, claim+ack {:.2}s)",
        q.backend(),
        n as f64 / enq.as_secs_f64(),
        n as f64 / ca.as_secs_f64(),
        enq.as_secs_f64(),
        ca.as_secs_f64()
    );
    q.purge(Duration::ZERO).await?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
