//! A real Redis that requires a password (`redis-server --requirepass`, started here on a free
//! loopback port): the queue works with the password in the URL; without it, or with a wrong one,
//! connecting fails with an error that does not show the password.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herd_jobs::{connect, JobOutcome, JobState};

use super::{cmd_spec, q, LEASE};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `redis-server` with `--requirepass`, or None (SKIPPED outside CI; under CI a missing
/// redis-server fails: .ci/run installs it).
fn start_redis(password: &str) -> Option<(Redis, u16)> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--requirepass", password])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => Redis(c),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server cannot start under CI: {e}");
            }
            eprintln!("SKIPPED (redis password test): redis-server not found: {e}");
            return None;
        }
    };
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis-server on port {port} did not listen within 5 s");
}

#[tokio::test]
async fn a_redis_with_a_password_is_used_through_the_url_and_refuses_without_it() {
    let secret = "s3cret-Pa55";
    let Some((_redis, port)) = start_redis(secret) else {
        return;
    };
    let good = format!("redis://:{secret}@127.0.0.1:{port}/?prefix=auth");
    let queue = connect(&good)
        .await
        .unwrap_or_else(|e| panic!("connect with the password: {e}"));
    let id = queue.enqueue(cmd_spec("default", "a")).await.unwrap();
    let lease = queue
        .claim("w1", &q(&["default"]), LEASE)
        .await
        .unwrap()
        .expect("the enqueued job");
    assert_eq!(lease.job.id, id);
    queue.ack(&lease, &JobOutcome::default()).await.unwrap();
    let job = queue.show(&id).await.unwrap().expect("the job");
    assert_eq!(job.state, JobState::Done);

    for (what, url) in [
        (
            "no password",
            format!("redis://127.0.0.1:{port}/?prefix=auth"),
        ),
        (
            "a wrong password",
            format!("redis://:wrong-Pa55@127.0.0.1:{port}/?prefix=auth"),
        ),
    ] {
        let err = match connect(&url).await {
            Err(e) => e,
            // A lazy connection would only fail at the first command: that must fail too.
            Ok(queue) => queue
                .stats("default")
                .await
                .expect_err(&format!("{what}: the server requires a password")),
        };
        let msg = err.to_string();
        assert!(!msg.contains("wrong-Pa55"), "{what}: password shown: {msg}");
        assert!(!msg.contains(secret), "{what}: password shown: {msg}");
        let lower = msg.to_lowercase();
        assert!(
            lower.contains("auth") || lower.contains("password") || lower.contains("noperm"),
            "{what}: the error should say authentication failed: {msg}"
        );
    }
}
