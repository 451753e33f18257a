//! `herd job cancel` with the real binary on a real SQLite queue: a waiting job is cancelled
//! (`herd job show` then says so, with the reason), a running job's lease is revoked (its
//! worker's next renewal is refused), and an unknown id or a finished job is an error with a
//! clear message and a non-zero exit status.
//!
//! Run: `cargo test -p herd --test job_cancel`

use std::process::{Command, Output};
use std::time::Duration;

mod support;
use support::HERD;

fn herd(queue_url: &str, args: &[&str]) -> Output {
    Command::new(HERD)
        .arg("job")
        .args(["--queue-url", queue_url])
        .args(args)
        .env_remove("HERD_QUEUE_URL")
        .output()
        .expect("run herd")
}

fn ok(queue_url: &str, args: &[&str]) -> String {
    let out = herd(queue_url, args);
    assert!(
        out.status.success(),
        "herd job {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its stderr.
fn fails(queue_url: &str, args: &[&str]) -> String {
    let out = herd(queue_url, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "herd job {args:?} should fail; stdout: {} stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_waiting_job_then_refuse_unknown_and_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let id = ok(
        &url,
        &["enqueue", "--queue", "nightly", "command", "--", "true"],
    )
    .trim()
    .to_string();
    assert!(!id.is_empty());
    let keep = ok(
        &url,
        &["enqueue", "--queue", "nightly", "command", "--", "true"],
    )
    .trim()
    .to_string();

    let out = ok(&url, &["cancel", &id, "--reason", "wrong input file"]);
    assert!(
        out.contains(&format!(
            "cancelled job {id} (it was waiting; queue 'nightly')"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("herd job requeue --queue nightly {id}")),
        "{out}"
    );
    let show = ok(&url, &["show", &id]);
    assert!(show.contains("state:     dead"), "{show}");
    assert!(
        show.contains("error:     cancelled with `herd job cancel`: wrong input file"),
        "{show}"
    );
    // Only that job: the other one still waits.
    let other = ok(&url, &["show", &keep]);
    assert!(other.contains("state:     waiting"), "{other}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&url, &["stats", "--json"])).unwrap();
    assert_eq!(stats["nightly"]["stats"]["dead"], 1, "{stats}");
    assert_eq!(stats["nightly"]["stats"]["waiting"], 1, "{stats}");

    // Already cancelled (dead): refused, and the job is unchanged.
    let err = fails(&url, &["cancel", &id]);
    assert!(err.contains("cannot cancel"), "{err}");
    assert!(err.contains("is dead"), "{err}");
    let show = ok(&url, &["show", &id]);
    assert!(show.contains("wrong input file"), "{show}");

    // Unknown id.
    let err = fails(&url, &["cancel", "no-such-job"]);
    assert!(err.contains("job 'no-such-job' not found"), "{err}");
    // An empty reason is refused before anything changes.
    let err = fails(&url, &["cancel", &keep, "--reason", " "]);
    assert!(err.contains("--reason is empty"), "{err}");
    assert!(ok(&url, &["show", &keep]).contains("state:     waiting"));

    // A done job cannot be cancelled either.
    let queue = herd_jobs::connect(&url).await.unwrap();
    let lease = queue
        .claim("w-done", &["nightly".to_string()], Duration::from_secs(600))
        .await
        .unwrap()
        .expect("the waiting job");
    assert_eq!(lease.job.id, keep);
    queue
        .ack(&lease, &herd_jobs::JobOutcome::default())
        .await
        .unwrap();
    let err = fails(&url, &["cancel", &keep]);
    assert!(err.contains("is done"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_job_revokes_its_workers_lease() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let id = ok(&url, &["enqueue", "command", "--", "sleep", "60"])
        .trim()
        .to_string();
    let queue = herd_jobs::connect(&url).await.unwrap();
    let mut lease = queue
        .claim("w-1", &["default".to_string()], Duration::from_secs(600))
        .await
        .unwrap()
        .expect("the job");
    assert_eq!(lease.job.id, id);

    let out: serde_json::Value = serde_json::from_str(&ok(&url, &["cancel", &id, "--json"]))
        .unwrap_or_else(|e| panic!("--json output: {e}"));
    assert_eq!(out["cancelled"], id.as_str(), "{out}");
    assert_eq!(out["was"], "running", "{out}");
    assert_eq!(out["job"]["state"], "dead", "{out}");
    // The worker's next renewal is refused: it stops the job.
    let renewed = queue
        .renew(&mut lease, Duration::from_secs(600), None)
        .await;
    assert!(
        matches!(renewed, Err(herd_jobs::JobsError::LeaseLost { .. })),
        "{renewed:?}"
    );
    assert!(queue.lease_holders("default").await.unwrap().is_empty());
}
