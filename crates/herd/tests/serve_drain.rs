//! `herd serve` shutdown as Kubernetes sees it: on SIGTERM `/v2/health/ready` turns 503
//! `{"ready": false}` while the listener still answers (for `--drain-delay`), `/v2/health/live`
//! stays 200, and a second SIGTERM ends the wait; the process then exits cleanly.
//!
//! Runs the real `herd` binary on 127.0.0.1 with the real ONNX Runtime (skipped with a message
//! outside CI when the library is not installed: `herd runtime install`; fails under CI=true).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;
use support::{free_port, require_runtime, sigterm, Kill, HERD};

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

#[tokio::test]
async fn sigterm_turns_readiness_off_before_the_listener_closes() {
    if !require_runtime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    let m = repo.join("pinned").join("1");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("model.onnx"),
        herd_onnx::LinearClassifier::random(4, 2, 7).to_onnx("pinned"),
    )
    .unwrap();
    std::fs::write(repo.join("pinned").join("config.toml"), "pinned = true\n").unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Kill(
        Command::new(HERD)
            .args(["serve", "--repo", repo.to_str().unwrap()])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--drain-delay", "600", "--no-auto-install"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = format!("{base}/v2/health/ready");
    loop {
        if let Some((200, v)) = get(&http, &ready).await {
            assert_eq!(v, json!({"ready": true}));
            break;
        }
        assert!(Instant::now() < deadline, "herd serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready means the pinned model is loaded.
    let (_, idx) = {
        let r = http
            .post(format!("{base}/v2/repository/index"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(idx[0]["state"], "READY", "{idx}");

    sigterm(child.0.id());
    loop {
        match get(&http, &ready).await {
            Some((503, v)) => {
                assert_eq!(v, json!({"ready": false}));
                break;
            }
            Some((200, _)) => {}
            other => panic!("during the drain delay the listener must answer: {other:?}"),
        }
        assert!(Instant::now() < deadline, "readiness never turned false");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&http, &format!("{base}/v2/health/live")).await,
        Some((200, json!({"live": true})))
    );
    // A second signal ends the drain delay; the process exits by itself, successfully.
    sigterm(child.0.id());
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "herd serve did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

/// A repository with one pinned model whose rows are slow: `rows` rows of it run for as long as
/// the test needs (2 · 2000 · 512² ≈ 1 GFLOP a row, in chunks of 4 rows).
fn slow_repo(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = dir.join("models");
    let m = repo.join("slow").join("1");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("model.onnx"),
        herd_onnx::MatMulChain {
            dim: SLOW_DIM,
            depth: 2000,
        }
        .to_onnx("slow"),
    )
    .unwrap();
    std::fs::write(
        repo.join("slow").join("config.toml"),
        "pinned = true\nmax_batch_size = 4\n",
    )
    .unwrap();
    repo
}

const SLOW_DIM: usize = 512;

/// Starts `herd serve` on `repo` with `--shutdown-grace grace` and waits until it is ready.
async fn start_slow(repo: &std::path::Path, grace: &str) -> (Kill, String) {
    let port = free_port();
    let child = Kill(
        Command::new(HERD)
            .args(["serve", "--repo", repo.to_str().unwrap()])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--shutdown-grace", grace, "--request-timeout", "900"])
            .args(["--no-auto-install"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let base = format!("127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((200, _)) = get(&http, &format!("http://{base}/v2/health/ready")).await {
            break;
        }
        assert!(Instant::now() < deadline, "herd serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

/// CPU time (user + system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// What the client of the slow request got: the status and body of an HTTP answer, or the
/// connection closed without one.
#[derive(Debug)]
enum Outcome {
    Answer(u16, Vec<u8>),
    Closed(String),
}

/// Sends `rows` rows of zeros to the slow model on a plain socket, from a thread, and reads
/// the answer (or the connection closing).
fn send_slow(addr: &str, rows: usize) -> std::thread::JoinHandle<Outcome> {
    use std::io::{Read, Write};
    let body = {
        let mut s = String::with_capacity(rows * SLOW_DIM * 2 + 128);
        s.push_str(&format!(
            "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[{rows},{SLOW_DIM}],\"datatype\":\"FP32\",\"data\":["
        ));
        for i in 0..rows * SLOW_DIM {
            if i > 0 {
                s.push(',');
            }
            s.push('0');
        }
        s.push_str("]}]}");
        s
    };
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v2/models/slow/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    std::thread::spawn(move || {
        let sent = c
            .write_all(head.as_bytes())
            .and_then(|_| c.write_all(body.as_bytes()));
        if let Err(e) = sent {
            return Outcome::Closed(format!("while sending: {e}"));
        }
        c.set_read_timeout(Some(Duration::from_secs(900))).unwrap();
        let mut answer = Vec::new();
        match c.read_to_end(&mut answer) {
            Ok(_) if answer.is_empty() => Outcome::Closed("closed without an answer".into()),
            Err(e) if answer.is_empty() => Outcome::Closed(e.to_string()),
            _ => {
                let text = String::from_utf8_lossy(&answer).into_owned();
                let status = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = text
                    .split_once("\r\n\r\n")
                    .map(|x| x.1.as_bytes().to_vec())
                    .unwrap_or_default();
                Outcome::Answer(status, body)
            }
        }
    })
}

/// Waits until the server has spent a fifth of a second of CPU on the request (it is running).
async fn wait_busy(pid: u32) {
    let t0 = cpu_ticks(pid);
    for _ in 0..1200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if cpu_ticks(pid) > t0 + 20 {
            return;
        }
    }
    panic!("the server never started on the slow request");
}

async fn wait_exit(child: &mut Kill, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "herd serve did not exit within {within:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_request_running_at_sigterm_gets_its_answer_within_the_grace() {
    if !require_runtime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = slow_repo(dir.path());
    let (mut child, addr) = start_slow(&repo, "600").await;
    // 16 rows: seconds of work, well inside the grace.
    let rows = 16;
    let client = send_slow(&addr, rows);
    wait_busy(child.0.id()).await;
    assert!(!client.is_finished(), "the request ended before SIGTERM");
    sigterm(child.0.id());
    // The listener closes at once (no drain delay): new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "the listener stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = wait_exit(&mut child, Duration::from_secs(600)).await;
    assert!(status.success(), "{status:?}");
    match client.join().unwrap() {
        Outcome::Answer(200, body) => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let out = &v["outputs"][0];
            assert_eq!(out["name"], "output");
            assert_eq!(out["shape"], json!([rows, SLOW_DIM]));
            let data = out["data"].as_array().unwrap();
            assert_eq!(data.len(), rows * SLOW_DIM);
            assert!(data.iter().all(|x| x.as_f64() == Some(0.0)));
        }
        other => panic!("the running request must get its answer: {other:?}"),
    }
}

#[tokio::test]
async fn the_process_ends_after_its_grace_with_a_request_still_running() {
    if !require_runtime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = slow_repo(dir.path());
    let (mut child, addr) = start_slow(&repo, "1").await;
    // 8000 rows: some 8 TFLOP, minutes of work on any CPU; the grace is one second.
    let client = send_slow(&addr, 8000);
    wait_busy(child.0.id()).await;
    assert!(!client.is_finished(), "the request ended before SIGTERM");
    sigterm(child.0.id());
    // The process does not wait for the run: it exits (cleanly) long before the request could
    // be done, and the client is not left hanging.
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}");
    match client.join().unwrap() {
        Outcome::Closed(why) => eprintln!("the slow request's connection closed: {why}"),
        Outcome::Answer(status, body) => {
            // An answer at shutdown can only be an error that says why, never the result.
            assert!(
                status >= 500,
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"].is_string(), "{v}");
        }
    }
}
